"""Feature masks for the perturbation methods that explain groups of pixels (Shapley values, LIME, feature
ablation): one integer feature id per pixel, `[B, H, W]`, renumbered to `0..F_b − 1` per image.

A mask is a long tensor `[B, H, W]` or `[H, W]` (the same for every image), or a string:
- `"slic"` / `"slic:N"`: SLIC superpixels (Achanta et al. 2012, scikit-image), `N = 50` segments asked for,
  compactness 1, on the image min-max scaled to [0, 1] per image (all channels together), without Lab
  conversion, so normalised inputs and any channel count segment alike;
- `"quickshift"`: quickshift (Vedaldi & Soatto 2008, scikit-image) with the `lime` package's image defaults
  (kernel size 4, max distance 200, ratio 0.2) on the same [0, 1] image, in Lab for 3 channels; it finds few
  segments below ~100 px;
- `"grid:N"`: N×N cells of near-equal size (`⌊i·N/H⌋` rows, likewise columns).
"""

import numpy as np
import torch
from skimage.segmentation import quickshift, slic

SLIC_SEGMENTS = 50
SLIC_COMPACTNESS = 1.0
QUICKSHIFT = {"kernel_size": 4, "max_dist": 200.0, "ratio": 0.2}
ACCEPTED = "a long tensor [B, H, W] or [H, W], 'slic', 'slic:N', 'quickshift' or 'grid:N' (N >= 1)"


def unit_images(x: torch.Tensor) -> np.ndarray:
    """`[B, C, H, W]` -> float64 numpy `[B, H, W, C]`, each image min-max scaled to [0, 1] (constant: 0)."""
    flat = x.detach().double().flatten(1)
    lo, hi = flat.amin(1), flat.amax(1)
    scale = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    unit = (x.detach().double() - lo[:, None, None, None]) / scale[:, None, None, None]
    return unit.permute(0, 2, 3, 1).cpu().numpy()


def segment(x: torch.Tensor, algorithm: str, n_segments: int = SLIC_SEGMENTS) -> torch.Tensor:
    """Superpixels of each image of `x` `[B, C, H, W]` -> long `[B, H, W]` (ids not yet renumbered)."""
    masks = []
    for image in unit_images(x):
        if algorithm == "slic":
            labels = slic(image, n_segments=n_segments, compactness=SLIC_COMPACTNESS, convert2lab=False, start_label=0)
        else:
            labels = quickshift(image, convert2lab=image.shape[-1] == 3, **QUICKSHIFT)
        masks.append(torch.from_numpy(np.ascontiguousarray(labels)).long())
    return torch.stack(masks).to(x.device)


def grid_mask(n: int, height: int, width: int, device: torch.device) -> torch.Tensor:
    """`[H, W]` ids of an n×n grid: cell `(⌊i·n/H⌋, ⌊j·n/W⌋)`, id = row·n + column."""
    rows = torch.arange(height, device=device) * n // height
    cols = torch.arange(width, device=device) * n // width
    return rows[:, None] * n + cols[None, :]


def _count(option: str, text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"feature_mask {option!r}: N must be an integer >= 1; accepted: {ACCEPTED}")
    return int(text)


def _from_string(x: torch.Tensor, option: str) -> torch.Tensor:
    name, sep, arg = option.partition(":")
    if name == "grid" and sep:
        n = _count(option, arg)
        if n > min(x.shape[-2:]):
            raise ValueError(f"feature_mask {option!r}: N = {n} is more cells than the input's {tuple(x.shape[-2:])}")
        return grid_mask(n, x.shape[-2], x.shape[-1], x.device).expand(x.shape[0], -1, -1)
    if name == "slic":
        return segment(x, "slic", _count(option, arg) if sep else SLIC_SEGMENTS)
    if option == "quickshift":
        return segment(x, "quickshift")
    raise ValueError(f"feature_mask {option!r} is unknown; accepted: {ACCEPTED}")


def renumber(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids of each image's mask `[B, H, W]` mapped to `0..F_b − 1` in increasing order -> `(masks, counts [B])`."""
    out, counts = torch.empty_like(masks), []
    for b in range(masks.shape[0]):
        ids, inverse = torch.unique(masks[b], return_inverse=True)
        out[b] = inverse
        counts.append(ids.numel())
    return out, torch.tensor(counts, device=masks.device)


def feature_masks(x: torch.Tensor, feature_mask: torch.Tensor | str) -> tuple[torch.Tensor, torch.Tensor]:
    """The feature ids of each image of `x` `[B, C, H, W]` -> `(long [B, H, W] in 0..F_b − 1, counts F_b [B])`.

    `feature_mask`: as the module docstring; a tensor may hold any integers (renumbered per image)."""
    batch, height, width = x.shape[0], x.shape[-2], x.shape[-1]
    if isinstance(feature_mask, str):
        return renumber(_from_string(x, feature_mask))
    if not isinstance(feature_mask, torch.Tensor):
        raise ValueError(f"feature_mask must be {ACCEPTED}; got {type(feature_mask).__name__}")
    if feature_mask.is_floating_point() or feature_mask.is_complex() or feature_mask.dtype == torch.bool:
        raise ValueError(f"feature_mask must be an integer tensor; got {feature_mask.dtype}; accepted: {ACCEPTED}")
    shape = tuple(feature_mask.shape)
    if shape == (height, width):
        feature_mask = feature_mask.expand(batch, height, width)
    elif shape != (batch, height, width):
        raise ValueError(
            f"feature_mask has shape {shape}; for x {tuple(x.shape)} accepted: [B, H, W] = "
            f"{(batch, height, width)} or [H, W] = {(height, width)}"
        )
    return renumber(feature_mask.to(x.device).long())
