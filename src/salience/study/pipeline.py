"""A study: groups of models (weights trained elsewhere, or trained here) -> explain -> measure ->
compare -> results files and the report.

`run(study)` writes into the study's `out`:
- `runs/<group>_s<seed>/`: the training runs of `train` groups (reused or resumed on a rerun);
- `stores/<model>/`: each model's maps (resumable map stores; a rerun recomputes no finished chunk);
- `per_image.csv`: one row per (model, image): group, model (the weights file's stem, or `<group>_<i>`
  when stems repeat, or `<group>_s<seed>`), image (its id), class (the class explained) and every
  per-image measure;
- `stability.csv`: per (group, image), the mean pairwise map similarity between the group's models;
- `summary.json`: per model and group, the summaries of `salience measure`;
- `results.json`: every number the report shows, and where the models and images came from;
- `gallery.pt` and `report.html`.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import multiprocessing
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader

from salience import attribution as A
from salience.data.core import SalienceDataset, collate
from salience.distributed import Context, atomic_write_text
from salience.io.checkpoint import load_run
from salience.io.config import ConfigError, load_config, validate
from salience.io.datasets import open_split
from salience.measures import MEASURES
from salience.measures.run import Source, measure_stores
from salience.measures.summary import compare_groups, summarise
from salience.models import adapt, build, load_model
from salience.models.adapt import adapted, check_scores
from salience.store import model_hash
from salience.store.explain import explain_stores
from salience.study.config import StudyConfig, TrainGroup, WeightsGroup, load_study
from salience.study.methods import sanity_findings

console = Console(stderr=True)
OWN_FILES = ("runs", "stores", "models", "results.json", "report.html", "gallery.pt")
"""What a study writes besides the files of `salience measure`."""


@dataclass
class Member:
    """One model of a study: its group, name (the weights file's stem, or `<group>_s<seed>`), where it came from."""

    group: str
    name: str
    model: nn.Module
    source: str
    seed: int | None = None
    run: Path | None = None


def run(
    study: StudyConfig | str | Path | dict,
    out: str | Path | None = None,
    overrides: list[str] | None = None,
    progress: bool = True,
    ctx: Context | None = None,
    models: dict[str, list[nn.Module] | dict[str, nn.Module]] | None = None,
) -> dict | None:
    """Run a study (a `StudyConfig`, a study file or a mapping; `overrides`: `key=value`) and return its
    results (also in `out/results.json`). Under torchrun (`ctx`) the processes share explaining and probes;
    rank 0 writes the results and returns them, the others return None.

    `models`: more groups, of `nn.Module`s in memory (`{"CE": [m1, m2]}`, models named `<group>_<i>`, or
    `{"CE": {"ce_a": m1, ...}}`), after the file's groups. Each must return scores `[B, C]` (see
    `salience.models.adapt`; a model not adapted gets the default: the tensor itself, or `.logits`). The study
    works on copies: the modules passed are left as they are."""
    cfg = study if isinstance(study, StudyConfig) else load_study(study, overrides)
    try:
        names = cfg.group_names(list(models or {}))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    out = Path(out or cfg.out)
    main = ctx is None or ctx.is_main
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(f"{out}: cannot create the study folder ({err.strerror})") from None
    t0 = time.perf_counter()
    clock = _Clock()
    device = ctx.device if ctx is not None else torch.device(cfg.device)
    data = open_split(cfg.data.data_config(), cfg.data.split)  # bad data fail before any training
    if len(data) == 0:
        raise ValueError(f"data: {cfg.data.describe()} holds no images")
    oos = None
    if cfg.out_of_set is not None and cfg.measures.n_probe > 0:
        other = open_split(cfg.out_of_set.data_config(), cfg.out_of_set.split)
        oos = collate([other[i] for i in range(min(cfg.measures.n_probe, len(other)))])["image"]
    first = collate([data[0]])["image"]
    clock("data")
    members = _members(
        cfg, out, device, progress and main, ctx is not None and ctx.world_size > 1, models or {}, first, clock
    )
    _check_explainable(cfg, members, data)
    clock("models")

    specs = cfg.explain.specs
    paths = store_paths(out, [m.name for m in members], specs)
    stores = {m.name: paths[(m.name, specs[0])] for m in members}  # the first method's, for the gallery
    if progress and main:
        console.rule(f"explaining {len(members)} models on {len(data)} images ({', '.join(specs)})")
    explain_stores(
        [m.model for m in members],
        data,
        specs,
        [{spec: paths[(m.name, spec)] for spec in specs} for m in members],
        target_policy=cfg.explain.target,
        data=cfg.data.describe(),
        split=cfg.data.split,
        chunk_size=cfg.explain.chunk_size,
        batch_size=cfg.explain.batch_size,
        workers=cfg.data.workers,
        progress=progress and main,
        ctx=ctx,
    )
    clock("explain")
    groups = {g: [paths[(m.name, spec)] for spec in specs for m in members if m.group == g] for g in names}
    sources = {
        str(paths[(m.name, spec)]): Source(
            m.model, data, cfg.measures.n_probe, oos, cfg.measures.deletion_steps, samples=cfg.measures.samples
        )
        for m in members
        for spec in specs
    }
    summary = measure_stores(
        groups,
        out,
        seed=cfg.measures.seed,
        n_boot=cfg.measures.n_boot,
        n_perm=cfg.measures.n_perm,
        sources=sources,
        ctx=ctx,
        names={str(paths[(m.name, spec)]): m.name for m in members for spec in specs},
        own=OWN_FILES,
        select=cfg.measures.select,
    )
    clock("measures")
    if not main:
        return None
    assert summary is not None  # measure_stores returns it on rank 0
    accuracy = _accuracies(cfg, members, out, data)
    clock("evaluate")
    results = _results(cfg, names, members, summary, accuracy, out, data)
    _gallery(cfg, members, data, stores, out)
    from salience.report import render

    results["seconds"] = round(time.perf_counter() - t0, 1)
    _write_json(out / "results.json", results)
    render(out)
    clock("report")
    results["stage_seconds"] = {k: round(v, 1) for k, v in clock.stages.items()}  # known once the report is written
    _write_json(out / "results.json", results)
    return results


class _Clock:
    """`clock(stage)` adds the seconds since the previous call to `stages[stage]` (what `results.json` reports
    as `stage_seconds`: data, models, train, explain, measures, evaluate, report)."""

    def __init__(self) -> None:
        self.stages: dict[str, float] = {}
        self.last = time.perf_counter()

    def __call__(self, stage: str) -> None:
        now = time.perf_counter()
        self.stages[stage] = self.stages.get(stage, 0.0) + now - self.last
        self.last = now


def _members(
    cfg: StudyConfig,
    out: Path,
    device: torch.device,
    progress: bool,
    distributed: bool,
    models: dict,
    first: Any,
    clock: _Clock | None = None,
) -> list[Member]:
    """Every model of the study, in eval mode on `device`, normalising its input as the data say. Weights
    files are loaded (and a bad one refused), and every model not trained here is checked to return scores
    `[1, C]` on the `first` image `[1, 3, H, W]`, before any training starts."""
    members: list[Member] = []
    stems = [Path(w).stem for g in cfg.groups.values() if isinstance(g, WeightsGroup) for w in g.weights]
    for group, g in cfg.groups.items():
        if isinstance(g, WeightsGroup):
            members += _weights_members(group, g, stems)
    for group, given in models.items():
        named = given if isinstance(given, dict) else {f"{group}_{i}": m for i, m in enumerate(given)}
        for name, model in named.items():
            if not isinstance(model, nn.Module):
                raise ConfigError(f"models[{group!r}]: {name} is a {type(model).__name__}, not a torch nn.Module")
            model = copy.deepcopy(model)
            members.append(
                Member(group, name, model if adapted(model) else adapt(model), f"{type(model).__name__} from Python")
            )
    for m in members:
        try:
            check_scores(m.model, first.to(next(m.model.parameters(), first).device))
        except Exception as err:
            raise ConfigError(f"groups.{m.group}: model {m.name} ({m.source}): {err}") from None
    names = [m.name for m in members] + [
        f"{group}_s{seed}" for group, g in cfg.groups.items() if isinstance(g, TrainGroup) for seed in g.seeds
    ]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise ConfigError(
            f"groups: two models are named {dup!r} (weights file stems, <group>_<i>, the names of models from "
            f"Python and <group>_s<seed> must differ)"
        )
    if clock is not None:
        clock("models")
    trained = _train_all(cfg, out, progress, distributed)
    if clock is not None:
        clock("train")
    for group, g in cfg.groups.items():
        if isinstance(g, TrainGroup):
            for seed in g.seeds:
                run_dir = trained[(group, seed)]
                model, _ = load_run(run_dir / "checkpoints" / "last.pt")
                members.append(Member(group, f"{group}_s{seed}", model, f"trained here: {run_dir}", seed, run_dir))
    norm = cfg.data.mean_std()
    for m in members:
        m.model = m.model.to(device).eval()
        if norm is not None:
            _normalise_input(m.model, *norm)
    return members


def _weights_members(group: str, g: WeightsGroup, stems: list[str]) -> list[Member]:
    """The models of a group of weights files (or the one model its import path or `hf:` folder gives)."""
    if not g.weights:
        assert g.model is not None  # checked on load: a group without weights names its model
        try:
            model = build(g.model, g.num_classes, kwargs=g.kwargs, output=g.output)
        except (ValueError, FileNotFoundError) as err:
            raise ConfigError(f"groups.{group}.model: {err}") from None
        return [Member(group, f"{group}_0", model, g.model)]
    members = []
    for i, w in enumerate(g.weights):
        if not Path(w).is_file():
            raise ConfigError(f"groups.{group}.weights: {w}: file not found")
        name = Path(w).stem if stems.count(Path(w).stem) == 1 else f"{group}_{i}"
        if g.model is None:
            model, config = load_run(w)
            members.append(Member(group, name, model, f"{config.model.name} checkpoint {w}"))
        else:
            model = load_model(w, g.model, g.num_classes, g.allow_pickle, g.kwargs, g.output)
            members.append(Member(group, name, model, f"{g.model} weights {w}"))
    return members


def _normalise_input(model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
    """Make `model` take images in [0, 1]: `(x - mean) / std` per channel before its forward."""
    mean_t = torch.tensor(mean).view(1, 3, 1, 1)
    std_t = torch.tensor(std).view(1, 3, 1, 1)

    def pre(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]
        return ((x - mean_t.to(x)) / std_t.to(x),) + tuple(args[1:])

    model.register_forward_pre_hook(pre)


def store_paths(out: Path, models: list[str], specs: list[str]) -> dict[tuple[str, str], Path]:
    """(model, method spec) -> its map store: `stores/<model>` for a study of one method, else
    `stores/<spec>/<model>`."""
    if len(specs) == 1:
        return {(m, specs[0]): out / "stores" / m for m in models}
    return {(m, spec): out / "stores" / spec / m for m in models for spec in specs}


def _check_explainable(cfg: StudyConfig, members: list[Member], data: SalienceDataset) -> None:
    """Fail before any work when a model cannot give this study's maps."""
    for spec in cfg.explain.specs:
        name, layer = A.parse_method(spec)
        _check_method(name, layer, members)


def _check_method(method: str, layer: str | None, members: list[Member]) -> None:
    needs_layer = layer not in (None, "input") or A.get_method(method).layer is not None
    for m in members:
        if needs_layer and getattr(m.model, "salience_opaque", False):
            raise ConfigError(
                f"explain: {m.name} ({m.source}) is a TorchScript / torch.export model; its layers "
                f"cannot be hooked, so only input methods ("
                + ", ".join(name for name, e in A.METHODS.items() if e.layer is None)
                + " with layer: null) work for it"
            )
        if layer not in (None, "input"):
            try:
                A.resolve_layer(m.model, layer)
            except ValueError as err:
                raise ConfigError(f"explain.layer: {m.name}: {err}") from None


def _trained(run_dir: Path, epochs: int) -> bool:
    log = run_dir / "log.jsonl"
    return log.exists() and len(log.read_text().splitlines()) >= epochs


def check_same_config(run_dir: Path, tree: dict) -> None:
    """Refuse to reuse or resume `run_dir` when its saved `config.yaml` differs from `tree` (a run left by
    older code or another study file would otherwise give stale numbers); `epochs`, `device`, `out`,
    `data.workers` and `eval` may differ, as on resume."""
    import yaml

    from salience.training.loop import _same_run

    saved = run_dir / "config.yaml"
    if not saved.exists():
        return
    diffs = _same_run(yaml.safe_load(saved.read_text()), validate(tree, str(saved)).dump())
    if diffs:
        raise ConfigError(
            f"{run_dir}: trained with another config ({', '.join(diffs)} differ from the study file's); "
            "remove the folder or choose another --out"
        )


def _train_one(tree: dict, run_dir: Path, threads: int | None = None) -> Path:
    from salience.training import train

    if threads:
        torch.set_num_threads(threads)
    return train(
        validate(tree, f"training run {run_dir.name}"),
        resume=(run_dir / "checkpoints" / "last.pt").exists(),
        progress=threads is None,
    )


def _train_all(cfg: StudyConfig, out: Path, progress: bool, distributed: bool) -> dict[tuple[str, int], Path]:
    """Train (or reuse, or resume) every (train group, seed) run: `train_workers` processes side by side on
    CPU, else one run after another (under torchrun each run is trained by all the processes together)."""
    todo = []
    for group, g in cfg.groups.items():
        if not isinstance(g, TrainGroup):
            continue
        for seed in g.seeds:
            base = load_config(g.train, g.set)
            tree = base.dump() | {"out": str(out / "runs" / f"{group}_s{seed}"), "seed": seed}
            if cfg.device == "cpu":
                tree["device"] = "cpu"
            check_same_config(Path(tree["out"]), tree)
            todo.append(((group, seed), tree, Path(tree["out"]), base.epochs))
    runs = {key: run_dir for key, _, run_dir, epochs in todo if _trained(run_dir, epochs)}  # reused
    todo = [item for item in todo if item[0] not in runs]
    if not todo:
        return runs
    if cfg.train_workers <= 1 or torch.cuda.is_available() or distributed:
        for key, tree, run_dir, _ in todo:
            if progress:
                console.rule(f"training {run_dir.name}")
            runs[key] = _train_one(tree, run_dir)
        return runs
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(cfg.train_workers, mp_context=spawn) as pool:
        futures = {pool.submit(_train_one, tree, run_dir, 1): key for key, tree, run_dir, _ in todo}
        for future in as_completed(futures):
            runs[futures[future]] = future.result()
            if progress:
                console.print(f"trained {runs[futures[future]].name}")
    return runs


def _accuracies(cfg: StudyConfig, members: list[Member], out: Path, data: SalienceDataset) -> dict[str, dict]:
    """Per model: task metrics on the study's data and on every `evaluate` split (with EPG and IoU of the
    explain method's maps there, when the split has boxes), and the share of out-of-set images given each
    class. Kept in `out/models/<model>.json` with the model's hash, so a
    rerun recomputes only changed models."""
    from salience.distributed import Context
    from salience.training.evaluate import evaluate_models

    splits = {"data": cfg.data} | dict(cfg.evaluate)
    result = {}
    opened: dict = {"data": data}
    key = json.dumps(
        {k: v.model_dump(mode="json") for k, v in splits.items()}
        | {"out_of_set": cfg.out_of_set.model_dump(mode="json") if cfg.out_of_set else None}
        | {"explain": cfg.explain.model_dump(mode="json")},
        sort_keys=True,
    )
    (out / "models").mkdir(exist_ok=True)
    todo = []
    for m in members:
        cache = out / "models" / f"{m.name}.json"
        digest = model_hash(m.model)
        if cache.exists():
            saved = json.loads(cache.read_text())
            if saved.get("model_hash") == digest and saved.get("key") == key:
                result[m.name] = saved["accuracy"]
                continue
        todo.append((m, cache, digest))
    if not todo:
        return result
    acc: dict[str, dict] = {m.name: {} for m, _, _ in todo}
    device = next(todo[0][0].model.parameters()).device
    for name, d in splits.items():  # each split read once, every batch through every model
        if name not in opened:
            opened[name] = open_split(d.data_config(), d.split)
        ds = opened[name]
        if not getattr(ds, "classes", None):
            continue  # unlabelled images (a flat folder)
        multi = any(len(set(r.labels)) > 1 for r in getattr(ds, "records", []))
        loader = DataLoader(ds, batch_size=cfg.explain.batch_size, collate_fn=collate, num_workers=d.workers)
        boxed = name != "data" and any(len(r.boxes) for r in getattr(ds, "records", []))  # data: the measures
        per_model = evaluate_models(
            [m.model for m, _, _ in todo],
            loader,
            multi,
            cfg.explain.method,
            cfg.explain.layer or "input",
            localisation=boxed,
            ctx=Context(0, 1, device, False),
        )
        prefix = "" if name == "data" else f"{name}_"
        for (m, _, _), metrics in zip(todo, per_model, strict=True):
            for k in ("accuracy", "auc", "f1", "map", "worst_group_accuracy", *(("epg", "iou") if boxed else ())):
                if metrics.get(k) is not None:
                    acc[m.name][prefix + k] = metrics[k]
    if cfg.out_of_set is not None:
        if "out_of_set" not in opened:
            opened["out_of_set"] = open_split(cfg.out_of_set.data_config(), cfg.out_of_set.split)
        preds: dict[str, list[torch.Tensor]] = {m.name: [] for m, _, _ in todo}
        with torch.no_grad():
            for batch in DataLoader(opened["out_of_set"], batch_size=cfg.explain.batch_size, collate_fn=collate):
                for m, _, _ in todo:
                    preds[m.name].append(m.model(batch["image"].to(device)).argmax(1).cpu())
        first = (getattr(data, "classes", None) or ["0"])[0]
        for m, _, _ in todo:
            acc[m.name][f"out_of_set_called_{first}"] = (torch.cat(preds[m.name]) == 0).double().mean().item()
    for m, cache, digest in todo:
        result[m.name] = acc[m.name]
        _write_json(cache, {"model_hash": digest, "key": key, "accuracy": acc[m.name]})
    return result


def _pooled_values(out: Path) -> tuple[list[dict], list[str]]:
    """The rows of `per_image.csv` and its measure columns."""
    with open(out / "per_image.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        columns = [c for c in reader.fieldnames or [] if c in MEASURES]
    return rows, columns


def _results(
    cfg: StudyConfig,
    names: list[str],
    members: list[Member],
    summary: dict,
    accuracy: dict,
    out: Path,
    data: SalienceDataset,
) -> dict:
    ref = cfg.reference or names[0]
    specs = cfg.explain.specs
    rows, columns = _pooled_values(out)
    by_store = {(s["model"], s.get("spec", specs[0])): s for s in summary["stores"].values()}
    models = {}
    for m in members:
        per_method = {}
        for spec in specs:
            s = by_store[(m.name, spec)]
            per_method[spec] = {"measures": {c: s[c] for c in columns if c in s}, **s.get("curves", {})}
        s = by_store[(m.name, specs[0])]
        models[m.name] = {
            "group": m.group,
            "seed": m.seed,
            "source": m.source,
            "model_hash": s["model_hash"],
            "accuracy": accuracy[m.name],
            **per_method[specs[0]],
        }
        if len(specs) > 1:
            models[m.name]["by_method"] = per_method
        if m.run is not None:
            models[m.name]["pareto"] = _pareto(m.run)
    groups = {g: [m.name for m in members if m.group == g] for g in names}
    by_method = {
        spec: _measure_tables(cfg, ref, groups, [r for r in rows if r.get("method", spec) == spec], columns)
        for spec in specs
    }
    table, comparisons = by_method[specs[0]]
    keys = list(dict.fromkeys(k for a in accuracy.values() for k in a))  # data, then each split, then out of set
    for k in keys:  # per-model values
        values = {
            g: torch.tensor([accuracy[n][k] for n in names if k in accuracy[n]], dtype=torch.float64)
            for g, names in groups.items()
        }
        table[k], comparisons[k] = _summarise_groups(cfg, ref, groups, values)
    results = {
        "study": cfg.model_dump(mode="json"),
        "data": {
            "description": cfg.data.describe(),
            "images": len(data),
            "classes": list(getattr(data, "classes", [])),
            "out_of_set": cfg.out_of_set.describe() if cfg.out_of_set else None,
            "evaluate": {k: v.describe() for k, v in cfg.evaluate.items()},
        },
        "explain": {
            "method": specs[0].partition("@")[0] if cfg.explain.methods else cfg.explain.method,
            "layer": A.parse_method(specs[0])[1] if cfg.explain.methods else cfg.explain.layer,
            "target": cfg.explain.target,
            "methods": specs,
        },
        "reference": ref,
        "models": models,
        "groups": groups,
        "summary": table,
        "comparisons": comparisons,
        "accuracy_keys": keys,
        "stability": summary["stability"],
        "measures": {c: _measure_info(c) for c in columns},
    }
    if len(specs) > 1:
        results["by_method"] = {
            spec: {"summary": t, "comparisons": c, "within": _within_group(cfg, groups, rows, columns, spec, specs[0])}
            for spec, (t, c) in by_method.items()
        }
    results["findings"] = findings(results)
    return results


def _measure_info(name: str) -> dict:
    """What the report needs of a registry entry: label, family, range, better direction."""
    m = MEASURES[name]
    return {"label": m.label, "family": m.family, "kind": m.kind, "range": list(m.range), "better": m.better}


def _summarise_groups(cfg: StudyConfig, ref: str, groups: dict, values: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """Summaries per group of `values` (group -> [n]) and the comparisons with the reference group `ref`."""
    table = {g: summarise(v, seed=cfg.measures.seed, n_boot=cfg.measures.n_boot) for g, v in values.items()}
    comps = {
        f"{g} vs {ref}": compare_groups(values[g], values[ref], seed=cfg.measures.seed, n_perm=cfg.measures.n_perm)
        for g in groups
        if g != ref and len(values[g]) >= 2 and len(values[ref]) >= 2
    }
    return table, comps


def _column(rows: list[dict], c: str, group: str, method: str | None = None) -> torch.Tensor:
    """The finite values of column `c` over the rows of `group` (and of `method`, when given)."""
    keep = [r for r in rows if r["group"] == group and (method is None or r["method"] == method)]
    v = torch.tensor([float(r[c]) for r in keep if r[c] != ""], dtype=torch.float64)
    return v[~torch.isnan(v)]


def _measure_tables(
    cfg: StudyConfig, ref: str, groups: dict, rows: list[dict], columns: list[str]
) -> tuple[dict, dict]:
    """`(table, comparisons)` of the per-image measures of one method, pooled over the models of each group."""
    table, comparisons = {}, {}
    for c in columns:
        values = {g: _column(rows, c, g) for g in groups}
        if any(len(v) for v in values.values()):
            table[c], comparisons[c] = _summarise_groups(cfg, ref, groups, values)
    return table, comparisons


def _within_group(cfg: StudyConfig, groups: dict, rows: list[dict], columns: list[str], spec: str, first: str) -> dict:
    """Per group and measure: `spec` vs the first method on the same images (compare_groups, per-image values)."""
    out: dict = {}
    if spec == first:
        return out
    for g in groups:
        out[g] = {}
        for c in columns:
            a = _column(rows, c, g, spec)
            b = _column(rows, c, g, first)
            if len(a) >= 2 and len(b) >= 2:
                out[g][c] = compare_groups(a, b, seed=cfg.measures.seed, n_perm=cfg.measures.n_perm)
    return out


def _pareto(run_dir: Path) -> list[dict]:
    """Validation (accuracy, EPG, IoU) per epoch of a training run, and whether the epoch is on the kept Pareto front."""
    kept_file = run_dir / "checkpoints" / "pareto.json"
    kept = {e["epoch"] for e in json.loads(kept_file.read_text())["front"]} if kept_file.exists() else set()
    points = []
    for line in (run_dir / "log.jsonl").read_text().splitlines():
        rec = json.loads(line)
        val = rec["val"]
        points.append(
            {
                "epoch": rec["epoch"],
                "accuracy": val.get("accuracy", val.get("f1")),
                "epg": val.get("epg"),
                "iou": val.get("iou"),
                "map": val.get("map"),
                "pareto": rec["epoch"] in kept,
            }
        )
    return points


def _gallery(cfg: StudyConfig, members: list[Member], data: SalienceDataset, stores: dict, out: Path) -> None:
    """The first images with their boxes, human maps and the first model's map of each group, for the report."""
    from salience.store import MapStore

    n = min(cfg.measures.gallery, len(data))
    if n == 0:
        (out / "gallery.pt").unlink(missing_ok=True)
        return
    batch = collate([data[i] for i in range(n)])
    first = {}
    for m in members:
        if m.group not in first:
            store = MapStore(stores[m.name])
            ids = list(store.meta.image_ids)
            rows = [ids.index(i) for i in batch["id"] if i in ids]  # each image's first map (lowest class)
            maps, _ = store.read(rows[0], rows[-1] + 1) if rows else (torch.zeros(0, 1, 1), None)
            first[m.group] = A.upsample(maps[[r - rows[0] for r in rows]], tuple(batch["image"].shape[-2:]))
    classes = list(getattr(data, "classes", []))
    labels = [int(row.argmax()) if row.numel() and row.any() else -1 for row in batch["labels"]]
    torch.save(
        {
            "images": batch["image"],
            "boxes": batch["boxes"],
            "human_maps": batch["human_map"],
            "has_human_map": batch["has_human_map"],
            "labels": labels,
            "classes": classes,
            "maps": first,
            "ids": batch["id"],
        },
        out / "gallery.pt.tmp",
    )
    os.replace(out / "gallery.pt.tmp", out / "gallery.pt")


def findings(results: dict) -> list[str]:
    """Plain sentences generated from the numbers: how each group compares with the reference group."""
    s, c, ref = results["summary"], results["comparisons"], results["reference"]
    groups = [g for g, names in results["groups"].items() if names]
    out = sanity_findings(results)
    about = {
        "epg": "EPG (share of positive salience inside the objects' boxes)",
        "accuracy": "accuracy",
        **{f"{k}_accuracy": f"accuracy on {k}" for k in results["data"]["evaluate"]},
    }
    for g in groups:
        if g == ref:
            continue
        for key, what in about.items():
            if key not in s:
                continue
            a, b = s[key][g]["mean"], s[key][ref]["mean"]
            if a != a or b != b:
                continue
            sentence = f"{g} models {'beat' if a > b else 'did not beat'} {ref} on {what}: {a:.3f} vs {b:.3f}"
            cmp = c.get(key, {}).get(f"{g} vs {ref}")
            if cmp:
                sentence += f" (difference {cmp['diff']:+.3f}, Cohen's d {cmp['cohens_d']:.2f}, permutation p = {cmp['p_value']:.3g})"
            elif key in results["accuracy_keys"]:
                sentence += " (one model per group: no test of the difference)"
            out.append(sentence + ".")
    for g in groups:
        for split in results["data"]["evaluate"]:
            key = f"{split}_accuracy"
            if "accuracy" in s and key in s:
                gap = s["accuracy"][g]["mean"] - s[key][g]["mean"]
                if gap > 0.2:
                    out.append(
                        f"{g} models lose {gap:.2f} accuracy on {split}: they follow something that {split} changes."
                    )
    if "accuracy" in s and s["accuracy"][ref]["mean"] < 0.75:
        out.append(
            f"{ref} models barely learned the task (accuracy {s['accuracy'][ref]['mean']:.2f}): the "
            f"comparisons above mean little."
        )
    sizes = [len(results["groups"][g]) for g in groups]
    if min(sizes) >= 2 and results["accuracy_keys"]:
        n = min(sizes)
        out.append(
            f"Accuracies are compared per model ({n} per group): the smallest p-value a permutation test "
            f"can give is {2 / math.comb(2 * n, n):.2g}."
        )
    ranked = {
        "entropy_histogram": (min, "Lowest histogram entropy (most concentrated salience)"),
        "stability": (max, "Most stable across models of a group (mean pairwise SSIM)"),
        "transform_ssim": (max, "Most consistent under flips, rotations and shifts (mean SSIM)"),
    }
    for key, (pick, what) in ranked.items():
        means = (
            {g: v["ssim"]["mean"] for g, v in results["stability"].items()}
            if key == "stability"
            else {g: s[key][g]["mean"] for g in groups}
            if key in s
            else {}
        )
        if means:
            best = pick(means, key=means.__getitem__)
            out.append(f"{what}: {best} ({means[best]:.3f}).")
    return out


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, allow_nan=True))


def measure_checkpoints(
    groups: Mapping[str, Sequence[str | Path]],
    out: str | Path,
    *,
    method: str | list[str],
    split: str = "test",
    layer: str | None = None,
    target_policy: str = "true",
    overrides: list[str] | None = None,
    n_probe: int = 128,
    out_of_set: str | None = None,
    seed: int = 0,
    batch_size: int = 64,
    device: str = "cpu",
    progress: bool = False,
    ctx: Context | None = None,
    measures: list[str] | None = None,
    samples: int | None = None,
) -> dict | None:
    """`salience measure --checkpoints / --group`: a study of salience checkpoints (group -> paths) on `split`
    of their (shared) data config, explained with `method` (`NAME`, `NAME@LAYER`, or the name and `layer`),
    with the first `n_probe` images of the split `out_of_set` as out-of-set samples; a list of methods compares
    them. `measures`: names of `MEASURES` to run (None: every one the data support); `samples`: see
    `MeasuresConfig.samples`. `overrides` change the
    checkpoints' saved configs (e.g. `data.root=/data`). Returns the study's results (None off rank 0)."""
    if isinstance(method, list):
        if layer is not None:
            raise ValueError("layer applies to one method; give each method as NAME@LAYER")
        explain: dict[str, Any] = {"methods": method}
    else:
        name, _, at = method.partition("@")
        if at and layer is not None:
            raise ValueError(f"method {method!r} names its layer; do not also pass layer={layer!r}")
        explain = {"method": name, "layer": at or layer}
    data = None
    for paths in groups.values():
        for path in paths:
            _, config = load_run(path, overrides)
            if data is None:
                data, first = config.data, path
            elif config.data != data:
                raise ValueError(
                    f"{path}: its data config differs from that of {first}; measure checkpoints of "
                    f"one data set together (or align them with --set data.<key>=...)"
                )
    if data is None:
        raise ValueError("measure_checkpoints: no checkpoints given")
    section = {
        "format": data.format,
        "root": data.root,
        "size": data.size,
        "options": data.options,
        "workers": data.workers,
    }
    study = {
        "out": str(out),
        "device": device,
        "data": section | {"split": split},
        "explain": explain | {"target": target_policy, "batch_size": batch_size},
        "measures": {"n_probe": n_probe, "seed": seed, "select": measures, "samples": samples},
        "groups": {g: {"weights": [str(p) for p in paths]} for g, paths in groups.items()},
    }
    if out_of_set is not None:
        study["out_of_set"] = section | {"split": out_of_set}
    cfg = load_study(study)
    return run(cfg, ctx=ctx, progress=progress)
