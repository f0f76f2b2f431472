"""Robustness of explanations as Quantus 0.6 defines it: max- and avg-sensitivity (Yeh et al. 2019) and the
local Lipschitz estimate (Alvarez-Melis and Jaakkola 2018).

Each explains `samples` noisy copies of every image (batched: several samples of every image per call of
`explain`, on the model's device, noise drawn from a `torch.Generator` seeded with `seed` on x's device) and
compares the maps at the input size (upsampled bilinearly) with those of the clean image.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from salience.attribution import upsample
from salience.attribution.core import perturbed_outputs


def _per_sample(
    explain: Callable,
    x: torch.Tensor,
    target: torch.Tensor,
    samples: int,
    draw: Callable,
    batch: int,
    compare: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """`[B, samples]`: `compare(maps [n, H*W], noise [n, C, H, W], image [n]) -> [n]` of the maps of the noisy
    copies `x + noise`, upsampled to the input size. The noise comes from `draw((k, B, C, H, W))`, k samples of
    every image at a time (k * B <= `batch` images, k >= 1), sample after sample."""
    b, size, target = x.shape[0], (x.shape[-2], x.shape[-1]), target.to(x.device)

    def run(noise: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        maps = explain(x.detach()[image] + noise, target[image]).detach()
        return compare(upsample(maps, size).flatten(1), noise, image)

    draw_rows = lambda image, _: draw((len(image) // b, *x.shape)).flatten(0, 1)  # rows: sample-major
    return perturbed_outputs(x, samples, draw_rows, run, max(1, batch // b) * b, block=1)


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
    norm = torch.where(norm > 0, norm, torch.nan)
    return _per_sample(explain, x, target, samples, draw, batch, lambda m, _, i: (m - a[i]).norm(dim=1) / norm[i])


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
    ratio = lambda m, noise, i: (by_max(m) - a[i]).norm(dim=1) / (noise.flatten(1).norm(dim=1) + 1e-10)
    return _per_sample(explain, x, target, samples, draw, batch, ratio).amax(1)
