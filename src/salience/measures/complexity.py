"""Complexity of salience maps as Quantus 0.6 defines it: sparseness (Gini index, Chalasani et al. 2020) and
complexity (entropy of the attribution shares, Bhatt et al. 2020). Both read `|A| / max |A|` per map
(Quantus' defaults `abs=True`, `normalise=True` with `normalise_by_max`, taken per image)."""

from __future__ import annotations

import torch

from salience.measures._checks import check_maps, unit_scale


def _abs_by_max(maps: torch.Tensor) -> torch.Tensor:
    """`|A| / max |A|` per map, flattened `[B, n]`; an all-zero map stays zero (as Quantus)."""
    a = unit_scale(check_maps(maps)).abs().flatten(1)
    peak = a.amax(1, keepdim=True)
    return torch.where(peak > 0, a / torch.where(peak > 0, peak, torch.ones_like(peak)), a)


def sparseness(maps: torch.Tensor) -> torch.Tensor:
    """Gini index of each map `[B, h, w]` -> `[B]` in [0, 1) (higher = sparser): with `a = |A| / max |A| + 1e-7`
    sorted ascending over the n pixels, `sum_i (2i - n - 1) a_i / (n sum_i a_i)`. A constant (or zero) map: 0."""
    a = torch.sort(_abs_by_max(maps) + 1e-7, dim=1).values
    n = a.shape[1]
    i = torch.arange(1, n + 1, device=a.device, dtype=a.dtype)
    return ((2 * i - n - 1) * a).sum(1) / (n * a.sum(1))


def complexity(maps: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of each map's shares `p = |A| / sum |A|` -> `[B]` in [0, log(h w)] (lower = simpler):
    `-sum_i p_i log(p_i + 1e-12)`. An all-zero map has no shares: NaN (Quantus divides 0 by 0)."""
    a = _abs_by_max(maps)
    total = a.sum(1, keepdim=True)
    p = a / torch.where(total > 0, total, torch.ones_like(total))
    out = -(p * torch.log(p + 1e-12)).sum(1)
    return torch.where(total[:, 0] > 0, out, torch.full_like(out, float("nan")))


def effective_complexity(maps: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Effective complexity of each map `[B, h, w]` -> `[B]` (lower = simpler): the number of pixels whose
    `|A| / max |A|` exceeds `eps` (Quantus' EffectiveComplexity: `abs`, `normalise_by_max`, taken per image). An
    all-zero map counts 0."""
    if eps < 0:
        raise ValueError(f"effective_complexity: eps must be >= 0, got {eps}")
    a = check_maps(maps).abs().flatten(1)  # |A| / max |A| cannot overflow: no `unit_scale` needed
    peak = a.amax(1, keepdim=True).clamp(min=torch.finfo(a.dtype).tiny)  # a zero map stays zero
    return (a / peak > eps).sum(1).to(a.dtype)
