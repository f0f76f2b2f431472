"""Rao et al.'s Model-Guidance code, transcribed for the tests (not part of the package).

Source: `sukrutrao/Model-Guidance` at commit 3a6e034 (its vendored `bcos`, `fixup_resnet.py`,
`model_activators.py`, `attribution_methods.py`, `losses.py`, `utils.py`, `train.py`). Written here from
reading those files; none of their code is copied. On 2026-12-06 every function below was run side by side
with the original files of that snapshot (float64, the same weights and inputs: B-cos ResNet-18/50 and
X-ResNet-18/50 logits, explanations, and the guided step's loss and parameter gradients for the three
families, IxG / GradCAM / B-cos, the four losses and the depths input, layer2, layer4) and agreed to 1e-13
or better; the figures are in docs/definitions.md ("Checked against the authors' code").

What is transcribed:
- `BcosUnit`, `BcosNorm`: the vendored B-cos v2 units (`bcos/modules/bcosconv2d.py`,
  `norms/uncentered_norms/batchnorm_uncentered.py` wrapped in `NoBias`) with their `DynamicMultiplication`
  (`bcos/modules/common.py`), whose explanation mode is read when the backward runs. They plug into the
  packaged `bcos` 0.1.3 ResNet skeleton (`conv_layer`, `norm_layer`), which builds the same graph as the
  vendored `bcos/models/resnet.py`.
- `XFixupResNet`: `fixup_resnet.py`'s `xfixup_resnet{18,34,50}`, with the head as `train.py` replaces it.
- `activate`: `ResNetModelActivator` (children run in registration order).
- `attribute`: `IxGAttributor`, `GradCamAttributor`, `BCosAttributor` in batch mode with `apply_post_processing`.
- `LOSSES`: `losses.py`'s per-image losses on box lists.
- `guided_loss`: the batch loss of `train.py`'s inner loop.
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F
from torch import nn

# ---------------------------------------------------------------- B-cos (vendored B-cos v2)


class _Product(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, x, state):
        ctx.state = state
        ctx.save_for_backward(weight, x)
        return weight * x

    @staticmethod
    def backward(ctx, g):
        weight, x = ctx.saved_tensors
        if ctx.state["fixed"]:  # explanation mode, read now, at backward time
            return None, g * weight, None
        return g * x, g * weight, None


class BcosUnit(nn.Module):
    """The vendored `BcosConv2d` (B = 2, max_out = 1, normalised weights)."""

    def __init__(self, in_channels, out_channels, kernel_size=1, stride=1, padding=0, **_ignored):
        super().__init__()
        self.linear = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.state = {"fixed": False}

    def set_explanation_mode(self, on):
        self.state["fixed"] = on

    def forward(self, x):
        w = self.linear.weight / self.linear.weight.norm(p=2, dim=(1, 2, 3), keepdim=True)
        out = F.conv2d(x, w, None, self.stride, self.padding)
        squares = (x**2).sum(1, keepdim=True)
        windows = F.avg_pool2d(squares, self.kernel_size, padding=self.padding, stride=self.stride, divisor_override=1)
        norm = (windows + 1e-6).sqrt()
        return _Product.apply(out.abs() / norm, out, self.state)


class BcosNorm(nn.BatchNorm2d):
    """The vendored `NoBias(BatchNormUncentered2d)`."""

    def __init__(self, num_features):
        super().__init__(num_features)
        self.bias = None
        self.state = {"fixed": False}

    def set_explanation_mode(self, on):
        self.state["fixed"] = on

    def forward(self, x):
        if self.training:
            self.num_batches_tracked.add_(1)
            var = x.var(dim=(0, 2, 3), unbiased=False)
            self.running_var.copy_((1 - self.momentum) * self.running_var + self.momentum * var.detach())
        else:
            var = self.running_var
        std = (var + self.eps).sqrt()[None, ..., None, None]
        return self.weight[None, ..., None, None] * _Product.apply(1 / std, x, self.state)


IMAGENET_LOGIT_BIAS = math.log(0.001 / 0.999)  # bcos_final's `logit_bias`, kept by train.py


def bcos_resnet(depth: int, num_classes: int) -> nn.Module:
    """`hubconf.resnet{depth}()` with `fc` replaced by a 1×1 unit, as `train.py` (on the packaged skeleton)."""
    from bcos.models import resnet as skeleton

    build = getattr(skeleton, f"resnet{depth}")
    return build(num_classes=num_classes, conv_layer=BcosUnit, norm_layer=BcosNorm, logit_bias=IMAGENET_LOGIT_BIAS)


@contextmanager
def explanation_mode(model: nn.Module):
    units = [m for m in model.modules() if hasattr(m, "set_explanation_mode")]
    for m in units:
        m.set_explanation_mode(True)
    try:
        yield
    finally:
        for m in units:
            m.set_explanation_mode(False)


# ---------------------------------------------------------------- X-DNN (fixup_resnet.py)


def _conv(cin, cout, k, stride=1):
    return nn.Conv2d(cin, cout, k, stride, padding=k // 2, bias=False)


class XBasic(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1, self.conv2 = _conv(cin, planes, 3, stride), _conv(planes, planes, 3)
        self.relu, self.downsample = nn.ReLU(inplace=True), downsample

    def forward(self, x):
        out = self.conv2(self.relu(self.conv1(x)))
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class XBottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1, self.conv2 = _conv(cin, planes, 1), _conv(planes, planes, 3, stride)
        self.conv3 = _conv(planes, planes * 4, 1)
        self.relu, self.downsample = nn.ReLU(inplace=True), downsample

    def forward(self, x):
        out = self.conv3(self.relu(self.conv2(self.relu(self.conv1(x)))))
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class XFixupResNet(nn.Module):
    """`XFixupResNet` (children: conv1, relu, maxpool, layer1..4, avgpool, fc), head `nn.Linear` with a bias."""

    def __init__(self, block, layers, num_classes):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
            setattr(self, f"layer{i + 1}", self._stage(block, planes, n, 1 if i == 0 else 2))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

    def _stage(self, block, planes, n, stride):
        down = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            down = nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False)
        blocks = [block(self.inplanes, planes, stride, down)]
        self.inplanes = planes * block.expansion
        blocks += [block(self.inplanes, planes) for _ in range(1, n)]
        return nn.Sequential(*blocks)

    def forward(self, x):
        x = self.maxpool(self.relu(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


def xfixup_resnet(depth: int, num_classes: int) -> XFixupResNet:
    block, layers = {18: (XBasic, [2, 2, 2, 2]), 34: (XBasic, [3, 4, 6, 3]), 50: (XBottleneck, [3, 4, 6, 3])}[depth]
    return XFixupResNet(block, layers, num_classes)


# ---------------------------------------------------------------- the guided step (train.py)


def activate(model: nn.Module, x: torch.Tensor, layer: str | None, bcos: bool, registration_order: bool = True):
    """`ResNetModelActivator`: `(logits, feature)`; at a layer the children run in registration order, which
    for the B-cos ResNet is conv1, pool, bn1, ...: the pool before the norm. `registration_order=False` runs
    the network's own forward order (conv1, bn1, pool) instead."""
    if layer is None:
        return model(x), x
    if bcos:
        stem = [model.conv1, model.pool, model.bn1] if registration_order else [model.conv1, model.bn1, model.pool]
        stages = [*stem, model.layer1, model.layer2, model.layer3, model.layer4]
    else:
        stages = list(model.children())[:-1]  # every child but fc, avgpool included
    acts, feature = x, None
    for stage in stages:
        acts = stage(acts)
        if stage is getattr(model, layer):
            feature = acts
    if bcos:
        return model.avgpool(model.fc(acts)).flatten(1) + IMAGENET_LOGIT_BIAS, feature
    return model.fc(acts.flatten(1)), feature


def attribute(model, method, feature, output, classes, positive, binarize, size):
    """The batch-mode attributors with `apply_post_processing` (`size`: interpolate there, or None)."""
    target = torch.gather(output, 1, classes.unsqueeze(-1))
    with explanation_mode(model) if method == "BCos" else nullcontext():
        grads = torch.autograd.grad(torch.unbind(target), feature, create_graph=True, retain_graph=True)[0]
    if method == "GradCam":
        attributions = F.relu((grads.mean(dim=(2, 3), keepdim=True) * feature).sum(1, keepdim=True))
    else:
        attributions = (grads * feature).sum(1, keepdim=True)
    if positive:
        attributions = attributions.clamp(min=0)
    if binarize:
        peak = attributions.abs().amax(dim=(1, 2, 3), keepdim=True)
        attributions = torch.where(peak == 0, attributions, attributions / peak)
    if size is not None:
        attributions = F.interpolate(attributions, size=size, mode="bilinear")
    return attributions


def _box_mask(boxes, shape):
    mask = torch.zeros(shape, dtype=torch.long)
    for xmin, ymin, xmax, ymax in boxes:
        mask[ymin:ymax, xmin:xmax] = 1
    return mask


def _energy(a, boxes):
    pos = a.clamp(min=0)
    inside = pos[torch.where(_box_mask(boxes, pos.shape) == 1)].sum()
    total = pos.sum()
    return 1 - inside if total < 1e-7 else 1 - inside / total


def _l1(a, boxes):
    return nn.L1Loss(reduction="mean")(a, _box_mask(boxes, a.shape).to(a.dtype))


def _rrr(a, boxes):
    return torch.square(a[torch.where(_box_mask(boxes, a.shape) == 0)]).sum()


def _ppce(a, boxes):
    inside = a[torch.where(_box_mask(boxes, a.shape) == 1)]
    return nn.BCELoss(reduction="mean")(inside, torch.ones_like(inside))


# name -> (loss, only_positive, binarize), as each loss class sets them
LOSSES = {
    "energy": (_energy, False, False),
    "l1": (_l1, True, True),
    "rrr": (_rrr, False, True),
    "ppce": (_ppce, True, True),
}
METHODS = {"input_x_gradient": "IxG", "grad_cam": "GradCam", "bcos": "BCos"}


def guided_loss(model, x, labels, boxes, classes, method, loss, layer, lam, bcos, registration_order=True):
    """`train.py`'s batch loss: BCE-with-logits + λ · Σ_images loss(attribution of the drawn class, its boxes).

    `boxes[i]`: a list of `(class, xmin, ymin, xmax, ymax)` (their `train_bbs`); `classes[i]`: the drawn class."""
    x = x.detach().requires_grad_(True)  # `train_X.requires_grad = True`
    logits, features = activate(model, x, layer, bcos, registration_order)
    batch_loss = nn.BCEWithLogitsLoss()(logits, labels)
    fn, positive, binarize = LOSSES[loss]
    size = None if layer is None else tuple(x.shape[-2:])
    attributions = attribute(model, METHODS[method], features, logits, classes, positive, binarize, size).squeeze(1)
    localization = 0
    for i in range(len(x)):
        own = [b[1:] for b in boxes[i] if b[0] == classes[i]]  # utils.filter_bbs
        localization += fn(attributions[i], own)
    return batch_loss + lam * localization
