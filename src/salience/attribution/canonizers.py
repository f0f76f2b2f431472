"""Canonizers for LRP: batch norm merged into the layer before it, and the forwards whose additions,
concatenations and functional calls hooks cannot see, rewritten with explicit relevance steps.

Nothing here changes the model's parameters: merged weights are computed on the fly (`merged_params`),
and rewritten forwards are instance attributes removed on exit (`canonized`), even on error.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.densenet import DenseNet, _DenseLayer, _Transition
from torchvision.models.resnet import BasicBlock, Bottleneck

from salience.attribution.core import instance_attributes
from salience.attribution.lrp_rules import Relevance, ResidualSum, Rule, Step

LINEAR = (nn.Conv2d, nn.Linear)


def _leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if next(m.children(), None) is None]


def _after_concat(model: nn.Module) -> set[nn.Module]:
    """Batch norms fed by a concatenation (DenseNet's `norm1`, transition `norm`, `norm5`): never merged."""
    out: set[nn.Module] = set()
    for m in model.modules():
        if isinstance(m, _DenseLayer):
            out.add(m.norm1)
        elif isinstance(m, _Transition):
            out.add(m.norm)
        elif isinstance(m, DenseNet) and isinstance(getattr(m.features, "norm5", None), nn.BatchNorm2d):
            out.add(m.features.norm5)
    return out


def merge_pairs(model: nn.Module) -> dict[nn.Module, nn.Module]:
    """`{batch norm: the Conv2d / Linear it is merged into}`: a BatchNorm2d whose preceding leaf module, in
    registration order (Zennit's SequentialMergeBatchNorm), is a Conv2d or Linear with as many outputs as
    the norm has channels. DenseNet's norms after concatenations are left alone (Pass rule). The forward
    checks that each merged norm really takes that layer's output (`LRPHooks`)."""
    skip = _after_concat(model)
    pairs: dict[nn.Module, nn.Module] = {}
    leaves = _leaves(model)
    for (_, prev), (_, leaf) in zip(leaves, leaves[1:], strict=False):
        if not isinstance(leaf, nn.BatchNorm2d) or leaf in skip or not isinstance(prev, LINEAR):
            continue
        outputs = prev.out_channels if isinstance(prev, nn.Conv2d) else prev.out_features
        if outputs == leaf.num_features:
            pairs[leaf] = prev
    return pairs


def merged_params(layer: Any, bn: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weight and bias of `bn(layer(x))` as one layer (running statistics): `W·s`, `(b − μ)·s + β`,
    `s = γ / √(σ² + ε)`; the layer's own when `bn` is None."""
    w, b = layer.weight.detach(), None if layer.bias is None else layer.bias.detach()
    if bn is None:
        return w, b
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("LRP merges batch norm with its running statistics; this BatchNorm2d tracks none")
    scale = bn.running_var.rsqrt() if bn.eps == 0 else (bn.running_var + bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight.detach()
    shift = (0 if b is None else b) - bn.running_mean
    bias = shift * scale + (0 if bn.bias is None else bn.bias.detach())
    return w * scale.reshape(-1, *([1] * (w.dim() - 1))), bias


def _step(x: torch.Tensor, out: torch.Tensor, rule: Rule, fwd: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    return Relevance.apply(x, out.detach(), Step(rule, lambda t, _w, _b: fwd(t)))


def _residual_tail(block: Any, identity: torch.Tensor, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if block.downsample is not None:
        identity = block.downsample(x)
    return block.relu(ResidualSum.apply(identity, out, block.lrp_stabilizer))


def _basic_forward(block: Any, x: torch.Tensor) -> torch.Tensor:
    """torchvision BasicBlock with the addition as `ResidualSum` (Zennit's ResNetBasicBlockCanonizer)."""
    out = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(x)))))
    return _residual_tail(block, x, out, x)


def _bottleneck_forward(block: Any, x: torch.Tensor) -> torch.Tensor:
    """torchvision Bottleneck with the addition as `ResidualSum` (Zennit's ResNetBottleneckCanonizer)."""
    out = block.relu(block.bn1(block.conv1(x)))
    out = block.bn3(block.conv3(block.relu(block.bn2(block.conv2(out)))))
    return _residual_tail(block, x, out, x)


def _dense_layer_forward(layer: Any, prev: Any) -> torch.Tensor:
    """torchvision _DenseLayer without checkpointing (eval: no dropout); `torch.cat`'s backward hands each
    input its slice of the relevance, which conserves it."""
    x = torch.cat([prev] if isinstance(prev, torch.Tensor) else list(prev), 1)
    return layer.conv2(layer.relu2(layer.norm2(layer.conv1(layer.relu1(layer.norm1(x))))))


def _densenet_forward(net: Any, x: torch.Tensor) -> torch.Tensor:
    """torchvision DenseNet with its functional ReLU as a Pass step and its global average pool as a Norm
    step (Zennit's rules for activations and average pools)."""
    features = net.features(x)
    out = _step(features, F.relu(features), Rule("pass"), F.relu)
    pooled = F.adaptive_avg_pool2d(out, 1)
    out = _step(out, pooled, Rule("norm", net.lrp_stabilizer), lambda t: F.adaptive_avg_pool2d(t, 1))
    return net.classifier(torch.flatten(out, 1))


FORWARDS: dict[type, Callable[..., torch.Tensor]] = {
    BasicBlock: _basic_forward,
    Bottleneck: _bottleneck_forward,
    _DenseLayer: _dense_layer_forward,
    DenseNet: _densenet_forward,
}


@contextmanager
def canonized(model: nn.Module, stabilizer: float) -> Iterator[None]:
    """Within the block, torchvision ResNet blocks and DenseNet modules run the forwards above (set as
    instance attributes `forward` and `lrp_stabilizer`, removed on exit, also on error)."""
    changes = [
        (m, {"forward": FORWARDS[type(m)].__get__(m), "lrp_stabilizer": stabilizer})
        for m in model.modules()
        if type(m) in FORWARDS
    ]
    with instance_attributes(changes):
        yield
