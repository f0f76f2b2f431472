"""Robustness of explanations as Quantus 0.6 defines it: max- and avg-sensitivity (Yeh et al. 2019) and the
local Lipschitz estimate (Alvarez-Melis and Jaakkola 2018).

Each explains `samples` noisy copies of every image (batched: several samples of every image per call of
`explain`, on the model's device, noise drawn from a `torch.Generator` seeded with `seed` on x's device) and
compares the maps at the input size (upsampled bilinearly) with those of the clean image.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from salience.attribution import upsample


def _noisy_maps(
    explain: Callable, x: torch.Tensor, target: torch.Tensor, samples: int, draw: Callable, batch: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield `(noise [k, B, C, H, W], maps [k, B, H*W])` for chunks of k samples (k * B <= `batch` images)."""
    b = x.shape[0]
    per = max(1, batch // b)
    for start in range(0, samples, per):
        k = min(per, samples - start)
        noise = draw((k, *x.shape))
        xs = (x.detach()[None] + noise).flatten(0, 1)
        maps = explain(xs, target.repeat(k)).detach()
        yield noise, upsample(maps, (x.shape[-2], x.shape[-1])).view(k, b, -1)


def sensitivity(
    explain: Callable,
    x: torch.Tensor,
    target: torch.Tensor,
    maps: torch.Tensor,
    samples: int = 200,
    bound: float = 0.2,
    seed: int = 0,
    batch: int = 64,
    draw: Callable | None = None,
) -> torch.Tensor:
    """`||A(x) - A(x + u)||_F / ||A(x)||_F` per image and sample -> `[B, samples]`, u uniform in
    [-bound, bound] on every input value (Quantus' `batch_uniform_noise`, no clipping); raw maps (Quantus'
    `normalise=False`, `abs=False`). An all-zero map gives NaN. Max- and avg-sensitivity take the max and
    the mean over the samples. `draw(shape) -> noise`: another source of the noise (default: uniform from a
    torch generator seeded with `seed`), called with `(k, B, C, H, W)` for k samples at a time, in order."""
    if draw is None:
        gen = torch.Generator(device=x.device).manual_seed(seed)
        draw = lambda shape: (torch.rand(shape, generator=gen, device=x.device, dtype=x.dtype) * 2 - 1) * bound
    a = upsample(maps.detach(), (x.shape[-2], x.shape[-1])).flatten(1)
    norm = a.norm(dim=1)
    out = []
    for _, m in _noisy_maps(explain, x, target, samples, draw, batch):
        out.append(((m - a[None]).norm(dim=2) / torch.where(norm > 0, norm, torch.nan)).T)
    return torch.cat(out, 1)


def local_lipschitz(
    explain: Callable,
    x: torch.Tensor,
    target: torch.Tensor,
    maps: torch.Tensor,
    samples: int = 200,
    std: float = 0.1,
    seed: int = 0,
    batch: int = 64,
    draw: Callable | None = None,
) -> torch.Tensor:
    """Local Lipschitz estimate per image -> `[B]`: the max over `samples` Gaussian perturbations
    `x' = x + N(0, std^2)` (every input value) of `||Â(x) - Â(x')||_2 / (||x - x'||_2 + 1e-10)`, Â = A / max |A|
    per map (Quantus' `normalise_by_max`, taken per image; an all-zero map stays zero). `draw`: as in
    `sensitivity` (default: Gaussian from a torch generator seeded with `seed`)."""
    if draw is None:
        gen = torch.Generator(device=x.device).manual_seed(seed)
        draw = lambda shape: torch.randn(shape, generator=gen, device=x.device, dtype=x.dtype) * std
    by_max = lambda t: t / torch.where(t.abs().amax(-1, keepdim=True) > 0, t.abs().amax(-1, keepdim=True), 1.0)
    a = by_max(upsample(maps.detach(), (x.shape[-2], x.shape[-1])).flatten(1))
    out = []
    for noise, m in _noisy_maps(explain, x, target, samples, draw, batch):
        dist = noise.flatten(2).norm(dim=2)  # [k, B]
        out.append(((by_max(m) - a[None]).norm(dim=2) / (dist + 1e-10)).T)
    return torch.cat(out, 1).amax(1)
