"""Validation and test metrics: task metrics, EPG and IoU, worst-group accuracy.

Single-label: accuracy, ROC AUC (binary: on the softmax probability of class 1; more classes:
macro one-vs-rest). Multi-label: micro F1 at logit >= 0 and mAP (macro average precision over the
classes with at least one positive image, `mean_average_precision`). EPG and IoU: for every true class of
every image (attribution of that class, model in eval mode), against the union of that class's
boxes (or the image's mask, e.g. a segmentation, when it has no boxes), averaged over pairs with a non-empty mask.
Worst-group accuracy: the lowest accuracy over groups >= 0 (single-label data with groups).
Under torchrun each process evaluates its shard and the per-image results are gathered.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn
from torchmetrics.functional.classification import (
    binary_auroc,
    multiclass_accuracy,
    multiclass_auroc,
    multilabel_average_precision,
    multilabel_f1_score,
)

from salience import distributed as dist
from salience.attribution import Explainer, expand_targets
from salience.attribution.registry import get_method
from salience.data.core import object_masks
from salience.measures import epg as epg_measure
from salience.measures import iou as iou_measure


def task_metric_names(multi_label: bool) -> tuple[str, ...]:
    """The task metrics that enter the Pareto front: F1 and mAP (multi-label), or accuracy."""
    return ("f1", "map") if multi_label else ("accuracy",)


def mean_average_precision(scores: torch.Tensor, labels: torch.Tensor) -> float | None:
    """Macro AP: the mean over classes with at least one positive of each class's average precision.

    scores ``[N, C]`` (logits or probabilities: AP only ranks them), labels ``[N, C]`` multi-hot. AP is
    ``Σ_n (R_n − R_{n−1}) P_n`` over the thresholds (torchmetrics, exact, as scikit-learn's
    ``average_precision_score``); a class without positives has no AP and is left out; None if no class has one.
    """
    positive = labels.sum(0) > 0
    if not positive.any():
        return None
    per_class = multilabel_average_precision(
        scores.float(), labels.int(), num_labels=labels.shape[1], average="none", thresholds=None
    )
    return per_class[positive].mean().item()


def evaluate(model: nn.Module, loader, multi_label: bool, *args, **kwargs) -> dict:
    """Metrics of `model` on `loader` (model put in eval mode). Returns a JSON-ready dict.

    The other arguments (`method`, `depth`, `iou_threshold`, `ctx`, `amp`, `localisation`) are
    those of `evaluate_models`, which this runs on the one model.
    """
    return evaluate_models([model], loader, multi_label, *args, **kwargs)[0]


def evaluate_models(
    models: list[nn.Module],
    loader,
    multi_label: bool,
    method: str = "input_x_gradient",
    depth: str = "input",
    iou_threshold: float = 0.5,
    ctx: dist.Context | None = None,
    amp: bool = False,
    localisation: bool = True,
) -> list[dict]:
    """Metrics of each of `models` on `loader`, reading the data once: every batch goes through every model
    in turn (each in eval mode, its mode restored after). Returns one JSON-ready dict per model.

    `method` at `depth` gives the maps of EPG and IoU (`iou_threshold`), skipped without `localisation`;
    `ctx`: the processes sharing the data (default: one, on the first model's device); `amp`: bfloat16 on CUDA.
    """
    ctx = ctx or dist.Context(0, 1, next(models[0].parameters()).device, False)
    was_training = [m.training for m in models]
    for m in models:
        m.eval()
    device = ctx.device
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if amp and device.type == "cuda" else nullcontext()
    layer = None if depth == "input" or not get_method(method).takes_layer else depth
    parts: list[dict[str, list]] = [{k: [] for k in ("logits", "epg", "iou")} for _ in models]
    shared: dict[str, list] = {k: [] for k in ("index", "labels", "group")}
    explainers = [Explainer(method, m, layer) for m in models]
    for batch in loader:
        x = batch["image"].to(device)
        every = torch.arange(x.shape[0])
        image, cls = expand_targets(batch["labels"], x.shape[0])
        masks = object_masks(batch, image, cls).to(device) if localisation and image.numel() else None
        # when every image has a pair, its scores come with its maps: the row of its first pair
        first = torch.searchsorted(image, every).to(device) if torch.equal(image.unique(), every) else None
        for model, explainer, part in zip(models, explainers, parts, strict=True):
            logits = None
            if masks is not None:
                with autocast:
                    scores, maps = explainer.scored(x[image.to(device)], cls.to(device))
                part["epg"].append(epg_measure(maps.float(), masks).cpu())
                part["iou"].append(iou_measure(maps.float(), masks, iou_threshold).cpu())
                if first is not None:
                    logits = scores.float()[first]
            if logits is None:
                with torch.no_grad(), autocast:
                    logits = model(x).float()
            part["logits"].append(logits.cpu())
        shared["index"].append(batch["index"])
        shared["labels"].append(batch["labels"])
        shared["group"].append(batch["group"])
    for m, was in zip(models, was_training, strict=True):
        m.train(was)
    return [_gathered_metrics(shared | part, ctx, multi_label) for part in parts]


def _gathered_metrics(batches: dict[str, list], ctx: dist.Context, multi_label: bool) -> dict:
    """`metrics` of one model from this process's per-batch results (`logits`, `labels`, `group`, `epg`,
    `iou`, `index`: lists of tensors) gathered with those of the other processes."""
    local = {k: torch.cat(v) if v else torch.zeros(0) for k, v in batches.items()}
    gathered = dist.gather(local, ctx)
    allp = {k: torch.cat([g[k] for g in gathered]) for k in local}
    return metrics(allp["logits"], allp["labels"], allp["group"], allp["epg"], allp["iou"], multi_label)


def metrics(
    logits: torch.Tensor,
    labels: torch.Tensor,
    group: torch.Tensor,
    epg: torch.Tensor,
    iou: torch.Tensor,
    multi_label: bool,
) -> dict:
    """Metrics from per-image logits `[N, C]`, multi-hot labels `[N, C]`, groups `[N]` and per-pair
    EPG / IoU values (NaN where undefined)."""
    out: dict = {"images": int(logits.shape[0])}
    num_classes = logits.shape[1]
    if logits.shape[0] == 0:
        raise ValueError("evaluate: the split has no images")
    if multi_label:
        # integer predictions skip torchmetrics' threshold (it tests p > t; docs/definitions.md says logit >= 0)
        out["f1"] = multilabel_f1_score(
            (logits >= 0).int(), labels.int(), num_labels=num_classes, average="micro"
        ).item()
        out["map"] = mean_average_precision(logits, labels)
    else:
        target = labels.argmax(1)
        pred = logits.argmax(1)
        out["accuracy"] = (
            multiclass_accuracy(pred, target, num_classes=num_classes, average="micro").item()
            if num_classes > 1
            else 1.0
        )
        if num_classes == 2:
            out["auc"] = binary_auroc(torch.softmax(logits, 1)[:, 1], target).item()
        elif num_classes > 2:
            out["auc"] = multiclass_auroc(torch.softmax(logits, 1), target, num_classes=num_classes).item()
        grouped = group >= 0
        if grouped.any():
            correct = (pred == target).float()
            per_group = {str(int(k)): correct[group == k].mean().item() for k in group[grouped].unique()}
            out["group_accuracy"] = per_group
            out["worst_group_accuracy"] = min(per_group.values())
    for name, values in (("epg", epg), ("iou", iou)):
        ok = values[~torch.isnan(values)]
        out[name] = ok.mean().item() if ok.numel() else None
    return out
