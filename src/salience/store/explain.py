"""Fill a map store from a model and a data set (the `salience explain` command)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from salience.attribution import attribute
from salience.data.core import collate
from salience.store.zarr_store import MapStore, StoreMeta, fill, model_hash


def targets_for(policy: str, labels: torch.Tensor, logits: torch.Tensor, ids: list[str]) -> torch.Tensor:
    """Long `[B]` classes to explain: `true` (single-label images only), `predicted`, or `class:<k>`."""
    if policy == "predicted":
        return logits.argmax(1)
    if policy.startswith("class:"):
        k = int(policy[6:])
        if not 0 <= k < logits.shape[1]:
            raise ValueError(f"target_policy {policy!r}: the model has {logits.shape[1]} classes")
        return torch.full((len(labels),), k, dtype=torch.long, device=logits.device)
    counts = labels.sum(1)
    bad = (counts != 1).nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"target_policy 'true' needs exactly one class per image; images {[ids[i] for i in bad[:5]]} "
                         "have none or several (use 'predicted' or 'class:<k>')")
    return labels.argmax(1).to(logits.device)


def dataset_ids(dataset) -> list[str]:
    """Image ids of a data set of the batch contract, in order (from its records when it has them)."""
    return [r.id for r in dataset.records] if hasattr(dataset, "records") else [dataset[i]["id"] for i in range(len(dataset))]


def explain_dataset(model: torch.nn.Module, dataset, method: str, out: str | Path, *, layer: str | None = None,
                    target_policy: str = "true", data: str = "", split: str = "", chunk_size: int = 256,
                    batch_size: int = 64, workers: int = 0, progress: bool = False) -> MapStore:
    """Write the maps of `method` for every image of `dataset` (items of the batch contract) into the store at
    `out`, resuming an existing store with the same metadata (finished chunks are not recomputed).
    `workers` > 0 reads and transforms the images in that many processes while the model runs."""
    model.eval()
    device = next(model.parameters()).device
    ids = dataset_ids(dataset)

    def compute(start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        maps, targets = [], []
        loader = DataLoader(Subset(dataset, range(start, stop)), batch_size=batch_size, collate_fn=collate,
                            num_workers=workers if stop - start > batch_size else 0)
        for batch in loader:
            x = batch["image"].to(device)
            with torch.no_grad():
                logits = model(x)
            t = targets_for(target_policy, batch["labels"].to(device), logits, batch["id"])
            maps.append(attribute(method, model, x, t, layer=layer).cpu())
            targets.append(t.cpu())
        return torch.cat(maps), torch.cat(targets)

    first, _ = compute(0, 1)
    meta = StoreMeta(model_hash=model_hash(model), method=method, layer=layer, target_policy=target_policy,
                     resolution=tuple(dataset[0]["image"].shape[-2:]), data=data, split=split, image_ids=tuple(ids))
    store = MapStore.resume(out, meta, tuple(first.shape[-2:]), chunk_size)
    fill(store, compute, progress=progress)
    return store


def load_run(checkpoint: str | Path, overrides: list[str] | None = None, device: str = "cpu"):
    """`(model in eval mode on device, validated config)` of a training checkpoint; `overrides` are
    `key=value` changes to its saved config, e.g. `data.root=/data/VOCdevkit`."""
    from salience.models import build
    from salience.training.checkpoint import load_checkpoint
    from salience.training.config import _set, parse_overrides, validate

    state = load_checkpoint(checkpoint, map_location="cpu")
    tree = state["config"]
    for key, value in parse_overrides(overrides or []):
        _set(tree, key, value)
    config = validate(tree, f"{checkpoint} (saved config)")
    model = build(config.model.name, len(state["classes"]))
    model.load_state_dict(state["model"])
    return model.to(device).eval(), config


def data_name(config) -> str:
    """How a store's metadata names the data of a training config."""
    return config.data.format if config.data.root is None else f"{config.data.format}:{config.data.root}"


def explain_checkpoint(checkpoint: str | Path, split: str, method: str, out: str | Path, *, layer: str | None = None,
                       target_policy: str = "true", overrides: list[str] | None = None, chunk_size: int = 256,
                       batch_size: int = 64, device: str = "cpu", progress: bool = False) -> MapStore:
    """`explain_dataset` for a training checkpoint on `split` of its saved data config (`overrides`: see
    `load_run`; `data.workers=1` loads images in a second process)."""
    from salience.training.datasets import open_split

    model, config = load_run(checkpoint, overrides, device)
    return explain_dataset(model, open_split(config.data, split), method, out, layer=layer,
                           target_policy=target_policy, data=data_name(config), split=split, chunk_size=chunk_size,
                           batch_size=batch_size, workers=config.data.workers, progress=progress)
