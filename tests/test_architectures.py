"""Every method on the architectures people bring, against Captum (float64, relative error <= 1e-5).
Layer methods are checked in both modes (maps only, where the part below the layer runs without a
graph, and `create_graph=True` as guidance uses); input methods have one code path. Several of these networks
modify the hooked layer's output in place right after it (DenseNet's `F.relu(features, inplace=True)`,
VGG's and SqueezeNet's `ReLU(inplace=True)`, EfficientNet's `SiLU(inplace=True)`)."""

import copy
import functools

import pytest
import torch
import torchvision
from torch import nn

from salience import attribution as A
from salience.guidance.step import Guide
from salience.models import build, depth_table, layer_name

captum_attr = pytest.importorskip("captum.attr")
pytestmark = pytest.mark.usefixtures("one_thread")


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """Max abs difference over max |ref|; 0 only when both are all zero (a GradCAM can be)."""
    diff = (ours - ref).abs().max()
    return 0.0 if diff == 0 else (diff / ref.abs().max()).item()


def _perturb_norms(model: nn.Module) -> nn.Module:
    """Non-trivial batch-norm statistics, so a wrong layer output shows."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return model


@functools.cache
def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "inception_v3":
        model = torchvision.models.inception_v3(num_classes=5, aux_logits=False, init_weights=False)
    elif name == "vit_b_16":
        model = torchvision.models.vit_b_16(num_classes=5, image_size=32)
    else:
        model = build(name, 5)
    if name.startswith("vgg"):  # torchvision's features and forward; the 100M-weight float64 classifier narrowed
        model.avgpool = nn.AdaptiveAvgPool2d(1)
        model.classifier = nn.Sequential(nn.Linear(512, 64), nn.ReLU(True), nn.Dropout(), nn.Linear(64, 5))
    return _perturb_norms(model).double().eval()


# (model, input size, layers checked with layer IxG and GradCAM)
CONV_NETS = [
    ("resnet18", 32, ["final", "layer2.1.conv1"]),
    ("densenet121", 64, ["final", "features.denseblock2"]),
    ("vgg11_bn", 32, ["final", "features.19"]),  # features.19: a batch norm followed by ReLU(inplace)
    ("mobilenet_v2", 64, ["final", "mid2"]),
    ("efficientnet_b0", 32, ["final", "mid3"]),
    ("squeezenet1_1", 64, ["final", "features.3.expand3x3"]),
    ("inception_v3", 80, ["final", "mid2"]),
    ("convnext_tiny", 32, ["final", "mid1"]),
]


def _batch(size: int):
    g = torch.Generator().manual_seed(1)
    return torch.rand(2, 3, size, size, generator=g, dtype=torch.float64), torch.tensor([1, 4])


def _input_refs(model, x, t):
    return {
        ("gradient", None): captum_attr.Saliency(model).attribute(x, target=t, abs=True).amax(1),
        ("input_x_gradient", None): captum_attr.InputXGradient(model).attribute(x, target=t).sum(1),
    }


def _check(model, x, t, method, layer, ref, **options):
    for create_graph in (False, True) if layer else (False,):
        ours = A.attribute(method, model, x, t, layer=layer, create_graph=create_graph, **options)
        assert ours.shape == ref.shape, (method, layer, create_graph)
        err = rel_err(ours.detach(), ref)
        assert err <= 1e-5, f"{method} at {layer} (create_graph={create_graph}): relative error {err:.2e}"


@pytest.mark.parametrize("name,size,layers", CONV_NETS, ids=[c[0] for c in CONV_NETS])
def test_every_method_matches_captum(name, size, layers):
    model = _model(name)
    x, t = _batch(size)
    for (method, layer), ref in _input_refs(model, x, t).items():
        _check(model, x, t, method, layer, ref)
    ig = captum_attr.IntegratedGradients(model).attribute(x, target=t, n_steps=2, method="riemann_middle").sum(1)
    _check(model, x, t, "integrated_gradients", None, ig, steps=2)
    modules = dict(model.named_modules())
    for layer in layers:
        module = modules[layer_name(model, layer) if layer in depth_table(model) else layer]
        ixg = captum_attr.LayerGradientXActivation(model, module).attribute(x, target=t).sum(1)
        _check(model, x, t, "input_x_gradient", layer, ixg)
        cam = captum_attr.LayerGradCam(model, module).attribute(x, target=t, relu_attributions=True)[:, 0]
        _check(model, x, t, "grad_cam", layer, cam)


def test_vision_transformer_input_methods_and_block_ixg_match_captum():
    model = _model("vit_b_16")
    x, t = _batch(32)
    for (method, layer), ref in _input_refs(model, x, t).items():
        _check(model, x, t, method, layer, ref)
    block = model.encoder.layers.encoder_layer_1
    tokens = captum_attr.LayerGradientXActivation(model, block).attribute(x, target=t).sum(-1)  # [B, 1 + 4]
    ref = tokens[:, 1:].reshape(2, 2, 2)  # the class token dropped, patches on their 2 x 2 grid
    _check(model, x, t, "input_x_gradient", "encoder.layers.encoder_layer_1", ref)


def _grad_cam_from(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Grad-CAM from `[B, K, h, w]` activations and gradients: the definition, written out."""
    return torch.relu((grads.mean((2, 3), keepdim=True) * acts).sum(1))


def _layer_tensors(model, module, x, t):
    """The module's output and its gradient, from Captum (no reshaping)."""
    grads = captum_attr.LayerGradientXActivation(model, module, multiply_by_inputs=False).attribute(x, target=t)
    acts = captum_attr.LayerActivation(model, module).attribute(x)
    return acts, grads


def test_token_grids_come_from_the_model_prefix_tokens_non_square_and_swin():
    """The grid of a transformer's tokens is read off the model, not guessed: a timm ViT with a class token
    and 4 register tokens on 32 x 48 inputs (a 2 x 3 patch grid, 11 tokens), and torchvision's Swin, whose
    layers give channel-last `[B, h, w, C]`. Grad-CAM and layer IxG equal the definitions applied to
    Captum's layer activations and gradients, the patches placed by hand in row-major order."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=3, img_size=(32, 48), reg_tokens=4, depth=2)
    vit = vit.double().eval()
    g = torch.Generator().manual_seed(2)
    x, t = torch.rand(2, 3, 32, 48, generator=g, dtype=torch.float64), torch.tensor([0, 2])
    assert layer_name(vit, "final") == "blocks.1.norm1"
    acts, grads = _layer_tensors(vit, vit.blocks[1].norm1, x, t)  # [2, 11, D]
    to_grid = lambda tok: torch.stack([tok[:, 5 + 3 * i + j] for i in range(2) for j in range(3)], -1).unflatten(
        -1, (2, 3)
    )
    _check(vit, x, t, "grad_cam", "final", _grad_cam_from(to_grid(acts), to_grid(grads)))
    _check(vit, x, t, "input_x_gradient", "final", (to_grid(acts) * to_grid(grads)).sum(1))

    swin = torchvision.models.swin_t(num_classes=3).double().eval()
    x = torch.rand(2, 3, 64, 96, generator=g, dtype=torch.float64)
    for depth, module in (("final", swin.features), ("mid2", swin.features[3])):
        acts, grads = (a.permute(0, 3, 1, 2) for a in _layer_tensors(swin, module, x, t))  # NHWC -> NCHW
        _check(swin, x, t, "grad_cam", depth, _grad_cam_from(acts, grads))


@pytest.mark.slow  # 10-12 s; timm models vs Captum in make test: the ViT test below
def test_xception_from_timm_every_method_matches_captum():
    pytest.importorskip("timm")
    model = _model("timm:legacy_xception")
    x, t = _batch(32)
    for (method, layer), ref in _input_refs(model, x, t).items():
        _check(model, x, t, method, layer, ref)
    ig = captum_attr.IntegratedGradients(model).attribute(x, target=t, n_steps=2, method="riemann_middle").sum(1)
    _check(model, x, t, "integrated_gradients", None, ig, steps=2)
    for depth in ("final", "mid2"):
        module = dict(model.named_modules())[layer_name(model, depth)]
        ixg = captum_attr.LayerGradientXActivation(model, module).attribute(x, target=t).sum(1)
        _check(model, x, t, "input_x_gradient", depth, ixg)
        cam = captum_attr.LayerGradCam(model, module).attribute(x, target=t, relu_attributions=True)[:, 0]
        _check(model, x, t, "grad_cam", depth, cam)
    # CAM: legacy Xception ends in ReLU -> global average pool -> fc, so mean(CAM) + bias = logit
    maps = A.cam(model, x, t)
    assert torch.allclose(maps.mean((1, 2)) + model.fc.bias[t], model(x)[torch.arange(2), t], atol=1e-8)


def _densenet_without_inplace(model: torchvision.models.DenseNet):
    """A copy of `model` whose forward has no in-place op, and a function returning its logits and
    `features` output (the reference the guided step is checked against)."""
    ref = copy.deepcopy(model)
    for m in ref.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False

    def forward(x):
        feats = ref.features(x)
        pooled = torch.nn.functional.adaptive_avg_pool2d(torch.relu(feats), 1).flatten(1)
        return ref.classifier(pooled), feats

    return ref, forward


def test_guided_step_on_densenet_features_matches_a_model_without_inplace_ops():
    model = copy.deepcopy(_model("densenet121")).train()
    ref, forward = _densenet_without_inplace(model)
    g = torch.Generator().manual_seed(2)
    n, size = 4, 64
    labels = torch.nn.functional.one_hot(torch.tensor([0, 3, 1, 4]), 5).double()
    batch = {
        "image": torch.rand(n, 3, size, size, generator=g, dtype=torch.float64),
        "labels": labels,
        "annotated": torch.ones(n, dtype=torch.bool),
        "has_human_map": torch.ones(n, dtype=torch.bool),
        "mask": torch.zeros(n, size, size),
        "human_map": torch.zeros(n, size, size),
        "boxes": [torch.tensor([[8.0, 8.0, 40.0, 48.0]])] * n,
        "box_labels": [labels[i].argmax()[None] for i in range(n)],
    }
    guide = Guide("energy", "grad_cam", "final", lam=1.0)
    out = guide(model, batch, torch.Generator().manual_seed(0))
    params = list(model.parameters())
    grads = torch.autograd.grad(out["total"], params)

    logits, feats = forward(batch["image"])
    classes = labels.argmax(1)
    (dfeats,) = torch.autograd.grad(logits[torch.arange(n), classes].sum(), feats, create_graph=True)
    maps = torch.relu((dfeats.mean((2, 3), keepdim=True) * feats).sum(1))
    masks = guide.targets(batch, torch.arange(n), classes)
    from salience.guidance.losses import LOSSES

    guidance = LOSSES["energy"](maps, masks.double()).mean()
    total = torch.nn.functional.cross_entropy(logits, classes) + guidance
    assert torch.allclose(out["guidance"], guidance, rtol=1e-9)
    ref_grads = torch.autograd.grad(total, list(ref.parameters()))
    worst = max(rel_err(a, b) for a, b in zip(grads, ref_grads, strict=True) if b.abs().max() > 0)
    assert worst <= 1e-5


@pytest.mark.parametrize(
    "name,expected",
    [
        ("resnet50", ["layer1", "layer2", "layer3", "layer4"]),
        ("densenet121", ["features.denseblock1", "features.denseblock2", "features.denseblock3", "features"]),
        ("vgg11_bn", ["features.13", "features.20", "features.27", "features"]),
        ("mobilenet_v2", ["features.3", "features.6", "features.13", "features"]),
        ("efficientnet_b0", ["features.2", "features.3", "features.5", "features"]),
        ("convnext_tiny", ["features.1", "features.3", "features.5", "features"]),
    ],
)
def test_named_depths_per_family(name, expected):
    model = _model(name)
    assert [layer_name(model, d) for d in ("mid1", "mid2", "mid3", "final")] == expected
    strides = []
    for depth in ("mid1", "mid2", "mid3", "final"):  # the stage strides 4, 8, 16, 32 at 128 px
        with A.capture(A.resolve_layer(model, depth)) as out, torch.no_grad():
            model(torch.zeros(1, 3, 128, 128, dtype=torch.float64))
        strides.append(128 // out[0].shape[-1])
    assert strides == [4, 8, 16, 32]


def test_inception_depths_and_unknown_families():
    model = torchvision.models.inception_v3(num_classes=3, aux_logits=False, init_weights=False)
    assert [layer_name(model, d) for d in ("mid1", "mid2", "mid3", "final")] == [
        "Conv2d_4a_3x3",
        "Mixed_5d",
        "Mixed_6e",
        "Mixed_7c",
    ]
    with pytest.raises(
        ValueError,
        match=r"not defined for ShuffleNetV2; pass a module name instead, one of: "
        r"conv1, conv1\.0, .*stage2",
    ):
        layer_name(build("shufflenet_v2_x0_5", 3), "final")


def test_timm_depths_come_from_feature_info():
    pytest.importorskip("timm")
    model = _model("timm:legacy_xception")
    table = {d: layer_name(model, d) for d in ("mid1", "mid2", "mid3", "final")}
    info = {e["reduction"]: e["module"] for e in model.feature_info}
    assert table == {"mid1": info[4], "mid2": info[8], "mid3": info[16], "final": info[32]}
    with pytest.raises(ValueError, match="'timm:not_a_model' is not a timm model name"):
        build("timm:not_a_model", 2)
    with pytest.raises(FileNotFoundError, match="timm models take a local weights file"):
        build("timm:legacy_xception", 2, weights="imagenet")


def test_cli_explain_of_a_densenet_at_features_equals_captum(tmp_path):
    """`salience explain` of a DenseNet-121 checkpoint at `features` (where DenseNet applies
    `F.relu(features, inplace=True)`): the stored maps equal Captum's LayerGradCam."""
    from typer.testing import CliRunner

    from salience.cli import app
    from salience.data.core import collate
    from salience.io.checkpoint import load_run
    from salience.io.datasets import open_split
    from salience.store import MapStore
    from salience.training import load_config, save_checkpoint

    cfg = load_config(
        None,
        [
            "model.name=densenet121",
            "data.size=32",
            "data.options={n_train: 4, n_val: 2, n_test: 6, n_out_of_set: 2, size: 32}",
        ],
    )
    torch.manual_seed(0)
    save_checkpoint(
        {
            "model": _perturb_norms(build("densenet121", 2)).state_dict(),
            "config": cfg.dump(),
            "epoch": 0,
            "classes": ["real", "synthetic"],
            "multi_label": False,
        },
        tmp_path / "d.pt",
    )
    res = CliRunner().invoke(
        app,
        [
            "explain",
            "--checkpoint",
            str(tmp_path / "d.pt"),
            "--method",
            "grad_cam",
            "--layer",
            "features",
            "--target",
            "predicted",
            "--out",
            str(tmp_path / "s"),
        ],
    )
    assert res.exit_code == 0, res.output
    maps, targets = MapStore(tmp_path / "s").read(0, 6)

    model, config = load_run(tmp_path / "d.pt")
    x = collate([open_split(config.data, "test")[i] for i in range(6)])["image"]
    assert torch.equal(targets, model(x).argmax(1))
    ref = captum_attr.LayerGradCam(model, model.features).attribute(x, target=targets, relu_attributions=True)[:, 0]
    assert maps.abs().max() > 0 and rel_err(maps, ref.detach()) <= 1e-5
