"""Models: torchvision classifiers by name, bias-free X-ResNets, B-cos ResNets and small CPU nets.

`build(name, num_classes, weights=None, allow_pickle=False)` returns an `nn.Module` mapping images
`[B, 3, H, W]` to logits `[B, num_classes]`; `load_model(path, name, num_classes)` also opens
TorchScript and torch.export files (marked `salience_opaque`: input-level methods only).
`layer_name(model, depth)` maps a named guidance depth (`input`, `mid1`, `mid2`, `mid3`, `final`)
to a module name (`None` for `input`); `depth_table` gives the whole table of a model's family
(see `depths`).
"""

from salience.models.bcos import BcosResNet, bcos_resnet
from salience.models.build import build, load_model, load_weights, read_state_dict
from salience.models.depths import DEPTHS, depth_table, layer_name
from salience.models.layers import UncentredBatchNorm2d
from salience.models.small import SmallCNN
from salience.models.xresnet import xresnet

__all__ = [
    "DEPTHS",
    "BcosResNet",
    "SmallCNN",
    "UncentredBatchNorm2d",
    "bcos_resnet",
    "build",
    "depth_table",
    "layer_name",
    "load_model",
    "load_weights",
    "read_state_dict",
    "xresnet",
]
