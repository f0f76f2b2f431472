"""Sanity checks of explanation methods, as Quantus 0.6 defines them: model parameter randomisation (MPRT,
Adebayo et al. 2018, cascading from the top) and the random-logit test (Sixt et al. 2020).

Maps are compared at the input size (upsampled bilinearly), as Quantus compares explanations of the input.
A method passes when its maps change: lower similarity is better for both.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from salience.attribution import attribute_many, upsample
from salience.attribution.registry import method_spec
from salience.measures.similarity import spearman


def randomisable(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules MPRT randomises, top-down: every named module with `reset_parameters` (Quantus'
    `get_random_layer_generator`), last first."""
    return [(n, m) for n, m in model.named_modules() if hasattr(m, "reset_parameters")][::-1]


def _steps(n: int, max_steps: int | None) -> list[int]:
    """Indices of the randomisation steps at which maps are compared: all of them, or `max_steps` spread evenly
    (the first and the last, fully randomised, always; the last alone for `max_steps=1`)."""
    if max_steps is None or n <= max_steps:
        return list(range(n))
    if max_steps == 1:
        return [n - 1]
    return sorted({round(i * (n - 1) / (max_steps - 1)) for i in range(max_steps)})


def cascade(
    model: nn.Module, seed: int = 42, order: str = "top_down", max_steps: int | None = None
) -> Iterator[tuple[str, nn.Module]]:
    """Quantus' cascading randomisation of a copy of `model`: its modules (`randomisable`) last first
    (`order="top_down"`) or first first (`"bottom_up"`), each after `torch.manual_seed(seed + 1)` with its own
    `reset_parameters()`. Yields `(name of the module randomised last, the randomised copy)` after the steps
    that `_steps(n, max_steps)` compares (None: after each). The global RNG is restored when it ends."""
    if order not in ("top_down", "bottom_up"):
        raise ValueError(f"cascade: order must be 'top_down' or 'bottom_up', got {order!r}")
    randomised = copy.deepcopy(model).eval()
    modules = randomisable(randomised)
    if not modules:
        raise ValueError(f"mprt: {type(model).__name__} has no module with reset_parameters to randomise")
    modules = modules if order == "top_down" else modules[::-1]
    steps = set(_steps(len(modules), max_steps))
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for i, (name, module) in enumerate(modules):
            torch.default_generator.manual_seed(seed + 1)  # torch.manual_seed's draws on the model's device,
            if device.type == "cuda":  # without seeding every other device (a tenth of a small model's cascade)
                with torch.cuda.device(device):
                    torch.cuda.manual_seed(seed + 1)
            module.reset_parameters()  # type: ignore[operator]
            if i in steps:
                yield name, randomised


def mprt(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    method: str,
    layer: str | None = None,
    seed: int = 42,
    max_steps: int | None = 16,
    maps: torch.Tensor | None = None,
    options: Mapping[str, Any] | None = None,
) -> dict:
    """Cascading model parameter randomisation: copy `model`, then randomise its modules top-down (`randomisable`),
    each after `torch.manual_seed(seed + 1)` with its own `reset_parameters()` (Quantus' draws; the global RNG is
    restored afterwards), and compare the maps of `x [B, C, H, W]` for `target [B]` (`method` at `layer`) with
    the original maps (`maps [B, h, w]`, computed when None) by the Spearman correlation of |A| (Quantus'
    defaults: `normalise_by_max`, `abs=True`, `correlation_spearman`).

    Returns `{"layers": [L] names (the module randomised last at each compared step), "similarity": [B, L],
    "summary": [B]}` (mean over the compared steps). With `max_steps`, maps are compared after at most that
    many steps spread over the cascade (the randomisation itself is the same); None compares after each.
    `options`: the method's options (`attribute(method, ..., **options)`)."""
    originals = None if maps is None else [maps]
    return mprt_many(model, x, target, [(method, layer)], seed, max_steps, originals, [options or {}])[0]


def mprt_many(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    methods: list[tuple[str, str | None]],
    seed: int = 42,
    max_steps: int | None = 16,
    maps: list[torch.Tensor] | None = None,
    options: Sequence[Mapping[str, Any]] | None = None,
) -> list[dict]:
    """`mprt` of several `(method, layer)` from one randomisation cascade: at each compared step the methods'
    maps come from one `attribute_many` (one forward and one backward for the shared methods). Each result
    equals `mprt` of its method alone; `maps`: the original maps of each method (computed when None);
    `options`: each method's options (none by default)."""
    size = (x.shape[-2], x.shape[-1])
    specs = [method_spec(name, layer) for name, layer in methods]
    opts = {spec: o for spec, o in zip(specs, options or [{}] * len(specs), strict=True) if o}
    if maps is None:
        found = attribute_many(model, x, target, specs, options=opts)
        maps = [found[spec] for spec in specs]
    originals = [upsample(m.detach(), size).abs() for m in maps]
    names: list[str] = []
    sims: list[list[torch.Tensor]] = [[] for _ in specs]
    for name, randomised in cascade(model, seed, "top_down", max_steps):
        found = attribute_many(randomised, x, target, specs, options=opts)
        for k, spec in enumerate(specs):
            sims[k].append(spearman(originals[k], upsample(found[spec].detach(), size).abs()))
        names.append(name)
    results = []
    for per_step in sims:
        similarity = torch.stack(per_step, 1)
        results.append({"layers": list(names), "similarity": similarity, "summary": similarity.mean(1)})
    return results


def ssim_flat(a: torch.Tensor, b: torch.Tensor, win: int = 7) -> torch.Tensor:
    """SSIM of each pair of rows of `a`, `b` `[B, n]` read as 1-D signals (what Quantus' `ssim` computes on
    flattened explanations through scikit-image): uniform window of `win`, sample covariances, data range
    `max - min` over both rows, K1 = 0.01, K2 = 0.03, mean over the windows inside the signal -> `[B]`."""
    a, b = a.double(), b.double()
    rng = torch.maximum(a.amax(1), b.amax(1)) - torch.minimum(a.amin(1), b.amin(1))
    kernel = torch.full((1, 1, win), 1.0 / win, dtype=a.dtype, device=a.device)
    mean = lambda t: F.conv1d(t[:, None], kernel)[:, 0]
    ux, uy = mean(a), mean(b)
    norm = win / (win - 1)
    vx, vy, vxy = norm * (mean(a * a) - ux**2), norm * (mean(b * b) - uy**2), norm * (mean(a * b) - ux * uy)
    c1, c2 = ((0.01 * rng) ** 2)[:, None], ((0.03 * rng) ** 2)[:, None]
    s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    return s.mean(1)


def off_classes(target: torch.Tensor, num_classes: int, seed: int = 42) -> torch.Tensor:
    """One class other than each target `[B]`, drawn as Quantus' RandomLogit draws it: `np.random.seed(seed)`,
    `randint(0, num_classes - 1, B)`, the r-th class of those left once the target is removed (NumPy's legacy
    generator on the CPU: the same classes as Quantus for the same batch)."""
    if num_classes < 2:
        raise ValueError(f"random_logit needs at least 2 classes, got {num_classes}")
    r = torch.from_numpy(np.random.RandomState(seed).randint(0, num_classes - 1, len(target))).to(target.device)
    return r + (r >= target).long()


def random_logit(
    model: nn.Module,
    explain: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    target: torch.Tensor,
    maps: torch.Tensor | None = None,
    seed: int = 42,
    num_classes: int | None = None,
) -> dict:
    """Random-logit test: SSIM (`ssim_flat`) between each image's map for `target [B]` and its map for a random
    other class (`off_classes`), both at the input size and divided by their max |A| (Quantus' `normalise_by_max`,
    `abs=False`). `num_classes` defaults to the model's number of logits. Returns `{"off": [B], "similarity": [B]}`."""
    size = (x.shape[-2], x.shape[-1])
    if num_classes is None:
        with torch.no_grad():
            num_classes = model(x[:1]).shape[1]
    off = off_classes(target, num_classes, seed)
    a = upsample((maps if maps is not None else explain(x, target)).detach(), size).flatten(1)
    b = upsample(explain(x, off).detach(), size).flatten(1)
    by_max = lambda t: t / torch.where(t.abs().amax(1, keepdim=True) > 0, t.abs().amax(1, keepdim=True), 1.0)
    return {"off": off, "similarity": ssim_flat(by_max(a), by_max(b)).to(a.dtype)}


def _explainer(
    method: str, layer: str | None, options: Mapping[str, Any] | None
) -> Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]:
    """`explain(model, x, target) -> maps [B, h, w]` of one method (at `layer`, with its `options`)."""
    spec = method_spec(method, layer)
    opts = {spec: dict(options)} if options else None
    return lambda model, x, target: attribute_many(model, x, target, [spec], options=opts)[spec].detach()


def smoothed_maps(
    explain: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    target: torch.Tensor,
    draw: Callable[[int], torch.Tensor],
    samples: int = 50,
    magnitude: float = 0.1,
    batch_size: int = 64,
) -> torch.Tensor:
    """SmoothMPRT's denoised maps `[B, H, W]` of `x [B, C, H, W]` for `target [B]`: the mean over `samples` of the
    maps (upsampled to the input size) of `x + draw(s) * std`, `draw(s)` the standard normal noise `[B, C, H, W]`
    of sample s (called in order; the last sample has none), `std = magnitude * (max - min)` of each image
    (Quantus' `explain_smooth_batch`). Samples and images are explained together, `batch_size` pairs at a time."""
    size = (x.shape[-2], x.shape[-1])
    std = magnitude * (x.flatten(1).amax(1) - x.flatten(1).amin(1))[:, None, None, None]
    per = max(1, batch_size // len(x))  # samples per chunk
    total = torch.zeros(len(x), *size, dtype=x.dtype, device=x.device)
    for first in range(0, samples, per):
        ks = range(first, min(first + per, samples))
        xs = torch.cat([x + draw(k).to(x) * std if k < samples - 1 else x for k in ks])  # [len(ks) * B, ...]
        ts = target.repeat(len(ks))
        for start in range(0, len(xs), batch_size):
            part = upsample(explain(xs[start : start + batch_size], ts[start : start + batch_size]), size)
            rows = torch.arange(start, start + len(part), device=x.device) % len(x)
            total.index_add_(0, rows, part.to(total.dtype))
    return total / samples


def smooth_mprt(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    method: str,
    layer: str | None = None,
    seed: int = 42,
    samples: int = 50,
    magnitude: float = 0.1,
    order: str = "bottom_up",
    max_steps: int | None = 16,
    options: Mapping[str, Any] | None = None,
    batch_size: int = 64,
    noise: torch.Tensor | None = None,
) -> dict:
    """SmoothMPRT (Hedström et al. 2024), Quantus 0.6 at its defaults: MPRT (`cascade`, `order` bottom-up) on
    denoised maps (`smoothed_maps`, `samples` with noise of `magnitude`), the Spearman correlation of |A| of the
    original model's with each randomised model's (Quantus' second-moment normalisation is a positive scale per
    map, which the rank correlation does not see). The noise: standard normal draws of a `torch.Generator`
    seeded with `seed` on `x`'s device, fresh for each explained model, or `noise [K, samples - 1, B, C, H, W]`
    (K = 1 + compared steps: the original model's first, then each step's; Quantus' NumPy draws in a test).

    Returns `{"layers": [L], "similarity": [B, L], "summary": [B]}` (mean over the compared steps, as `mprt`)."""
    if samples < 1:
        raise ValueError(f"smooth_mprt: samples must be at least 1, got {samples}")
    if noise is not None and tuple(noise.shape[1:]) != (samples - 1, *x.shape):
        raise ValueError(f"smooth_mprt: noise must be [K, samples - 1, B, C, H, W], got {tuple(noise.shape)}")
    explain = _explainer(method, layer, options)
    gen = torch.Generator(device=x.device).manual_seed(seed)
    sets = iter(noise) if noise is not None else None

    def denoised(m: nn.Module) -> torch.Tensor:
        given = next(sets, None) if sets is not None else None
        if sets is not None and given is None:
            raise ValueError("smooth_mprt: noise holds fewer sets than the models explained (1 + compared steps)")
        draw = (lambda k: given[k]) if given is not None else (
            lambda k: torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype))  # fmt: skip
        return smoothed_maps(lambda xx, t: explain(m, xx, t), x, target, draw, samples, magnitude, batch_size).abs()

    original = denoised(model)
    names, sims = [], []
    for name, randomised in cascade(model, seed, order, max_steps):
        sims.append(spearman(original, denoised(randomised)))
        names.append(name)
    similarity = torch.stack(sims, 1)
    return {"layers": names, "similarity": similarity, "summary": similarity.mean(1)}


def discrete_entropy(maps: torch.Tensor, bins: int = 100) -> torch.Tensor:
    """Entropy (nats) of the histogram of each map's values `[B, ...]` in `bins` equal bins from its min to its
    max (NumPy's `histogram`, a constant map in one bin; SciPy's `entropy` of the counts) -> `[B]`, float64."""
    a = maps.flatten(1).double()
    lo, hi = a.amin(1, keepdim=True), a.amax(1, keepdim=True)
    flat = hi == lo
    lo, hi = torch.where(flat, lo - 0.5, lo), torch.where(flat, hi + 0.5, hi)
    steps = torch.arange(bins + 1, device=a.device, dtype=a.dtype)
    edges = lo + steps * ((hi - lo) / bins)  # NumPy's linspace: start + i * step, the last edge exactly `hi`
    edges[:, -1:] = hi
    index = ((a - lo) * (bins / (hi - lo))).long().clamp(max=bins - 1)
    index = index - (a < edges.gather(1, index)).long()  # NumPy's corrections at the edges
    index = index + ((a >= edges.gather(1, index + 1)) & (index != bins - 1)).long()
    counts = torch.zeros(len(a), bins, dtype=a.dtype, device=a.device).scatter_add_(1, index, torch.ones_like(a))
    p = counts / counts.sum(1, keepdim=True)
    return -(p * torch.where(p > 0, p.log(), 0.0)).sum(1)


def efficient_mprt(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    method: str,
    layer: str | None = None,
    seed: int = 42,
    order: str = "bottom_up",
    bins: int = 100,
    maps: torch.Tensor | None = None,
    options: Mapping[str, Any] | None = None,
) -> dict:
    """EfficientMPRT (Hedström et al. 2024), Quantus 0.6 at its defaults: the relative rise of the maps'
    `discrete_entropy` (`bins`, of the raw maps at the input size: no normalisation, no abs) from the original
    model (`maps [B, h, w]`, computed when None) to the fully randomised one (`cascade` through every module,
    `order` bottom-up, explained once at the end): `(H_random - H_original) / H_original`.

    Returns `{"entropy_original": [B], "entropy_randomised": [B], "score": [B]}` (float64; the score is
    NaN where the original map is constant: Quantus gives ±inf or NaN there)."""
    explain = _explainer(method, layer, options)
    size = (x.shape[-2], x.shape[-1])
    original = upsample(explain(model, x, target) if maps is None else maps.detach(), size)
    randomised = None
    for _, m in cascade(model, seed, order, max_steps=1):
        randomised = upsample(explain(m, x, target), size)
    assert randomised is not None  # the cascade's last step is always compared
    h0, h1 = discrete_entropy(original, bins), discrete_entropy(randomised, bins)
    score = torch.where(h0 > 0, (h1 - h0) / h0, torch.nan)  # a constant original map: undefined
    return {"entropy_original": h0, "entropy_randomised": h1, "score": score}
