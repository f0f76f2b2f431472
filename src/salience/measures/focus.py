"""Focus (Arias-Duart et al. 2022, as Quantus 0.6 computes it) on 2x2 mosaics of images.

A mosaic holds four images in a 2x2 grid: two of its target class and two of other classes (`mosaics`, with
Quantus' `mosaic_creation` draws). The mosaic is explained for its target class; Focus is the share of the
map's positive relevance that lies on the two target-class images. A probe of Focus reads mosaics: its images
are mosaics and its masks mark their target-class quadrants (`mosaics(...)["masks"]`).
"""

from __future__ import annotations

import math
import random

import torch

from salience.attribution import upsample
from salience.measures.registry import Probe

_HOW = (
    "focus reads 2x2 mosaics: build them with salience.measures.focus.mosaics(images, labels, seed) and evaluate "
    'their "x" for their "target" with masks= their "masks" (the target-class quadrants)'
)


def _draw(labels: list[int], per_class: int, seed: int) -> tuple[list[list[int]], list[list[int]], list[int]]:
    """Quantus' `mosaic_creation` draws (Python's `random.Random(seed)`, in its order): per class in sorted
    order, `per_class` mosaics of two images of the class and two of others, shuffled into the four quadrants
    (top left, top right, bottom left, bottom right). Returns each mosaic's image indices, their classes, its
    target class."""
    rng = random.Random(seed)
    classes = sorted(set(labels))
    members = {c: [i for i, label in enumerate(labels) if label == c] for c in classes}
    indices, classes_of, targets = [], [], []
    for target in classes:
        others = [c for c in classes if c != target]
        own = members[target] * math.ceil(2 * per_class / len(members[target]))
        rng.shuffle(own)
        k = math.ceil(2 * per_class / len(others))
        drawn = [(i, c) for c in others for i in rng.choices(members[c], k=k)]
        rng.shuffle(drawn)
        own_it, other_it = iter(own), iter(drawn)
        for _ in range(per_class):
            quads = [(next(own_it), target), (next(own_it), target), next(other_it), next(other_it)]
            rng.shuffle(quads)
            indices.append([i for i, _ in quads])
            classes_of.append([c for _, c in quads])
            targets.append(target)
    return indices, classes_of, targets


def mosaics(images: torch.Tensor, labels: torch.Tensor, seed: int = 0, per_class: int | None = None) -> dict:
    """2x2 mosaics of `images [N, C, H, W]` with class `labels [N]` (long, at least two classes), as Quantus'
    `mosaic_creation` builds them with the same `seed` (same draws; Quantus leaves seed 0 unseeded): for each
    class in sorted order, `per_class` mosaics (None: `ceil(N / classes)`, as many mosaics as images), each of two
    images of the class and two of other classes in shuffled quadrants.

    Returns `{"x": [M, C, 2H, 2W], "target": [M] (the class each mosaic is explained for), "positions": [M, 4]
    (1 where the quadrant top left, top right, bottom left, bottom right holds the target class), "masks":
    [M, 2H, 2W] bool (the target-class quadrants), "indices": [M, 4] (the image in each quadrant), "classes":
    [M, 4] (its class), "seed", "per_class"}`."""
    if images.dim() != 4 or labels.shape != (len(images),):
        raise ValueError(f"mosaics: images must be [N, C, H, W] and labels [N]; got {tuple(images.shape)}, "
                         f"{tuple(labels.shape)}")  # fmt: skip
    found = labels.tolist()
    if len(set(found)) < 2:
        raise ValueError(f"mosaics need images of at least two classes; labels hold {sorted(set(found))}")
    if per_class is None:
        per_class = math.ceil(len(found) / len(set(found)))
    if per_class < 1:
        raise ValueError(f"mosaics: per_class must be at least 1, got {per_class}")
    idx, cls, tgt = _draw([int(v) for v in found], per_class, seed)
    index = torch.tensor(idx, dtype=torch.long, device=images.device)
    quads = images[index]  # [M, 4, C, H, W]
    x = torch.cat([torch.cat([quads[:, 0], quads[:, 1]], -1), torch.cat([quads[:, 2], quads[:, 3]], -1)], -2)
    target = torch.tensor(tgt, dtype=torch.long, device=images.device)
    classes = torch.tensor(cls, dtype=torch.long, device=images.device)
    positions = (classes == target[:, None]).long()
    masks = quadrant_masks(positions, (x.shape[-2], x.shape[-1]))
    return {"x": x, "target": target, "positions": positions, "masks": masks, "indices": index,
            "classes": classes, "seed": seed, "per_class": per_class}  # fmt: skip


def quadrant_masks(positions: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """`[M, H, W]` bool masks of the quadrants marked in `positions [M, 4]` (top left, top right, bottom left,
    bottom right; the split at `H // 2`, `W // 2`, as Quantus' Focus splits)."""
    h, w = size
    rows = (torch.arange(h, device=positions.device) >= h // 2).long()
    cols = (torch.arange(w, device=positions.device) >= w // 2).long()
    quadrant = 2 * rows[:, None] + cols[None, :]  # [H, W]: 0..3
    return positions.bool()[:, quadrant]


def quadrants(masks: torch.Tensor) -> torch.Tensor:
    """The positions `[B, 4]` of mosaic masks `[B, H, W]` (constant on each quadrant, two of four set); any other
    masks raise `ValueError` saying how to build mosaics."""
    if masks.dim() != 3:
        raise ValueError(f"{_HOW}; masks must be [B, H, W], got {tuple(masks.shape)}")
    m = masks > 0.5 if masks.dtype != torch.bool else masks
    h, w = m.shape[-2] // 2, m.shape[-1] // 2
    parts = [m[:, :h, :w], m[:, :h, w:], m[:, h:, :w], m[:, h:, w:]]
    positions = torch.stack([p.flatten(1)[:, 0] for p in parts], 1)
    constant = torch.stack([(p == p.flatten(1)[:, :1, None]).flatten(1).all(1) for p in parts], 1).all(1)
    if not bool((constant & (positions.sum(1) == 2)).all()):
        raise ValueError(f"{_HOW}; these masks do not mark two of the four quadrants of each image")
    return positions.long()


def focus(maps: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Focus of maps `[B, H, W]` of mosaics (at the mosaic's size) with target-class `positions [B, 4]`: the
    positive relevance on the target-class quadrants over all positive relevance, after dividing each map by its
    max |A| (Quantus' `normalise_by_max`, whose batch-wide max is per image here; `abs=False`) and the 1e-9 of
    Quantus in the denominator -> `[B]` in [0, 1]."""
    if maps.dim() != 3 or positions.shape != (len(maps), 4):
        raise ValueError(f"focus: maps must be [B, H, W] and positions [B, 4]; got {tuple(maps.shape)}, "
                         f"{tuple(positions.shape)}")  # fmt: skip
    top = maps.abs().flatten(1).amax(1)
    a = (maps / torch.where(top > 0, top, 1.0)[:, None, None]).clamp(min=0)
    h, w = maps.shape[-2] // 2, maps.shape[-1] // 2
    rows = torch.stack([a[:, :h].sum(1), a[:, h:].sum(1)], 1)  # [B, 2, W]: top, bottom
    quads = torch.stack([rows[..., :w].sum(-1), rows[..., w:].sum(-1)], -1).flatten(1)  # [B, 4]
    return (quads * positions.to(quads.dtype)).sum(1) / (quads.sum(1) + 1e-9)


def focus_probe(p: Probe) -> torch.Tensor:
    """The registry's `focus`: `focus` of the probe's maps (upsampled to its images) with the positions of its
    masks, which must mark mosaics' target-class quadrants (`quadrants`)."""
    if p.masks is None:
        raise ValueError(f"{_HOW}; the probe has no masks")
    size = (p.x.shape[-2], p.x.shape[-1])
    return focus(upsample(p.maps.detach(), size), quadrants(p.masks))
