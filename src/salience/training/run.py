"""Score a saved checkpoint on a split of its data (the `salience evaluate` command)."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import DataLoader

from salience import distributed as dist
from salience.data.core import collate
from salience.io.checkpoint import load_checkpoint
from salience.io.config import _set, parse_overrides, validate
from salience.io.datasets import open_split
from salience.training.evaluate import evaluate_models


def evaluate_checkpoint(
    path: str | Path, split: str = "test", overrides: list[str] | None = None, device: str = "auto"
) -> dict:
    """Metrics of the checkpoint's model on `split` of its data config (`overrides`: `key=value`
    changes to the saved config, e.g. `data.root=/data/VOCdevkit`)."""
    state = load_checkpoint(path, map_location="cpu")
    tree = state["config"]
    for key, value in parse_overrides(overrides or []):
        _set(tree, key, value)
    config = validate(tree, f"{path} (saved config)")
    ctx = dist.Context(0, 1, dist.resolve_device(device), False)
    ds = open_split(config.data, split)
    model = config.model.build(len(state["classes"]))
    model.load_state_dict(state["model"])
    model.to(ctx.device)
    loader = DataLoader(
        ds, batch_size=config.eval.batch_size or config.batch_size, collate_fn=collate, num_workers=config.data.workers
    )
    out = evaluate_models(
        [model],
        loader,
        state["multi_label"],
        config.eval.method or config.guidance.method,
        config.eval.depth or config.guidance.depth,
        config.eval.iou_threshold,
        ctx=ctx,
        amp=config.amp,
    )[0]
    return {"checkpoint": str(path), "epoch": state["epoch"], "split": split, **out}
