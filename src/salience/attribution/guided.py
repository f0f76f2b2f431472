"""Guided backpropagation, deconvolution and Guided Grad-CAM. Maps `[P, H, W]` at the input's resolution."""

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from salience.attribution.many import attribute
from salience.attribution.methods import grad_of_selected, pairs
from salience.attribution.registry import Method, register


class _GuidedReLU(torch.autograd.Function):
    """ReLU whose backward passes only positive gradients at positive inputs: `ReLU(g) ⊙ [x > 0]`."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        out = x.clamp(min=0)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (out,) = ctx.saved_tensors
        return grad.clamp(min=0) * (out > 0)


class _DeconvReLU(torch.autograd.Function):
    """ReLU whose backward is `ReLU(g)`, whatever the input (Zeiler & Fergus 2014's deconvnet)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad.clamp(min=0)


_RELUS = {F.relu, F.relu_, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_}


class _GuidedMode(TorchFunctionMode):
    """Within the block every ReLU (modules, `F.relu`, `torch.relu`, in-place forms) runs as `relu`
    (`_GuidedReLU` by default). In-place ReLUs return a new tensor instead of changing their input (same values)."""

    def __init__(self, relu: type[torch.autograd.Function] = _GuidedReLU) -> None:
        super().__init__()
        self.relu = relu

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if func in _RELUS:
            return self.relu.apply(args[0])
        return func(*args, **(kwargs or {}))


def guided_backprop(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, create_graph: bool = False
) -> torch.Tensor:
    """Guided backpropagation (Springenberg et al. 2015): `max_ch |∂y_c/∂x|` where every ReLU passes back
    only positive gradients at positive inputs. Every ReLU is guided, functional ones included (Captum
    guides `nn.ReLU` modules only). Not differentiable. `[P, H, W]`, >= 0."""
    x, cls = pairs(x, target)
    x = x.detach().requires_grad_(True)
    with torch.enable_grad(), _GuidedMode():
        logits = model(x)
    return grad_of_selected(logits, cls, x, create_graph=False).abs().amax(1)


def deconvolution(model: nn.Module, x: torch.Tensor, target: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
    """Deconvolution (Zeiler & Fergus 2014; Captum's Deconvolution): `max_ch |∂y_c/∂x|` where every ReLU's
    backward is `ReLU(g_out)`, regardless of its input (functional ReLUs included, as `guided_backprop`). Not
    differentiable. `[P, H, W]`, >= 0."""
    x, cls = pairs(x, target)
    x = x.detach().requires_grad_(True)
    with torch.enable_grad(), _GuidedMode(_DeconvReLU):
        logits = model(x)
    return grad_of_selected(logits, cls, x, create_graph=False).abs().amax(1)


def guided_grad_cam(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, layer: str = "final", create_graph: bool = False
) -> torch.Tensor:
    """Guided Grad-CAM (Selvaraju et al. 2017): `guided_backprop ⊙ grad_cam`, Grad-CAM at `layer` upsampled
    bilinearly to the input (`align_corners=False`). Not differentiable. `[P, H, W]`, >= 0."""
    cam = attribute("grad_cam", model, x, target, layer=layer)
    cam = F.interpolate(cam[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return guided_backprop(model, x, target) * cam


register(
    Method(
        "guided_backprop",
        "Guided backpropagation: the gradient with every ReLU passing back positive gradients only",
        run=guided_backprop,
        differentiable=False,
    )
)
register(
    Method(
        "deconvolution",
        "Deconvolution: the gradient with every ReLU passing back the positive part of its output gradient",
        run=deconvolution,
        differentiable=False,
    )
)
register(
    Method(
        "guided_grad_cam",
        "Guided Grad-CAM: guided backpropagation × upsampled Grad-CAM",
        run=guided_grad_cam,
        layer="final",
        takes_layer=True,
        differentiable=False,
        extra_forwards="1 (Grad-CAM and guided backpropagation each run a pass)",
    )
)

__all__ = ["deconvolution", "guided_backprop", "guided_grad_cam"]
