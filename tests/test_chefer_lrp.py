"""`chefer_lrp` equals the transcription of Chefer et al.'s `generate_LRP` (`tests/chefer_reference.py`) on tiny
timm, torchvision and Hugging Face ViTs with random weights (float64), batched over images and classes; its
rules, one operation at a time, equal the transcription's; the model is left as it was."""

import pytest
import torch
from torch import nn

import chefer_reference as ref
from salience.attribution import attribute
from salience.attribution.chefer_lrp import LRPOps, chefer_lrp
from salience.models import build

timm = pytest.importorskip("timm")
pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = dict(img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=4)


def _randomise(model: nn.Module, seed: int) -> nn.Module:
    """Weights large enough that every block matters: LayerNorm scales 1 + 0.2 N(0, 1), the rest 0.3 N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=p.dtype)
            p.copy_(1 + 0.2 * noise if p.dim() == 1 and name.endswith("weight") else 0.3 * noise)
    return model.eval()


def _timm(seed: int = 0, fused: bool = True, name: str = "vit_tiny_patch16_224", **kw) -> nn.Module:
    model = timm.create_model(name, pretrained=False, num_classes=3, **SMALL, **kw).double()
    for blk in model.blocks:
        blk.attn.fused_attn = fused
    return _randomise(model, seed)


def _torchvision() -> nn.Module:
    from torchvision.models import VisionTransformer

    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64,
                              num_classes=3).double()  # fmt: skip
    return _randomise(model, 1)


def _hf(tmp_path) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ViTConfig(image_size=32, patch_size=8, num_hidden_layers=2, hidden_size=32,
                                 num_attention_heads=4, intermediate_size=64, num_labels=3)  # fmt: skip
    _randomise(transformers.ViTForImageClassification(cfg), 2).save_pretrained(tmp_path / "vit")
    return build(f"hf:{tmp_path / 'vit'}", 3).double().eval()


def _images(n: int = 3, seed: int = 5) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _reference(model: nn.Module, family: str, x: torch.Tensor, pairs: list, start_layer: int = 0) -> torch.Tensor:
    p = ref.params(model, family)
    return torch.cat([ref.generate_lrp(p, x[i : i + 1], c, start_layer) for i, c in pairs]).reshape(-1, 4, 4)


def _close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """Equal up to where the 1e-9 stabiliser of `safe_divide` meets values (the scale is applied before `q kᵀ`
    here, after it there): 1e-6 of each map's largest value."""
    assert ours.shape == theirs.shape
    scale = theirs.flatten(1).abs().amax(1)
    assert (scale > 1e-4).all()  # not a vanishing map
    assert ((ours - theirs).flatten(1).abs().amax(1) <= 1e-6 * scale).all()


@pytest.mark.parametrize("fused", [True, False])
def test_timm_equals_reference_per_image_and_class(fused):
    model, x = _timm(fused=fused), _images()
    target = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 1]])
    ours = chefer_lrp(model, x, target)
    _close(ours, _reference(model, "timm", x, [(0, 0), (0, 2), (1, 1), (2, 0), (2, 1), (2, 2)]))


def test_start_layer_and_batch_independence():
    model, x = _timm(seed=3), _images(4, seed=6)
    target = torch.tensor([2, 0, 1, 2])
    ours = chefer_lrp(model, x, target, start_layer=1)
    _close(ours, _reference(model, "timm", x, list(enumerate(target.tolist())), start_layer=1))
    alone = torch.cat([chefer_lrp(model, x[i : i + 1], target[i : i + 1], start_layer=1) for i in range(4)])
    torch.testing.assert_close(ours, alone, rtol=1e-12, atol=1e-15)


def test_torchvision_equals_reference():
    model, x = _torchvision(), _images(2)
    _close(chefer_lrp(model, x, torch.tensor([0, 2])), _reference(model, "torchvision", x, [(0, 0), (1, 2)]))


def test_hf_equals_reference(tmp_path):
    model, x = _hf(tmp_path), _images(2)
    _close(chefer_lrp(model, x, torch.tensor([1, 2])), _reference(model, "hf", x, [(0, 1), (1, 2)]))


def test_rules_equal_the_transcriptions():
    g = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(*s, generator=g, dtype=torch.float64) for s in [(2, 5, 6), (4, 6), (4,)])
    r = torch.randn(2, 5, 4, generator=g, dtype=torch.float64)

    def relevance(op, *inputs):  # R_in = input ⊙ modified gradient, started from R at the output
        leaves = [t.clone().requires_grad_(True) for t in inputs]
        out = op(*leaves)
        grads = torch.autograd.grad(out, leaves, ref.safe_divide(r.expand_as(out), out.detach()))
        return [t * gr for t, gr in zip(inputs, grads, strict=True)]

    ops = LRPOps()
    (ours,) = relevance(lambda t: ops.linear(t, w, b), x)
    torch.testing.assert_close(ours, ref.linear_rel(x, w, r * 1.0), rtol=1e-6, atol=1e-12)
    a, v = torch.rand(2, 5, 5, generator=g, dtype=torch.float64), x[..., :4]
    for ours, theirs in zip(relevance(ops.matmul, a, v), ref.matmul_rel(a, v, r), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-12)
    res, branch = x[..., :4], torch.randn(2, 5, 4, generator=g, dtype=torch.float64)
    ours_a, ours_b = relevance(ops.add, res, branch)
    theirs = [torch.stack(t) for t in zip(*(ref.add_rel(res[i], branch[i], r[i]) for i in range(2)), strict=True)]
    torch.testing.assert_close(ours_a, theirs[0], rtol=1e-6, atol=1e-12)  # per row: sums over one image
    torch.testing.assert_close(ours_b, theirs[1], rtol=1e-6, atol=1e-12)
    torch.testing.assert_close((ours_a + ours_b).sum((1, 2)), r.sum((1, 2)), rtol=1e-6, atol=1e-12)


def test_other_prefixes_and_pooling_and_registry():
    x = _images(2)
    for model in (_timm(reg_tokens=4), _timm(class_token=False, global_pool="avg"),
                  _timm(name="deit_tiny_distilled_patch16_224")):  # fmt: skip
        before = {k: v.clone() for k, v in model.state_dict().items()}
        maps = attribute("chefer_lrp", model, x, torch.tensor([0, 1]))
        assert maps.shape == (2, 4, 4) and torch.isfinite(maps).all() and (maps >= 0).all() and maps.amax() > 0
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
        assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in model.modules())


def test_errors_name_the_fault():
    model, x = _timm(), _images(1)
    with pytest.raises(ValueError, match="start_layer"):
        chefer_lrp(model, x, torch.tensor([0]), start_layer=2)
    with pytest.raises(ValueError, match="not differentiable"):
        chefer_lrp(model, x, torch.tensor([0]), create_graph=True)
    with pytest.raises(ValueError, match="out of range"):
        chefer_lrp(model, x, torch.tensor([3]))
    with pytest.raises(ValueError, match="Sequential"):
        chefer_lrp(nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten()), x, torch.tensor([0]))
    with pytest.raises(ValueError, match="eval"):
        chefer_lrp(model.train(), x, torch.tensor([0]))
