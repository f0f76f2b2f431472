"""Per-image guidance losses on (maps, masks).

Every loss takes raw attribution maps ``maps`` ``[B, h, w]`` (one class per image, signed where
the method is signed) and a target ``[B, H, W]`` and returns one value per image, ``[B]``.
Masks are bool or floating point (other dtypes are refused). Box-based losses (energy, l1, ppce, rrr) upsample
the maps bilinearly to the mask size ``(H, W)``; as in Rao et al.'s code, l1, ppce and rrr normalise by the
maximum at the map's own resolution first, then upsample; ``cyborg`` instead resizes the human map to the map size as CYBORG's loader does
(``cyborg_human_map``: PIL's antialiased bilinear on the 8-bit map, then min-max).
The normalisation each loss applies is stated in its docstring (docs/definitions.md, "Guidance").
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image as PILImage
from torch import Tensor

EPS = 1e-7
"""Guards divisions by a sum or a maximum that is 0 (an all-zero map)."""


def _check(maps: Tensor, masks: Tensor, name: str) -> Tensor:
    """The masks in the maps' dtype: bool masks become 0/1, float masks are used as they are."""
    if maps.dim() != 3 or masks.dim() != 3 or maps.shape[0] != masks.shape[0]:
        raise ValueError(
            f"{name}: expected maps [B, h, w] and masks [B, H, W] with the same B, "
            f"got maps {tuple(maps.shape)} and masks {tuple(masks.shape)}"
        )
    if masks.dtype != torch.bool and not masks.is_floating_point():
        raise TypeError(
            f"{name}: masks must be bool or floating point, got {masks.dtype} (use masks.bool() for 0/1 integer masks)"
        )
    return masks.to(maps.dtype)


def _to_mask_size(maps: Tensor, masks: Tensor) -> Tensor:
    """Bilinear upsampling of ``maps`` ``[B, h, w]`` to the masks' ``(H, W)``."""
    if maps.shape[-2:] == masks.shape[-2:]:
        return maps
    return F.interpolate(maps[:, None], size=masks.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


def _flat(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1)


def _over_max(maps: Tensor, signed: bool) -> Tensor:
    """Per image at the map's own resolution, ``[B, h, w]``: ``A⁺ / max A⁺`` (``signed=False``) or
    ``A / max |A|`` (``signed=True``); an all-zero map stays zero."""
    a = maps if signed else maps.clamp(min=0)
    peak = _flat(a).abs().amax(dim=1)
    return a / torch.where(peak == 0, torch.ones_like(peak), peak)[:, None, None]


def energy(maps: Tensor, masks: Tensor) -> Tensor:
    """Energy loss ``1 − Σ M·A⁺ / Σ A⁺`` per image; ``1 − Σ M·A⁺`` where ``Σ A⁺ < EPS``.

    maps ``[B, h, w]`` raw, upsampled to the masks' size before ``A⁺``; masks ``[B, H, W]`` bool or float in
    {0, 1}; returns ``[B]`` in [0, 1].
    """
    masks = _check(maps, masks, "energy")
    pos = _flat(_to_mask_size(maps, masks)).clamp(min=0)
    inside = (pos * _flat(masks)).sum(dim=1)
    total = pos.sum(dim=1)
    tiny = total < EPS
    return torch.where(tiny, 1 - inside, 1 - inside / torch.where(tiny, torch.ones_like(total), total))


def l1(maps: Tensor, masks: Tensor) -> Tensor:
    """L1 loss ``mean_pixels |Â − M|``, ``Â`` = ``A⁺ / max A⁺`` at the map's resolution, then upsampled; ``[B]``."""
    masks = _check(maps, masks, "l1")
    a = _flat(_to_mask_size(_over_max(maps, signed=False), masks))
    return (a - _flat(masks)).abs().mean(dim=1)


def ppce(maps: Tensor, masks: Tensor) -> Tensor:
    """Per-pixel cross-entropy ``−mean_{p∈M} max(log Â_p, −100)``, ``Â`` = ``A⁺ / max A⁺`` at the map's
    resolution, then upsampled: PyTorch's ``BCELoss`` against 1 (its clamp at −100 and its gradient), as
    Rao et al.'s code. Returns ``[B]``; an image whose mask is empty gets 0 (no pixel to pull up).
    """
    masks = _check(maps, masks, "ppce")
    a = _flat(_to_mask_size(_over_max(maps, signed=False), masks)).clamp(max=1)  # rounding may pass 1 by an ulp
    m = _flat(masks)
    per_pixel = F.binary_cross_entropy(a, torch.ones_like(a), reduction="none")
    return (m * per_pixel).sum(dim=1) / m.sum(dim=1).clamp(min=1)


def rrr(maps: Tensor, masks: Tensor) -> Tensor:
    """RRR* ``Σ_{p∉M} Â_p²``, signed ``Â = A / max |A|`` at the map's resolution, then upsampled; ``[B]``."""
    masks = _check(maps, masks, "rrr")
    a = _flat(_to_mask_size(_over_max(maps, signed=True), masks))
    return ((1 - _flat(masks)) * a.square()).sum(dim=1)


def minmax(x: Tensor) -> Tensor:
    """Min-max normalisation to [0, 1] per image over the last two dims; a constant map gives 0."""
    flat = _flat(x)
    lo = flat.amin(dim=1, keepdim=True)
    hi = flat.amax(dim=1, keepdim=True)
    return ((flat - lo) / (hi - lo).clamp(min=EPS)).reshape(x.shape)


def cyborg_human_map(human_maps: Tensor, size: tuple[int, int]) -> Tensor:
    """CYBORG's human-map preparation: the 8-bit map resized to ``size`` by PIL, then min-max.

    human_maps ``[B, H, W]`` in [0, 1] -> ``[B, h, w]`` in [0, 1] (same dtype and device). As CYBORG's
    loader (``transforms.Resize`` on the PIL image, then ``ToTensor``): ``round(255·H)`` as an 8-bit image,
    PIL's antialiased bilinear resize (its output is 8-bit again), ``/255``, then ``minmax`` per image.
    PIL rather than ``F.interpolate(antialias=True)``, whose 8-bit results differ from PIL's by 1/255 at
    some pixels. A constant map gives 0 (CYBORG's gives NaN).
    """
    h, w = size
    grey = (human_maps.detach().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    out = [np.asarray(PILImage.fromarray(m, mode="L").resize((w, h), PILImage.Resampling.BILINEAR)) for m in grey]
    small = torch.from_numpy(np.stack(out)).to(human_maps.device, human_maps.dtype) / 255
    return minmax(small)


def cyborg(maps: Tensor, human_maps: Tensor) -> Tensor:
    """CYBORG salience term ``mean_pixels (minmax(A) − H')²`` per image, ``H' = cyborg_human_map(H, A's size)``.

    maps ``[B, h, w]`` raw (CYBORG: the logit CAM of the predicted class), human_maps ``[B, H, W]`` in
    [0, 1]; returns ``[B]``. The CE half of CYBORG's ``α·CE + (1−α)·MSE`` is the task loss of the objective.
    """
    h = _check(maps, human_maps, "cyborg")
    return _flat(minmax(maps) - cyborg_human_map(h, (maps.shape[-2], maps.shape[-1]))).square().mean(dim=1)


LOSSES = {"energy": energy, "l1": l1, "ppce": ppce, "rrr": rrr, "cyborg": cyborg}
"""Name -> per-image loss. ``cyborg`` compares with human maps, the others with box masks."""
