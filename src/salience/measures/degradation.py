"""Salience-guided degradation, measure (e) of "Explain To Me": the paper's spatially varying blur, and
deletion / insertion curves (Petsiuk et al. 2018). Scores are softmax probabilities of the target class.

Sizes in pixels (sigmas) are given for 224 px images and scale with `min(H, W) / 224`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from salience.attribution import upsample
from salience.measures._checks import check_maps, minmax
from salience.measures.probes import Explain, check_inputs, explain_scored
from salience.measures.similarity import SIMILARITIES, similarity

BLUR_MODES = ("nonsalient", "salient")


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of `x [N, C, H, W]` with `sigma` pixels, truncated at `round(3 sigma)`
    (at most side - 1), reflect padding (scipy.ndimage mode "mirror"). Radius 0 returns `x`."""
    r = min(int(3 * sigma + 0.5), x.shape[-1] - 1, x.shape[-2] - 1)
    if r <= 0:
        return x
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float64) / sigma) ** 2)
    k = (k / k.sum()).to(x)
    c = x.shape[1]
    y = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(y, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def blur_levels(maps: torch.Tensor, size: tuple[int, int], mode: str = "nonsalient") -> torch.Tensor:
    """Per-pixel level index 0..100 (level / 10 in 0..10, steps of 0.1) `[B, H, W]` from maps `[B, h, w]`:
    upsample to `size`, smooth with sigma 5 (at 224 px), min-max, round. `salient` inverts the map."""
    check_maps(maps)
    if mode not in BLUR_MODES:
        raise ValueError(f"blur mode must be one of {BLUR_MODES}, got {mode!r}")
    scale = min(size) / 224
    m = gaussian_blur(upsample(maps, size)[:, None], 5 * scale)[:, 0]
    level = torch.round(minmax(m) * 100).long()
    return 100 - level if mode == "salient" else level


def level_sigma(level: torch.Tensor | float, scale: float = 1.0) -> torch.Tensor | float:
    """Blur sigma of a level index (0..100): `(10 - level / 10) ** 4 / 1000 * scale` (10 px at level 0)."""
    return (10 - level / 10) ** 4 / 1000 * scale


def spatially_varying_blur(x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Blur each pixel of `x [B, C, H, W]` with the sigma of its level `[B, H, W]` (see `level_sigma`).

    One Gaussian blur of the whole batch per distinct level present, each selected where its level holds."""
    scale = min(x.shape[-2:]) / 224
    out = x.clone()
    for lv in torch.unique(levels).tolist():
        sel = (levels == lv)[:, None]
        out = torch.where(sel, gaussian_blur(x, float(level_sigma(lv, scale))), out)
    return out


def blur_degradation(
    model: nn.Module,
    explain: Explain,
    x: torch.Tensor,
    target: torch.Tensor,
    modes: Sequence[str] = BLUR_MODES,
    similarities: Sequence[str] = SIMILARITIES,
    batch_size: int = 64,
) -> dict:
    """Degrade `x` by the spatially varying blur driven by its own map, in each mode.

    Returns `{"clean": {"score": [B], "pred": [B]}, mode: {"score": [B], "score_change": [B],
    "pred": [B], "agreement": [B], "similarity": {name: [B]}}}`; similarity compares `map(x)` with
    `map(blurred x)`. Accuracy and AUC changes follow from `pred` / `score` and the labels.
    """
    check_inputs(x, target)
    maps, score, pred = explain_scored(explain, model, x, target, batch_size)
    out: dict[str, dict] = {"clean": {"score": score, "pred": pred}}
    for mode in modes:
        levels = blur_levels(maps, (x.shape[-2], x.shape[-1]), mode)
        blurred = torch.cat(
            [
                spatially_varying_blur(x[i : i + batch_size], levels[i : i + batch_size])
                for i in range(0, len(x), batch_size)
            ]
        )
        m, s, p = explain_scored(explain, model, blurred, target, batch_size)
        out[mode] = {
            "score": s,
            "score_change": s - score,
            "pred": p,
            "agreement": p == pred,
            "similarity": {k: similarity(k, maps, m) for k in similarities},
        }
    return out


@torch.no_grad()
def deletion_insertion(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    maps: torch.Tensor,
    steps: int = 20,
    batch_size: int = 64,
    curves: Sequence[str] = ("deletion", "insertion"),
) -> dict:
    """Deletion and insertion curves `[B, steps + 1]` and their AUC `[B]` (trapezoid over [0, 1]).

    Pixels are ranked by the map (upsampled bilinearly to `(H, W)`), highest first, ties by pixel index.
    At step i the first `floor(i * H * W / steps)` pixels are changed: deletion sets them to 0,
    insertion copies them from `x` into a blurred copy of `x` (sigma 5 at 224 px). The curve holds the
    softmax probability of the target. Batched over (step, image) pairs in chunks of `batch_size`.
    `curves` selects which of the two are computed.
    """
    check_inputs(x, target)
    check_maps(maps)
    if maps.shape[0] != x.shape[0]:
        raise ValueError(f"maps {tuple(maps.shape)} and x {tuple(x.shape)} differ in batch size")
    if not curves or set(curves) - {"deletion", "insertion"}:
        raise ValueError(f"curves must be a non-empty subset of ('deletion', 'insertion'), got {curves}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    b, _, h, w = x.shape
    n = h * w
    order = torch.sort(upsample(maps, (h, w)).flatten(1), dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(n, device=x.device).expand(b, n))
    rank = rank.view(b, 1, h, w)
    counts = torch.arange(steps + 1, device=x.device) * n // steps
    substrates = {
        "deletion": lambda: (torch.zeros_like(x), x),
        "insertion": lambda: (x, gaussian_blur(x, 5 * min(h, w) / 224)),
    }
    out = {}
    for name in curves:
        changed, base = substrates[name]()
        curve = torch.empty(steps + 1, b, dtype=x.dtype, device=x.device)
        flat = curve.view(-1)
        for start in range(0, (steps + 1) * b, batch_size):
            idx = torch.arange(start, min(start + batch_size, (steps + 1) * b), device=x.device)
            s, i = idx // b, idx % b
            sel = rank[i] < counts[s].view(-1, 1, 1, 1)
            inputs = torch.where(sel, changed[i], base[i])
            flat[idx] = model(inputs).softmax(1).gather(1, target[i, None])[:, 0].to(x.dtype)
        curve = curve.T
        out[name] = curve
        out[f"{name}_auc"] = (curve[:, 1:] + curve[:, :-1]).sum(1) / (2 * steps)
    return out
