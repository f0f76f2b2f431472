"""The study's evaluation: each model's task metrics (accuracies) on the study's data, on every `evaluate`
split and on the out-of-set images, cached per model in `out/models/<model>.json`."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from salience.data.core import SalienceDataset, collate
from salience.distributed import Context, atomic_write_text
from salience.io.datasets import open_split
from salience.store import model_hash
from salience.study.config import StudyConfig, StudyData
from salience.study.members import Member

METRICS = ("accuracy", "auc", "f1", "map", "worst_group_accuracy")
"""The task metrics kept of each labelled split (and EPG and IoU on an `evaluate` split with boxes)."""


def accuracies(cfg: StudyConfig, members: list[Member], out: Path, data: SalienceDataset) -> dict[str, dict]:
    """model name -> `{metric: value}`: the task metrics on `data` (unprefixed) and on every `evaluate` split
    (`<split>_<metric>`, with EPG and IoU of the explain method's maps where the split has boxes), and the
    share of out-of-set images given the first class (`out_of_set_called_<class>`). Kept in
    `out/models/<model>.json` with the model's hash, so a rerun recomputes only changed models."""
    key = _cache_key(cfg)
    (out / "models").mkdir(exist_ok=True)
    result: dict[str, dict] = {}
    todo = []
    for m in members:
        cache = out / "models" / f"{m.name}.json"
        digest = model_hash(m.model)
        saved = json.loads(cache.read_text()) if cache.exists() else {}
        if saved.get("model_hash") == digest and saved.get("key") == key:
            result[m.name] = saved["accuracy"]
        else:
            todo.append((m, cache, digest))
    if not todo:
        return result
    models = [m.model for m, _, _ in todo]
    acc: list[dict] = [{} for _ in todo]
    for name, d in ({"data": cfg.data} | dict(cfg.evaluate)).items():
        split = data if name == "data" else open_split(d.data_config(), d.split)
        for a, metrics in zip(acc, split_metrics(cfg, models, name, split, d), strict=True):
            a.update(metrics)
    if cfg.out_of_set is not None:
        first = (getattr(data, "classes", None) or ["0"])[0]
        other = open_split(cfg.out_of_set.data_config(), cfg.out_of_set.split)
        for a, rate in zip(acc, called_first(cfg, models, other), strict=True):
            a[f"out_of_set_called_{first}"] = rate
    for (m, cache, digest), a in zip(todo, acc, strict=True):
        result[m.name] = a
        atomic_write_text(cache, json.dumps({"model_hash": digest, "key": key, "accuracy": a}, indent=1))
    return result


def _cache_key(cfg: StudyConfig) -> str:
    """What the cached metrics depend on besides the model: the splits, the out-of-set images, the method."""
    splits = {"data": cfg.data} | dict(cfg.evaluate)
    return json.dumps(
        {k: v.model_dump(mode="json") for k, v in splits.items()}
        | {"out_of_set": cfg.out_of_set.model_dump(mode="json") if cfg.out_of_set else None}
        | {"explain": cfg.explain.model_dump(mode="json")},
        sort_keys=True,
    )


def split_metrics(
    cfg: StudyConfig, models: list[nn.Module], name: str, split: SalienceDataset, d: StudyData
) -> list[dict]:
    """Per model, `METRICS` on the split `name` (read once; keys prefixed `<name>_` but for "data"), with EPG
    and IoU where an `evaluate` split has boxes; empty dicts for unlabelled images (a flat folder)."""
    from salience.training.evaluate import evaluate_models

    if not getattr(split, "classes", None):
        return [{} for _ in models]
    records = getattr(split, "records", [])
    multi = any(len(set(r.labels)) > 1 for r in records)
    boxed = name != "data" and any(len(r.boxes) for r in records)  # data: the measures give localisation
    loader = DataLoader(split, batch_size=cfg.explain.batch_size, collate_fn=collate, num_workers=d.workers)
    device = next(models[0].parameters()).device
    per_model = evaluate_models(
        models,
        loader,
        multi,
        cfg.explain.method,
        cfg.explain.layer or "input",
        localisation=boxed,
        ctx=Context(0, 1, device, False),
    )
    prefix = "" if name == "data" else f"{name}_"
    keys = (*METRICS, *(("epg", "iou") if boxed else ()))
    return [{prefix + k: metrics[k] for k in keys if metrics.get(k) is not None} for metrics in per_model]


def called_first(cfg: StudyConfig, models: list[nn.Module], images: SalienceDataset) -> list[float]:
    """Per model, the share of `images` it gives class 0 (for out-of-set images: how often they are called
    the first class)."""
    device = next(models[0].parameters()).device
    preds: list[list[torch.Tensor]] = [[] for _ in models]
    with torch.no_grad():
        for batch in DataLoader(images, batch_size=cfg.explain.batch_size, collate_fn=collate):
            for p, model in zip(preds, models, strict=True):
                p.append(model(batch["image"].to(device)).argmax(1).cpu())
    return [(torch.cat(p) == 0).double().mean().item() for p in preds]
