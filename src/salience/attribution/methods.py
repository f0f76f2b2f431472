"""Batched, differentiable attribution methods. Each returns raw maps `[P, h, w]`.

`target` is a long `[B]` (one class per image, P = B) or a multi-hot `[B, C]` (one map per
(image, class) pair, P = number of ones, in row-major order; see `expand_targets`). Every method
takes one `torch.autograd.grad` call per batch (per chunk of `internal_batch_size` for IntGrad):
the gradient of the sum of the selected logits. With `create_graph=True` the maps keep their
graph so a loss on them reaches the parameters (double backward); otherwise they are detached.
Methods leave the model's train/eval mode alone: explain in eval mode, guide in train mode.
"""

import math
from collections.abc import Callable

import torch
from torch import nn

from salience.attribution.core import check_input, expand_targets, forward_at, resolve_layer, selected_logit_sum
from salience.models.bcos import BcosResNet, encode
from salience.models.depths import layer_name


def _pairs(x: torch.Tensor, target) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs `[P, C, H, W]` and classes `[P]`, one row per (image, class) pair."""
    check_input(x)
    image, cls = expand_targets(target, x.shape[0])
    image, cls = image.to(x.device), cls.to(x.device)
    if image.shape[0] != x.shape[0] or not torch.equal(image, torch.arange(x.shape[0], device=x.device)):
        x = x[image]
    return x, cls


def _grad(logits, cls, wrt, create_graph):
    selected = selected_logit_sum(logits, torch.arange(cls.shape[0], device=cls.device), cls)
    (grad,) = torch.autograd.grad(selected, wrt, create_graph=create_graph)
    return grad


def _out(maps: torch.Tensor, create_graph: bool) -> torch.Tensor:
    return maps if create_graph else maps.detach()


def token_grid(feats: torch.Tensor) -> torch.Tensor:
    """Layer outputs as `[P, K, h, w]`: 4-D outputs unchanged; transformer tokens `[P, N, D]` (ViT)
    become `[P, D, s, s]` with s = ⌊√N⌋, after dropping the N − s² leading tokens (class / register)."""
    if feats.dim() == 4:
        return feats
    if feats.dim() == 3:
        side = math.isqrt(feats.shape[1])
        if side > 0:
            return feats[:, feats.shape[1] - side * side :].transpose(1, 2).reshape(feats.shape[0], -1, side, side)
    raise ValueError(f"layer output {tuple(feats.shape)} is neither a feature map [B, K, h, w] nor tokens [B, N, D]")


def ixg_map(feats: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """`Σ_channels F ⊙ ∂y/∂F`: `[P, K, h, w]` (or tokens `[P, N, D]`, see `token_grid`) twice -> `[P, h, w]`."""
    return (token_grid(feats) * token_grid(grad)).sum(1)


def grad_cam_map(acts: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """`ReLU(Σ_k mean_hw(∂y/∂A_k) · A_k)`: `[P, K, h, w]` (or tokens, see `token_grid`) twice -> `[P, h, w]`."""
    acts, grad = token_grid(acts), token_grid(grad)
    return torch.relu((grad.mean(dim=(2, 3), keepdim=True) * acts).sum(1))


def cam_map(class_weights: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
    """`Σ_k w_ck A_k`: rows of the classifier `[P, K]` and features `[P, K, h, w]` -> `[P, h, w]`."""
    return torch.einsum("pk,pkhw->phw", class_weights.to(acts.dtype), acts)


def gradient(model: nn.Module, x, target, reduce: str = "absmax", create_graph: bool = False):
    """`∂y_c/∂x` reduced over channels: `absmax` (max |g|) or `sum`. `[P, H, W]`."""
    if reduce not in ("absmax", "sum"):
        raise ValueError(f"reduce must be 'absmax' or 'sum'; got {reduce!r}")
    x, cls = _pairs(x, target)
    with torch.enable_grad():
        logits, inp = forward_at(model, x, None)
        g = _grad(logits, cls, inp, create_graph)
    return _out(g.abs().amax(1) if reduce == "absmax" else g.sum(1), create_graph)


def input_x_gradient(model: nn.Module, x, target, layer: str | None = None, create_graph: bool = False):
    """`Σ_channels F ⊙ ∂y_c/∂F`, F = the input (`layer=None`) or a layer's output. `[P, h, w]`."""
    x, cls = _pairs(x, target)
    with torch.enable_grad():
        logits, feats = forward_at(model, x, layer, create_graph)
        g = _grad(logits, cls, feats, create_graph)
    return _out(ixg_map(feats, g), create_graph)


def integrated_gradients(
    model: nn.Module,
    x,
    target,
    steps: int = 32,
    baseline: torch.Tensor | None = None,
    internal_batch_size: int | None = None,
    create_graph: bool = False,
):
    """`Σ_channels (x − x0) ⊙ mean_k ∂y_c/∂x(x0 + α_k (x − x0))`, α_k = (k + ½)/steps (midpoint rule).

    All `steps × P` path points run as one batch, or in chunks of `internal_batch_size`.
    `baseline`: broadcastable to `x`; zeros by default. `[P, H, W]`.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps}")
    x, cls = _pairs(x, target)
    x0 = (
        torch.zeros_like(x)
        if baseline is None
        else torch.as_tensor(baseline, dtype=x.dtype, device=x.device).expand_as(x)
    )
    delta = x - x0
    n_pairs = x.shape[0]
    total = steps * n_pairs
    chunk = internal_batch_size or total
    alphas = (torch.arange(steps, dtype=x.dtype, device=x.device) + 0.5) / steps
    grad_sum = torch.zeros_like(x)
    with torch.enable_grad():
        for start in range(0, total, chunk):
            idx = torch.arange(start, min(start + chunk, total), device=x.device)
            k, p = idx // n_pairs, idx % n_pairs
            points = (x0[p] + alphas[k, None, None, None] * delta[p]).detach().requires_grad_(True)
            g = _grad(model(points), cls[p], points, create_graph)
            grad_sum = grad_sum.index_add(0, p, g)
    return _out((delta * grad_sum / steps).sum(1), create_graph)


def grad_cam(model: nn.Module, x, target, layer: str = "final", create_graph: bool = False):
    """`ReLU(Σ_k mean_hw(∂y_c/∂A_k) · A_k)`, A = the layer's output. `[P, h, w]`."""
    if resolve_layer(model, layer) is None:
        raise ValueError(f"layer: grad_cam needs a convolutional layer, not the input; got {layer!r}")
    x, cls = _pairs(x, target)
    with torch.enable_grad():
        logits, acts = forward_at(model, x, layer, create_graph)
        g = _grad(logits, cls, acts, create_graph)
    return _out(grad_cam_map(acts, g), create_graph)


def cam_weights(model: nn.Module, acts: torch.Tensor | None = None) -> torch.Tensor:
    """The class weights `[C, K]` of the model's linear head `fc`; with `acts` `[P, K, h, w]` (the
    `final` layer's output) also checks that K matches. ValueError when CAM does not apply."""
    fc = getattr(model, "fc", None)
    if type(fc) is not nn.Linear:
        raise ValueError(
            f"cam needs a model whose classifier `fc` is a plain nn.Linear after global "
            f"average pooling (ResNet, X-ResNet, SmallCNN); {type(model).__name__} has none"
        )
    if acts is not None and acts.shape[1] != fc.in_features:
        raise ValueError(
            f"cam: the final layer ({layer_name(model, 'final')}) gives {acts.shape[1]} channels but "
            f"fc takes {fc.in_features}"
        )
    return fc.weight


def cam(model: nn.Module, x, target, create_graph: bool = False):
    """Class activation map: `Σ_k w_ck A_k`, A = the last feature map (the `final` depth), w = `fc`.

    For global-average-pool + linear heads, `mean_hw(cam) + fc.bias[c]` is the logit. `[P, h, w]`.
    """
    cam_weights(model)
    x, cls = _pairs(x, target)
    with torch.set_grad_enabled(create_graph):
        _, acts = forward_at(model, x, layer_name(model, "final"), create_graph=True)
        maps = cam_map(cam_weights(model, acts)[cls], acts)
    return _out(maps, create_graph)


def bcos(model: nn.Module, x, target, layer: str | None = None, create_graph: bool = False):
    """B-cos contributions `Σ_channels F ⊙ ∂y_c/∂F` in explanation mode (W(x) held constant).

    F = the encoded 6-channel input (`layer=None`), so the map sums to the logit minus the logit bias,
    or a layer's output. `[P, h, w]`.
    """
    if not isinstance(model, BcosResNet):
        raise ValueError(f"bcos attributions need a B-cos network (bcos_resnet18/34/50); got {type(model).__name__}")
    x, cls = _pairs(x, target)
    if x.shape[1] == 3:
        x = encode(x)
    with torch.enable_grad(), model.explanation_mode():
        logits, feats = forward_at(model, x.detach(), layer, create_graph)
        g = _grad(logits, cls, feats, create_graph)
    return _out(ixg_map(feats, g), create_graph)


METHODS: dict[str, Callable[..., torch.Tensor]] = {
    "gradient": gradient,
    "input_x_gradient": input_x_gradient,
    "integrated_gradients": integrated_gradients,
    "grad_cam": grad_cam,
    "cam": cam,
    "bcos": bcos,
}
_TAKES_LAYER = {"input_x_gradient", "grad_cam", "bcos"}


def attribute(
    method: str, model: nn.Module, x, target, layer: str | None = None, create_graph: bool = False, **options
):
    """Dispatch by name: `attribute("grad_cam", model, x, target, layer="final")`. `[P, h, w]`."""
    if method not in METHODS:
        raise ValueError(f"method {method!r} is unknown; accepted: {', '.join(METHODS)}")
    if layer is not None and method not in _TAKES_LAYER:
        raise ValueError(
            f"layer: method {method!r} works on the input only; layers are accepted by "
            f"{', '.join(sorted(_TAKES_LAYER))}"
        )
    if layer is not None:
        options["layer"] = layer
    return METHODS[method](model, x, target, create_graph=create_graph, **options)


__all__ = ["METHODS", "attribute", "bcos", "cam", "grad_cam", "gradient", "input_x_gradient", "integrated_gradients"]
