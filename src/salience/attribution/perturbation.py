"""Methods that run the model on changed inputs: Score-CAM and occlusion (masked inputs, no gradient),
SmoothGrad and VarGrad (any method over noisy copies of the input). Every changed input of a batch runs
batched, in chunks of `batch_size` rows so memory stays bounded. Maps `[P, h, w]`."""

import torch
import torch.nn.functional as F
from torch import nn

from salience.attribution.core import (
    channels_last,
    check_classes,
    class_scores,
    patch_grid,
    perturbed_outputs,
    resolve_layer,
)
from salience.attribution.many import attribute, record
from salience.attribution.methods import pairs
from salience.attribution.registry import Method, register, token_grid


def score_cam(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    layer: str = "final",
    batch_size: int = 64,
    create_graph: bool = False,
) -> torch.Tensor:
    """Score-CAM (Wang et al. 2020): `ReLU(Σ_k w_k A_k)`, `w = softmax_k(y_c(x ⊙ H_k))`, H_k the k-th channel
    upsampled bilinearly to the input (`align_corners=True`, as pytorch-grad-cam) and min-max normalised
    (a constant channel gives 0). One forward per (pair, channel), `batch_size` masked inputs at a time, so
    memory stays bounded. Not differentiable. `[P, h, w]`, >= 0."""
    x, cls = pairs(x, target)
    module = resolve_layer(model, layer)
    if module is None:
        raise ValueError(f"layer: score_cam needs a layer, not the input; got {layer!r}")
    with torch.no_grad():
        logits, (acts,) = record(model, x, [module], from_layer=False)
        check_classes(cls, logits.shape[1])
        acts = token_grid(acts, patch_grid(model, x.shape[-2:]), channels_last(model))
        up = F.interpolate(acts, size=x.shape[-2:], mode="bilinear", align_corners=True)
        lo, hi = up.amin(dim=(2, 3), keepdim=True), up.amax(dim=(2, 3), keepdim=True)
        masks = torch.where(hi > lo, (up - lo) / torch.where(hi > lo, hi - lo, 1.0), 0.0)  # [P, K, H, W]
        scores = perturbed_outputs(
            x, acts.shape[1], lambda p, k: x[p] * masks[p, k, None], class_scores(model, cls), batch_size
        )  # [P, K]
        return torch.relu(torch.einsum("pk,pkhw->phw", scores.softmax(1), acts))


def _window_masks(size: int, window: int, stride: int, device: torch.device) -> torch.Tensor:
    """`[n, size]` 0/1 rows, window i covering `[i·stride, i·stride + window)` clipped to the size; n =
    ceil((size − window) / stride) + 1, so the last window reaches the edge (as Captum's Occlusion)."""
    n = -(-(size - window) // stride) + 1
    start = torch.arange(n, device=device)[:, None] * stride
    pos = torch.arange(size, device=device)[None]
    return ((pos >= start) & (pos < start + window)).float()


def occlusion(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    window: int = 8,
    stride: int = 4,
    baseline: float = 0.0,
    batch_size: int = 64,
    create_graph: bool = False,
) -> torch.Tensor:
    """Occlusion (Zeiler & Fergus 2014): each `window`×`window` square (all channels, moved by `stride`) is
    set to `baseline`; a pixel's value is the mean, over the windows covering it, of `y_c(x) − y_c(x occluded)`.
    One forward per window and pair, `batch_size` at a time. Not differentiable. `[P, H, W]`, signed."""
    x, cls = pairs(x, target)
    height, width = x.shape[-2:]
    if not 1 <= stride <= window <= min(height, width):
        raise ValueError(
            f"occlusion: need 1 <= stride <= window <= {min(height, width)}; got window {window}, stride {stride}"
        )
    row_masks = _window_masks(height, window, stride, x.device).to(x.dtype)
    col_masks = _window_masks(width, window, stride, x.device).to(x.dtype)
    n_cols = col_masks.shape[0]

    def occluded(p: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        mask = (row_masks[w // n_cols, :, None] * col_masks[w % n_cols, None, :])[:, None]
        return x[p] * (1 - mask) + baseline * mask

    with torch.no_grad():
        base = model(x)
        check_classes(cls, base.shape[1])
        base = base.gather(1, cls[:, None])[:, 0]
        n_windows = row_masks.shape[0] * n_cols
        scores = perturbed_outputs(x, n_windows, occluded, class_scores(model, cls), batch_size)
        drop = (base[:, None] - scores).view(x.shape[0], row_masks.shape[0], -1)
        total = torch.einsum("pab,ah,bw->phw", drop, row_masks, col_masks)
        count = torch.einsum("ah,bw->hw", row_masks, col_masks)
        return total / count


def _noisy_maps(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    base: str,
    layer: str | None,
    samples: int,
    noise_level: float,
    seed: int,
    batch_size: int | None,
    create_graph: bool,
) -> torch.Tensor:
    """Maps `[P, samples, h, w]` of `base` on `x + ε`, ε ~ N(0, σ²), σ = noise_level · (max x − min x) per pair.

    The noise is one `torch.normal` draw of shape `[P·samples, C, H, W]` (pairs outer, samples inner) from a
    generator seeded with `seed`, the layout Captum's NoiseTunnel draws from the global generator. (Captum builds
    its σ tensor in the default dtype, so for float64 inputs its draw matches only under
    `torch.set_default_dtype(torch.float64)`.)"""
    if base in ("smooth_grad", "smooth_grad_sq", "var_grad"):
        raise ValueError(f"base: {base!r} is itself a noise method; pick another, e.g. gradient")
    if samples < 1 or noise_level < 0:
        raise ValueError(f"samples must be >= 1 and noise_level >= 0; got {samples}, {noise_level}")
    x, cls = pairs(x, target)
    sigma = noise_level * (x.flatten(1).amax(1) - x.flatten(1).amin(1))
    rows = x.shape[0] * samples
    std = sigma.repeat_interleave(samples)[:, None, None, None].expand(rows, *x.shape[1:]).contiguous()
    generator = torch.Generator(device=x.device).manual_seed(seed)
    noise = torch.normal(0.0, std, generator=generator).view(x.shape[0], samples, *x.shape[1:])
    run = lambda inputs, p: attribute(base, model, inputs, cls[p], layer=layer, create_graph=create_graph)
    return perturbed_outputs(x, samples, lambda p, s: x.detach()[p] + noise[p, s], run, batch_size or rows)


def smooth_grad(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    base: str = "gradient",
    layer: str | None = None,
    samples: int = 16,
    noise_level: float = 0.15,
    seed: int = 0,
    batch_size: int | None = None,
    create_graph: bool = False,
) -> torch.Tensor:
    """SmoothGrad (Smilkov et al. 2017): the mean over `samples` noisy copies of the input of the `base` method's
    map (at `layer`, if it takes one); noise as `_noisy_maps`. `batch_size` noisy rows per call (all by default).
    Differentiable when the base method is. `[P, h, w]`."""
    return _noisy_maps(model, x, target, base, layer, samples, noise_level, seed, batch_size, create_graph).mean(1)


def smooth_grad_sq(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    base: str = "gradient",
    layer: str | None = None,
    samples: int = 16,
    noise_level: float = 0.15,
    seed: int = 0,
    batch_size: int | None = None,
    create_graph: bool = False,
) -> torch.Tensor:
    """SmoothGrad-squared (Hooker et al. 2019; Captum's NoiseTunnel `smoothgrad_sq`): the mean of the squared
    `base` maps over `samples` noisy copies, noise and options as `smooth_grad`. `[P, h, w]`, >= 0."""
    maps = _noisy_maps(model, x, target, base, layer, samples, noise_level, seed, batch_size, create_graph)
    return (maps**2).mean(1)


def var_grad(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    base: str = "gradient",
    layer: str | None = None,
    samples: int = 16,
    noise_level: float = 0.15,
    seed: int = 0,
    batch_size: int | None = None,
    create_graph: bool = False,
) -> torch.Tensor:
    """VarGrad (Adebayo et al. 2018): the variance `E[m²] − E[m]²` over `samples` noisy copies of the `base`
    method's map, noise and options as `smooth_grad`. `[P, h, w]`, >= 0."""
    maps = _noisy_maps(model, x, target, base, layer, samples, noise_level, seed, batch_size, create_graph)
    return (maps**2).mean(1) - maps.mean(1) ** 2


register(
    Method(
        "score_cam",
        "Score-CAM: channels weighted by the softmax of the scores of channel-masked inputs",
        run=score_cam,
        layer="final",
        takes_layer=True,
        differentiable=False,
        extra_forwards="channels of the layer, per image",
    )
)
register(
    Method(
        "occlusion",
        "Occlusion: the score drop when a sliding window is blanked, averaged per pixel",
        run=occlusion,
        differentiable=False,
        signed=True,
        extra_forwards="windows per image (ceil((H − window)/stride) + 1 per side, squared)",
    )
)
register(
    Method(
        "smooth_grad",
        "SmoothGrad: the mean map of a base method over noisy copies of the input",
        run=smooth_grad,
        takes_layer=True,
        signed=True,
        random=True,
        extra_forwards="samples per image (default 16), backward included",
    )
)
register(
    Method(
        "smooth_grad_sq",
        "SmoothGrad²: the mean squared map of a base method over noisy copies of the input",
        run=smooth_grad_sq,
        takes_layer=True,
        random=True,
        extra_forwards="samples per image (default 16), backward included",
    )
)
register(
    Method(
        "var_grad",
        "VarGrad: the variance of a base method's map over noisy copies of the input",
        run=var_grad,
        takes_layer=True,
        random=True,
        extra_forwards="samples per image (default 16), backward included",
    )
)

__all__ = ["occlusion", "score_cam", "smooth_grad", "smooth_grad_sq", "var_grad"]
