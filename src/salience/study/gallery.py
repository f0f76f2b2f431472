"""The study's gallery (`gallery.pt`): the first images with their boxes, human maps and the first model's
map of each group, for the report."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from salience import attribution as A
from salience.data.core import SalienceDataset, collate
from salience.store import MapStore
from salience.study.config import StudyConfig
from salience.study.members import Member


def write_gallery(
    cfg: StudyConfig, members: list[Member], data: SalienceDataset, paths: dict[tuple[str, str], Path], out: Path
) -> None:
    """Write `out/gallery.pt` from the first `measures.gallery` images of `data` and the first method's stores
    (`paths`: (model, spec) -> store); remove it when the study shows none."""
    n = min(cfg.measures.gallery, len(data))
    if n == 0:
        (out / "gallery.pt").unlink(missing_ok=True)
        return
    batch = collate([data[i] for i in range(n)])
    spec = cfg.explain.specs[0]
    maps = {}
    for m in members:
        if m.group not in maps:
            maps[m.group] = first_maps(paths[(m.name, spec)], batch["id"], tuple(batch["image"].shape[-2:]))
    labels = [int(row.argmax()) if row.numel() and row.any() else -1 for row in batch["labels"]]
    torch.save(
        {
            "images": batch["image"],
            "boxes": batch["boxes"],
            "human_maps": batch["human_map"],
            "has_human_map": batch["has_human_map"],
            "labels": labels,
            "classes": list(getattr(data, "classes", [])),
            "maps": maps,
            "ids": batch["id"],
        },
        out / "gallery.pt.tmp",
    )
    os.replace(out / "gallery.pt.tmp", out / "gallery.pt")


def first_maps(store_path: Path, ids: list[str], size: tuple[int, int]) -> torch.Tensor:
    """The maps `[N, H, W]` (upsampled to `size`) of the store's first item of each image of `ids` (its
    lowest class) that the store holds."""
    store = MapStore(store_path)
    held = list(store.meta.image_ids)
    rows = [held.index(i) for i in ids if i in held]
    maps, _ = store.read(rows[0], rows[-1] + 1) if rows else (torch.zeros(0, 1, 1), None)
    return A.upsample(maps[[r - rows[0] for r in rows]], size)
