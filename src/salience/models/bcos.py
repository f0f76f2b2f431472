"""B-cos ResNets (Böhle et al., CVPR 2022 / TPAMI 2024) with B = 2 and an explanation mode.

A B-cos unit computes `out = (ŵᵀx) · |cos(x, ŵ)|^(B−1)` with a unit-norm weight ŵ and no bias.
The network has no ReLU, uses scale-only batch norm, takes the encoded input `[r, g, b, 1−r, 1−g,
1−b]` (images in [0, 1]; a 3-channel input is encoded by `forward`) and adds a constant logit bias.
In explanation mode the dynamic factors (`|cos|^(B−1)`, batch-norm scales) are constants, so the
model is `f(x) = W(x) x + logit_bias` and `Σ x ⊙ ∂f/∂x` reproduces the logit minus the bias.
"""

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet

from salience.models.layers import UncentredBatchNorm2d

_EPS = 1e-6


class BcosConv2d(nn.Conv2d):
    """A bias-free convolution whose output is scaled by `|cos(patch, ŵ)|^(b−1)`."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        b: int = 2,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, bias=False)
        self.b = b
        self.explain = False
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="linear")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight / self.weight.flatten(1).norm(dim=1).clamp_min(_EPS)[:, None, None, None]
        lin = F.conv2d(x, w, None, self.stride, self.padding, self.dilation)
        ones = torch.ones((1, *w.shape[1:]), dtype=x.dtype, device=x.device)
        patch_norm = F.conv2d(x * x, ones, None, self.stride, self.padding, self.dilation).add(_EPS).sqrt()
        scale = (lin / patch_norm).abs().pow(self.b - 1)
        return lin * (scale.detach() if self.explain else scale)


class BcosLinear(nn.Linear):
    """The fully connected B-cos unit: `(ŵᵀx) · |cos(x, ŵ)|^(b−1)`, no bias."""

    def __init__(self, in_features: int, out_features: int, b: int = 2) -> None:
        super().__init__(in_features, out_features, bias=False)
        self.b = b
        self.explain = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight / self.weight.norm(dim=1, keepdim=True).clamp_min(_EPS)
        lin = x @ w.T
        scale = (lin / x.norm(dim=1, keepdim=True).add(_EPS)).abs().pow(self.b - 1)
        return lin * (scale.detach() if self.explain else scale)


def encode(x: torch.Tensor) -> torch.Tensor:
    """`[B, 3, H, W]` in [0, 1] -> `[B, 6, H, W]` = `[x, 1 − x]`."""
    return torch.cat([x, 1 - x], dim=1)


class BcosResNet(resnet.ResNet):
    """A torchvision ResNet whose convolutions and classifier are B-cos units (no ReLU, no biases)."""

    def __init__(self, block: type[nn.Module], layers: list[int], num_classes: int, b: int = 2) -> None:
        super().__init__(block, layers, num_classes=num_classes, norm_layer=UncentredBatchNorm2d)
        for parent in list(self.modules()):
            for child_name, child in parent.named_children():
                if isinstance(child, nn.Conv2d) and not isinstance(child, BcosConv2d):
                    in_ch = 6 if child is self.conv1 else child.in_channels
                    # torch annotates a Conv2d's stored sizes as tuple[int, ...] (they are the (h, w) pairs its
                    # __init__ took as int | tuple[int, int]), hence the ignore
                    conv = BcosConv2d(
                        in_ch,
                        child.out_channels,
                        child.kernel_size,  # type: ignore[arg-type]
                        child.stride,  # type: ignore[arg-type]
                        child.padding,  # type: ignore[arg-type]
                        child.dilation,  # type: ignore[arg-type]
                        b,
                    )
                    setattr(parent, child_name, conv)
                elif isinstance(child, nn.ReLU):
                    setattr(parent, child_name, nn.Identity())
        self.fc: nn.Linear = BcosLinear(self.fc.in_features, num_classes, b)
        self.logit_bias = -math.log(num_classes - 1) if num_classes > 1 else 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, 3 or 6, H, W]` -> logits `[B, num_classes]` (3 channels are encoded first)."""
        if x.shape[1] == 3:
            x = encode(x)
        return super().forward(x) + self.logit_bias

    @contextmanager
    def explanation_mode(self) -> Iterator["BcosResNet"]:
        """Treat the dynamic weights W(x) as constants while inside the block."""
        units = [m for m in self.modules() if isinstance(m, (BcosConv2d, BcosLinear))]
        norms = [m for m in self.modules() if isinstance(m, UncentredBatchNorm2d)]
        for m in units:
            m.explain = True
        for n in norms:
            n.detach_scale = True
        try:
            yield self
        finally:
            for m in units:
                m.explain = False
            for n in norms:
                n.detach_scale = False


_BLOCKS = {
    18: (resnet.BasicBlock, [2, 2, 2, 2]),
    34: (resnet.BasicBlock, [3, 4, 6, 3]),
    50: (resnet.Bottleneck, [3, 4, 6, 3]),
}


def bcos_resnet(depth: int, num_classes: int) -> BcosResNet:
    """A B-cos ResNet-`depth` (18, 34 or 50), B = 2."""
    if depth not in _BLOCKS:
        raise ValueError(f"bcos_resnet depth must be one of {sorted(_BLOCKS)}, got {depth}")
    return BcosResNet(*_BLOCKS[depth], num_classes=num_classes)
