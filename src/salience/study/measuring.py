"""The study's measuring: every store measured (`salience.measures.run.measure_stores`), written as
`per_image.csv`, `stability.csv` and `summary.json` in the study's folder."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from rich.console import Console

from salience.attribution import Explainer
from salience.attribution.registry import parse_method
from salience.data.core import SalienceDataset, collate
from salience.distributed import Context
from salience.measures.registry import MEASURES, Costing, default_measures, estimate
from salience.measures.run import Source, measure_stores
from salience.measures.suite import map_values
from salience.store import MapStore
from salience.study.config import StudyConfig
from salience.study.members import Member

OWN_FILES = ("runs", "stores", "models", "results.json", "report.html", "gallery.pt")
"""What a study writes besides the files of `salience measure`."""

console = Console(stderr=True)


def chosen_measures(select: list[str] | str | None) -> list[str] | None:
    """The measures a study's `measures.select` runs: `all` -> None (every measure the data support), null -> the
    measures within the default cost bound (`default_measures`), a list -> itself."""
    if select == "all":
        return None
    return default_measures() if select is None else list(select)


def _explain_seconds(cfg: StudyConfig, members: list[Member], data: SalienceDataset, n: int) -> float:
    """Seconds per image of one explanation (a forward and a backward) of every member with every method,
    summed: timed on a batch of the first `n` images (at most 16), after one untimed call on one image (a
    small batch keeps the estimate cheap next to the work it estimates)."""
    x = collate([data[i] for i in range(min(n, 16, len(data)))])["image"]
    total = 0.0
    for m in members:
        device = next(m.model.parameters()).device
        xs = x.to(device)
        with torch.no_grad():
            target = m.model(xs).argmax(1)
        for spec in cfg.explain.specs:
            method, layer = parse_method(spec)
            explain = Explainer(method, m.model, layer, dict(cfg.explain.options.get(spec, {})))
            explain(xs[:1], target[:1])
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            explain(xs, target)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            total += (time.perf_counter() - t0) / len(xs)
    return total


def _maps_seconds(stores: list[Path], names: list[str]) -> float:
    """Seconds of the maps-kind measures `names` over every map of `stores`: timed on the first store's first 64
    maps (with random masks standing in for the boxes), scaled by the number of maps."""
    if not stores or not names:
        return 0.0
    first = MapStore(stores[0])
    maps, _ = first.read(0, min(64, first.n))
    size = (first.meta.resolution[0], first.meta.resolution[1])
    masks = torch.rand(len(maps), *size, generator=torch.Generator().manual_seed(0)) > 0.5
    t0 = time.perf_counter()
    map_values(maps, masks, size, names)
    return (time.perf_counter() - t0) / len(maps) * sum(MapStore(p).n for p in stores)


def announce(
    cfg: StudyConfig, members: list[Member], data: SalienceDataset, names: list[str] | None, stores: list[Path]
) -> float:
    """Print, before measuring, one line per probe computation of the measures `names` (None: all): its model
    passes per image (`Measure.passes`) and its time, estimated as passes x probed images x the seconds of one
    explanation per image measured on the first batch; then the measures on the maps of `stores`, timed on the
    first maps. Return the estimated seconds in all."""
    m = cfg.measures
    n = min(m.n_probe, len(data))
    chosen = list(MEASURES) if names is None else names
    costs = estimate(chosen, Costing(m.samples, m.deletion_steps)) if n and members else []
    stored = [x for x in chosen if MEASURES[x].kind == "maps"]
    console.rule(f"measuring {len(members)} models: {len(chosen)} measures, probes on {n} images per model")
    per_image = _explain_seconds(cfg, members, data, n) if costs else 0.0
    total = 0.0
    for group, passes in costs:
        seconds = passes * n * per_image
        total += seconds
        road = " + ROAD's imputation on the CPU, often far longer" if group[0].startswith("road") else ""
        console.print(f"  {', '.join(group)}: {passes:g} passes/image, ~{seconds:.1f} s{road}")
    on_maps = _maps_seconds(stores, stored)
    console.print(f"  {len(stored)} measures on the stored maps: no model passes, ~{on_maps:.1f} s")
    console.print(
        f"  estimated measuring time ~{total + on_maps:.1f} s "
        f"({per_image * 1e3:.1f} ms per image for one map of every model)"
    )
    if cfg.measures.select is None:
        console.print("  (the default measures; `measures.select: all` runs every one, e.g. ROAD and sensitivity)")
    return total + on_maps


def measure_members(
    cfg: StudyConfig,
    groups: list[str],
    members: list[Member],
    data: SalienceDataset,
    out_of_set: torch.Tensor | None,
    paths: dict[tuple[str, str], Path],
    out: Path,
    ctx: Context | None,
    progress: bool = True,
) -> dict | None:
    """Measure the store `paths[(model, spec)]` of every member and method (probes run the member's model on
    `data`, with the `out_of_set` images `[N, 3, H, W]`), pooled per group of `groups`; return the summary of
    `measure_stores` (on rank 0; None on the other processes under torchrun `ctx`). Without `measures.select`
    the measures are the cheap defaults (`chosen_measures`); with `progress`, their estimated cost is printed
    first (`announce`) and a bar names the measure being probed."""
    specs = cfg.explain.specs
    m = cfg.measures
    names = chosen_measures(m.select)
    show = progress and (ctx is None or ctx.is_main)
    if show:
        announce(cfg, members, data, names, list(dict.fromkeys(paths.values())))
    return measure_stores(
        {g: [paths[(x.name, spec)] for spec in specs for x in members if x.group == g] for g in groups},
        out,
        seed=m.seed,
        n_boot=m.n_boot,
        n_perm=m.n_perm,
        sources={
            str(paths[(x.name, spec)]): Source(
                x.model, data, m.n_probe, out_of_set, m.deletion_steps, samples=m.samples
            )
            for x in members
            for spec in specs
        },
        ctx=ctx,
        names={str(paths[(x.name, spec)]): x.name for x in members for spec in specs},
        own=OWN_FILES,
        select=names,
        progress=show,
        options=m.options,
    )
