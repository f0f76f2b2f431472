"""Ablation-CAM (channels weighted by the score drop when each is ablated) and FullGrad (input-gradient and
bias-gradient maps of every conv and batch-norm layer). Maps `[P, h, w]`, >= 0."""

import torch
from torch import nn

from salience.attribution.core import (
    check_classes,
    instance_attributes,
    perturbed_outputs,
    resolve_layer,
    selected_logit_sum,
    upsample,
)
from salience.attribution.many import record
from salience.attribution.methods import pairs
from salience.attribution.registry import Method, register


def ablation_cam(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    layer: str = "final",
    batch_size: int = 64,
    create_graph: bool = False,
) -> torch.Tensor:
    """Ablation-CAM (Desai & Ramaswamy 2020): `ReLU(Σ_k w_k A_k)`, `w_k = (y_c − y_c^k) / y_c`, y_c^k the score
    with the layer's output channel k set to 0 (the layer is not run again: it returns the recorded activations
    with that channel zeroed). One forward per (pair, channel), `batch_size` rows at a time. Not differentiable.
    `[P, h, w]`, >= 0."""
    x, cls = pairs(x, target)
    module = resolve_layer(model, layer)
    if module is None:
        raise ValueError(f"layer: ablation_cam needs a layer, not the input; got {layer!r}")
    with torch.no_grad():
        logits, (acts,) = record(model, x, [module], from_layer=False)
        if acts.dim() != 4:
            raise ValueError(f"layer {layer!r}: ablation_cam needs a [B, K, h, w] output; got {tuple(acts.shape)}")
        check_classes(cls, logits.shape[1])
        base = logits.gather(1, cls[:, None])[:, 0]

        def ablated(p: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
            a = acts[p].clone()
            a[torch.arange(p.shape[0], device=x.device), k] = 0
            return a

        def scores(a: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
            with instance_attributes([(module, {"forward": lambda *args, **kwargs: a})]):  # the layer returns a
                return model(x[p]).gather(1, cls[p, None])[:, 0]

        drop = perturbed_outputs(x, acts.shape[1], ablated, scores, batch_size)  # [P, K]
        weights = (base[:, None] - drop) / base[:, None]
        return torch.relu(torch.einsum("pk,pkhw->phw", weights, acts))


def _bias(layer: nn.Module) -> torch.Tensor:
    """A conv's bias; a batch norm's effective bias in eval mode, `β − μ γ / √(σ² + ε)`."""
    if isinstance(layer, nn.BatchNorm2d):
        assert layer.running_mean is not None and layer.running_var is not None
        return layer.bias - layer.running_mean * layer.weight / torch.sqrt(layer.running_var + layer.eps)
    assert isinstance(layer.bias, torch.Tensor)
    return layer.bias


def _minmax(maps: torch.Tensor) -> torch.Tensor:
    """`(m − min m) / (1e-7 + max(m − min m))` over the last two dimensions (pytorch-grad-cam's scaling)."""
    shifted = maps - maps.amin(dim=(-2, -1), keepdim=True)
    return shifted / (1e-7 + shifted.amax(dim=(-2, -1), keepdim=True))


def bias_layers(model: nn.Module) -> list[nn.Module]:
    """The `nn.Conv2d` and `nn.BatchNorm2d` modules (exactly those types) that have a bias, in module order."""
    return [m for m in model.modules() if type(m) in (nn.Conv2d, nn.BatchNorm2d) and m.bias is not None]


def full_grad(model: nn.Module, x: torch.Tensor, target: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
    """FullGrad (Srinivas & Fleuret 2019), as pytorch-grad-cam: `Σ_ch mm(|x ⊙ ∂y_c/∂x|) + Σ_layers up(Σ_k
    mm(|b_k ⊙ ∂y_c/∂z_k|))` over every layer of `bias_layers`, z the layer's output, b its (effective) bias,
    `mm` the min-max scaling `_minmax` of each channel map, `up` bilinear to the input (`align_corners=False`).
    One forward and backward. Not differentiable. `[P, H, W]`, >= 0."""
    x, cls = pairs(x, target)
    layers = bias_layers(model)
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits, outputs = record(model, x, layers, from_layer=False)
        selected = selected_logit_sum(logits, torch.arange(cls.shape[0], device=x.device), cls)
        grads = torch.autograd.grad(selected, [x, *outputs])
    with torch.no_grad():
        total = _minmax((x * grads[0]).abs()).sum(1)
        for layer, grad in zip(layers, grads[1:], strict=True):
            bias = _bias(layer).to(grad.dtype)[None, :, None, None]
            total = total + upsample(_minmax((bias * grad).abs()).sum(1), (x.shape[-2], x.shape[-1]))
    return total


register(
    Method(
        "ablation_cam",
        "Ablation-CAM: channels weighted by the relative score drop when each is set to zero",
        run=ablation_cam,
        layer="final",
        takes_layer=True,
        differentiable=False,
        extra_forwards="channels of the layer, per image",
    )
)
register(
    Method(
        "full_grad",
        "FullGrad: min-max scaled |input × gradient| plus |bias × gradient| of every conv and batch norm",
        run=full_grad,
        differentiable=False,
    )
)

__all__ = ["ablation_cam", "bias_layers", "full_grad"]
