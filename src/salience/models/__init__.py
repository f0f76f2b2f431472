"""Models: torchvision classifiers by name, bias-free X-ResNets, B-cos ResNets and small CPU nets, timm and
Hugging Face classifiers, and any model class by import path (`package.module:factory`).

`build(name, num_classes, weights=None, allow_pickle=False, kwargs=None, output=None)` returns an
`nn.Module` mapping images `[B, 3, H, W]` to logits `[B, num_classes]`; `load_model(path, name, num_classes)`
also opens TorchScript and torch.export files (marked `salience_opaque`: input-level methods only).
`adapt(model, output)` makes a model whose forward returns a tuple, a dict or a `ModelOutput` return its
scores `[B, C]` (an index, a key or an attribute; default: the tensor itself, or `.logits`).
`layer_name(model, depth)` maps a named guidance depth (`input`, `mid1`, `mid2`, `mid3`, `final`)
to a module name (`None` for `input`); `depth_table` gives the whole table of a model's family
(see `depths`).
"""

from salience.models.adapt import adapt
from salience.models.bcos import BcosResNet, UncentredBatchNorm2d, bcos_resnet
from salience.models.build import build, import_factory, load_model, load_weights, read_state_dict
from salience.models.depths import DEPTHS, depth_table, layer_name
from salience.models.small import SmallCNN
from salience.models.xresnet import XResNet, xresnet

__all__ = [
    "DEPTHS",
    "BcosResNet",
    "SmallCNN",
    "UncentredBatchNorm2d",
    "XResNet",
    "adapt",
    "bcos_resnet",
    "build",
    "depth_table",
    "import_factory",
    "layer_name",
    "load_model",
    "load_weights",
    "read_state_dict",
    "xresnet",
]
