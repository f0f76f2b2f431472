"""Fill a map store from a model and a data set (the `salience explain` command)."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from salience.attribution import attribute_many, parse_method
from salience.attribution.registry import options_by_spec
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
    **options: Any,
) -> MapStore:
    """Write the maps of `method` (a name, or `NAME@LAYER`; or the name and `layer`) for every image (or, for
    `target_policy` "true", every (image, present class) pair) of `dataset` (items of the batch contract) into
    the store at `out`, resuming an existing store with the same
    metadata (finished chunks are not recomputed). `options`: the keywords of `explain_stores`
    (`target_policy`, `data`, `split`, `chunk_size`, `batch_size`, `workers`, `progress`, `ctx`); `workers` > 0
    reads and transforms the images in that many processes while the model runs."""
    if layer is not None:
        if "@" in method:
            raise ValueError(f"method {method!r} names its layer; do not also pass layer={layer!r}")
        method = f"{method}@{layer}"
    return explain_stores([model], dataset, [method], [{method: out}], **options)[0][method]


def explain_stores(
    models: list[torch.nn.Module],
    dataset,
    methods: list[str],
    outs: Sequence[Mapping[str, str | Path]],
    *,
    target_policy: str = "true",
    options: Mapping[str, Mapping[str, Any]] | None = None,
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
    `options`: `{method: {option: value}}` for the methods that take options, keyed by name or spec (see
    `attribute_many`); a method not explained or an option it does not take raises ValueError.

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
    job = _plan(models, dataset, methods, outs, target_policy, options)
    stores, pending = _open_stores(job, data, split, chunk_size, ctx)
    need: dict[int, list[int]] = {}  # chunk -> indices into `job.stores` of the stores that lack it
    for k, chunks in enumerate(pending):
        for i in chunks:
            need.setdefault(i, []).append(k)
    mine = sorted(need)[ctx.rank :: ctx.world_size]
    compute = _ChunkPass(job, need, chunk_size, batch_size, workers)
    fill(stores, compute, progress=progress and ctx.is_main, chunks=mine)
    dist.barrier(ctx)
    result: list[dict[str, MapStore]] = [{} for _ in models]
    for (m, spec, _), store in zip(job.stores, stores, strict=True):
        result[m][spec] = store
    return result


@dataclass(frozen=True)
class _Job:
    """What one `explain_stores` call explains. `stores[k]`: (model index, method spec, path) of a store to
    fill, model by model, then method by method; `specs`: `{spec: (name, layer)}`. The store items:
    `item_image[i]` is the data set index of item i's image (non-decreasing), `item_class[i]` its class, or
    `item_class` None when the model chooses the class by `target_policy`. `ids`: the data set's image ids.
    `options`: `{spec: {option: value}}` of the methods that take options (kept in each store's metadata)."""

    models: list[torch.nn.Module]
    dataset: Any
    specs: dict[str, tuple[str, str | None]]
    stores: list[tuple[int, str, Path]]
    ids: list[str]
    item_image: list[int]
    item_class: list[int] | None
    target_policy: str
    options: Mapping[str, Mapping[str, Any]]

    def explain(
        self, m: int, x: torch.Tensor, classes: torch.Tensor | None, wanted: list[str]
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """`({spec: maps [B, h, w]}, targets [B])` of model `m` on images `x [B, C, H, W]` for the method specs
        `wanted`; the targets are `classes [B]`, or when None the policy's classes for the model's logits."""
        model = self.models[m]
        x = x.to(next(model.parameters()).device)
        if classes is None:
            with torch.no_grad():
                t = targets_for(self.target_policy, model(x))
        else:
            t = classes.to(x.device)
        return attribute_many(model, x, t, wanted, options={s: self.options[s] for s in wanted if s in self.options}), t


def _plan(
    models: list[torch.nn.Module],
    dataset,
    methods: list[str],
    outs: Sequence[Mapping[str, str | Path]],
    target_policy: str,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> _Job:
    """The `_Job` of `explain_stores`'s arguments, after refusing a method given twice (or none), an `outs` that
    lacks a store, two stores at one path, an option for no method or one it does not take, and an empty data
    set; puts the models in eval mode."""
    specs = {spec: parse_method(spec) for spec in methods}
    if len(specs) != len(methods) or not specs:
        raise ValueError(f"methods: give each method once, at least one; got {list(methods)}")
    keyed = options_by_spec(list(specs), options or {})
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
    return _Job(models, dataset, specs, flat, ids, item_image, item_class, target_policy, keyed)


def _create_stores(job: _Job, data: str, split: str, chunk_size: int) -> list[MapStore]:
    """Create or resume every store of `job` (`MapStore.resume`), in `job.stores` order; each model explains the
    first item once to give its maps' shape."""
    item = job.dataset[job.item_image[0]]
    cls = None if job.item_class is None else torch.tensor(job.item_class[:1])
    methods = list(job.specs)
    first = {m: job.explain(m, collate([item])["image"], cls, methods)[0] for m in range(len(job.models))}  # shapes
    resolution = tuple(item["image"].shape[-2:])
    stores = []
    for m, spec, path in job.stores:
        name, layer = job.specs[spec]
        meta = StoreMeta(
            model_hash=model_hash(job.models[m]),
            method=name,
            layer=layer,
            options=dict(job.options.get(spec, {})),
            target_policy=job.target_policy,
            resolution=resolution,
            data=data,
            split=split,
            image_ids=tuple(job.ids[i] for i in job.item_image),
        )
        h, w = first[m][spec].shape[-2:]
        stores.append(MapStore.resume(path, meta, (h, w), chunk_size))
    return stores


def _open_stores(job: _Job, data: str, split: str, chunk_size: int, ctx) -> tuple[list[MapStore], list[list[int]]]:
    """The stores of `job` and each one's unfinished chunks. One process creates them (a store is created
    exactly once): rank 0, which gives the others the chunks, or the message of the error it met, which every
    process then raises; the others open the stores rank 0 made."""
    from salience import distributed as dist

    error, pending = None, None
    if ctx.is_main:
        try:
            stores = _create_stores(job, data, split, chunk_size)
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
        stores = [MapStore(path, mode="r+") for _, _, path in job.stores]
    return stores, pending


@dataclass(frozen=True)
class _ChunkPass:
    """`fill`'s `compute(start, stop)` for `job`: reads the images of the chunk's items once and explains them
    with every model and method whose store lacks the chunk (`need`: chunk -> indices into `job.stores`)."""

    job: _Job
    need: dict[int, list[int]]
    chunk_size: int
    batch_size: int
    workers: int

    def __call__(self, start: int, stop: int) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """`{k: (maps [stop - start, h, w], targets [stop - start])}` for each store `k` that lacks the chunk."""
        job, wanted = self.job, self.need[start // self.chunk_size]
        by_model: dict[int, list[str]] = {}
        for k in wanted:
            by_model.setdefault(job.stores[k][0], []).append(job.stores[k][1])
        maps: dict[int, list[torch.Tensor]] = {k: [] for k in wanted}
        targets: dict[int, list[torch.Tensor]] = {m: [] for m in by_model}
        classes = None if job.item_class is None else torch.tensor(job.item_class[start:stop])
        for lo, hi, x in self._batches(job.item_image[start:stop]):
            for m, model_specs in by_model.items():
                out, t = job.explain(m, x, None if classes is None else classes[lo:hi], model_specs)
                targets[m].append(t.cpu())
                for k in wanted:
                    if job.stores[k][0] == m:
                        maps[k].append(out[job.stores[k][1]].cpu())
        return {k: (torch.cat(maps[k]), torch.cat(targets[job.stores[k][0]])) for k in wanted}

    def _batches(self, images: list[int]) -> Iterator[tuple[int, int, torch.Tensor]]:
        """`(lo, hi, x)`: `x [hi - lo, C, H, W]`, the images of the chunk's items `lo:hi`, at most `batch_size`
        items at a time, in item order; `images`: the items' data set indices (non-decreasing). Each image is
        read once, for every model, method and class."""
        unique = sorted(set(images))
        row = {d: j for j, d in enumerate(unique)}  # dataset index -> position among the chunk's images
        loader = DataLoader(
            Subset(self.job.dataset, unique),
            batch_size=self.batch_size,
            collate_fn=collate,
            num_workers=self.workers if len(unique) > self.batch_size else 0,
        )
        done = 0  # items explained so far
        for b, batch in enumerate(loader):
            first, end = b * self.batch_size, done
            while end < len(images) and row[images[end]] < first + len(batch["image"]):
                end += 1
            for lo in range(done, end, self.batch_size):  # at most batch_size items explained at once
                hi = min(lo + self.batch_size, end)
                yield lo, hi, batch["image"][[row[d] - first for d in images[lo:hi]]]
            done = end


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
    options: dict[str, dict[str, Any]] | None = None,
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
    a second process); `options`: `{spec: {option: value}}` of the methods that take options. Under torchrun
    pass `ctx` (its device is used)."""
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
        options=options,
        data=data_name(config),
        split=split,
        chunk_size=chunk_size,
        batch_size=batch_size,
        workers=config.data.workers,
        progress=progress,
        ctx=ctx,
    )[0]
