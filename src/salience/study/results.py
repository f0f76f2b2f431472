"""The study's results: every number the report shows, and where the models and images came from, as one
JSON-ready dict (`results.json`)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from salience import attribution as A
from salience.data.core import SalienceDataset
from salience.distributed import atomic_write_text
from salience.measures import MEASURES
from salience.study.config import StudyConfig
from salience.study.members import Member
from salience.study.summaries import accuracy_keys, accuracy_tables, measure_tables, within_group


def assemble_results(
    cfg: StudyConfig,
    names: list[str],
    members: list[Member],
    summary: dict,
    accuracy: dict[str, dict],
    out: Path,
    data: SalienceDataset,
) -> dict:
    """The results of a measured study (without its findings): `names` its groups in order, `summary` what
    `measure_stores` returned, `accuracy` model -> metrics; the per-image values are read from
    `out/per_image.csv`."""
    ref = cfg.reference or names[0]
    specs = cfg.explain.specs
    rows, columns = pooled_values(out)
    groups = {g: [m.name for m in members if m.group == g] for g in names}
    by_method = {
        spec: measure_tables(cfg, ref, groups, [r for r in rows if r.get("method", spec) == spec], columns)
        for spec in specs
    }
    table, comparisons = by_method[specs[0]]  # the first method's tables, with the accuracies (also in by_method)
    accuracy_table, accuracy_comparisons = accuracy_tables(cfg, ref, groups, accuracy)
    table |= accuracy_table
    comparisons |= accuracy_comparisons
    results = {
        "study": cfg.model_dump(mode="json"),
        "data": _data_info(cfg, data),
        "explain": _explain_info(cfg),
        "reference": ref,
        "models": model_entries(cfg, members, summary, accuracy, columns),
        "groups": groups,
        "summary": table,
        "comparisons": comparisons,
        "accuracy_keys": accuracy_keys(accuracy),
        "stability": summary["stability"],
        "measures": {c: _measure_info(c) for c in columns},
    }
    if "focus" in summary:  # Focus on mosaics (`salience.study.measuring.measure_focus`): also in focus.json
        results["focus"] = summary["focus"]
    if len(specs) > 1:
        results["by_method"] = {
            spec: {"summary": t, "comparisons": c, "within": within_group(cfg, groups, rows, columns, spec, specs[0])}
            for spec, (t, c) in by_method.items()
        }
    return results


def pooled_values(out: Path) -> tuple[list[dict], list[str]]:
    """The rows of `out/per_image.csv` (column -> text) and its measure columns."""
    with open(out / "per_image.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        columns = [c for c in reader.fieldnames or [] if c in MEASURES]
    return rows, columns


def model_entries(
    cfg: StudyConfig, members: list[Member], summary: dict, accuracy: dict[str, dict], columns: list[str]
) -> dict[str, dict]:
    """model -> group, seed, source, hash, accuracies, the first method's measures and curves (`by_method`: every
    method's, when several), and a trained model's validation Pareto points."""
    specs = cfg.explain.specs
    by_store = {(s["model"], s.get("spec", specs[0])): s for s in summary["stores"].values()}
    models = {}
    for m in members:
        per_method = {}
        for spec in specs:
            s = by_store[(m.name, spec)]
            per_method[spec] = {"measures": {c: s[c] for c in columns if c in s}, **s.get("curves", {})}
        models[m.name] = {
            "group": m.group,
            "seed": m.seed,
            "source": m.source,
            "model_hash": by_store[(m.name, specs[0])]["model_hash"],
            "accuracy": accuracy[m.name],
            **per_method[specs[0]],
        }
        if len(specs) > 1:
            models[m.name]["by_method"] = per_method
        if m.run is not None:
            models[m.name]["pareto"] = pareto(m.run)
    return models


def pareto(run_dir: Path) -> list[dict]:
    """Validation (accuracy, EPG, IoU, mAP) per epoch of a training run, and whether the epoch is on the kept
    Pareto front."""
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


def _data_info(cfg: StudyConfig, data: SalienceDataset) -> dict:
    """Where the images came from: the data, their size and classes, the out-of-set and evaluate splits."""
    return {
        "description": cfg.data.describe(),
        "images": len(data),
        "classes": list(getattr(data, "classes", [])),
        "out_of_set": cfg.out_of_set.describe() if cfg.out_of_set else None,
        "evaluate": {k: v.describe() for k, v in cfg.evaluate.items()},
    }


def _explain_info(cfg: StudyConfig) -> dict:
    """The explain method (the first one's name and layer, when several), target policy and method specs."""
    specs = cfg.explain.specs
    return {
        "method": specs[0].partition("@")[0] if cfg.explain.methods else cfg.explain.method,
        "layer": A.parse_method(specs[0])[1] if cfg.explain.methods else cfg.explain.layer,
        "target": cfg.explain.target,
        "methods": specs,
    }


def _measure_info(name: str) -> dict:
    """What the report needs of a registry entry: label, family, range, better direction."""
    m = MEASURES[name]
    return {"label": m.label, "family": m.family, "kind": m.kind, "range": list(m.range), "better": m.better}


def write_json(path: Path, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(obj, indent=1, allow_nan=True))
