"""Hugging Face image classifiers (`hf:<folder>`): tiny, randomly initialised ViT, DeiT, Swin, ConvNeXt and
ResNet configs saved to disk here, loaded from disk (nothing downloaded), explained by every method that
applies against Captum (float64, relative error <= 1e-5) at named depths, and measured."""

import math
from contextlib import contextmanager

import pytest
import torch
from torch import nn

from salience import attribution as A
from salience.measures import evaluate
from salience.models import build, layer_name

transformers = pytest.importorskip("transformers")
captum_attr = pytest.importorskip("captum.attr")
pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = 16


def _configs() -> dict:
    vit = {"image_size": SIZE, "patch_size": 4, "hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2}
    return {
        "vit": transformers.ViTConfig(**vit, intermediate_size=16, architectures=["ViTForImageClassification"]),
        "deit": transformers.DeiTConfig(
            **vit, intermediate_size=16, architectures=["DeiTForImageClassificationWithTeacher"]
        ),
        "swin": transformers.SwinConfig(
            image_size=SIZE, patch_size=2, embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=4
        ),
        "convnext": transformers.ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1]),
        "resnet": transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic"),
    }


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for i, (kind, config) in enumerate(_configs().items()):
        torch.manual_seed(i)
        config.num_labels = 3
        arch = (config.architectures or ["AutoModelForImageClassification"])[0]
        cls = getattr(transformers, arch) if arch != "AutoModelForImageClassification" else None
        model = cls(config) if cls else transformers.AutoModelForImageClassification.from_config(config)
        with torch.no_grad():  # non-trivial norms, so a wrong layer output shows
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.2, 0.2)
                    m.running_var.uniform_(0.5, 1.5)
        model.save_pretrained(root / kind)
        out[kind] = root / kind
    return out


def _load(folders, kind) -> nn.Module:
    return build(f"hf:{folders[kind]}").double().eval()


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.rand(2, 3, SIZE, SIZE, generator=g, dtype=torch.float64), torch.tensor([1, 2])


class _Grid(nn.Module):
    """Identity on a token grid `[B, D, s, s]`: the layer Captum attributes to."""

    def forward(self, x):
        return x


@contextmanager
def on_grid(module: nn.Module):
    """During the block, `module`'s tokens `[B, N, D]` (or the first element of its tuple) pass through a
    `_Grid` as `[B, D, s, s]` (the N - s² leading tokens aside), so Captum's layer methods see a feature map."""
    grid = _Grid()

    def hook(_m, _i, out):
        first = out[0] if isinstance(out, tuple) else out
        b, n, d = first.shape
        s = math.isqrt(n)
        patches = grid(first[:, n - s * s :].transpose(1, 2).reshape(b, d, s, s))
        new = torch.cat([first[:, : n - s * s], patches.flatten(2).transpose(1, 2)], 1)
        return (new, *out[1:]) if isinstance(out, tuple) else new

    handle = module.register_forward_hook(hook)
    try:
        yield grid
    finally:
        handle.remove()


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    diff = (ours - ref).abs().max()
    return 0.0 if diff == 0 else (diff / ref.abs().max()).item()


def _check(model, x, t, method, layer, ref, **options):
    for create_graph in (False, True) if layer else (False,):
        ours = A.attribute(method, model, x, t, layer=layer, create_graph=create_graph, **options)
        assert ours.shape == ref.shape, (method, layer)
        assert ref.abs().max() > 0 and rel_err(ours.detach(), ref) <= 1e-5, (method, layer, create_graph)


DEPTHS = {
    "vit": ["vit.layers.0", "vit.layers.0", "vit.layers.0", "vit.layers.1.layernorm_before"],
    "deit": ["deit.layers.0", "deit.layers.0", "deit.layers.0", "deit.layers.1.layernorm_before"],
    "swin": [
        "swin.encoder.layers.1.blocks.0",  # patch 2: stage strides 2 and 4
        "swin.layernorm",
        "swin.layernorm",
        "swin.layernorm",
    ],
    "convnext": [
        "convnext.encoder.stages.0",
        "convnext.encoder.stages.1",
        "convnext.encoder.stages.1",
        "convnext.encoder.stages.1",
    ],
    "resnet": [
        "resnet.encoder.stages.0",
        "resnet.encoder.stages.1",
        "resnet.encoder.stages.1",
        "resnet.encoder.stages.1",
    ],
}


@pytest.mark.parametrize("kind", list(DEPTHS))
def test_every_method_matches_captum_at_named_depths(folders, kind):
    model = _load(folders, kind)
    x, t = _batch()
    assert model(x).shape == (2, 3)  # the ModelOutput's logits
    assert [layer_name(model, d) for d in ("mid1", "mid2", "mid3", "final")] == DEPTHS[kind]
    _check(model, x, t, "gradient", None, captum_attr.Saliency(model).attribute(x, target=t, abs=True).amax(1))
    _check(model, x, t, "input_x_gradient", None, captum_attr.InputXGradient(model).attribute(x, target=t).sum(1))
    ig = captum_attr.IntegratedGradients(model).attribute(x, target=t, n_steps=2, method="riemann_middle").sum(1)
    _check(model, x, t, "integrated_gradients", None, ig, steps=2)
    modules = dict(model.named_modules())
    for depth in ("mid1", "final"):
        module = modules[layer_name(model, depth)]
        tokens = kind in ("vit", "deit", "swin")
        with on_grid(module) if tokens else _same(module) as layer:
            ixg = captum_attr.LayerGradientXActivation(model, layer).attribute(x, target=t).sum(1)
            cam = captum_attr.LayerGradCam(model, layer).attribute(x, target=t, relu_attributions=True)[:, 0]
        _check(model, x, t, "input_x_gradient", depth, ixg)
        _check(model, x, t, "grad_cam", depth, cam)
    specs = ["grad_cam@mid1", "input_x_gradient@final", "gradient"]  # one forward, one backward
    for spec, maps in A.attribute_many(model, x, t, specs).items():
        method, _, layer = spec.partition("@")
        assert rel_err(maps, A.attribute(method, model, x, t, layer=layer or None)) <= 1e-5, spec


@contextmanager
def _same(module):
    yield module


@pytest.mark.parametrize("kind", ["vit", "swin"])
def test_vit_and_swin_are_measured(folders, kind):
    model = _load(folders, kind)
    x, t = _batch()
    masks = torch.zeros(2, SIZE, SIZE, dtype=torch.bool)
    masks[:, 4:12, 4:12] = True
    values = evaluate(model, x, t, "grad_cam", "mid1", masks=masks, deletion_steps=2)
    assert values and all(torch.isfinite(v).all() for v in values.values()), values


def test_hf_folders_load_from_disk_with_the_checks_that_name_the_folder(folders, tmp_path):
    x = _batch()[0].float()
    assert build(f"hf:{folders['resnet']}", 5)(x).shape == (2, 5)  # a head of another size, re-initialised
    same = build(f"hf:{folders['resnet']}", 3)
    assert torch.equal(same(x), build(f"hf:{folders['resnet']}")(x))  # the folder's head kept
    with pytest.raises(FileNotFoundError, match=rf"model 'hf:{tmp_path}': {tmp_path}/config.json not found"):
        build(f"hf:{tmp_path}")
    torch.save(_load(folders, "vit").float().state_dict(), tmp_path / "vit.pth")
    model = build(f"hf:{folders['vit']}", weights=tmp_path / "vit.pth")  # a state dict on top, as for any model
    assert torch.equal(model(x), _load(folders, "vit").float()(x))
