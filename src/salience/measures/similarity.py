"""Similarity of two batches of salience maps, per image: SSIM, Pearson, Spearman, top-k % IoU.

All functions take `a`, `b` of shape `[B, h, w]` and return `[B]`. Maps must be finite (NaN/inf raise).
Constant maps: two constant maps are identical in structure and score 1; a constant map against a
non-constant one scores 0 (Pearson, Spearman). SSIM and top-k IoU need no special case (see each).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from salience.measures._checks import check_pair, minmax, unit_scale

SIMILARITIES = ("ssim", "pearson", "spearman", "topk_iou")


def ssim(a: torch.Tensor, b: torch.Tensor, win_size: int = 7, k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Mean SSIM per image of min-max-normalised maps (data range 1), uniform `win_size` x `win_size` window.

    Matches `skimage.metrics.structural_similarity(minmax(a), minmax(b), data_range=1, win_size=w)`
    (sample covariance, mean over the window positions that fit inside the map). Maps whose short side is
    under the window (e.g. the 2x2 final-layer map of a 64 px image) are first upsampled bilinearly
    (`align_corners=False`) to a short side of `win_size`, keeping the aspect ratio (`small_map_size`);
    the min-max normalisation follows. A constant map normalises to zeros, so two constant maps score 1.
    """
    check_pair(a, b)
    if win_size < 3 or win_size % 2 != 1:
        raise ValueError(f"win_size must be odd and at least 3; got {win_size}")
    dtype = a.dtype
    a, b = a.to(torch.float64), b.to(torch.float64)  # float32 rounding could put identical maps above 1
    size = small_map_size((a.shape[-2], a.shape[-1]), win_size)
    if size != tuple(a.shape[-2:]):
        a, b = (
            F.interpolate(unit_scale(t)[:, None], size=size, mode="bilinear", align_corners=False)[:, 0] for t in (a, b)
        )  # unit_scale: exact, and keeps the interpolation of huge values finite
    x, y = minmax(a)[:, None], minmax(b)[:, None]
    mean = lambda t: F.avg_pool2d(t, win_size, stride=1)
    n = win_size * win_size
    cov = n / (n - 1)
    ux, uy = mean(x), mean(y)
    vx = cov * (mean(x * x) - ux * ux)
    vy = cov * (mean(y * y) - uy * uy)
    vxy = cov * (mean(x * y) - ux * uy)
    c1, c2 = k1**2, k2**2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1).to(dtype)


def small_map_size(shape: tuple[int, int], side: int = 7) -> tuple[int, int]:
    """The size at which `ssim` compares maps of `shape` `(h, w)`: unchanged when the short side is at least
    `side`, else the short side becomes `side` and the long side `long * side / short`, rounded half up."""
    h, w = shape
    short = min(h, w)
    if short >= side:
        return h, w
    scale = lambda n: (2 * n * side + short) // (2 * short)
    return scale(h), scale(w)


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation per image over pixels (raw values; scale-free so no normalisation)."""
    check_pair(a, b)
    return _corr(a.flatten(1), b.flatten(1))


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation per image over pixels (ties take their average rank, as scipy does)."""
    check_pair(a, b)
    return _corr(_ranks(a.flatten(1)), _ranks(b.flatten(1)))


def topk_iou(a: torch.Tensor, b: torch.Tensor, k: float = 0.1) -> torch.Tensor:
    """IoU per image of the sets of the top `k` fraction of pixels (at least one) by raw value.

    Ties are broken by pixel index (stable sort), so two constant maps select the same pixels: IoU 1.
    """
    check_pair(a, b)
    if not 0 < k <= 1:
        raise ValueError(f"k must be a fraction in (0, 1], got {k}")
    flat_a, flat_b = a.flatten(1), b.flatten(1)
    n = flat_a.shape[1]
    m = max(1, round(k * n))
    sel_a = _top_mask(flat_a, m)
    sel_b = _top_mask(flat_b, m)
    inter = (sel_a & sel_b).sum(1)
    return (inter / (2 * m - inter)).to(a.dtype)


def similarity(name: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Dispatch to one of `SIMILARITIES` with its default settings."""
    fns = {"ssim": ssim, "pearson": pearson, "spearman": spearman, "topk_iou": topk_iou}
    if name not in fns:
        raise ValueError(f"unknown similarity {name!r}; choose from {SIMILARITIES}")
    return fns[name](a, b)


def _top_mask(flat: torch.Tensor, m: int) -> torch.Tensor:
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices[:, :m]
    return torch.zeros_like(flat, dtype=torch.bool).scatter_(1, order, True)


def _ranks(flat: torch.Tensor) -> torch.Tensor:
    """Average ranks (0-based) along dim 1, ties sharing the mean of their positions."""
    s = flat.sort(dim=1).values.contiguous()
    lo = torch.searchsorted(s, flat.contiguous(), side="left")
    hi = torch.searchsorted(s, flat.contiguous(), side="right")
    return (lo + hi - 1).to(flat.dtype) / 2


def _corr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x, y = unit_scale(x), unit_scale(y)  # scale-free; keeps the products below from overflowing
    x = x - x.mean(1, keepdim=True)
    y = y - y.mean(1, keepdim=True)
    sx, sy = x.norm(dim=1), y.norm(dim=1)
    ok = (sx > 0) & (sy > 0)
    r = (x * y).sum(1) / torch.where(ok, sx * sy, torch.ones_like(sx))
    both_constant = (sx == 0) & (sy == 0)
    r = torch.where(ok, r.clamp(-1, 1), both_constant.to(x.dtype))
    return r
