"""The ViT adapter (`salience.attribution.vit`) and the rollouts (`attention_rollout`, `grad_rollout`,
`chefer_grad`): the explicit forward equals each family's own (timm with class, register and distillation tokens,
average pooling, fused or not; torchvision; Hugging Face eager and sdpa), its attention equals the unfused model's,
the model is left as it was, other models fail by name, and each method equals the transcription of its
reference (`tests/vit_reference.py`) on all three families, in float64."""

import pytest
import torch
from torch import nn

from salience import attribution as A
from salience.attribution.rollout import AttentionRecorder
from salience.attribution.vit import Ops, vit
from salience.models import build
from salience.models.adapt import normalise_input
from vit_reference import chefer_grad_reference, grad_rollout_reference, rollout_reference

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")
transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(pretrained=False, num_classes=3, img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=4)
TIMM = {
    "timm": ("vit_tiny_patch16_224", {}),
    "timm_registers": ("vit_tiny_patch16_224", {"reg_tokens": 4}),
    "timm_avg": ("vit_tiny_patch16_224", {"class_token": False, "global_pool": "avg"}),
    "timm_layerscale_qknorm": ("vit_tiny_patch16_224", {"init_values": 0.5, "qk_norm": True}),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", {}),
}


def _timm(kind: str, fused: bool = True) -> nn.Module:
    torch.manual_seed(0)
    name, extra = TIMM[kind]
    model = timm.create_model(name, **TINY, **extra).double().eval()
    for block in model.blocks:
        block.attn.fused_attn = fused
    return model


def _torchvision() -> nn.Module:
    torch.manual_seed(0)
    tv = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64, num_classes=3
    )
    return tv.double().eval()


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """Tiny Hugging Face ViT and DeiT (with its distillation head) classifiers saved to folders."""
    shape = dict(image_size=32, patch_size=8, num_hidden_layers=2, hidden_size=32, num_attention_heads=4)
    folders = {}
    for kind, config, cls in [
        ("hf", transformers.ViTConfig, transformers.ViTForImageClassification),
        ("hfdeit", transformers.DeiTConfig, transformers.DeiTForImageClassificationWithTeacher),
    ]:
        torch.manual_seed(0)
        folders[kind] = tmp_path_factory.mktemp(kind)
        cls(config(**shape, intermediate_size=64, num_labels=3, architectures=[cls.__name__])).save_pretrained(
            folders[kind]
        )
    return folders


def _model(kind: str, hf_folder) -> nn.Module:
    """`kind`: a key of TIMM, "torchvision", or "hf" / "hfdeit" with an optional "_eager" / "_sdpa"."""
    if kind == "torchvision":
        return _torchvision()
    if kind.startswith("hf"):
        name, _, impl = kind.partition("_")
        return build(f"hf:{hf_folder[name]}", 3, kwargs={"attn_implementation": impl or "sdpa"}).double().eval()
    return _timm(kind)


def _x(b: int = 2) -> torch.Tensor:
    return torch.rand(b, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


@pytest.mark.parametrize(
    ("kind", "fused"),
    [*((k, f) for k in TIMM for f in (True, False)), *((k, None) for k in ("torchvision", "hf_eager", "hf_sdpa"))]
    + [("hfdeit_sdpa", None)],
)
def test_explicit_forward_equals_the_models_own(kind, fused, hf_folder):
    """Default `Ops`: the model's own logits (timm fused and unfused); the prefix tokens and the patch grid read
    off the model. (Hugging Face's eager attention takes its softmax in float32.)"""
    model = _timm(kind, fused) if kind in TIMM else _model(kind, hf_folder)
    x = _x()
    view = vit(model)
    with torch.no_grad():
        ours, theirs = view.forward(x), model(x)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6 if kind == "hf_eager" else 1e-12)
    prefix = {"timm_registers": 5, "timm_avg": 0, "deit_distilled": 2, "hfdeit_sdpa": 2}.get(kind, 1)
    assert (view.prefix, view.depth, view.heads, view.grid((32, 32))) == (prefix, 2, 4, (4, 4))
    assert view.tokens(x).shape == (2, prefix + 16, 32)


def test_the_input_normalisation_salience_adds_is_kept():
    model = _timm("timm")
    normalise_input(model, (0.5, 0.4, 0.3), (0.2, 0.3, 0.4))
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(vit(model).forward(x), model(x), rtol=0, atol=1e-12)


class _Grab(Ops):
    """Records the attention and replaces block 1's by the uniform attention."""

    def __init__(self):
        self.seen = []

    def attention(self, i, a):
        self.seen.append(a)
        return torch.full_like(a, 1 / a.shape[-1]) if i == 1 else a


def test_attention_and_its_gradient_equal_the_unfused_models_own():
    """timm with `fused_attn=False`: a forward hook on `attn.attn_drop` sees the probabilities, a tensor hook their
    gradient; `ops.attention` may replace them (the forward then changes)."""
    model, x = _timm("timm", fused=False), _x()
    own, own_grads = [], {}

    def hook(_module, _inputs, out):
        own.append(out)
        index = len(own) - 1
        out.register_hook(lambda g: own_grads.__setitem__(index, g))

    handles = [b.attn.attn_drop.register_forward_hook(hook) for b in model.blocks]
    model(x)[:, 1].sum().backward()
    for h in handles:
        h.remove()
    recorder = AttentionRecorder()
    grads = torch.autograd.grad(vit(model).forward(x, recorder)[:, 1].sum(), recorder.attentions)
    for i in range(2):
        torch.testing.assert_close(recorder.attentions[i], own[i], rtol=0, atol=1e-14)
        torch.testing.assert_close(grads[i], own_grads[i], rtol=0, atol=1e-14)
    grab = _Grab()
    changed = vit(model).forward(x, grab)
    assert len(grab.seen) == 2 and not torch.allclose(changed, model(x))


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


@pytest.mark.parametrize("method", ["attention_rollout", "grad_rollout", "chefer_grad"])
def test_the_model_is_left_as_it_was(method):
    """State dict, hooks, output, modes; the maps on the patch grid upsample to the image; a model in train mode
    is refused, naming `model.eval()`."""
    model, x = _timm("timm", fused=True), _x()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hooks, out = _hooks(model), model(x)
    maps = A.attribute(method, model, x, torch.tensor([0, 2]))
    assert maps.shape == (2, 4, 4) and not model.training and _hooks(model) == hooks
    assert A.upsample(maps, (32, 32)).shape == (2, 32, 32)  # patch grid -> pixels, as every method
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert torch.equal(model(x), out) and all(p.grad is None for p in model.parameters())
    model.train()
    with pytest.raises(ValueError, match=r"VisionTransformer is in train mode.*model\.eval\(\)"):
        A.attribute(method, model, x, torch.tensor([0, 2]))
    assert model.training


def test_models_without_global_attention_fail_by_name():
    """A CNN, a Swin (windowed attention) and attention pooling are refused, naming the class and what works."""
    cnn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    swin = timm.create_model(
        "swin_tiny_patch4_window7_224", pretrained=False, num_classes=3, img_size=32, window_size=4, embed_dim=16,
        depths=(1, 1), num_heads=(1, 2),
    )  # fmt: skip
    for model, name in [(cnn, "Sequential"), (swin, "SwinTransformer")]:
        with pytest.raises(ValueError, match=f"^{name}: .*the ViT methods support timm VisionTransformer"):
            vit(model)
        with pytest.raises(ValueError, match=f"^{name}: "):
            A.attribute("chefer_grad", model.eval(), torch.rand(1, 3, 32, 32), torch.tensor([0]))
    pooled = timm.create_model("vit_tiny_patch16_224", **TINY, global_pool="map")
    with pytest.raises(ValueError, match="VisionTransformer: global_pool 'map'"):
        vit(pooled)


def _references(model: nn.Module, x: torch.Tensor, cls: torch.Tensor, scores: bool = False):
    """Per block, the attention `[B, heads, N, N]` and the gradient of each image's class score w.r.t. it (or,
    `scores`, w.r.t. the scores before the softmax), read by the explicit forward."""

    class Both(AttentionRecorder):
        def __init__(self):
            super().__init__()
            self.scores = []

        def softmax(self, s):
            self.scores.append(s)
            return s.softmax(-1)

    rec = Both()
    logits = vit(model).forward(x, rec)
    grads = torch.autograd.grad(logits.gather(1, cls[:, None]).sum(), rec.scores if scores else rec.attentions)
    return [a.detach() for a in rec.attentions], list(grads)


def _row(model: nn.Module, matrix: torch.Tensor) -> torch.Tensor:
    """The references read the class token's row; average-pooled models: the mean of the patch rows."""
    view = vit(model)
    return matrix[view.prefix :].mean(0) if view.pool == "avg" else matrix[0]


@pytest.mark.parametrize(
    "kind", ["timm", "timm_registers", "timm_avg", "deit_distilled", "torchvision", "hf", "hfdeit"]
)
def test_each_method_equals_its_transcription(kind, hf_folder):
    """Each image's map is the transcribed reference's row over the patch tokens (class token; average-pooled
    models: the mean of the patch rows), head fusions and discard ratios included."""
    model, x, cls = _model(kind, hf_folder), _x(), torch.tensor([2, 0])
    view = vit(model)
    attn, grads = _references(model, x, cls)
    for fusion, ratio in [("mean", 0.0), ("max", 0.5), ("min", 0.9)]:
        maps = A.attribute("attention_rollout", model, x, cls, head_fusion=fusion, discard_ratio=ratio)
        for b in range(2):
            ref = _row(model, rollout_reference([a[b] for a in attn], ratio, fusion))[view.prefix :]
            torch.testing.assert_close(maps[b].flatten(), ref, rtol=1e-10, atol=1e-14)
    for method, ratio in [("grad_rollout", 0.9), ("grad_rollout", 0.0), ("chefer_grad", None)]:
        maps = A.attribute(method, model, x, cls, **({} if ratio is None else {"discard_ratio": ratio}))
        for b in range(2):
            per = [a[b] for a in attn], [g[b] for g in grads]
            full = chefer_grad_reference(*per) if ratio is None else grad_rollout_reference(*per, ratio)
            torch.testing.assert_close(maps[b].flatten(), _row(model, full)[view.prefix :], rtol=1e-10, atol=1e-14)


def test_vit_explains_departures_change_the_maps():
    """What the transcription's options reproduce (each checked against vit-explain's code while developing):
    dividing by the row sums without keepdim changes the map once rows no longer sum to one (max fusion, a
    discard), not for the mean of the heads without discard; the gradient of the scores before the softmax, in
    reversed block order, is another map than the attention's own gradient."""
    model, x, cls = _timm("timm"), _x(1), torch.tensor([1])
    attn, grads = _references(model, x, cls)
    _, score_grads = _references(model, x, cls, scores=True)
    one = [a[0] for a in attn]
    ours = A.attribute("attention_rollout", model, x, cls)[0].flatten()
    torch.testing.assert_close(rollout_reference(one, 0.0, "mean", their_division=True)[0, 1:], ours)
    theirs = rollout_reference(one, 0.5, "max", their_division=True)[0, 1:]
    ours = A.attribute("attention_rollout", model, x, cls, head_fusion="max", discard_ratio=0.5)[0].flatten()
    assert (theirs - ours).abs().max() > 1e-3 * ours.abs().max()
    ours = A.attribute("grad_rollout", model, x, cls)[0].flatten()
    theirs = grad_rollout_reference(one, [g[0] for g in score_grads], 0.9, True, their_gradient_order=True)[0, 1:]
    assert (theirs / theirs.max() - ours / ours.max()).abs().max() > 1e-3
