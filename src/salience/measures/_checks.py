"""Input checks shared by the measures: shapes, dtypes, finiteness."""

from __future__ import annotations

import torch


def check_maps(maps: torch.Tensor, name: str = "maps") -> torch.Tensor:
    """Check a float batch of maps `[B, h, w]` with only finite values; return it unchanged."""
    if not isinstance(maps, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(maps).__name__}")
    if maps.dim() != 3:
        raise ValueError(f"{name} must have shape [B, h, w], got {tuple(maps.shape)}")
    if not maps.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {maps.dtype}")
    bad = ~torch.isfinite(maps).flatten(1).all(1)
    if bad.any():
        rows = bad.nonzero().flatten().tolist()
        raise ValueError(f"{name} contain NaN or inf in images {rows[:10]}{' ...' if len(rows) > 10 else ''}")
    return maps


def check_pair(a: torch.Tensor, b: torch.Tensor, names: tuple[str, str] = ("a", "b")) -> None:
    """Check two map batches of the same shape `[B, h, w]`."""
    check_maps(a, names[0])
    check_maps(b, names[1])
    if a.shape != b.shape:
        raise ValueError(f"{names[0]} {tuple(a.shape)} and {names[1]} {tuple(b.shape)} must have the same shape")


def check_masks(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Check masks `[B, H, W]` (bool, or float read as value > 0.5) against maps `[B, h, w]`; return them as bool."""
    if not isinstance(masks, torch.Tensor) or masks.dim() != 3:
        shape = tuple(masks.shape) if isinstance(masks, torch.Tensor) else type(masks).__name__
        raise ValueError(f"masks must be a tensor of shape [B, H, W], got {shape}")
    if masks.shape[0] != maps.shape[0]:
        raise ValueError(f"maps {tuple(maps.shape)} and masks {tuple(masks.shape)} differ in batch size")
    if masks.dtype == torch.bool:
        return masks
    if not masks.is_floating_point():
        raise TypeError(
            f"masks must be bool or floating point, got {masks.dtype} (use masks.bool() for 0/1 integer masks)"
        )
    return masks > 0.5


def unit_scale(maps: torch.Tensor) -> torch.Tensor:
    """Multiply each map `[B, ...]` by a power of two so that its largest |value| lies in [0.5, 1).

    Exact in floating point (only the exponent changes), so every scale-free measure is unchanged, while
    sums, differences and products of map values can no longer overflow (maps near the float32 limit).
    Maps whose peaks all lie in [2**-40, 2**40] (or are 0) cannot overflow and are returned as they are.
    """
    peak = maps.detach().abs().flatten(1).amax(1)
    if bool(((peak >= 2.0**-40) & (peak <= 2.0**40) | (peak == 0)).all()):
        return maps
    _, exp = torch.frexp(peak)  # peak = m * 2**exp, m in [0.5, 1)
    shape = (-1,) + (1,) * (maps.dim() - 1)
    e1 = (-exp // 2).to(maps.dtype).view(shape)  # two factors: 2**-exp alone may not be representable
    e2 = (-exp).to(maps.dtype).view(shape) - e1
    return maps * torch.pow(2.0, e1) * torch.pow(2.0, e2)


def minmax(maps: torch.Tensor) -> torch.Tensor:
    """Per-map min-max normalisation to [0, 1]; a constant map becomes all zeros."""
    maps = unit_scale(maps)
    flat = maps.flatten(1)
    lo = flat.min(1).values[:, None, None]
    span = flat.max(1).values[:, None, None] - lo
    return torch.where(
        span > 0, (maps - lo) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(maps)
    )
