"""Localisation of salience maps against binary masks: EPG, IoU, pointing game (docs/definitions.md, "Metrics").

`maps` `[B, h, w]` are resized bilinearly to the masks' size `[B, H, W]` when they differ. Masks are
read as `mask > 0.5`. An image whose mask is empty gets NaN (undefined), as in Quantus.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from salience.attribution import upsample
from salience.measures._checks import check_maps, check_masks, minmax, unit_scale


def epg(maps: torch.Tensor, masks: torch.Tensor, *, weighted: bool = False, max_size: float = 1.0) -> torch.Tensor:
    """Energy pointing game `sum_M A+ / sum A+` per image -> `[B]`; an all-non-positive map scores 0.

    Quantus' AttributionLocalisation options: `weighted` multiplies the score by the mask's share of the image
    `|M| / (H W)`; an image whose mask covers more than `max_size` of the image gets NaN (left out)."""
    if not 0 < max_size <= 1:
        raise ValueError(f"epg: max_size must be in (0, 1], got {max_size}")
    a, m = _prepare(maps, masks)
    pos = a.clamp(min=0).flatten(1)
    inside = (pos * m.flatten(1)).sum(1)
    total = pos.sum(1)
    out = torch.where(
        total > 0, inside / torch.where(total > 0, total, torch.ones_like(total)), torch.zeros_like(total)
    )
    if weighted or max_size < 1:
        share = m.flatten(1).to(out.dtype).mean(1)
        out = out * share if weighted else out
        out = torch.where(share > max_size, torch.full_like(out, float("nan")), out)
    return _nan_if_empty(out, m)


def iou(maps: torch.Tensor, masks: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """IoU per image of `minmax(A+) >= threshold` with the mask -> `[B]`.

    A constant A+ (e.g. an all-non-positive map) min-max normalises to zeros and selects no pixel: IoU 0.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    a, m = _prepare(maps, masks)
    pos = a.clamp(min=0)
    sel = minmax(pos) >= threshold
    inter = (sel & m).flatten(1).sum(1)
    union = (sel | m).flatten(1).sum(1)
    out = (inter / union.clamp(min=1)).to(a.dtype)
    return _nan_if_empty(out, m)


def pointing_game(maps: torch.Tensor, masks: torch.Tensor, tolerance: float = 0) -> torch.Tensor:
    """Pointing game per image -> `[B]` of 1.0 (hit) / 0.0 (miss), NaN for an empty mask.

    Hit when a pixel holding the map's maximum (raw values; any of tied maxima) lies within `tolerance`
    pixels (Euclidean) of the mask. A constant map has every pixel as maximum: hit if the mask is non-empty.
    """
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 pixels, got {tolerance}")
    a, m = _prepare(maps, masks)
    target = m
    r = math.floor(tolerance)
    if r > 0:
        yy, xx = torch.meshgrid(torch.arange(-r, r + 1), torch.arange(-r, r + 1), indexing="ij")
        disc = ((yy**2 + xx**2) <= tolerance**2).to(a.dtype)[None, None].to(a.device)
        target = F.conv2d(m[:, None].to(a.dtype), disc, padding=r)[:, 0] > 0
    flat = a.flatten(1)
    is_max = flat == flat.max(1, keepdim=True).values
    hit = (is_max & target.flatten(1)).any(1).to(a.dtype)
    return _nan_if_empty(hit, m)


def _prepare(maps: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    check_maps(maps)
    m = check_masks(maps, masks)
    return upsample(unit_scale(maps), (m.shape[-2], m.shape[-1])), m  # every measure here is scale-free


def _nan_if_empty(values: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    empty = ~m.flatten(1).any(1)
    return torch.where(empty, torch.full_like(values, float("nan")), values)
