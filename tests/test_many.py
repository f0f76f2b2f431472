"""`attribute_many`: several maps from one forward and one backward, each equal to its single method."""

import pytest
import torch

from salience.attribution import attribute, attribute_many
from salience.models import build

pytestmark = pytest.mark.usefixtures("one_thread")

SHARED = [
    "gradient",
    "input_x_gradient",
    "input_x_gradient@mid2",
    "input_x_gradient@layer3.0.conv1",
    "grad_cam@final",
    "grad_cam@mid3",
    "grad_cam",
    "cam",
]


def _single(model, x, t, spec, **kw):
    name, _, layer = spec.partition("@")
    return attribute(name, model, x, t, layer=layer or None, **kw)


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * max(b.abs().max().item(), 1e-12))


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return build("resnet18", 5).eval()


@pytest.mark.parametrize(
    "specs",
    [
        SHARED,
        ["grad_cam@final", "input_x_gradient@mid2", "cam"],
        ["input_x_gradient@final", "grad_cam@final"],
        ["cam"],
        ["gradient"],
    ],
    ids=["all", "layers only", "one layer twice", "cam", "gradient"],
)
def test_each_map_equals_its_single_method(resnet, specs):
    x = torch.rand(3, 3, 48, 48)
    t = torch.tensor([0, 4, 2])
    maps = attribute_many(resnet, x, t, specs)
    assert list(maps) == specs
    for spec in specs:
        assert not maps[spec].requires_grad
        _close(maps[spec], _single(resnet, x, t, spec))


def test_smallcnn_and_multi_hot_targets():
    torch.manual_seed(1)
    model = build("smallcnn", 4).eval()
    x = torch.rand(3, 3, 32, 32)
    t = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 1], [1, 1, 1, 0]])  # 6 (image, class) pairs
    specs = ["gradient", "input_x_gradient", "input_x_gradient@mid1", "grad_cam@final", "cam"]
    maps = attribute_many(model, x, t, specs)
    for spec in specs:
        assert maps[spec].shape[0] == 6
        _close(maps[spec], _single(model, x, t, spec))


def test_one_forward_and_one_backward(resnet, monkeypatch):
    forwards, grads = [], []
    real_grad = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: grads.append(1) or real_grad(*a, **k))
    handle = resnet.register_forward_hook(lambda *_: forwards.append(1))
    try:
        attribute_many(resnet, torch.rand(2, 3, 32, 32), torch.tensor([1, 2]), SHARED)
    finally:
        handle.remove()
    assert (len(forwards), len(grads)) == (1, 1)
    assert not any(m._forward_hooks for m in resnet.modules())  # every capture hook went away


def test_other_methods_run_their_own_pass():
    torch.manual_seed(0)
    model = build("bcos_resnet18", 3).eval()
    x = torch.rand(2, 3, 32, 32)
    t = torch.tensor([0, 2])
    specs = ["bcos", "integrated_gradients", "grad_cam@final", "gradient"]
    maps = attribute_many(model, x, t, specs)
    for spec in specs:
        _close(maps[spec], _single(model, x, t, spec))


def test_create_graph_gives_the_same_parameter_gradients():
    torch.manual_seed(0)
    model = build("smallcnn", 3)  # train mode, as in guidance
    x = torch.rand(4, 3, 32, 32)
    t = torch.tensor([0, 1, 2, 1])
    specs = ["input_x_gradient", "grad_cam@final", "input_x_gradient@mid2"]
    params = [p for p in model.parameters() if p.requires_grad]

    maps = attribute_many(model, x, t, specs, create_graph=True)
    together = torch.autograd.grad(sum((m**2).sum() for m in maps.values()), params, allow_unused=True)
    apart = torch.autograd.grad(
        sum((_single(model, x, t, s, create_graph=True) ** 2).sum() for s in specs), params, allow_unused=True
    )
    assert sum(a is not None for a in together) > len(params) // 2  # the losses reach the weights
    for a, b in zip(together, apart, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            _close(a, b)


@pytest.mark.parametrize(
    "specs, text",
    [
        (["lrp"], "'lrp' is unknown"),
        (["grad_cam@layer9"], "'layer9'"),
        (["grad_cam@mid9"], "'mid9'"),
        (["gradient@final"], "'gradient@final': gradient takes no layer"),
        (["cam@mid2"], "cam: the layer gives"),
        (["grad_cam@input"], "'grad_cam@input': grad_cam needs a layer, not the input"),
        (["grad_cam@"], "empty layer"),
        (["gradient", "gradient"], "'gradient' is given twice"),
        ([], "at least one"),
    ],
)
def test_bad_methods_are_named(resnet, specs, text):
    with pytest.raises(ValueError, match=text.replace("(", r"\(")):
        attribute_many(resnet, torch.rand(1, 3, 32, 32), torch.tensor([0]), specs)
    assert not any(m._forward_hooks for m in resnet.modules())


def test_a_layer_that_runs_twice_is_refused():
    class Twice(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
            self.fc = torch.nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(self.conv(self.conv(x)).mean((2, 3)))

    with pytest.raises(ValueError, match="'conv' ran 2 times"):
        attribute_many(Twice(), torch.rand(1, 3, 8, 8), torch.tensor([0]), ["grad_cam@conv", "gradient"])
