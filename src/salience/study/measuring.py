"""The study's measuring: every store measured (`salience.measures.run.measure_stores`), written as
`per_image.csv`, `stability.csv` and `summary.json` in the study's folder; with Focus selected, 2x2 mosaics of the
study's images explained by every model and method, written as `focus.json` (`measure_focus`)."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from rich.console import Console

from salience.attribution import Explainer, upsample
from salience.attribution.registry import parse_method
from salience.data.core import SalienceDataset, collate
from salience.distributed import Context
from salience.measures.focus import focus, mosaics
from salience.measures.registry import MEASURES, Costing, default_measures, estimate, select
from salience.measures.run import Source, measure_stores
from salience.measures.suite import map_values
from salience.measures.summary import summarise
from salience.store import MapStore
from salience.study.config import StudyConfig
from salience.study.members import Member
from salience.study.results import write_json

OWN_FILES = ("runs", "stores", "models", "results.json", "report.html", "gallery.pt", "focus.json")
"""What a study writes besides the files of `salience measure`."""

console = Console(stderr=True)


def chosen_measures(select: list[str] | str | None) -> list[str] | None:
    """The measures a study's `measures.select` runs: `all` -> None (every measure the data support), null -> the
    measures within the default cost bound (`default_measures`), a list -> itself."""
    if select == "all":
        return None
    return default_measures() if select is None else list(select)


def wants_focus(select: list[str] | str | None) -> bool:
    """Whether a study's `measures.select` runs Focus on mosaics: when it names `focus`, or is `all`. Focus
    explains images of its own (mosaics twice the images' height and width), so the defaults leave it out."""
    return select == "all" or (isinstance(select, list) and "focus" in select)


def study_mosaics(data: SalienceDataset, n: int, seed: int) -> tuple[dict, list[str]]:
    """`mosaics` (`salience.measures.focus`, one per image, with `seed`) of the study's first `n` images that have
    exactly one class, and those images' ids (the `indices` of the mosaics point into them)."""
    batch = collate([data[i] for i in range(min(n, len(data)))])
    single = batch["labels"].sum(1) == 1
    ids = [i for i, one in zip(batch["id"], single.tolist(), strict=True) if one]
    labels = batch["labels"][single].argmax(1)
    if len(set(labels.tolist())) < 2:
        raise ValueError(f"focus: mosaics need images of at least two classes; the first {n} images (measures."
                         f"n_probe) with one class hold {sorted(set(labels.tolist()))}: raise n_probe")  # fmt: skip
    return mosaics(batch["image"][single], labels, seed), ids


def _mosaic_maps(explain: Explainer, x: torch.Tensor, target: torch.Tensor, batch: int = 16) -> torch.Tensor:
    """The maps `[M, H, W]` of mosaics `x [M, C, H, W]` for `target [M]`, `batch` mosaics at a time, at their size."""
    size = (x.shape[-2], x.shape[-1])
    return torch.cat([upsample(explain(x[i : i + batch], target[i : i + batch]).detach(), size)
                      for i in range(0, len(x), batch)])  # fmt: skip


def measure_focus(cfg: StudyConfig, members: list[Member], data: SalienceDataset, out: Path) -> dict:
    """Focus of every member and method on 2x2 mosaics of the study's first `measures.n_probe` single-class images
    (`study_mosaics`, seeded with `measures.seed`), each explained for its target class. Writes and returns
    `out/focus.json`: `{"seed", "per_class", "mosaics": [{"target", "images": [4 ids], "classes": [4 names]}],
    "values": {model: {spec: [M]}}, "summary": {model: {spec: summarise}}, "groups": {group: {spec: summarise
    of its models' values pooled}}}`."""
    m = cfg.measures
    built, ids = study_mosaics(data, m.n_probe, m.seed)
    names = list(getattr(data, "classes", [])) or [str(c) for c in range(int(built["classes"].max()) + 1)]
    record: dict = {"seed": m.seed, "per_class": built["per_class"], "values": {}, "summary": {}, "groups": {}}
    record["mosaics"] = [
        {"target": names[t], "images": [ids[i] for i in idx], "classes": [names[c] for c in cls]}
        for t, idx, cls in zip(built["target"].tolist(), built["indices"].tolist(), built["classes"].tolist(),
                               strict=True)
    ]  # fmt: skip
    pooled: dict[str, dict[str, list[float]]] = {}
    for x in members:
        device = next(x.model.parameters()).device
        mx, target, positions = built["x"].to(device), built["target"].to(device), built["positions"].to(device)
        for spec in cfg.explain.specs:
            method, layer = parse_method(spec)
            explain = Explainer(method, x.model, layer, dict(cfg.explain.options.get(spec, {})))
            values = focus(_mosaic_maps(explain, mx, target), positions).double().cpu().tolist()
            record["values"].setdefault(x.name, {})[spec] = values
            record["summary"].setdefault(x.name, {})[spec] = summarise(values, seed=m.seed, n_boot=m.n_boot)
            pooled.setdefault(x.group, {}).setdefault(spec, []).extend(values)
    record["groups"] = {g: {spec: summarise(v, seed=m.seed, n_boot=m.n_boot) for spec, v in by_spec.items()}
                        for g, by_spec in pooled.items()}  # fmt: skip
    write_json(out / "focus.json", record)
    return record


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
    chosen = select(None) if names is None else names
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
    first (`announce`) and a bar names the measure being probed. When `measures.select` names `focus` (or is
    `all`, and the probed images hold two classes), Focus is measured on mosaics (`measure_focus`, rank 0) and
    its record is the summary's `focus`."""
    specs = cfg.explain.specs
    m = cfg.measures
    on_mosaics = wants_focus(m.select) and m.n_probe > 0
    chosen = chosen_measures(m.select)
    names = [n for n in (select(None) if chosen is None else chosen) if n != "focus"] + ["focus"] * on_mosaics
    show = progress and (ctx is None or ctx.is_main)
    if show:
        announce(cfg, members, data, names, list(dict.fromkeys(paths.values())))
    summary = measure_stores(
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
        select=[n for n in names if n != "focus"],  # Focus reads mosaics: measured apart, below
        progress=show,
    )
    if summary is not None and on_mosaics:
        try:
            summary["focus"] = measure_focus(cfg, members, data, out)
        except ValueError as err:  # `all`: every measure the data support; a named focus must run
            if m.select != "all" or "at least two classes" not in str(err):
                raise
            console.print(f"  focus left out: {err}")
    return summary
