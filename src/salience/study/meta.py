"""The study's meta-evaluation (`meta: true` in a study, or `salience meta STUDY_DIR` on a finished one): MetaQuantus'
noise resilience and adversary reactivity of the study's measures (`salience.measures.meta`), for each of its
models with all of its methods, on its first images; written as `meta.json` and kept in `results.json` under
`meta`, from which the report draws its table of measures x tests and the findings name unreliable measures."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from torch import nn

from salience.attribution import Explainer
from salience.attribution.registry import parse_method
from salience.data.core import SalienceDataset, collate, object_masks
from salience.measures.meta import SCORES, meta_evaluate, meta_measures, registry_scorer
from salience.measures.registry import MEASURES
from salience.study.config import StudyConfig
from salience.study.findings import UNRELIABLE_MC
from salience.study.measuring import chosen_measures
from salience.study.members import Member
from salience.study.results import pooled_values, write_json

META_FILE = "meta.json"


console = Console(stderr=True)


def _explainers(cfg: StudyConfig) -> dict[str, Callable[[nn.Module], Callable]]:
    """Method spec -> `make(model) -> explain(x, target)`, with the study's method options."""
    out: dict[str, Callable[[nn.Module], Callable]] = {}
    for spec in cfg.explain.specs:
        method, layer = parse_method(spec)
        opts = dict(cfg.explain.options.get(spec, {}))
        out[spec] = _binder(method, layer, opts)
    return out


def _binder(method: str, layer: str | None, opts: dict) -> Callable[[nn.Module], Callable]:
    return lambda model: Explainer(method, model, layer, opts)


def _study_measures(cfg: StudyConfig, out: Path, masks: bool) -> list[str]:
    """The measures the study measured (the columns of `per_image.csv`, else its `measures.select`) that can be
    meta-evaluated."""
    names = pooled_values(out)[1] if (out / "per_image.csv").is_file() else chosen_measures(cfg.measures.select)
    return meta_measures(names, masks)


def _has_masks(data: SalienceDataset) -> bool:
    records = getattr(data, "records", None)
    return records is not None and any(len(r.boxes) or r.segmentation is not None for r in records)


def meta_members(
    cfg: StudyConfig,
    members: list[Member],
    data: SalienceDataset,
    out: Path,
    *,
    images: int = 16,
    iterations: int = 5,
    perturbations: int = 10,
    reexplain: bool = False,
    progress: bool = True,
) -> dict:
    """MetaQuantus' scores of the study's measures for every member, with every method of the study, on the
    first `images` images (explained for the predicted class); written to `out/meta.json` and returned:
    `{"settings", "measures", "models": {model: {measure: ...}}, "summary": {measure: {"input"|"model": {score:
    {"mean", "std"}}}}}` (summary: over models and iterations)."""
    batch = collate([data[i] for i in range(min(images, len(data)))])
    located = _has_masks(data)
    names = _study_measures(cfg, out, located)
    if not names:
        raise ValueError("meta-evaluation: none of the study's measures can be meta-evaluated (maps or probe kind)")
    m = cfg.measures
    if progress:
        console.rule(f"meta-evaluation of {len(names)} measures on {len(members)} models, {len(batch['image'])} images")
    models, t0 = {}, time.perf_counter()
    for member in members:
        device = next(member.model.parameters()).device
        x = batch["image"].to(device)
        with torch.no_grad():
            y = member.model(x).argmax(1)
        masks = object_masks(batch, torch.arange(len(x)), y.cpu()).to(device) > 0 if located else None
        scorers = {n: registry_scorer(n, masks, m.options.get(n), m.samples, m.deletion_steps) for n in names}
        better = {n: MEASURES[n].better for n in names}
        models[member.name] = meta_evaluate(
            member.model, x, _explainers(cfg), scorers, better, iterations=iterations, perturbations=perturbations,
            seed=m.seed, batch_size=cfg.explain.batch_size, reexplain=reexplain,
        )  # fmt: skip
        if progress:
            console.print(f"  {member.name}: {time.perf_counter() - t0:.1f} s")
    settings = {"images": len(batch["image"]), "iterations": iterations, "perturbations": perturbations,
                "methods": cfg.explain.specs, "reexplain": reexplain, "seed": m.seed,
                "unreliable_mc": UNRELIABLE_MC}  # fmt: skip
    meta = {"settings": settings, "measures": names, "models": models, "summary": summarise(models, names)}
    write_json(out / META_FILE, meta)
    return meta


def summarise(models: dict[str, dict], names: list[str]) -> dict:
    """Per measure and perturbation type, each score's (IAC_NR, IAC_AR, IEC_NR, IEC_AR, MC) mean and population
    sd over every model's per-iteration values (NaN ones left out)."""
    out: dict = {}
    for name in names:
        out[name] = {}
        for kind in ("input", "model"):
            out[name][kind] = {}
            for score in (*SCORES, "MC"):
                v = torch.tensor([x for r in models.values() for x in r[name][kind][score]["per_iteration"]])
                v = v[~torch.isnan(v)]
                mean = float(v.mean()) if len(v) else float("nan")
                out[name][kind][score] = {"mean": mean, "std": float(v.std(unbiased=False)) if len(v) else mean}
    return out


def in_results(meta: dict) -> dict:
    """What `results.json` keeps of the meta results (the per-model details stay in `meta.json`)."""
    return {k: meta[k] for k in ("settings", "measures", "summary")}


def _saved_config(tree: dict) -> StudyConfig:
    """The study config saved in `results.json` (dumped with every default), validated again: a study of several
    methods saved the first one's `method` and `layer` too, which a config with `methods` may not give."""
    explain = dict(tree.get("explain", {}))
    if explain.get("methods") is not None:
        explain.pop("method", None)
        explain.pop("layer", None)
    return StudyConfig.model_validate({**tree, "explain": explain})


def meta_study(
    study_dir: str | Path, *, images: int = 16, iterations: int = 5, perturbations: int = 10, reexplain: bool = False
) -> dict:
    """`salience meta`: the meta-evaluation of a finished study folder (its `results.json`): its models are loaded
    again (weights groups from their files, trained groups from their runs), evaluated, and `meta.json`,
    `results.json` (with `meta` and the findings) and `report.html` are rewritten. Returns the meta results."""
    from salience.report import render
    from salience.study.findings import findings
    from salience.study.images import open_images
    from salience.study.members import given_members, ready, trained_members
    from salience.study.training import train_all

    out = Path(study_dir)
    results_file = out / "results.json"
    if not results_file.is_file():
        raise ValueError(f"{out}: no results.json; run `salience study` first (or set `meta: true` in the study)")
    results = json.loads(results_file.read_text())
    cfg = _saved_config(results["study"])
    missing = [g for g in results["groups"] if g not in cfg.groups]
    if missing:
        raise ValueError(f"{out}: groups {missing} were models given from Python; run the study with `meta: true`")
    data, _, first = open_images(cfg)
    runs = train_all(cfg, out, False, distributed=False)  # finished runs are reused
    members = ready(cfg, given_members(cfg, {}, first) + trained_members(cfg, runs), torch.device(cfg.device))
    meta = meta_members(
        cfg, members, data, out, images=images, iterations=iterations, perturbations=perturbations, reexplain=reexplain
    )
    results["meta"] = in_results(meta)
    results["findings"] = findings(results)
    write_json(results_file, results)
    render(out)
    return meta
