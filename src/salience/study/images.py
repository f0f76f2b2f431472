"""The study's images: the split it explains, and the out-of-set images of the probes."""

from __future__ import annotations

import torch

from salience.data.core import SalienceDataset, collate
from salience.io.datasets import open_split
from salience.study.config import StudyConfig


def open_images(cfg: StudyConfig) -> tuple[SalienceDataset, torch.Tensor | None, torch.Tensor]:
    """`(data, out_of_set, first)`: the split explained (refused when empty), the first `measures.n_probe`
    out-of-set images `[N, 3, H, W]` (None without `out_of_set` or probes), and the first image `[1, 3, H, W]`
    (to check models on). Bad data fail here, before any training."""
    data = open_split(cfg.data.data_config(), cfg.data.split)
    if len(data) == 0:
        raise ValueError(f"data: {cfg.data.describe()} holds no images")
    out_of_set = None
    if cfg.out_of_set is not None and cfg.measures.n_probe > 0:
        other = open_split(cfg.out_of_set.data_config(), cfg.out_of_set.split)
        out_of_set = collate([other[i] for i in range(min(cfg.measures.n_probe, len(other)))])["image"]
    first = collate([data[0]])["image"]
    return data, out_of_set, first
