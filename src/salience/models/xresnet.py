"""X-ResNet: the X-DNN of Hesse et al. (NeurIPS 2021, "fast axiomatic attribution") as Rao et al. use it.

The reference is `xfixup_resnet50` in Model-Guidance's `fixup_resnet.py` (from the authors'
`fast-axiomatic-attribution`): a ResNet with bias-free convolutions, ReLU, max pooling and **no normalisation
layer** (Fixup initialisation instead), whose classifier Rao et al. replace by an `nn.Linear` *with* a bias.
Every layer before the head is positively homogeneous, in train and eval mode alike, so
`f(a x) − b = a (f(x) − b)` for `a > 0` (b = the head's bias = f(0)), and input × gradient equals
IntegratedGradients with a zero baseline (the bias does not change a gradient).
"""

import math

import torch
from torch import nn
from torchvision.models import resnet

_BLOCKS = {
    18: (resnet.BasicBlock, [2, 2, 2, 2]),
    34: (resnet.BasicBlock, [3, 4, 6, 3]),
    50: (resnet.Bottleneck, [3, 4, 6, 3]),
}


class XResNet(resnet.ResNet):
    """A torchvision ResNet whose norm layers are identities and whose convolutions have no bias (the stem's
    and the blocks' never had one), Fixup-initialised; head `nn.Linear(features, num_classes)` with a bias."""

    def __init__(self, block: type[nn.Module], layers: list[int], num_classes: int) -> None:
        super().__init__(block, layers, num_classes=num_classes, norm_layer=nn.Identity)
        _fixup_init(self, sum(layers))

    @staticmethod
    def convert_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Keys of `fixup_resnet.py`'s X-ResNets -> ours: their shortcut is a bare convolution
        (`<block>.downsample.weight`), ours a `Sequential` of the convolution and an identity
        (`<block>.downsample.0.weight`)."""
        return {k.removesuffix(".downsample.weight") + ".downsample.0.weight" if k.endswith(".downsample.weight") else k: v
                for k, v in state.items()}  # fmt: skip


def _normal(conv: nn.Module, scale: float = 1.0) -> None:
    """He-normal with std `sqrt(2 / (out · kh · kw)) · scale`, as Fixup."""
    assert isinstance(conv, nn.Conv2d)
    fan_out = conv.weight.shape[0] * math.prod(conv.weight.shape[2:])
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2 / fan_out) * scale)


def _fixup_init(model: resnet.ResNet, n_blocks: int) -> None:
    """Fixup (Zhang et al. 2019) as `fixup_resnet.py`: the branch's convolutions scaled by L^(−1/(2m−2)),
    its last one zero, shortcuts He-normal."""
    for m in model.modules():
        if isinstance(m, resnet.BasicBlock):
            convs, scale = [m.conv1], n_blocks**-0.5
            last = m.conv2
        elif isinstance(m, resnet.Bottleneck):
            convs, scale = [m.conv1, m.conv2], n_blocks**-0.25
            last = m.conv3
        else:
            continue
        for conv in convs:
            _normal(conv, scale)
        nn.init.zeros_(last.weight)
        if m.downsample is not None:
            _normal(m.downsample[0])


def xresnet(depth: int, num_classes: int) -> XResNet:
    """An X-ResNet-`depth` (18, 34 or 50)."""
    if depth not in _BLOCKS:
        raise ValueError(f"xresnet depth must be one of {sorted(_BLOCKS)}, got {depth}")
    return XResNet(*_BLOCKS[depth], num_classes=num_classes)
