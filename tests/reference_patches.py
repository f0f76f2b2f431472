"""What the tests and benchmarks change in a reference library to compare with it, in one place (undone on exit):
pytorch-grad-cam before its post-processing, and Captum's DeepLift where its hooks go wrong (see
docs/definitions.md, "DeepLift")."""

import contextlib
import copy
import types

import torchvision
from captum.attr._core import deep_lift as captum_dl
from pytorch_grad_cam import base_cam as pgc_base
from torch import nn


@contextlib.contextmanager
def raw_pytorch_grad_cam():
    """pytorch-grad-cam returning its ReLU'd maps at the layer's resolution, in the activations' dtype (its
    `scale_cam_image`, the min-max and resize, made the identity)."""
    original = pgc_base.scale_cam_image
    pgc_base.scale_cam_image = lambda cam, target_size=None: cam
    try:
        yield
    finally:
        pgc_base.scale_cam_image = original


def _basic(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    return self.relu2(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))) + identity)


def _bottleneck(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu2(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))
    return self.relu3(self.bn3(self.conv3(out)) + identity)


def dedup_relu(model: nn.Module) -> nn.Module:
    """A copy of a torchvision ResNet whose Basic/Bottleneck blocks call a ReLU module per use instead of one
    module several times (Captum's DeepLift refuses a module called twice)."""
    model = copy.deepcopy(model)
    for block in model.modules():
        if isinstance(block, torchvision.models.resnet.BasicBlock | torchvision.models.resnet.Bottleneck):
            block.relu2, block.relu3 = nn.ReLU(), nn.ReLU()
            kind = _basic if isinstance(block, torchvision.models.resnet.BasicBlock) else _bottleneck
            block.forward = types.MethodType(kind, block)
    return model


def _summing_unpool(values, indices, kernel, stride, padding, output_size):
    out = values.new_zeros(*output_size[:2], output_size[2] * output_size[3])
    return out.scatter_add_(2, indices.flatten(2), values.flatten(2)).view(output_size)


def _summing_maxpool2d(module, inputs, outputs, grad_input, grad_output, eps=1e-10):
    return captum_dl.maxpool(
        module, nn.functional.max_pool2d, _summing_unpool, inputs, outputs, grad_input, grad_output, eps=eps
    )


@contextlib.contextmanager
def captum_deep_lift_mended(model: nn.Module):
    """Captum's DeepLift on `model` with each supported module reading its own input tensor (`+ 0`: two hooked
    modules in a row otherwise share one tensor hook) and max-pool multipliers summed over overlapping windows
    (its `max_unpool2d` keeps one); both undone afterwards."""
    supported = captum_dl.SUPPORTED_NON_LINEAR
    handles = [
        m.register_forward_pre_hook(lambda _m, inputs: tuple(i + 0 for i in inputs))
        for m in model.modules()
        if type(m) in supported
    ]
    original, supported[nn.MaxPool2d] = supported[nn.MaxPool2d], _summing_maxpool2d
    try:
        yield model
    finally:
        supported[nn.MaxPool2d] = original
        for h in handles:
            h.remove()
