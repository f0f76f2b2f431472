"""B-cos ResNets (Böhle et al., CVPR 2022 / TPAMI 2024) with B = 2, as Rao et al. (ICCV 2023) ran them.

The reference is the B-cos v2 ResNet vendored in Model-Guidance (`bcos/models/resnet.py`, used through its
`hubconf.resnet50`). A B-cos unit computes `out = (ŵᵀx) · |ŵᵀx| / sqrt(‖x‖² + 1e-6)` with a unit-norm weight
ŵ and no bias (B = 2; `|cos|^(B−1)` for other B). The network has no ReLU; its batch norm only scales
(`γ · x / sqrt(var + eps)`, no centring, no bias); it takes the encoded input `[r, g, b, 1−r, 1−g, 1−b]`
(images in [0, 1]; a 3-channel input is encoded by `forward`). The stem is conv → norm → 3×3 average pool
(stride 2); the classifier is a 1×1 B-cos convolution applied at every location before the global average
pool, and a constant logit bias (log(1e-3 / 0.999) = −6.907, the ImageNet model's, which Rao et al. keep
when they replace the classifier) is added.

Explanation mode (`with model.explanation_mode():` around the *backward*): every dynamic factor W(x) (the
units' `|ŵᵀx| / ‖x‖`, the norms' `1 / sqrt(var + eps)`) is a constant in the first-order gradient, so
`Σ F ⊙ ∂y/∂F` is the contribution map and sums to the logit minus its bias. The gradient that flows on,
`g · W(x)`, keeps W(x; θ) in its graph: with `create_graph=True` a guidance loss on the map is differentiated
through W(x; θ) and through the norms' γ, exactly as the authors' `DynamicMultiplication` does. The mode is
read when the backward runs, so the forward that gave the logits (and the one batch-norm update) serves both
the task loss and the map.
"""

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet

IMAGENET_LOGIT_BIAS = math.log(1e-3 / 0.999)
"""The logit bias of the B-cos v2 ImageNet models, kept by Rao et al. when the classifier is replaced."""
_NORM_EPS = 1e-6
"""The patch norm is `sqrt(‖x‖² + 1e-6)`."""


class _DynamicProduct(torch.autograd.Function):
    """`w · x` for a dynamic weight w = W(x; θ). When `owner.explain` is set at backward time, the backward
    passes `g · w` to x and nothing to w (W held constant); `g · w` is itself differentiable in w, so a
    second-order backward (`create_graph=True`) still reaches θ through w."""

    @staticmethod
    def forward(ctx: Any, w: torch.Tensor, x: torch.Tensor, owner: nn.Module) -> torch.Tensor:
        ctx.owner = owner
        ctx.save_for_backward(w, x)
        return w * x

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor, None]:
        w, x = ctx.saved_tensors
        if ctx.owner.explain:
            return None, g * w, None
        return g * x, g * w, None


class BcosConv2d(nn.Conv2d):
    """A bias-free convolution with unit-norm filters whose output is scaled by `|cos(patch, ŵ)|^(b−1)`.

    `[B, C_in, H, W] -> [B, C_out, H', W']`; the patch norm is `sqrt(Σ_patch x² + 1e-6)`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 1,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        b: int = 2,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self.b = b
        self.explain = False
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight / self.weight.flatten(1).norm(dim=1)[:, None, None, None]
        lin = F.conv2d(x, w, None, self.stride, self.padding)
        squares = x.square().sum(1, keepdim=True)
        patch = F.avg_pool2d(squares, self.kernel_size, self.stride, self.padding, divisor_override=1)  # type: ignore[arg-type]
        norm = (patch + _NORM_EPS).sqrt()
        if self.b == 2:
            scale = lin.abs() / norm
        else:
            scale = ((lin / norm).abs() + 1e-6).pow(self.b - 1)
        return _DynamicProduct.apply(scale, lin, self)


class UncentredBatchNorm2d(nn.Module):
    """Batch norm that only scales: `y = γ · x / sqrt(var + eps)`, no mean shift, no bias.

    Training uses the batch variance per channel (biased, not detached) and updates `running_var`; eval uses
    `running_var`. `running_mean` is kept (never updated) so that the state dict is the reference's. The
    divisor is a dynamic weight (see `_DynamicProduct`); γ multiplies outside it.
    """

    running_var: torch.Tensor  # buffers (register_buffer below)
    num_batches_tracked: torch.Tensor

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.eps, self.momentum, self.explain = eps, momentum, False
        self.weight = nn.Parameter(torch.ones(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            var = x.var(dim=(0, 2, 3), unbiased=False)
            with torch.no_grad():
                self.running_var.mul_(1 - self.momentum).add_(self.momentum * var.detach())
                self.num_batches_tracked.add_(1)
        else:
            var = self.running_var
        inv_std = 1 / (var + self.eps).sqrt()[None, :, None, None]
        return self.weight[None, :, None, None] * _DynamicProduct.apply(inv_std, x, self)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def encode(x: torch.Tensor) -> torch.Tensor:
    """`[B, 3, H, W]` in [0, 1] -> `[B, 6, H, W]` = `[x, 1 − x]`."""
    return torch.cat([x, 1 - x], dim=1)


class BcosResNet(resnet.ResNet):
    """A torchvision ResNet made a B-cos network (see the module docstring): B-cos convolutions, uncentred
    batch norm, no ReLU, an average-pool stem, a 1×1 B-cos classifier before the global pool, a logit bias."""

    fc: nn.Linear | nn.Conv2d  # torchvision's Linear until __init__ replaces it with a 1×1 BcosConv2d

    def __init__(
        self,
        block: type[nn.Module],
        layers: list[int],
        num_classes: int,
        b: int = 2,
        logit_bias: float = IMAGENET_LOGIT_BIAS,
    ) -> None:
        super().__init__(block, layers, num_classes=num_classes, norm_layer=UncentredBatchNorm2d)
        for parent in list(self.modules()):
            for child_name, child in parent.named_children():
                if isinstance(child, nn.ReLU):
                    setattr(parent, child_name, nn.Identity())
                elif isinstance(child, nn.Conv2d) and not isinstance(child, BcosConv2d):
                    in_ch = 6 if child is self.conv1 else child.in_channels
                    # torch annotates a Conv2d's stored sizes as tuple[int, ...]; they are (h, w) pairs
                    unit = BcosConv2d(in_ch, child.out_channels, child.kernel_size, child.stride, child.padding, b)  # type: ignore[arg-type]
                    setattr(parent, child_name, unit)
        del self.relu, self.maxpool
        self.pool = nn.AvgPool2d(kernel_size=3, stride=2, padding=1)
        self.fc = BcosConv2d(
            self.fc.in_channels if isinstance(self.fc, nn.Conv2d) else self.fc.in_features, num_classes, b=b
        )
        self.logit_bias = logit_bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, 3 or 6, H, W]` -> logits `[B, num_classes]` (3 channels are encoded first)."""
        if x.shape[1] == 3:
            x = encode(x)
        x = self.pool(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.avgpool(self.fc(x)).flatten(1) + self.logit_bias

    @contextmanager
    def explanation_mode(self) -> Iterator["BcosResNet"]:
        """Hold W(x) constant in the first-order gradients of the backward passes run inside the block."""
        units = [m for m in self.modules() if isinstance(m, (BcosConv2d, UncentredBatchNorm2d))]
        for m in units:
            m.explain = True
        try:
            yield self
        finally:
            for m in units:
                m.explain = False

    @staticmethod
    def convert_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Keys of the authors' B-cos checkpoints -> ours: Model-Guidance's `BcosSequential` prefix `0.` goes
        (its logit bias holds no tensor), and a unit's `<name>.linear.weight` becomes `<name>.weight`."""
        if state and all(k.startswith("0.") for k in state):
            state = {k[2:]: v for k, v in state.items()}
        return {k.removesuffix(".linear.weight") + ".weight" if k.endswith(".linear.weight") else k: v
                for k, v in state.items()}  # fmt: skip


_BLOCKS = {
    18: (resnet.BasicBlock, [2, 2, 2, 2]),
    34: (resnet.BasicBlock, [3, 4, 6, 3]),
    50: (resnet.Bottleneck, [3, 4, 6, 3]),
}


def bcos_resnet(depth: int, num_classes: int, logit_bias: float = IMAGENET_LOGIT_BIAS) -> BcosResNet:
    """A B-cos ResNet-`depth` (18, 34 or 50), B = 2."""
    if depth not in _BLOCKS:
        raise ValueError(f"bcos_resnet depth must be one of {sorted(_BLOCKS)}, got {depth}")
    return BcosResNet(*_BLOCKS[depth], num_classes=num_classes, logit_bias=logit_bias)
