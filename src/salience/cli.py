"""The `salience` command. It only parses arguments and calls the library."""

import contextlib
from typing import Annotated, Any

import typer

app = typer.Typer(help="Explain and guide image classifiers with salience maps.", no_args_is_help=True)


@app.command()
def version() -> None:
    """Print the installed version."""
    from salience import __version__

    typer.echo(__version__)


@app.command()
def methods() -> None:
    """List the attribution methods and what each can do: a table where the terminal is wide enough for it,
    else a list; method names are never cut."""
    import textwrap

    from rich.console import Console
    from rich.table import Table

    rows = _method_rows()
    columns = list(zip(_METHOD_COLUMNS, *rows, strict=True))
    widths = [max(len(cell) for cell in column) for column in columns[:-2]]  # never wrapped
    wrapped = [max(len(word) for cell in column for word in cell.split()) for column in columns[-2:]]  # at spaces
    table = Table()
    for name, width in zip(_METHOD_COLUMNS, widths, strict=False):
        table.add_column(name, no_wrap=True, width=width)
    for name, width in zip(_METHOD_COLUMNS[-2:], wrapped, strict=True):
        table.add_column(name, min_width=width)
    for row in rows:
        table.add_row(*row)
    console = Console()
    if sum(widths) + sum(wrapped) + 3 * len(_METHOD_COLUMNS) + 1 <= console.width:  # columns, padding, borders
        console.print(table)
        return
    width = max(console.width, 40) - 4
    for row in rows:  # too narrow for the table: a method a paragraph, its name whole on a line of its own
        typer.echo(row[0])
        facts = "; ".join(f"{k}: {v}" for k, v in zip(_METHOD_COLUMNS[1:-1], row[1:-1], strict=True))
        for line in textwrap.wrap(facts, width) + textwrap.wrap(row[-1], width):
            typer.echo(f"    {line}")


_METHOD_COLUMNS = (
    "method",
    "default layer",
    "other layers",
    "shared pass",
    "differentiable",
    "signed",
    "options",
    "summary",
)


def _method_rows() -> list[tuple[str, ...]]:
    """The cells of `salience methods`, one row per registered method, in `_METHOD_COLUMNS` order."""
    from salience.attribution import METHODS
    from salience.attribution.registry import method_options

    yes = {True: "yes", False: "-"}
    return [
        (
            m.name,
            m.layer or "input",
            yes[m.takes_layer],
            yes[m.shared],
            yes[m.differentiable],
            yes[m.signed],
            ", ".join(method_options(m.name)) or "-",
            m.summary,
        )
        for m in METHODS.values()
    ]


@contextlib.contextmanager
def _exit_on(*errors: type[Exception]):
    """Report `errors` raised in the block as `error: <message>` on stderr and exit with code 2 (the
    library's messages name the file, key or value at fault)."""
    try:
        yield
    except errors as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None


data_app = typer.Typer(help="Built-in benchmark and data set checks.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("make-benchmark")
def data_make_benchmark(
    out: str = typer.Argument(..., help="folder to write (must not exist or be empty)"),
    seed: int = 0,
    size: int = 64,
    n_train: int = 3000,
    n_val: int = 500,
    n_test: int = 1000,
    n_out_of_set: int = 500,
    cue_agreement: float = 0.95,
    pca_rank: int = 10,
    fingerprint: float = 0.0,
    max_faces: int = 1,
) -> None:
    """Write the built-in benchmark to OUT in the salience-folder layout."""
    import time

    from pydantic import ValidationError

    from salience.data import BuiltinBenchmark, make_builtin

    try:
        cfg = BuiltinBenchmark(
            seed=seed,
            size=size,
            n_train=n_train,
            n_val=n_val,
            n_test=n_test,
            n_out_of_set=n_out_of_set,
            cue_agreement=cue_agreement,
            pca_rank=pca_rank,
            fingerprint=fingerprint,
            max_faces=max_faces,
        )
    except ValidationError as e:
        raise typer.BadParameter(str(e)) from None
    t0 = time.perf_counter()
    try:
        root = make_builtin(out, cfg)
    except FileExistsError as e:
        raise typer.BadParameter(str(e)) from None
    typer.echo(f"wrote {root} in {time.perf_counter() - t0:.1f} s")


@data_app.command("inspect")
def data_inspect(
    path: str = typer.Argument(..., help="data folder (or CSV for --format folder)"),
    format: str = typer.Option(..., "--format", help="builtin, voc, coco, waterbirds or folder"),
    split: str = typer.Option("train", help="split to read"),
    check_files: bool = typer.Option(True, help="open every image / map header"),
) -> None:
    """Print one JSON object describing a split; exit code 1 when errors were found."""
    import json

    from salience.data import FORMATS, inspect

    if format not in FORMATS:
        raise typer.BadParameter(f"--format must be one of {FORMATS}, got {format!r}")
    report = inspect(format, path, split, check_files=check_files)
    typer.echo(json.dumps(report, indent=2))
    if report["errors"]:
        raise typer.Exit(1)


_ImagesArg = Annotated[
    list[str] | None,
    typer.Argument(
        help="With --model: the images, a folder (with class sub-folders, whose names are the classes, or flat) "
        "or image files.",
        show_default=False,
        metavar="IMAGES",
    ),
]
_ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="With IMAGES: the model to build, a name (resnet50, smallcnn, timm:<name>, hf:<folder>) or "
        "package.module:factory (see salience.models.build).",
    ),
]
_KwargsOpt = Annotated[
    list[str],
    typer.Option("--kwargs", help="With --model: constructor keywords, a JSON object or key=value (repeatable)."),
]


@app.command()
def explain(
    images: _ImagesArg = None,
    checkpoint: str = typer.Option(None, help="Training checkpoint (.pt) whose model is explained (not with --model)."),
    model: _ModelOpt = None,
    num_classes: int = typer.Option(None, min=1, help="With --model: the classifier's number of classes."),
    weights: str = typer.Option(None, help="With --model: weights file (state dict) or torchvision weight name."),
    kwargs: _KwargsOpt = [],  # noqa: B006 (typer reads the default)
    output: str = typer.Option(None, help="With --model: index, key or attribute of the scores in its output."),
    size: int = typer.Option(None, min=8, help="With --model: resize the images to SIZE x SIZE (default: as stored)."),
    normalize: str = typer.Option(None, help="With --model: none (default) or imagenet, what the model expects."),
    classes: str = typer.Option(
        None,
        help="With --model: the model's class order, comma-separated (class i is the i-th name); every "
        "class sub-folder must be named, extra names are allowed. Default: the sub-folders sorted.",
    ),
    data: str = typer.Option(None, help="With --checkpoint: split of its data config to explain (default test)."),
    method: list[str] = typer.Option(
        ...,
        help="Attribution method, NAME or NAME@LAYER (grad_cam@final, input_x_gradient@mid2, ...); repeat it "
        "for several methods in one pass. `salience methods` lists the methods.",
    ),
    layer: str = typer.Option(None, help="Layer name or named depth (input, mid1.., final) of a single method."),
    option: list[str] = typer.Option([], help="METHOD.KEY=VALUE, a method's option (see `salience methods`)."),
    out: str = typer.Option(
        ...,
        help="--checkpoint: map store directory (created, or resumed if its metadata match); with several methods "
        "a folder holding one store per method, named as written (OUT/grad_cam@final). --model: a folder for "
        "`salience view` (stores in OUT/stores/<method>/<model>, pictures in OUT/png).",
    ),
    target: str = typer.Option(
        None,
        help="Class to explain. --checkpoint: true (default; every present class of each image), predicted or "
        "class:<k>. --model: predicted (default), true (the class sub-folder) or a class index N.",
    ),
    png: bool = typer.Option(False, "--png", help="With --model: also an overlay picture per image and method."),
    chunk_size: int = typer.Option(256, min=1, help="Images per store chunk."),
    batch_size: int = typer.Option(64, min=1),
    device: str = typer.Option("cpu", help="cpu, cuda or auto; under torchrun each process uses its local GPU."),
    set_: list[str] = typer.Option(
        [], "--set", help="With --checkpoint: key=value override of its config (repeatable)."
    ),
) -> None:
    """Write salience maps into resumable map stores, of a training checkpoint on a split of its data
    (--checkpoint), or of a model built by name on a folder or files of images (IMAGES --model; OUT then opens
    in `salience view`, and --png adds pictures). Under torchrun the processes share the stores, each
    computing its share of the chunks."""
    common = dict(methods=method, layer=layer, out=out, chunk_size=chunk_size, batch_size=batch_size, device=device)
    with _exit_on(ValueError):
        common["options"] = _method_options(option)
    given = {"--num-classes": num_classes, "--weights": weights, "--kwargs": kwargs, "--output": output}
    given |= {"--size": size, "--normalize": normalize, "--png": png, "--classes": classes}
    _check_explain_form(checkpoint, model, images, given, {"--data": data, "--set": set_})
    if checkpoint is not None:
        _explain_checkpoint(checkpoint, data or "test", target or "true", set_, common)
        return
    options = dict(name=model, num_classes=num_classes, weights=weights, kwargs=kwargs, output=output)
    options |= dict(size=size, normalize=normalize or "none", target=target or "predicted", png=png)
    options["classes"] = [c.strip() for c in classes.split(",")] if classes else None
    _explain_images(images or [], options, common)


def _method_options(items: list[str]) -> dict[str, dict[str, Any]]:
    """`{METHOD: {key: value}}` from `--option METHOD.KEY=VALUE` values (METHOD a name or spec, VALUE read as
    YAML; `explain_stores` checks them against the methods); a malformed item raises ValueError."""
    import yaml

    options: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        name, dot, option = key.rpartition(".")
        if not sep or not dot or not name or not option:
            raise ValueError(f"--option {item!r}: expected METHOD.KEY=VALUE, e.g. kernel_shap.n_samples=64")
        options.setdefault(name, {})[option] = yaml.safe_load(value)
    return options


def _check_explain_form(
    checkpoint: str | None,
    model: str | None,
    images: list[str] | None,
    model_only: dict[str, Any],
    checkpoint_only: dict[str, Any],
) -> None:
    """Refuse (exit code 2) a `salience explain` that is neither or both of its forms, `--checkpoint` and
    `IMAGES --model`, or that gives an option of the other form (`model_only`, `checkpoint_only`: option ->
    value, None or empty when not given)."""
    if checkpoint is not None and model is not None:
        raise typer.BadParameter("give --checkpoint or --model, not both")
    if checkpoint is None and model is None:
        raise typer.BadParameter("give --checkpoint CHECKPOINT, or IMAGES and --model NAME")
    if checkpoint is not None and images:
        raise typer.BadParameter(
            f"IMAGES ({images[0]}) are explained with --model; --checkpoint explains a split of its data (--data)"
        )
    if model is not None and not images:
        raise typer.BadParameter("--model needs IMAGES: a folder of images or image files")
    options, form = (model_only, "IMAGES --model") if checkpoint is not None else (checkpoint_only, "--checkpoint")
    wrong = [k for k, v in options.items() if v not in (None, False, [], ())]
    if wrong:
        raise typer.BadParameter(f"{wrong[0]} applies to the {form} form of explain")


def _explain_checkpoint(checkpoint: str, data: str, target: str, overrides: list[str], common: dict[str, Any]) -> None:
    """`salience explain --checkpoint`: the checkpoint's maps on split `data` of its data config."""
    from salience import distributed as dist
    from salience.store.explain import explain_checkpoint

    with _exit_on(ValueError, OSError):  # bad config, data, method, layer, store or path
        ctx = dist.setup(common["device"])
        try:
            stores = explain_checkpoint(
                checkpoint,
                data,
                common["methods"],
                common["out"],
                layer=common["layer"],
                options=common["options"],
                target_policy=target,
                overrides=overrides,
                chunk_size=common["chunk_size"],
                batch_size=common["batch_size"],
                progress=True,
                ctx=ctx,
            )
        finally:
            dist.teardown(ctx)
    if ctx.is_main:
        for store in stores.values():
            typer.echo(f"{store.path}: {store.n} maps {store.map_shape}, complete={store.is_complete()}")


_EXPLAIN_FILES = ("stores", "png", "images.csv", "results.json", "per_image.csv", "summary.json", "stability.csv")
"""What `salience explain IMAGES --model` writes in its output folder."""


def _explain_images(images: list[str], options: dict[str, Any], common: dict[str, Any]) -> None:
    """`salience explain IMAGES --model`: the maps of the model built from `options` on the images, in
    OUT/stores/<spec>/<model>, with per_image.csv, summary.json and results.json for `salience view` and, with
    --png, the pictures in OUT/png/<spec>/."""
    from pathlib import Path

    from salience import distributed as dist
    from salience.store import images as img

    out = Path(common["out"])
    with _exit_on(ValueError, OSError):  # bad images, model, weights, method, layer, target or output folder
        policy = img.image_target(options["target"])
        label = img.model_label(options["name"], options["weights"])
        outs = img.store_paths(common["methods"], out, label, common["layer"])
        _check_explain_folder(out)
        ctx = dist.setup(common["device"])
        try:
            model = _image_model(options, ctx.device)
            source = img.image_source(images, options["size"], out, options["classes"])
            dataset = img.open_images(source)
            stores = img.explain_images(
                model,
                dataset,
                source,
                outs,
                target_policy=policy,
                options=common["options"],
                normalize=options["normalize"],
                chunk_size=common["chunk_size"],
                batch_size=common["batch_size"],
                progress=True,
                ctx=ctx,
            )
            if ctx.is_main:
                _write_explain_view(out, stores, dataset, source, label, options | {"target": policy})
                pictures = _write_pictures(out, stores, dataset, options["num_classes"]) if options["png"] else {}
        finally:
            dist.teardown(ctx)
    if ctx.is_main:
        for spec, store in stores.items():
            typer.echo(f"{store.path}: {store.n} maps {store.map_shape}, complete={store.is_complete()}")
            if spec in pictures:
                typer.echo(f"  {len(pictures[spec])} pictures in {out / 'png' / spec}")
        typer.echo(f"open them with: salience view {out}")


def _image_model(options: dict[str, Any], device):
    """The model of `salience explain --model` (a weight download that fails is reported, not raised)."""
    from salience.store import images as img

    output = options["output"]
    if output is not None and output.lstrip("-").isdigit():
        output = int(output)  # an index into a tuple; else a key or an attribute
    with _exit_on(RuntimeError):
        kwargs = img.parse_kwargs(options["kwargs"])
        return img.image_model(
            options["name"], options["num_classes"], options["weights"], kwargs, output, options["normalize"], device
        )


def _check_explain_folder(out) -> None:
    """Refuse an OUT for `salience explain --model` that is a map store or holds files other than those
    explain writes (a results.json, per_image.csv or summary.json of another command included)."""
    import json

    if not out.exists():
        return
    if not out.is_dir() or (out / "zarr.json").exists():
        raise ValueError(f"--out {out}: not a folder for explain's output (a file or a map store); give a new folder")
    other = sorted(p.name for p in out.iterdir() if p.name not in _EXPLAIN_FILES and ".tmp" not in p.name)
    if other:
        raise ValueError(f"--out {out}: holds other files ({', '.join(other[:5])}); give a new or empty folder")
    results = out / "results.json"
    try:
        ours = results.is_file() and "explain_images" in json.loads(results.read_text())
    except ValueError:
        ours = False
    if not ours and any((out / n).exists() for n in ("results.json", "per_image.csv", "summary.json")):
        raise ValueError(f"--out {out}: holds the results of another command; give a new or empty folder")


def _write_explain_view(out, stores: dict, dataset, source: dict[str, Any], label: str, options: dict[str, Any]):
    """Write OUT/per_image.csv and summary.json (`measure_stores`: the maps-kind measures of every map, group
    `all`) and results.json (the images, so that `salience view OUT` shows them under the maps)."""
    import json
    from pathlib import Path

    from salience.measures.run import measure_stores

    for name in ("per_image.csv", "summary.json", "stability.csv"):  # this command's, from an earlier run
        (out / name).unlink(missing_ok=True)
    weights = options["weights"]
    if weights is not None and Path(weights).is_file():
        weights = str(Path(weights).resolve())
    paths = [str(store.path) for store in stores.values()]
    measure_stores({"all": paths}, out, names=dict.fromkeys(paths, label), own=_EXPLAIN_FILES)
    results = {
        "explain_images": {
            k: options[k] for k in ("name", "num_classes", "kwargs", "output", "target", "size", "classes")
        }
        | {"weights": weights, "methods": list(stores), "model": label},
        "study": {"data": {**source, "normalize": options["normalize"]}},
        "data": {"classes": list(dataset.classes), "images": len(dataset)},
        "groups": {"all": [label]},
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))


def _write_pictures(out, stores: dict, dataset, num_classes: int | None) -> dict:
    """`salience explain --png`: an overlay picture per store item, OUT/png/<spec>/<image id>.png; the class
    folders name the classes explained when there are as many as the model has classes."""
    classes = dataset.classes if num_classes == len(dataset.classes) else ()
    from salience.report.overlays import write_overlays

    return write_overlays(stores, dataset, out / "png", classes)


@app.command()
def measure(
    stores: list[str] = typer.Option([], "--stores", help="Map stores, one group 'all' (repeatable)."),
    checkpoints: list[str] = typer.Option(
        [], "--checkpoints", help="Training checkpoints, one group 'all' (repeatable)."
    ),
    group: list[str] = typer.Option(
        [], "--group", help="NAME=PATH,PATH,... of stores or of checkpoints (repeatable); groups are compared."
    ),
    out: str = typer.Option(..., help="Output directory for per_image.csv, stability.csv, summary.json."),
    data: str = typer.Option("test", help="Checkpoints only: split of their data config to measure on."),
    method: list[str] = typer.Option(
        [],
        "--method",
        help="Checkpoints only: attribution method, NAME or NAME@LAYER (`salience methods` lists them); "
        "repeat to compare methods.",
    ),
    measure_: list[str] = typer.Option(
        [],
        "--measure",
        help="A measure to run (names of salience.measures.MEASURES; repeatable); default: every measure the "
        "data support.",
    ),
    layer: str = typer.Option(None, help="Checkpoints only: layer name or named depth (input, mid1.., final)."),
    target: str = typer.Option(
        "true",
        help="Checkpoints only: class to explain: true (every present class of each image), predicted or class:<k>.",
    ),
    n_probe: int = typer.Option(128, min=0, help="Checkpoints only: images the model probes run on (0: none)."),
    samples: int = typer.Option(
        None,
        min=2,
        help="Checkpoints only: noisy samples of the robustness measures and runs of faithfulness correlation "
        "(default: Quantus' 200 and 100).",
    ),
    out_of_set: str = typer.Option(None, help="Checkpoints only: split whose images are the out-of-set samples."),
    batch_size: int = typer.Option(64, min=1),
    device: str = typer.Option("cpu", help="cpu, cuda or auto; under torchrun each process uses its local GPU."),
    set_: list[str] = typer.Option([], "--set", help="key=value override of the checkpoints' config (repeatable)."),
    seed: int = typer.Option(0, help="Seed of the bootstrap CIs, permutation tests and noise."),
) -> None:
    """Measure map stores (entropy, stability, comparisons) or checkpoints (every measure: they are explained
    into OUT/stores first, resumably, over one read of the images, then also localisation and the model
    probes). Under torchrun the processes share the explaining and the probes; rank 0 writes OUT."""
    groups, kinds = _measure_groups(stores, checkpoints, group)
    _check_measure_options(kinds, method, layer, out_of_set, measure_)
    checkpoint_options = dict(
        method=method[0] if len(method) == 1 else list(method),
        samples=samples,
        split=data,
        layer=layer,
        target_policy=target,
        overrides=set_,
        n_probe=n_probe,
        out_of_set=out_of_set,
        batch_size=batch_size,
    )
    counts = _run_measure(groups, out, kinds == {True}, list(measure_) or None, seed, device, checkpoint_options)
    if counts is not None:
        typer.echo(f"{out}: {counts[0]} models measured, {counts[1]} comparisons")


def _measure_groups(
    stores: list[str], checkpoints: list[str], group: list[str]
) -> tuple[dict[str, list[str]], set[bool]]:
    """The groups of `salience measure` (name -> paths: `--group`s, and `--stores` or `--checkpoints` as group
    'all') and whether each path is a checkpoint (a file; else a map store). Refuses a malformed `--group`, no
    paths, a missing path (exit code 2), and a mix of stores and checkpoints."""
    from pathlib import Path

    groups: dict[str, list[str]] = {}
    for spec in group:
        name, sep, listed = spec.partition("=")
        if not sep or not name or not listed:
            raise typer.BadParameter(f"--group {spec!r}: expected NAME=PATH,PATH,...")
        groups[name] = [p for p in listed.split(",") if p]
    if stores and checkpoints:
        raise typer.BadParameter("give --stores or --checkpoints, not both")
    if stores or checkpoints:
        groups.setdefault("all", []).extend(stores or checkpoints)
    if not groups:
        raise typer.BadParameter("give --stores, --checkpoints or --group")
    paths = [Path(p) for ps in groups.values() for p in ps]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        typer.echo(f"error: {missing[0]}: not found (expected a map store folder or a checkpoint file)", err=True)
        raise typer.Exit(2)
    kinds = {p.is_file() for p in paths}
    if len(kinds) > 1:
        raise typer.BadParameter("every path must be a map store (folder) or every one a checkpoint (file), not a mix")
    if stores and kinds == {True} or checkpoints and kinds == {False}:
        raise typer.BadParameter("--stores takes map store folders and --checkpoints checkpoint files")
    return groups, kinds


def _check_measure_options(
    kinds: set[bool], method: list[str], layer: str | None, out_of_set: str | None, measures: list[str]
) -> None:
    """Refuse `salience measure` options that do not fit the paths (`kinds`: whether each is a checkpoint)
    and unknown measure names (exit code 2, listing the registry)."""
    if kinds == {False} and (method or layer or out_of_set):
        raise typer.BadParameter("--method, --layer and --out-of-set apply to checkpoints; a store carries its method")
    if kinds == {True} and not method:
        raise typer.BadParameter("checkpoints need --method")
    if len(method) > 1 and layer:
        raise typer.BadParameter("--layer applies to one --method; give each method as NAME@LAYER")
    if measures:
        from salience.measures import get_measure

        with _exit_on(ValueError):
            for name in measures:
                get_measure(name)  # an unknown name fails here, listing the registry


def _run_measure(
    groups: dict[str, list[str]],
    out: str,
    from_checkpoints: bool,
    measures: list[str] | None,
    seed: int,
    device: str,
    checkpoint_options: dict,
) -> tuple[int, int] | None:
    """Measure `groups` into `out`: checkpoints with `measure_checkpoints` (`checkpoint_options`: its other
    keywords), map stores with `measure_stores`. Returns `(models measured, comparisons)` on rank 0, None on
    the other processes."""
    from salience import distributed as dist
    from salience.measures.run import measure_stores
    from salience.study import measure_checkpoints

    counts = None
    with _exit_on(ValueError, OSError):  # missing, damaged or misaligned stores, bad checkpoints, unusable out
        ctx = dist.setup(device)
        try:
            if from_checkpoints:
                results = measure_checkpoints(
                    groups,
                    out,
                    measures=measures,
                    seed=seed,
                    device=device,
                    progress=True,
                    ctx=ctx,
                    **checkpoint_options,
                )
                if ctx.is_main:
                    assert results is not None  # results: None off rank 0
                    counts = len(results["models"]), len(results["comparisons"].get("entropy_histogram", {}))
            elif ctx.is_main:  # maps are read, not computed: one process does it
                summary = measure_stores(groups, out, seed=seed, select=measures)
                assert summary is not None  # measure_stores returns it when not distributed
                counts = len(summary["stores"]), len(summary["comparisons"])
        finally:
            dist.teardown(ctx)
    return counts


@app.command()
def meta(
    study_dir: str = typer.Argument(..., help="A folder written by `salience study` (or `salience demo`)."),
    images: int = typer.Option(16, min=2, help="Images of the study's data the tests run on (the first ones)."),
    iterations: int = typer.Option(5, min=1, help="Iterations (MC's mean ± sd is over them)."),
    perturbations: int = typer.Option(10, min=1, help="Perturbations per iteration and test (K)."),
    reexplain: bool = typer.Option(
        False, help="Input tests explain the noisy images (the paper) instead of reusing the clean maps (metaquantus)."
    ),
) -> None:
    """MetaQuantus' meta-evaluation of a study's measures: noise resilience and adversary reactivity (IAC, IEC,
    MC) under input and model perturbations, for its models and methods; writes meta.json, adds the table and
    findings to results.json and report.html (docs/meta.md)."""
    from salience.io.config import ConfigError
    from salience.study.findings import unreliable
    from salience.study.meta import meta_study

    with _exit_on(ConfigError, ValueError, OSError):
        result = meta_study(
            study_dir, images=images, iterations=iterations, perturbations=perturbations, reexplain=reexplain
        )
    for name, low in unreliable(result).items():
        typer.echo(f"- not reliable: {name} (MC {', '.join(f'{k} {v:.2f}' for k, v in low.items())})")
    typer.echo(f"{study_dir}: meta.json, {len(result['measures'])} measures, report.html updated")


@app.command()
def train(
    config: str = typer.Argument(..., help="Training config (YAML); see configs/ and docs/training.md."),
    set_: list[str] = typer.Option([], "--set", help="key=value override, e.g. guidance.lambda=0.5 (repeatable)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in the config's `out` from last.pt."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Train a classifier, plain or guided by explanations. Under torchrun: one process per device."""
    from salience.training import ConfigError, TrainingError, load_config
    from salience.training import train as run_training

    with _exit_on(ConfigError, TrainingError, ValueError, OSError):  # bad config, data (DataError) or out folder
        run = run_training(load_config(config, set_), resume=resume, progress=progress)
    typer.echo(f"{run}: log.jsonl, checkpoints/last.pt, checkpoints/pareto.json")


@app.command()
def evaluate(
    checkpoint: str = typer.Argument(..., help="Training checkpoint (.pt)."),
    data: str = typer.Option("test", "--data", help="Split of the checkpoint's data config (test, test_shift, ...)."),
    set_: list[str] = typer.Option([], "--set", help="key=value override of the saved config, e.g. data.root=/data."),
    device: str = typer.Option("auto"),
    out: str = typer.Option(None, help="Also write the metrics to this JSON file."),
) -> None:
    """Print task metrics, EPG, IoU and worst-group accuracy of a checkpoint on a split (JSON)."""
    import json
    from pathlib import Path

    from salience.training import ConfigError, evaluate_checkpoint

    with _exit_on(ConfigError, FileNotFoundError, ValueError):
        result = evaluate_checkpoint(checkpoint, data, set_, device=device)
    text = json.dumps(result, indent=2)
    if out:
        from salience.distributed import atomic_write_text

        atomic_write_text(Path(out), text + "\n")
    typer.echo(text)


@app.command()
def study(
    study_file: str = typer.Argument(..., help="Study file (YAML); see docs/study.md."),
    out: str = typer.Option(
        None, help="Results folder (default: the file's `out`); a rerun recomputes nothing finished."
    ),
    set_: list[str] = typer.Option([], "--set", help="key=value override, e.g. explain.layer=mid3 (repeatable)."),
) -> None:
    """Explain and measure groups of models (weights trained elsewhere, or trained here) on one set of
    images: per-image measures, stability, group comparisons, report.html. Under torchrun the
    processes share the explaining and the probes."""
    _run_study(study_file, out, set_)


@app.command()
def demo(
    out: str = typer.Option("demo-out", help="Results folder (reused: finished training runs are not redone)."),
    quick: bool = typer.Option(False, help="1 seed, tiny sizes: a check that everything runs (tests use it)."),
    seeds: int = typer.Option(None, help="Seeds per model group (default 3; 1 with --quick)."),
) -> None:
    """The study shipped with salience, on the built-in benchmark: train CE, energy-guided and CYBORG
    models, measure their salience with the five measures and localisation metrics, write report.html."""
    from salience.study import demo_study

    overrides = [f"groups.{g}.seeds={list(range(seeds))}" for g in ("CE", "Energy", "CYBORG")] if seeds else []
    _run_study(str(demo_study(quick)), out, overrides)


def _run_study(study_file: str, out: str | None, overrides: list[str]) -> None:
    from pathlib import Path

    from salience import distributed as dist
    from salience.io.config import ConfigError
    from salience.study import load_study, run

    with _exit_on(ConfigError, ValueError, OSError):  # bad study file, weights, data or out folder
        cfg = load_study(study_file, overrides)
        ctx = dist.setup(cfg.device)
        try:
            results = run(cfg, out, ctx=ctx)
        finally:
            dist.teardown(ctx)
    if results is not None:
        for line in results["findings"]:
            typer.echo(f"- {line}")
        typer.echo(f"report: {Path(out or cfg.out) / 'report.html'} ({results['seconds']:.0f} s)")


@app.command()
def view(
    study_dir: str = typer.Argument(..., help="A folder written by `salience study`, `demo` or `measure`."),
    port: int = typer.Option(8765, min=0, max=65535, help="Port (0: any free one)."),
    host: str = typer.Option("127.0.0.1", help="Address to bind; the default answers only this machine."),
) -> None:
    """Explore a study in the browser: every image, model and map, ranked views, read-only (docs/view.md)."""
    from salience.view import make_server

    with _exit_on(ValueError, OSError):  # not a study folder, unreadable files, port taken
        server = make_server(study_dir, host, port)
    url_host = f"[{host}]" if ":" in host else host
    typer.echo(f"salience view: http://{url_host}:{server.server_address[1]}/ (report: /report.html); Ctrl-C stops")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@app.command()
def report(
    results_dir: str = typer.Argument(..., help="A folder written by `salience study` or `salience demo`."),
) -> None:
    """Re-render report.html from a results folder."""
    from salience.report import render

    try:
        typer.echo(render(results_dir))
    except FileNotFoundError as err:
        raise typer.BadParameter(str(err)) from None
