"""Entropy of salience maps, measure (a) of "Explain To Me" (docs/definitions.md, "The five salience measures")."""

from __future__ import annotations

import math

import torch

from salience.measures._checks import check_maps, minmax, unit_scale

KINDS = ("histogram", "spatial")


def entropy(maps: torch.Tensor, kind: str = "histogram") -> torch.Tensor:
    """Normalised entropy of each map in `maps` `[B, h, w]` -> `[B]` in [0, 1], at the maps' own resolution.

    `histogram` (the paper's): min-max normalise each map (signed values as they are), quantise to
    `floor(255 * m)` (uint8 levels), take the Shannon entropy in bits of the level histogram and divide by
    `log2(min(h * w, 256))`. A constant (or all-zero) map has a single level: entropy 0.

    `spatial`: `p = |A| / sum |A|` over pixels, entropy in nats divided by `log(h * w)`. A constant map gives 1;
    an all-zero map is defined as 1 too (the limit of a constant map: no pixel is preferred).
    Maps with a single pixel give 0 for both kinds.
    """
    check_maps(maps)
    if kind not in KINDS:
        raise ValueError(f"entropy kind must be one of {KINDS}, got {kind!r}")
    b, h, w = maps.shape
    n = h * w
    if n == 1:
        return maps.new_zeros(b)
    if kind == "histogram":
        levels = torch.floor(minmax(maps) * 255).long().flatten(1)
        counts = torch.zeros(b, 256, dtype=maps.dtype, device=maps.device)
        counts.scatter_add_(1, levels, torch.ones_like(levels, dtype=maps.dtype))
        p = counts / n
        bits = -(p * torch.log2(torch.where(p > 0, p, torch.ones_like(p)))).sum(1)
        return bits / math.log2(min(n, 256))
    a = unit_scale(maps).abs().flatten(1)
    total = a.sum(1)
    # H = -sum (a/T) log(a/T) = log T - sum(a log a) / T, with 0 log 0 = 0
    safe = torch.where(total > 0, total, torch.ones_like(total))
    nats = torch.log(safe) - torch.special.xlogy(a, a).sum(1) / safe
    return torch.where(total > 0, nats / math.log(n), torch.ones_like(nats))
