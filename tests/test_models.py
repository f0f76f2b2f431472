"""Model construction, weights loading and named depths."""

import pytest
import torch
from torch import nn

from salience.models import build, layer_name
from salience.models.bcos import BcosConv2d


def test_build_torchvision_and_own_models():
    x = torch.rand(2, 3, 32, 32)
    for name in ["resnet18", "smallcnn", "xresnet18", "bcos_resnet18", "squeezenet1_0"]:
        assert build(name, 4).eval()(x).shape == (2, 4), name


def test_unknown_name_lists_accepted():
    with pytest.raises(ValueError, match="model name 'resnet7' is unknown; accepted: smallcnn"):
        build("resnet7", 3)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_xresnet_has_no_norm_and_is_homogeneous_in_both_modes(mode):
    torch.manual_seed(0)
    model = build("xresnet18", 5).double().train(mode == "train")
    assert [n for n, _ in model.named_parameters() if "bias" in n] == ["fc.bias"]  # MG's head: nn.Linear
    assert not [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
    with torch.no_grad():
        for p in model.parameters():  # Fixup zeroes each branch's last conv: give every layer a say
            p.add_(torch.randn_like(p) * 0.05)
        x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
        bias = model(torch.zeros_like(x))  # f(0) = the head's bias
        assert torch.allclose(bias, model.fc.bias.expand_as(bias))
        assert torch.allclose(model(3.0 * x) - bias, 3.0 * (model(x) - bias), rtol=1e-10)


def test_bcos_unit_is_cosine_scaled():
    unit = BcosConv2d(2, 1, 1).double()
    w = unit.weight.detach().flatten()
    w_hat = w / w.norm()
    aligned = (5.0 * w_hat).reshape(1, 2, 1, 1)  # cos = 1 -> output = |x|
    assert torch.allclose(unit(aligned), torch.tensor(5.0, dtype=torch.float64))
    orth = torch.stack([-w_hat[1], w_hat[0]]).reshape(1, 2, 1, 1)  # cos = 0 -> output = 0
    assert unit(orth).abs().item() < 1e-12
    half = (w_hat + torch.stack([-w_hat[1], w_hat[0]])).reshape(1, 2, 1, 1)  # cos = 1/sqrt2, |x| = sqrt2
    assert torch.allclose(unit(half), torch.tensor(2**-0.5, dtype=torch.float64))


def test_bcos_resnet_structure():
    model = build("bcos_resnet18", 5)
    assert not [n for n, _ in model.named_parameters() if "bias" in n]
    assert not [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert model.conv1.in_channels == 6
    x = torch.rand(2, 3, 32, 32)
    model.eval()
    assert torch.allclose(model(x), model(torch.cat([x, 1 - x], 1)))


def test_local_weights_file_keeps_backbone_and_fresh_head(tmp_path):
    torch.manual_seed(0)
    source = build("resnet18", 10)
    path = tmp_path / "backbone.pth"
    torch.save(source.state_dict(), path)
    model = build("resnet18", 3, weights=path)
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert torch.equal(model.layer4[1].bn2.running_var, source.layer4[1].bn2.running_var)
    assert model.fc.weight.shape == (3, 512)
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"model": source.state_dict(), "epoch": 3}, ckpt)
    assert torch.equal(build("resnet18", 10, weights=ckpt).fc.weight, source.fc.weight)


def test_bad_weights_are_named(tmp_path, monkeypatch):
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="garbage.pth could not be read"):
        build("resnet18", 3, weights=bad)
    other = tmp_path / "other.pth"
    torch.save(build("smallcnn", 3).state_dict(), other)
    with pytest.raises(ValueError, match="missing keys"):
        build("resnet18", 3, weights=other)
    with pytest.raises(FileNotFoundError, match="neither a file nor a torchvision weight name"):
        build("resnet18", 3, weights="no/such/file.pth")


def test_torchvision_weight_name_offline_says_how_to_pass_a_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache: the weights must be fetched

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    for name in ["IMAGENET1K_V1", "ResNet18_Weights.IMAGENET1K_V1"]:
        with pytest.raises(
            RuntimeError,
            match=r"pass its local path instead: build\('resnet18', num_classes, "
            r"weights='/path/to/resnet18-f37072fd.pth'\)",
        ):
            build("resnet18", 3, weights=name)


def test_named_depths():
    resnet = build("resnet18", 2)
    assert [layer_name(resnet, d) for d in ["input", "mid1", "mid2", "mid3", "final"]] == [
        None,
        "layer1",
        "layer2",
        "layer3",
        "layer4",
    ]
    assert layer_name(build("bcos_resnet18", 2), "final") == "layer4"
    assert layer_name(build("smallcnn", 2), "mid2") == "block2"
    with pytest.raises(ValueError, match="depth 'mid4' is unknown; accepted: input, mid1"):
        layer_name(resnet, "mid4")
    with pytest.raises(ValueError, match="pass a module name instead"):
        layer_name(build("shufflenet_v2_x0_5", 2), "final")
