"""Axiomatic measures of Quantus 0.6: completeness (Sundararajan et al. 2017), non-sensitivity (Nguyen and
Martínez 2020) and input invariance (Kindermans et al. 2017).

Maps `[B, h, w]` are upsampled bilinearly to the input size. Model passes are batched on the model's device,
`batch_size` rows per call; baselines as in `salience.measures.monotonicity` (`"black"`: the image's minimum).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from salience.attribution import attribute, upsample
from salience.attribution.core import perturbed_outputs
from salience.measures.monotonicity import _clean, _features, _scores, baseline_values
from salience.measures.registry import Probe

_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _by_max(a: torch.Tensor) -> torch.Tensor:
    """`a [B, d] / max |a|` per row (Quantus' `normalise_by_max`, per image); an all-zero row stays zero."""
    top = a.abs().amax(1, keepdim=True)
    return a / torch.where(top > 0, top, torch.ones_like(top))


def completeness(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    maps: torch.Tensor,
    baseline: str | float = "black",
    normalise: bool = True,
    rtol: float = 1e-5,
    atol: float = 1e-6,
    seed: int = 0,
) -> torch.Tensor:
    """Completeness per image -> `[B]` (1.0 or 0.0): whether the sum of the map over the pixels equals the drop
    of the target's logit from x to the image filled with the baseline, within `atol + rtol * |drop|` (Quantus
    tests `==`). `normalise`: the map is divided by max |A| first (Quantus' default, under which the sum rarely
    equals the drop; pass False for a method meant to be complete, and `baseline=0.0` for a zero baseline)."""
    a = upsample(maps.detach().to(x.dtype), (x.shape[-2], x.shape[-1])).flatten(1)
    a = _by_max(a) if normalise else a
    fill = baseline_values(x, baseline, 1, torch.Generator(device=x.device).manual_seed(seed))
    with torch.no_grad():
        scores = _clean(model, torch.cat([x.detach(), fill[:, :, None, None].expand_as(x)]), target.repeat(2), False)
    drop = (scores[: len(x)] - scores[len(x) :]).double()
    return ((a.double().sum(1) - drop).abs() <= atol + rtol * drop.abs()).to(x.dtype)


def non_sensitivity(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    maps: torch.Tensor,
    eps: float = 1e-5,
    features_in_step: int = 1,
    baseline: str | float = "black",
    seed: int = 0,
    batch_size: int = 64,
) -> torch.Tensor:
    """Non-sensitivity per image -> `[B]`: the number of features (channel-pixel values) that violate the axiom:
    setting the feature (alone, `features_in_step` at a time in index order) to the baseline changes the
    target's softmax probability by less than `eps` but the feature's |A| / max |A| is at least `eps`, or the
    reverse. Lower is better; at most C * H * W."""
    a = _by_max(_features(maps, x).abs())
    flat = x.detach().flatten(1)
    if features_in_step < 1:
        raise ValueError(f"features_in_step must be at least 1, got {features_in_step}")
    step = torch.arange(flat.shape[1], device=x.device) // features_in_step
    steps = int(step[-1]) + 1
    fill = baseline_values(x, baseline, steps, torch.Generator(device=x.device).manual_seed(seed))

    def perturbed(image: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        hit = step[None] == index[:, None]
        return torch.where(hit, fill[image, index, None], flat[image]).view(-1, *x.shape[1:])

    with torch.no_grad():
        p = _clean(model, x, target, True)
        probs = perturbed_outputs(x, steps, perturbed, _scores(model, target, True), batch_size, block=1)
    unchanged = ((probs - p[:, None]).abs() < eps)[:, step]  # each feature takes its step's outcome
    return (unchanged ^ (a < eps)).sum(1).to(x.dtype)


@contextmanager
def shifted(model: nn.Module, shift: float, shape: tuple[int, ...]) -> Iterator[nn.Module]:
    """Within the block, `model` gives on `x + shift` what it gave on x (Kindermans et al.): its first convolution
    or linear layer (in module order) subtracts its response without bias to a constant input of `shift` (`[1,
    *shape]`, a linear layer `[1, in_features]`), by a forward hook removed on exit (also on error). That is `W m`
    per output channel where the layer has no padding (Quantus' bias change `b - W m` on a copy) and also right at
    a zero-padded border, where Quantus' bias (the smallest response over positions) is not. The first layer must
    see the input itself."""
    layer = next((m for m in model.modules() if isinstance(m, _LAYERS)), None)
    if layer is None:
        raise ValueError(f"input_invariance: {type(model).__name__} has no convolution or linear layer to shift")
    w = layer.weight
    inputs = (1, layer.in_features) if isinstance(layer, nn.Linear) else (1, *shape)
    with torch.no_grad():
        response = layer(torch.full(inputs, float(shift), dtype=w.dtype, device=w.device))
        if layer.bias is not None:
            response -= layer.bias.view(-1, *[1] * (response.dim() - 2))
    handle = layer.register_forward_hook(lambda module, args, output: output - response)
    try:
        yield model
    finally:
        handle.remove()


def input_invariance(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    maps: torch.Tensor,
    explain: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
    shift: float = -1.0,
    atol: float = 1e-4,
    rtol: float = 1e-5,
) -> torch.Tensor:
    """Input invariance per image -> `[B]` (1.0 or 0.0): whether the maps `explain(shifted, x + shift, target)` of
    the model made for shifted inputs (`shifted`) equal `maps` at every pixel within `atol + rtol * |shifted
    map|` (NumPy's `isclose`, Quantus' tolerances), both at the input size, raw. Every input value is shifted
    (Quantus 0.6 leaves the first, channel 0 at the top-left pixel, as it is)."""
    size = (x.shape[-2], x.shape[-1])
    with shifted(model, shift, tuple(x.shape[1:])) as moved_model:
        moved = upsample(explain(moved_model, x.detach() + shift, target).detach(), size).flatten(1).double()
    a = upsample(maps.detach(), size).flatten(1).double()
    return ((a - moved).abs() <= atol + rtol * moved.abs()).all(1).to(x.dtype)


# --- registry entries: `fn(probe, *, options)` over the probe's images and maps (see `salience.measures.entries`)
def _completeness(
    p: Probe, *, baseline: str | float = "black", normalise: bool = True, rtol: float = 1e-5, atol: float = 1e-6
) -> torch.Tensor:
    return completeness(p.model, p.x, p.target, p.maps, baseline, normalise, rtol, atol, p.seed)


def _non_sensitivity(
    p: Probe, *, eps: float = 1e-5, features_in_step: int = 1, baseline: str | float = "black", batch_size: int = 64
) -> torch.Tensor:
    return non_sensitivity(p.model, p.x, p.target, p.maps, eps, features_in_step, baseline, p.seed, batch_size)


def _input_invariance(p: Probe, *, shift: float = -1.0, atol: float = 1e-4, rtol: float = 1e-5) -> torch.Tensor:
    if p.method is None:
        raise ValueError("input_invariance needs the probe's method (Probe.method) to explain the shifted model")
    method, layer, options = p.method, p.layer, p.options

    def explain(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return attribute(method, model, x, target, layer=layer, **options)

    return input_invariance(p.model, p.x, p.target, p.maps, explain, shift, atol, rtol)
