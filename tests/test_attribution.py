"""Attribution methods against Captum, closed forms and invariants."""

import pytest
import torch
from torch import nn

from salience import attribution as A
from salience.models import UncentredBatchNorm2d, build

captum_attr = pytest.importorskip("captum.attr")


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).abs().max() / ref.abs().max()).item()


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = build("resnet18", 6).double()
    with torch.no_grad():  # non-trivial batch-norm statistics and biases
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return model.eval()


@pytest.fixture()
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.rand(3, 3, 32, 32, generator=g, dtype=torch.float64), torch.tensor([0, 4, 5])


def test_input_x_gradient_matches_captum(resnet, batch):
    x, t = batch
    ref = captum_attr.InputXGradient(resnet).attribute(x, target=t).sum(1)
    assert rel_err(A.input_x_gradient(resnet, x, t), ref) <= 1e-5


@pytest.mark.parametrize("layer", ["layer2", "mid3"])
def test_layer_input_x_gradient_matches_captum(resnet, batch, layer):
    x, t = batch
    module = resnet.layer2 if layer == "layer2" else resnet.layer3
    ref = captum_attr.LayerGradientXActivation(resnet, module).attribute(x, target=t).sum(1)
    ours = A.input_x_gradient(resnet, x, t, layer=layer)
    assert ours.shape == ref.shape
    assert rel_err(ours, ref) <= 1e-5


@pytest.mark.parametrize("internal_batch_size", [None, 7])
def test_integrated_gradients_matches_captum(resnet, batch, internal_batch_size):
    x, t = batch
    baseline = torch.full_like(x, 0.3)
    ref = (
        captum_attr.IntegratedGradients(resnet)
        .attribute(x, baselines=baseline, target=t, n_steps=12, method="riemann_middle")
        .sum(1)
    )
    ours = A.integrated_gradients(resnet, x, t, steps=12, baseline=baseline, internal_batch_size=internal_batch_size)
    assert rel_err(ours, ref) <= 1e-5


@pytest.mark.parametrize("layer", ["layer4", "layer3"])
def test_grad_cam_matches_captum(resnet, batch, layer):
    x, t = batch
    ref = captum_attr.LayerGradCam(resnet, getattr(resnet, layer)).attribute(x, target=t, relu_attributions=True)[:, 0]
    assert ref.abs().max() > 0
    assert rel_err(A.grad_cam(resnet, x, t, layer=layer), ref) <= 1e-5


def test_cam_mean_plus_bias_is_the_logit(resnet, batch):
    x, t = batch
    logits = resnet(x)
    maps = A.cam(resnet, x, t)
    assert torch.allclose(maps.mean((1, 2)) + resnet.fc.bias[t], logits[torch.arange(3), t], rtol=1e-10)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_ixg_equals_intgrad_on_bias_free_resnet(batch, mode):
    x, t = batch
    torch.manual_seed(0)
    model = build("xresnet18", 6).double().train(mode == "train")
    with torch.no_grad():
        for p in model.parameters():  # Fixup zeroes each branch's last conv: give every layer a say
            p.add_(torch.randn_like(p) * 0.05)
    ixg = A.input_x_gradient(model, x, t)
    ig = A.integrated_gradients(model, x, t, steps=8)
    assert rel_err(ig, ixg) <= 1e-8


def test_ixg_differs_from_intgrad_with_biases(resnet, batch):
    x, t = batch  # the invariant above is a property of the bias-free net, not of the code
    assert rel_err(A.integrated_gradients(resnet, x, t, steps=8), A.input_x_gradient(resnet, x, t)) > 1e-3


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_bcos_contributions_sum_to_logit_minus_bias(batch, mode):
    x, t = batch
    torch.manual_seed(0)
    model = build("bcos_resnet18", 6).double()
    for m in model.modules():
        if isinstance(m, UncentredBatchNorm2d):
            m.momentum = 1.0  # running variances = this batch's: logits of a realistic size
    with torch.no_grad():
        model(torch.rand(8, 3, 32, 32, dtype=torch.float64))
    model.train(mode == "train")
    maps = A.bcos(model, x, t)
    logits = model(x)[torch.arange(3), t]
    assert (logits - model.logit_bias).abs().max() > 1e-2
    assert torch.allclose(maps.sum((1, 2)), logits - model.logit_bias, rtol=1e-8, atol=1e-10)
    # outside explanation mode the gradient differs from W(x): plain IxG gives other contributions
    plain = A.input_x_gradient(model, torch.cat([x, 1 - x], 1), t)
    assert not torch.allclose(plain, maps, rtol=1e-3, atol=1e-6)


def test_gradient_reductions(resnet, batch):
    x, t = batch
    x = x.clone().requires_grad_(True)
    resnet(x)[torch.arange(3), t].sum().backward()
    assert torch.allclose(A.gradient(resnet, x, t), x.grad.abs().amax(1))
    assert torch.allclose(A.gradient(resnet, x, t), x.grad.abs().amax(1))


def test_batched_maps_equal_single_image_maps(resnet, batch):
    x, t = batch
    for method, kw in [
        ("input_x_gradient", {"layer": "mid2"}),
        ("grad_cam", {"layer": "final"}),
        ("integrated_gradients", {"steps": 4}),
    ]:
        full = A.attribute(method, resnet, x, t, **kw)
        for i in range(3):
            single = A.attribute(method, resnet, x[i : i + 1], t[i : i + 1], **kw)
            assert torch.allclose(full[i], single[0], rtol=1e-9, atol=1e-12), method


def test_multi_hot_targets_expand_to_pairs(resnet, batch):
    x, _ = batch
    multi = torch.zeros(3, 6)
    multi[0, [1, 3]] = 1
    multi[2, 5] = 1
    image, cls = A.expand_targets(multi, 3)
    assert image.tolist() == [0, 0, 2] and cls.tolist() == [1, 3, 5]
    maps = A.input_x_gradient(resnet, x, multi)
    assert maps.shape == (3, 32, 32)
    for p, (i, c) in enumerate(zip(image.tolist(), cls.tolist(), strict=True)):
        assert torch.allclose(maps[p], A.input_x_gradient(resnet, x[i : i + 1], torch.tensor([c]))[0])


def test_maps_are_detached_without_create_graph(resnet, batch):
    x, t = batch
    assert not A.input_x_gradient(resnet, x, t).requires_grad
    assert A.input_x_gradient(resnet, x, t, create_graph=True).requires_grad


def test_hooks_are_removed_after_an_exception(resnet, batch):
    x, t = batch

    class Boom(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    original = resnet.fc
    resnet.fc = Boom()
    try:
        with pytest.raises(RuntimeError, match="boom"):
            A.input_x_gradient(resnet, x, t, layer="layer3")
        with pytest.raises(RuntimeError, match="boom"):
            A.grad_cam(resnet, x, t)
    finally:
        resnet.fc = original
    assert all(not m._forward_hooks for m in resnet.modules())


@pytest.mark.parametrize(
    "target,match",
    [
        (torch.tensor([0, 1]), r"target must be a long tensor \[B\].*B = 3"),
        (torch.tensor([0.0, 1.0, 2.0]), "target must be a long tensor"),
        (torch.full((3, 6), 0.5), "multi-hot"),
        (torch.tensor([0, 1, 6]), r"class index 6 is out of range .* \(accepted 0..5\)"),
        (torch.tensor([0, -1, 2]), "class index -1 is out of range"),
    ],
)
def test_bad_targets_are_named(resnet, batch, target, match):
    x, _ = batch
    with pytest.raises(ValueError, match=match):
        A.input_x_gradient(resnet, x, target)


def test_bad_layer_input_and_method_are_named(resnet, batch):
    x, t = batch
    with pytest.raises(ValueError, match=r"layer 'layer9' is not a module of ResNet; accepted: input, mid1"):
        A.input_x_gradient(resnet, x, t, layer="layer9")
    with pytest.raises(ValueError, match=r"x must be a float tensor \[B, C, H, W\]; got \(3, 32, 32\)"):
        A.input_x_gradient(resnet, x[0], t)
    with pytest.raises(ValueError, match="grad_cam needs a layer, not the input"):
        A.grad_cam(resnet, x, t, layer="input")
    with pytest.raises(ValueError, match="method 'lrp' is unknown; accepted: gradient"):
        A.attribute("lrp", resnet, x, t)
    with pytest.raises(ValueError, match="takes no layer"):
        A.attribute("integrated_gradients", resnet, x, t, layer="layer4")
    with pytest.raises(ValueError, match="need a B-cos network"):
        A.bcos(resnet, x, t)


def test_upsample_is_bilinear_and_keeps_same_size():
    maps = torch.arange(4.0).reshape(1, 2, 2)
    assert A.upsample(maps, (2, 2)) is maps
    up = A.upsample(maps, (4, 4))
    assert up.shape == (1, 4, 4)
    ref = torch.nn.functional.interpolate(maps[None], size=(4, 4), mode="bilinear", align_corners=False)[0]
    assert torch.equal(up, ref)
    assert up[0, 0, 0] == 0 and up[0, -1, -1] == 3
    with pytest.raises(ValueError, match=r"maps must be \[B, h, w\]"):
        A.upsample(maps[0], (4, 4))


def test_layer_maps_work_with_frozen_parameters(batch):
    x, t = batch
    model = build("resnet18", 6).double().eval()
    before = A.grad_cam(model, x, t, layer="layer3")
    model.requires_grad_(False)
    assert torch.allclose(A.grad_cam(model, x, t, layer="layer3"), before)
    assert torch.allclose(
        A.input_x_gradient(model, x, t, layer="mid2"),
        captum_attr.LayerGradientXActivation(model, model.layer2).attribute(x, target=t).sum(1),
    )
