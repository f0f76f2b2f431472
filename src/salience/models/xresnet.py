"""X-ResNet: a bias-free ResNet (Hesse et al., NeurIPS 2021, "fast axiomatic attribution").

Every layer is positively homogeneous (bias-free convolutions, scale-only batch norm, ReLU,
max/average pooling, a bias-free classifier), so in eval mode `f(a x) = a f(x)` for `a > 0` and
input x gradient equals IntegratedGradients with a zero baseline.
"""

from torch import nn
from torchvision.models import resnet

from salience.models.layers import UncentredBatchNorm2d

_BLOCKS = {
    18: (resnet.BasicBlock, [2, 2, 2, 2]),
    34: (resnet.BasicBlock, [3, 4, 6, 3]),
    50: (resnet.Bottleneck, [3, 4, 6, 3]),
}


def xresnet(depth: int, num_classes: int) -> resnet.ResNet:
    """A torchvision ResNet-`depth` (18, 34 or 50) with every bias removed."""
    if depth not in _BLOCKS:
        raise ValueError(f"xresnet depth must be one of {sorted(_BLOCKS)}, got {depth}")
    block, layers = _BLOCKS[depth]
    model = resnet.ResNet(block, layers, num_classes=num_classes, norm_layer=UncentredBatchNorm2d)
    model.fc = nn.Linear(model.fc.in_features, num_classes, bias=False)
    return model
