"""Sanity checks of explanation methods, as Quantus 0.6 defines them: model parameter randomisation (MPRT,
Adebayo et al. 2018, cascading from the top) and the random-logit test (Sixt et al. 2020).

Maps are compared at the input size (upsampled bilinearly), as Quantus compares explanations of the input.
A method passes when its maps change: lower similarity is better for both.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
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
    (the first and the last, fully randomised, always)."""
    if max_steps is None or n <= max_steps:
        return list(range(n))
    return sorted({round(i * (n - 1) / (max_steps - 1)) for i in range(max_steps)})


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
    randomised = copy.deepcopy(model).eval()
    modules = randomisable(randomised)
    if not modules:
        raise ValueError(f"mprt: {type(model).__name__} has no module with reset_parameters to randomise")
    steps = set(_steps(len(modules), max_steps))
    names: list[str] = []
    sims: list[list[torch.Tensor]] = [[] for _ in specs]
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        for i, (name, module) in enumerate(modules):
            torch.manual_seed(seed + 1)
            module.reset_parameters()  # type: ignore[operator]
            if i in steps:
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
