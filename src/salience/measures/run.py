"""`salience measure` over map stores or checkpoints: per-image CSV, per-model JSON summaries, stability within
groups and comparisons between groups. Stores are streamed block by block, so memory does not grow with the
data set (only one float per image and measure is kept, for the summaries). Checkpoints are first explained
into stores; their models and data then add localisation and the model probes (`Source`)."""

from __future__ import annotations

import collections
import csv
import dataclasses
import hashlib
import itertools
import json
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn
from torch.utils.data import Dataset

from salience.attribution import Explainer
from salience.data.core import collate, object_masks
from salience.distributed import Context, atomic_write_text
from salience.measures.probes import seed_stability
from salience.measures.registry import MEASURES, check_measure_options, get_measure, select
from salience.measures.suite import map_values, probe_suite
from salience.measures.summary import compare_groups, summarise
from salience.store import MapStore, check_aligned
from salience.store.explain import dataset_ids


@dataclass
class Source:
    """What made a store, for the measures the maps alone cannot give.

    `dataset`: the explained images (items of the batch contract; a store item's image is found by its id);
    its masks give localisation. `model`: the explained model; the probe-kind measures run it on the store's
    first `n_probe` items (0: no probes), with `out_of_set [N, C, H, W]` images for measure (b) when given."""

    model: nn.Module
    dataset: Dataset
    n_probe: int = 128
    out_of_set: torch.Tensor | None = None
    deletion_steps: int = 16
    samples: int | None = None
    """Noisy samples / runs of the robustness and faithfulness-correlation measures (None: Quantus' 200 / 100)."""
    select: tuple[str, ...] | None = None
    """The measures to run (names of `MEASURES`); None: every measure the data support."""
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Measure options, `{measure: {option: value}}` (see `salience.measures.registry.measure_options`)."""
    _index: dict[str, int] | None = field(default=None, init=False, repr=False, compare=False)

    def positions(self, store: MapStore) -> list[int]:
        """The data set index of each of the store's items (found by image id; ids are unique per image)."""
        if self._index is None:
            ids = dataset_ids(self.dataset)
            index = {image: i for i, image in enumerate(ids)}
            if len(index) != len(ids):
                dup = next(image for image, n in collections.Counter(ids).items() if n > 1)
                raise ValueError(f"the source data set of {store.path} holds image id {dup!r} more than once")
            self._index = index
        missing = [image for image in dict.fromkeys(store.meta.image_ids) if image not in self._index]
        if missing:
            raise ValueError(
                f"{store.path}: its source data set lacks the store's images {missing[:5]} "
                f"({len(missing)} in all); explain it again on this data"
            )
        return [self._index[image] for image in store.meta.image_ids]


def _images(src: Source, positions: list[int]) -> tuple[dict, torch.Tensor]:
    """The batch of the distinct images at data set `positions` (each read once), and each position's row in it."""
    unique = sorted(set(positions))
    row = {d: j for j, d in enumerate(unique)}
    return collate([src.dataset[d] for d in unique]), torch.tensor([row[d] for d in positions], dtype=torch.long)


def _stage(path: Path, staged: list[tuple[Path, Path]]) -> IO[str]:
    """Open a temporary file next to `path`; `_write_staged` renames all of them into place at the end."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    staged.append((tmp, path))
    return open(tmp, "w", newline="")


def _other_run(out: Path, groups: Mapping[str, Sequence[str | Path]], own: tuple[str, ...] = ()) -> str | None:
    """Why `out` holds results of other stores (None when it is empty or holds these stores' results);
    `own`: other names the caller writes there."""
    old = out / "summary.json"
    if not old.exists():
        found = (
            sorted(p.name for p in out.iterdir() if ".tmp" not in p.name and p.name not in ("stores",) + own)
            if out.is_dir()
            else []
        )
        return f"{out} holds other files {found[:5]} and no summary.json of `salience measure`" if found else None
    try:
        stores = json.loads(old.read_text())["stores"]
        before = sorted((v["group"], k) for k, v in stores.items())
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        return f"{old} exists and is not a summary of `salience measure` ({type(err).__name__}: {err})"
    now = sorted((g, str(Path(p))) for g, paths in groups.items() for p in paths)
    return None if before == now else f"{old} holds results of other stores or groups"


def measure_stores(
    groups: Mapping[str, Sequence[str | Path]],
    out: str | Path,
    seed: int = 0,
    block: int = 1024,
    n_boot: int = 2000,
    n_perm: int = 10000,
    sources: dict[str, Source] | None = None,
    ctx: Context | None = None,
    names: dict[str, str] | None = None,
    own: tuple[str, ...] = (),
    select: list[str] | None = None,
    progress: bool = False,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict | None:
    """Measure every store of every group (name -> store paths) and write into `out`:

    - `per_image.csv`: one row per store item (an image, or an (image, class) pair for target "true"): group,
      model (`names[store path]`, default the store's path), method (`NAME` or `NAME@LAYER`), image (its id),
      class (the class its map explains) and one column per selected measure of `MEASURES` (`select`: names;
      None: every measure the data support), in registry order: the maps-kind measures, those needing masks
      when `sources` (store path -> `Source`) have boxes (NaN for an empty mask), and the probe-kind measures
      when sources probe (blank past a store's `n_probe` items)
    - `stability.csv`: group, method, image, class (blank where the group's maps explain different classes) and
      the mean pairwise similarity of each selected group-kind measure, for the stores of one group and one
      method when there are two or more (aligned: same split, items and order; else refused)
    - `summary.json`: per store, summarise() of each measure; per group (and method, `"group · method"`, when
      the stores hold several), stability summaries; for each pair of groups (and each method), compare_groups()
      of the per-store means (effect size, permutation p-value); per store with a source, the probe curves.
    Returns the summary dict. Nothing in `out` changes unless every file is written: they are staged under
    temporary names and renamed at the end. An `out` holding results of other stores (or files other than
    `own` names) is refused.

    `ctx` (`salience.distributed.Context`, under torchrun): the models' probes are shared out over the
    processes, one model per process at a time, and gathered on rank 0, which writes the files and returns
    the summary (the other processes return None). The results are those of one process. `progress`: a bar
    over the probes, naming the model and measure it is on. `options`: each measure's options under its name
    (`{"top_k_intersection": {"k": 1000}}`), for the maps and the probes alike.
    """
    out = Path(out)
    reason = _other_run(out, groups, own)
    if reason:
        raise FileExistsError(f"{reason}; choose another out or delete it")
    opened = {g: [MapStore(p) for p in paths] for g, paths in groups.items()}
    select_ = None if select is None else [get_measure(n).name for n in select]
    options_ = check_measure_options(options)
    sources = {
        k: dataclasses.replace(v, select=None if select_ is None else tuple(select_), options=options_)
        for k, v in (sources or {}).items()
    }
    probes = _probes([s for stores in opened.values() for s in stores], sources, seed, ctx, names, progress)
    if ctx is not None and not ctx.is_main:
        return None
    run = _Run(opened, sources, probes, names or {}, select_, seed, block, n_boot, n_perm, options_)
    return _write_staged(out, lambda staged: _measure(run, out, staged))


def _write_staged(out: Path, write: Callable[[list[tuple[Path, Path]]], dict]) -> dict:
    """Create the folder `out` and return `write(staged)`, which opens its files with `_stage(path, staged)`;
    then rename every staged file into place, or, when `write` raises, delete them all."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(f"{out}: cannot create the output folder ({err.strerror}: {err.filename})") from None
    staged: list[tuple[Path, Path]] = []
    try:
        summary = write(staged)
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, path in staged:
        os.replace(tmp, path)
    return summary


_Block = tuple[int, torch.Tensor, torch.Tensor, torch.Tensor | None]  # start, maps, targets, masks


def _map_values(
    blocks: Iterable[_Block], size: tuple[int, int], names: list[str], options: dict, workers: int = 2
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]]:
    """`(start, maps, targets, {name: [n]})` per block of `(start, maps, targets, masks or None)`, in order
    (see `map_values`); up to `workers` blocks are measured at once in threads (torch releases the GIL), each
    with one intra-op thread: per-block tensors are small, and OpenMP's waits made two intra-op threads 4x
    slower than one on a busy 2-core machine."""

    def work(item: _Block) -> tuple[int, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        torch.set_num_threads(1)
        start, maps, targets, masks = item
        return start, maps, targets, map_values(maps, masks, size, names, options)

    threads = torch.get_num_threads()
    try:
        with ThreadPoolExecutor(workers) as pool:
            pending: collections.deque = collections.deque()
            for item in blocks:  # read in this thread; at most `workers` + 1 blocks in memory
                pending.append(pool.submit(work, item))
                if len(pending) >= workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
    finally:
        torch.set_num_threads(threads)  # the workers' setting would otherwise become the default of new threads


def _blocks(store: MapStore, block: int, src: Source | None) -> Iterator[_Block]:
    """`(start, maps, targets, masks or None)` over the store. Masks come from the source's data set: for each
    item, the boxes of the class its map explains in the item's image (empty when the image has none of that
    class), or the image's mask when it has no boxes at all (e.g. a segmentation). The images are read again
    for them, each once per block."""
    positions = src.positions(store) if src is not None else None
    for start, maps, targets in store.iter_chunks(block):
        masks = None
        if src is not None:
            assert positions is not None
            batch, rows = _images(src, positions[start : start + len(maps)])
            masks = object_masks(batch, rows, targets)
        yield start, maps, targets, masks


def _probe(
    store: MapStore, src: Source, seed: int, shared: dict | None = None, on_measure: Callable[[str], None] | None = None
) -> dict:
    """`probe_suite` of the source's model on the store's first `n_probe` items: their images, maps, classes and
    (when the data set has boxes or segmentations) masks; `on_measure(name)` as each measure starts."""
    n = min(src.n_probe, store.n)
    batch, rows = _images(src, src.positions(store)[:n])
    x = batch["image"][rows]
    maps, targets = store.read(0, n)
    masks = object_masks(batch, rows, targets) if _has_masks(src.dataset) else None
    device = next(src.model.parameters()).device
    explain = Explainer(store.meta.method, src.model, store.meta.layer, dict(store.meta.options))
    oos = None if src.out_of_set is None else src.out_of_set.to(device)
    return probe_suite(
        src.model,
        explain,
        x.to(device),
        targets.to(device),
        maps.to(device),
        out_of_set=oos,
        seed=seed,
        deletion_steps=src.deletion_steps,
        names=src.select,
        masks=None if masks is None else masks.to(device),
        method=store.meta.method,
        layer=store.meta.layer,
        samples=src.samples,
        shared=shared,
        on_measure=on_measure,
        options=store.meta.options,
        measure_options=src.options,
    )


def _probe_key(store: MapStore, src: Source, seed: int) -> dict:
    """What a store's probes depend on (kept with them in `<store>/probes.json`)."""
    oos = None if src.out_of_set is None else hashlib.sha256(src.out_of_set.cpu().numpy().tobytes()).hexdigest()[:16]
    return {
        "model_hash": store.meta.model_hash,
        "n_probe": src.n_probe,
        "seed": seed,
        "deletion_steps": src.deletion_steps,
        "out_of_set": oos,
        "measures": select(src.select, "probe", masks=_has_masks(src.dataset)),
        "samples": src.samples,
        "options": src.options,
    }


def _load_probe(store: MapStore, key: dict) -> dict | None:
    """The probes kept in `<store>/probes.json` when they were made with `key`, else None."""
    cache = store.path / "probes.json"
    if cache.exists():
        try:
            saved = json.loads(cache.read_text())
        except ValueError:
            saved = {}  # a damaged cache is recomputed
        per_image_oos = key["out_of_set"] is None or "scores_out" in saved.get("curves", {}).get("out_of_set", {})
        if saved.get("key") == key and per_image_oos:  # caches older than per-image out-of-set scores: redone
            return {
                "values": {k: torch.tensor(v, dtype=torch.float64) for k, v in saved["values"].items()},
                "curves": saved["curves"],
            }
    return None


def _shared_mprt(stores: list[MapStore], sources: dict[str, Source], seed: int) -> dict[str, dict]:
    """`{store path: {"mprt": result}}` for the stores that share a model and probe images (one store per
    method of a study's model): one randomisation cascade explains with all their methods (`mprt_many`)
    instead of one cascade per store. Stores alone, or whose probed classes differ, are left out."""
    from salience.measures.sanity import mprt_many

    groups: dict[tuple, list[MapStore]] = collections.defaultdict(list)
    for s in stores:
        src = sources[str(s.path)]
        if "mprt" in select(src.select, "probe", masks=_has_masks(src.dataset)):
            groups[(id(src.model), tuple(s.meta.image_ids[: min(src.n_probe, s.n)]))].append(s)
    out: dict[str, dict] = {}
    for members in groups.values():
        specs = [(s.meta.method, s.meta.layer) for s in members]
        if len(members) < 2 or len(set(specs)) < len(specs):
            continue
        src = sources[str(members[0].path)]
        n = min(src.n_probe, members[0].n)
        read = [s.read(0, n) for s in members]
        if not all(torch.equal(targets, read[0][1]) for _, targets in read):
            continue
        device = next(src.model.parameters()).device
        batch, rows = _images(src, src.positions(members[0])[:n])
        x, target = batch["image"][rows].to(device), read[0][1].to(device)
        maps = [m.to(device) for m, _ in read]
        options = [s.meta.options for s in members]
        results = mprt_many(src.model, x, target, specs, seed=seed, maps=maps, options=options)
        out |= {str(s.path): {"mprt": r} for s, r in zip(members, results, strict=True)}
    return out


def _probes(
    stores: list[MapStore],
    sources: dict[str, Source],
    seed: int,
    ctx: Context | None = None,
    names: dict[str, str] | None = None,
    progress: bool = False,
) -> dict[str, dict]:
    """`{store path: _probe(...)}` for the stores with a source and `n_probe` > 0, after checking that each
    source holds the store's images (`Source.positions`). Under torchrun each process probes every
    `world_size`-th store, and every process gets all the results. `progress`: a bar naming the model (`names`:
    store path -> name) and measure it is on."""
    from salience import distributed as dist

    todo = []
    for s in stores:
        src = sources.get(str(s.path))
        if src is None:
            continue
        src.positions(s)
        if src.n_probe > 0:
            todo.append(s)
    rank, world = (ctx.rank, ctx.world_size) if ctx is not None else (0, 1)
    mine: dict[str, dict] = {}
    pending = []
    for s in todo[rank::world]:  # probes kept from a run with the same inputs are not made again
        src = sources[str(s.path)]
        key = _probe_key(s, src, seed)
        kept = _load_probe(s, key)
        if kept is None:
            pending.append((s, key))
        else:
            mine[str(s.path)] = kept
    with _bar(progress) as bar:
        task = bar.add_task("mprt (one cascade for the methods)", total=sum(len(k["measures"]) for _, k in pending))
        shared = _shared_mprt([s for s, _ in pending], sources, seed)
        for s, key in pending:
            model = (names or {}).get(str(s.path), s.path.name)
            step = lambda m, model=model: bar.update(task, description=f"{model} · {m}", advance=1)
            result = _probe(s, sources[str(s.path)], seed, shared.get(str(s.path)), step)
            values = {k: v.double().tolist() for k, v in result["values"].items()}
            record = {"key": key, "values": values, "curves": result["curves"]}
            atomic_write_text(s.path / "probes.json", json.dumps(record, allow_nan=True))
            mine[str(s.path)] = result
    if world == 1:
        return mine
    merged: dict[str, dict] = {}
    assert ctx is not None  # world > 1
    for part in dist.gather(mine, ctx):
        merged |= part
    return merged


def _bar(enabled: bool) -> Progress:
    """The probes' progress bar (on stderr; nothing shown when not `enabled`): the model and measure it is on."""
    return Progress(
        TextColumn("probes {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )


def _finite(values: list[float]) -> int:
    return sum(math.isfinite(v) for v in values)


def _has_masks(dataset: Dataset) -> bool:
    """Whether some image has boxes or a segmentation (else localisation is undefined and left out)."""
    records = getattr(dataset, "records", None)
    if records is None:
        return True
    return any(len(r.boxes) or r.segmentation is not None for r in records)


def _spec(meta: Any) -> str:
    """The method spec of a store: `NAME@LAYER` for a method that takes a layer, else `NAME`."""
    from salience.attribution.registry import method_spec

    return method_spec(meta.method, meta.layer)


def _columns(select_: list[str] | None, located: bool, probed: bool) -> list[str]:
    """The per-image measure columns, in registry order: maps-kind (those needing masks when `located`), then
    probe-kind when some store was probed."""
    return [
        n
        for n in select(select_, masks=located)
        if MEASURES[n].kind == "maps" or (MEASURES[n].kind == "probe" and probed)
    ]


@dataclass
class _Run:
    """The settled inputs of one `measure_stores` call: the opened stores by group, the sources and the probe
    results by store path, the model names by store path, the selected measures (None: every measure the data
    support) and the statistics' settings; and what follows from them (`located` to `several`)."""

    groups: dict[str, list[MapStore]]
    sources: dict[str, Source]
    probes: dict[str, dict]
    names: dict[str, str]
    select: list[str] | None
    seed: int
    block: int
    n_boot: int
    n_perm: int
    options: dict[str, dict[str, Any]]
    located: bool = field(init=False)
    """Some source has boxes or segmentations: the measures needing masks are run."""
    columns: list[str] = field(init=False)
    """The per-image measure columns (`_columns`)."""
    specs: dict[str, str] = field(init=False)
    """Store path -> its method spec."""
    several: bool = field(init=False)
    """The stores hold several methods: stability and comparisons are per method."""

    def __post_init__(self) -> None:
        self.located = any(_has_masks(src.dataset) for src in self.sources.values())
        self.columns = _columns(self.select, self.located, any(self.probes.values()))
        self.specs = {str(s.path): _spec(s.meta) for stores in self.groups.values() for s in stores}
        self.several = len(set(self.specs.values())) > 1


def _measure(run: _Run, out: Path, staged: list) -> dict:
    """Stage `per_image.csv`, `stability.csv` (when a group has two or more stores of a method) and
    `summary.json` in `out` (see `measure_stores`); return the summary."""
    summary: dict = {"seed": run.seed, "stores": {}, "stability": {}, "comparisons": {}}
    with _stage(out / "per_image.csv", staged) as f:
        per_store_means = _write_per_image(run, csv.writer(f), summary["stores"])
    summary["stability"] = _write_stability(run, out, staged)
    summary["comparisons"] = _comparisons(run, per_store_means)
    with _stage(out / "summary.json", staged) as f:
        json.dump(summary, f, indent=2)
    return summary


def _write_per_image(run: _Run, w: Any, summaries: dict) -> dict[tuple[str, str], dict[str, list[float]]]:
    """Write per_image.csv (header, then every store's rows) with the csv writer `w` and put each store's summary
    in `summaries` (store path -> summary); return `{(group, spec): {measure: [mean of each store]}}`."""
    per_store_means: dict[tuple[str, str], dict[str, list[float]]] = collections.defaultdict(
        lambda: {m: [] for m in run.columns}
    )
    w.writerow(["group", "model", "method", "image", "class", *run.columns])
    for g, stores in run.groups.items():
        for s in stores:
            path, spec = str(s.path), run.specs[str(s.path)]
            probe = run.probes.get(path)
            values = _write_store_rows(run, w, g, s, probe)
            stats = {m: summarise(v, seed=run.seed, n_boot=run.n_boot) for m, v in values.items() if v}
            summaries[path] = {
                "group": g,
                "model": run.names.get(path, path),
                "model_hash": s.meta.model_hash,
                "method": s.meta.method,
                "layer": s.meta.layer,
                "spec": spec,
                "split": s.meta.split,
                "n": s.n,
                **stats,
            }
            if probe:
                summaries[path]["curves"] = probe["curves"]
            for m in stats:
                per_store_means[(g, spec)][m].append(stats[m]["mean"])
    return per_store_means


def _write_store_rows(run: _Run, w: Any, group: str, s: MapStore, probe: dict | None) -> dict[str, list[float]]:
    """Write the per_image.csv rows of store `s` of `group`, block by block: the maps-kind measures of every
    item and the probe values (`probe`, or None) of the first items. Returns each column's values."""
    path = str(s.path)
    probed = {k: v for k, v in (probe["values"] if probe else {}).items() if k in run.columns}
    values: dict[str, list[float]] = {m: [] for m in run.columns}
    maps_names = [n for n in run.columns if MEASURES[n].kind == "maps"]
    blocks = _blocks(s, run.block, run.sources.get(path) if run.located else None)
    labels = [group, run.names.get(path, path), run.specs[path]]
    size = (s.meta.resolution[0], s.meta.resolution[1])
    for start, maps, targets, measured in _map_values(blocks, size, maps_names, run.options):
        n = len(maps)
        for m in run.columns:
            if m in measured:
                values[m].extend(measured[m].tolist())
        cells = {m: [f"{v:.6g}" for v in measured[m].tolist()] for m in measured}
        for m, v in probed.items():
            part = v[start : start + n].tolist()
            cells[m] = [f"{x:.6g}" for x in part] + [""] * (n - len(part))
        w.writerows(
            [*labels, s.meta.image_ids[start + j], t, *(cells[m][j] if m in cells else "" for m in run.columns)]
            for j, t in enumerate(targets.tolist())
        )
    for m, v in probed.items():
        values[m] = v.tolist()
    return values


def _write_stability(run: _Run, out: Path, staged: list) -> dict:
    """Stage `stability.csv` when some group has two or more stores of one method and a group-kind measure is
    selected; return the summaries by group (`"group · spec"` when the stores hold several methods)."""
    by_method = {
        (g, spec): [s for s in stores if run.specs[str(s.path)] == spec]
        for g, stores in run.groups.items()
        for spec in dict.fromkeys(run.specs[str(s.path)] for s in stores)
    }
    sims = tuple(n.removeprefix("stability_") for n in select(run.select, "group"))
    stable = {key: stores for key, stores in by_method.items() if len(stores) >= 2}
    summaries: dict[str, dict] = {}
    if stable and sims:
        with _stage(out / "stability.csv", staged) as f:
            w = csv.writer(f)
            w.writerow(["group", "method", "image", "class", *sims])
            for (g, spec), stores in stable.items():
                key = f"{g} · {spec}" if run.several else g
                summaries[key] = _stability(stores, w, g, spec, sims, run.block, run.seed, run.n_boot)
    return summaries


def _comparisons(run: _Run, per_store_means: dict[tuple[str, str], dict[str, list[float]]]) -> dict:
    """`compare_groups` of the per-store means of each pair of groups, per method (`"a vs b · spec"` when the
    stores hold several methods), for the measures with two or more finite means in both groups."""
    comparisons = {}
    for spec in dict.fromkeys(run.specs.values()):
        for a, b in itertools.combinations(run.groups, 2):
            ma, mb = per_store_means.get((a, spec)), per_store_means.get((b, spec))
            if ma is None or mb is None:
                continue
            comparisons[f"{a} vs {b}" + (f" · {spec}" if run.several else "")] = {
                m: compare_groups(ma[m], mb[m], seed=run.seed, n_perm=run.n_perm)
                for m in run.columns
                if _finite(ma[m]) >= 2 and _finite(mb[m]) >= 2
            }
    return comparisons


def _stability(
    stores: list[MapStore], w: Any, g: str, spec: str, sims: tuple, block: int, seed: int, n_boot: int
) -> dict:
    """Write the stability rows of one group's stores of one method; return their summaries (and the mean SSIM per
    pair of stores, `ssim_matrix`, when SSIM is measured)."""
    check_aligned(stores)
    values: dict[str, list[float]] = {k: [] for k in sims}
    pair_sums = None
    for start in range(0, stores[0].n, block):
        stop = min(start + block, stores[0].n)
        maps, targets = zip(*(s.read(start, stop) for s in stores), strict=True)
        st = seed_stability(torch.stack(maps), sims)
        mean = st["mean"]
        if "ssim" in sims:
            sums = st["similarity"]["ssim"].double().sum(0)  # per pair of stores
            pair_sums = sums if pair_sums is None else pair_sums + sums
        for k in sims:
            values[k].extend(mean[k].tolist())
        same = (torch.stack(targets) == targets[0]).all(0)  # blank where the models explain other classes
        w.writerows(
            [g, spec, stores[0].meta.image_ids[i], t if agree else "", *(f"{v:.6g}" for v in vs)]
            for i, t, agree, *vs in zip(
                range(start, stop), targets[0].tolist(), same.tolist(), *(mean[k].tolist() for k in sims), strict=True
            )
        )
    out: dict[str, Any] = {k: summarise(v, seed=seed, n_boot=n_boot) for k, v in values.items()}
    if pair_sums is not None:
        matrix = torch.eye(len(stores), dtype=torch.float64)
        for (i, j), v in zip(st["pairs"], (pair_sums / stores[0].n).tolist(), strict=True):
            matrix[i, j] = matrix[j, i] = v
        out["ssim_matrix"] = matrix.tolist()  # mean over items, per pair of stores
    return out
