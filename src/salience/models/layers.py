"""Layers shared by the bias-free (X-DNN) and B-cos networks."""

import torch
from torch import nn


class UncentredBatchNorm2d(nn.Module):
    """Batch norm that only scales: `y = x / sqrt(var + eps) * weight`, no mean shift, no bias.

    In training the variance is the batch variance per channel (and a running estimate is kept);
    in eval the running variance is used, so the layer is linear and positively homogeneous.
    With `detach_scale = True` (B-cos explanation mode) the divisor is treated as a constant.
    """

    running_var: torch.Tensor  # a buffer (register_buffer below)

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.eps = eps
        self.momentum = momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.detach_scale = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            var = x.var(dim=(0, 2, 3), unbiased=False)
            with torch.no_grad():
                self.running_var.lerp_(var.detach().to(self.running_var.dtype), self.momentum)
        else:
            var = self.running_var
        scale = self.weight / torch.sqrt(var + self.eps)
        if self.detach_scale:
            scale = scale.detach()
        return x * scale[None, :, None, None]

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"
