"""Fill a map store from a model and a data set (the `salience explain` command)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from salience.attribution import attribute_many, parse_method
from salience.data.core import collate
from salience.store.zarr_store import MapStore, StoreMeta, fill, model_hash


def targets_for(policy: str, logits: torch.Tensor) -> torch.Tensor:
    """Long `[B]` classes to explain for the `predicted` or `class:<k>` policy (`true`: see `true_pairs`)."""
    if policy == "predicted":
        return logits.argmax(1)
    if policy.startswith("class:"):
        k = int(policy[6:])
        if not 0 <= k < logits.shape[1]:
            raise ValueError(f"target_policy {policy!r}: the model has {logits.shape[1]} classes")
        return torch.full((len(logits),), k, dtype=torch.long, device=logits.device)
    raise ValueError(f"target_policy must be 'true', 'predicted' or 'class:<k>', got {policy!r}")


def dataset_ids(dataset) -> list[str]:
    """Image ids of a data set of the batch contract, in order (from its records when it has them)."""
    return (
        [r.id for r in dataset.records]
        if hasattr(dataset, "records")
        else [dataset[i]["id"] for i in range(len(dataset))]
    )


def true_pairs(dataset) -> tuple[list[int], list[int]]:
    """`(image indices, classes)` of every (image, class) pair whose class the image has: image order, then class
    order, each class once per image (from the records' labels when the data set has them). A single-label data
    set gives one pair per image; an image without a class gives none."""
    if hasattr(dataset, "records"):
        labels = [sorted(set(r.labels)) for r in dataset.records]
    else:
        labels = [torch.as_tensor(dataset[i]["labels"]).nonzero().flatten().tolist() for i in range(len(dataset))]
    pairs = [(i, c) for i, classes in enumerate(labels) for c in classes]
    if not pairs:
        raise ValueError(
            f"target_policy 'true': none of the {len(labels)} images has a class (unlabelled images); "
            "use 'predicted' or 'class:<k>'"
        )
    bare = [i for i, classes in enumerate(labels) if not classes]
    if bare:
        logging.getLogger("salience").warning(
            "target_policy 'true': %d images have no class and are not explained (the first: %s)",
            len(bare),
            [dataset_ids(dataset)[i] for i in bare[:5]],
        )
    return [i for i, _ in pairs], [c for _, c in pairs]


def explain_dataset(
    model: torch.nn.Module,
    dataset,
    method: str,
    out: str | Path,
    *,
    layer: str | None = None,
    target_policy: str = "true",
    data: str = "",
    split: str = "",
    chunk_size: int = 256,
    batch_size: int = 64,
    workers: int = 0,
    progress: bool = False,
    ctx=None,
) -> MapStore:
    """Write the maps of `method` (a name, or `NAME@LAYER`; or the name and `layer`) for every image (or, for
    `target_policy` "true", every (image, present class) pair) of `dataset` (items of the batch contract) into
    the store at `out`, resuming an existing store with the same
    metadata (finished chunks are not recomputed). `workers` > 0 reads and transforms the images in that many
    processes while the model runs. `ctx`: see `explain_stores`."""
    if layer is not None:
        if "@" in method:
            raise ValueError(f"method {method!r} names its layer; do not also pass layer={layer!r}")
        method = f"{method}@{layer}"
    return explain_stores(
        [model],
        dataset,
        [method],
        [{method: out}],
        target_policy=target_policy,
        data=data,
        split=split,
        chunk_size=chunk_size,
        batch_size=batch_size,
        workers=workers,
        progress=progress,
        ctx=ctx,
    )[0][method]


def explain_stores(
    models: list[torch.nn.Module],
    dataset,
    methods: list[str],
    outs: Sequence[Mapping[str, str | Path]],
    *,
    target_policy: str = "true",
    data: str = "",
    split: str = "",
    chunk_size: int = 256,
    batch_size: int = 64,
    workers: int = 0,
    progress: bool = False,
    ctx=None,
) -> list[dict[str, MapStore]]:
    """Explain every image of `dataset` with every model and method in one read of the images: the maps of
    `models[m]` and method spec `s` (`NAME` or `NAME@LAYER`, see `attribute_many`) go to the store
    `outs[m][s]`, created or resumed (only the chunks unfinished in some store are computed, and only for
    the stores that lack them). The gradient-based methods of a model share one forward and one backward.

    The store's items: for `target_policy` "true", every (image, class) pair whose class the image has
    (`true_pairs`; one per image on single-label data); for "predicted" and "class:<k>", one per image.
    `StoreMeta.image_ids` holds each item's image id (repeated for the pairs of one image), the `targets`
    array its class. Each chunk reads its images once; `batch_size` bounds the images read and the items
    explained at once.

    `ctx` (`salience.distributed.Context`, from `setup()` under torchrun): the processes share
    the stores. Rank 0 creates or resumes them, then every process computes its share of the unfinished
    chunks (every `world_size`-th one); no two processes write the same chunk. Returns, on every
    process, `[{spec: store}]` per model, after all processes have finished."""
    from salience import distributed as dist

    ctx = ctx or dist.Context(0, 1, next(models[0].parameters()).device, False)
    specs = {spec: parse_method(spec) for spec in methods}
    if len(specs) != len(methods) or not specs:
        raise ValueError(f"methods: give each method once, at least one; got {list(methods)}")
    if len(outs) != len(models) or any(set(o) != set(specs) for o in outs):
        raise ValueError("outs: one {method: store path} per model, with a path for every method")
    flat = [(m, spec, Path(o[spec])) for m, o in enumerate(outs) for spec in methods]
    paths = [p.resolve() for _, _, p in flat]
    if len(set(paths)) != len(paths):
        raise ValueError(f"outs: two stores at {next(p for p in paths if paths.count(p) > 1)}")
    for model in models:
        model.eval()
    ids = dataset_ids(dataset)
    if not ids:
        raise ValueError("the data set holds no images")
    if target_policy == "true":  # the store's items: one per (image, present class) pair
        item_image, item_class = true_pairs(dataset)
    else:  # one per image, its class chosen by the model
        item_image, item_class = list(range(len(ids))), None

    def explain(
        m: int, x: torch.Tensor, classes: torch.Tensor | None, wanted: list[str]
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        model = models[m]
        x = x.to(next(model.parameters()).device)
        if classes is None:
            with torch.no_grad():
                t = targets_for(target_policy, model(x))
        else:
            t = classes.to(x.device)
        return attribute_many(model, x, t, wanted), t

    error, pending = None, None
    if ctx.is_main:  # one process creates the stores: a store is created exactly once
        try:
            item = dataset[item_image[0]]
            cls = None if item_class is None else torch.tensor(item_class[:1])
            first = {m: explain(m, collate([item])["image"], cls, methods)[0] for m in range(len(models))}  # shapes
            resolution = tuple(item["image"].shape[-2:])
            stores = []
            for m, spec, path in flat:
                name, layer = specs[spec]
                meta = StoreMeta(
                    model_hash=model_hash(models[m]),
                    method=name,
                    layer=layer,
                    target_policy=target_policy,
                    resolution=resolution,
                    data=data,
                    split=split,
                    image_ids=tuple(ids[i] for i in item_image),
                )
                h, w = first[m][spec].shape[-2:]
                stores.append(MapStore.resume(path, meta, (h, w), chunk_size))
            pending = [s.pending() for s in stores]
        except Exception as err:
            if ctx.world_size == 1:
                raise
            error = err
    error_text, pending = dist.gather((None if error is None else str(error), pending), ctx)[0]
    if error is not None:
        raise error
    if error_text is not None:
        raise ValueError(f"{error_text} (reported by rank 0)")
    if not ctx.is_main:
        stores = [MapStore(path, mode="r+") for _, _, path in flat]

    need: dict[int, list[int]] = {}  # chunk -> indices into `flat` of the stores that lack it
    for k, chunks in enumerate(pending):
        for i in chunks:
            need.setdefault(i, []).append(k)
    mine = sorted(need)[ctx.rank :: ctx.world_size]

    def compute(start: int, stop: int) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        wanted = need[start // chunk_size]
        by_model: dict[int, list[str]] = {}
        for k in wanted:
            by_model.setdefault(flat[k][0], []).append(flat[k][1])
        maps: dict[int, list[torch.Tensor]] = {k: [] for k in wanted}
        targets: dict[int, list[torch.Tensor]] = {m: [] for m in by_model}
        images = item_image[start:stop]  # the chunk's items' dataset indices, non-decreasing
        unique = sorted(set(images))
        row = {d: j for j, d in enumerate(unique)}  # dataset index -> position among the chunk's images
        classes = None if item_class is None else torch.tensor(item_class[start:stop])
        loader = DataLoader(
            Subset(dataset, unique),
            batch_size=batch_size,
            collate_fn=collate,
            num_workers=workers if len(unique) > batch_size else 0,
        )
        done = 0  # items explained so far
        for b, batch in enumerate(loader):  # each image read once, for every model, method and class
            first, end = b * batch_size, done
            while end < len(images) and row[images[end]] < first + len(batch["image"]):
                end += 1
            for lo in range(done, end, batch_size):  # at most batch_size items explained at once
                hi = min(lo + batch_size, end)
                x = batch["image"][[row[d] - first for d in images[lo:hi]]]
                for m, model_specs in by_model.items():
                    out, t = explain(m, x, None if classes is None else classes[lo:hi], model_specs)
                    targets[m].append(t.cpu())
                    for k in wanted:
                        if flat[k][0] == m:
                            maps[k].append(out[flat[k][1]].cpu())
            done = end
        return {k: (torch.cat(maps[k]), torch.cat(targets[flat[k][0]])) for k in wanted}

    fill(stores, compute, progress=progress and ctx.is_main, chunks=mine)
    dist.barrier(ctx)
    result: list[dict[str, MapStore]] = [{} for _ in models]
    for (m, spec, _), store in zip(flat, stores, strict=True):
        result[m][spec] = store
    return result


def data_name(config) -> str:
    """How a store's metadata names the data of a training config."""
    return config.data.format if config.data.root is None else f"{config.data.format}:{config.data.root}"


def method_outs(methods: list[str], out: str | Path, layer: str | None = None) -> dict[str, Path]:
    """`{spec: store path}`: one method's store is `out`; several methods' stores are `out/<spec>`, named as
    written (`out/grad_cam@final`). `layer` (one method only) is the same as writing `NAME@LAYER`."""
    methods = list(methods)
    if not methods:
        raise ValueError("method: give at least one")
    if layer is not None:
        if len(methods) != 1 or "@" in methods[0]:
            raise ValueError(
                f"--layer {layer!r} applies to one method without a layer; write each method's layer "
                f"as NAME@LAYER (e.g. grad_cam@{layer})"
            )
        methods = [f"{methods[0]}@{layer}"]
    for spec in methods:
        parse_method(spec)
    out = Path(out)
    if len(methods) == 1:
        return {methods[0]: out}
    if (out / "zarr.json").exists():
        raise ValueError(
            f"{out} is a map store; with several methods the output is a folder holding one store per method"
        )
    return {spec: out / spec for spec in methods}


def explain_checkpoint(
    checkpoint: str | Path,
    split: str,
    methods: str | list[str],
    out: str | Path,
    *,
    layer: str | None = None,
    target_policy: str = "true",
    overrides: list[str] | None = None,
    chunk_size: int = 256,
    batch_size: int = 64,
    device: str = "cpu",
    progress: bool = False,
    ctx=None,
) -> dict[str, MapStore]:
    """`explain_stores` for a training checkpoint on `split` of its saved data config, `{spec: store}` with the
    stores of `method_outs(methods, out, layer)` (`overrides`: see `load_run`; `data.workers=1` loads images in
    a second process). Under torchrun pass `ctx` (its device is used)."""
    from salience.io.checkpoint import load_run
    from salience.io.datasets import open_split

    outs = method_outs([methods] if isinstance(methods, str) else methods, out, layer)
    model, config = load_run(checkpoint, overrides, ctx.device if ctx else device)
    return explain_stores(
        [model],
        open_split(config.data, split),
        list(outs),
        [outs],
        target_policy=target_policy,
        data=data_name(config),
        split=split,
        chunk_size=chunk_size,
        batch_size=batch_size,
        workers=config.data.workers,
        progress=progress,
        ctx=ctx,
    )[0]
