"""`attn_lrp` (AttnLRP, Achtibat et al. 2024) against the `lxt` library (2.x), float64, tiny seeded ViTs:

- torchvision's ViT with lxt.efficient's own patches for it (`models/vit_torch.py`: CP-LRP inside the attention,
  the identity rule on GELU, the detached-std LayerNorm), compared with `rule="cp"`, at the pixels and at the
  tokens;
- a Hugging Face ViT (eager attention) with lxt.efficient's generic Hugging Face patches (`wrap_attention_forward`
  on the attention function: the uniform rule on q, k and v; LayerNorm and GELU as above): `rule="attnlrp"`
  (marked slow: importing transformers' ViT code dominates);
- timm ViTs (class token, average pooling, register tokens) through a forward written here with
  `lxt.explicit.functional`'s rule functions (explicit relevance, not input ⊙ gradient), their stabilisers set to
  1e-13: our input ⊙ gradient is the ε → 0 limit of lxt's explicit rules; both rules.

lxt's rule functions are applied to *instances* here (`types.MethodType`), the same functions `monkey_patch` puts
on the classes, so nothing of torch, torchvision or transformers stays patched. `import lxt.efficient` fails with
transformers 5 (its BERT module imports names transformers 5 removed); `_lxt_efficient` puts a bare
`lxt.efficient.models` package in `sys.modules` (its real path, without the `__init__` that imports every model),
so `lxt.efficient.patches` and `lxt.efficient.models.vit_torch` load unchanged.

Measured (max |difference|): timm vs lxt.explicit ≤ 4.3e-10 (maps of size 0.015–0.12); torchvision vs
lxt.efficient 7e-11 (maps ~0.02; the identity rule's stabiliser: lxt adds +1e-10, we add it with the sign of the
input); Hugging Face 7.3e-10 (maps ~0.02; its eager attention takes the softmax in float32). CP-LRP on a
bias-free model conserves: Σ relevance = logit, measured 2.6e-11 (the identity rule's stabiliser).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types

import pytest
import torch
from torch import nn

from salience.attribution import attribute
from salience.attribution.attn_lrp import AttnLRPOps, _relevance, attn_lrp
from salience.attribution.vit import vit
from salience.models.adapt import normalise_input

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")
transformers = pytest.importorskip("transformers")
lf = pytest.importorskip("lxt.explicit.functional")
lxt_rules = pytest.importorskip("lxt.explicit.rules")
pytestmark = pytest.mark.usefixtures("one_thread")
TARGET = torch.tensor([0, 2])
TINY = dict(img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=4)


def _lxt_efficient() -> types.ModuleType:
    """`lxt.efficient.patches`, imported without `lxt/efficient/models/__init__.py` (see the module docstring)."""
    name = "lxt.efficient.models"
    if name not in sys.modules:
        stub = types.ModuleType(name)
        stub.__path__ = [os.path.join(os.path.dirname(importlib.util.find_spec("lxt").origin), "efficient", "models")]
        stub.get_default_map = None  # `lxt.efficient.core` imports it; only `monkey_patch` without a map uses it
        sys.modules[name] = stub
    import lxt.efficient.patches as patches

    return patches


def _randomised(model: nn.Module, seed: int = 0) -> nn.Module:
    """Float64, eval, every parameter redrawn (N(0, 0.3) weights, N(0, 0.2) vectors: biases, class token, position
    embeddings), so no part of the relevance vanishes (torchvision zeroes its head)."""
    g = torch.Generator().manual_seed(seed)
    model = model.double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * (0.3 if p.dim() > 1 else 0.2))
    return model


def _images(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _timm(**kw) -> nn.Module:
    return _randomised(timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, **TINY, **kw))


def _torchvision() -> nn.Module:
    tv = torchvision.models.VisionTransformer(
        32, 8, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64, num_classes=3
    )
    return _randomised(tv)


def _hf() -> nn.Module:
    cfg = transformers.ViTConfig(image_size=32, patch_size=8, num_hidden_layers=2, hidden_size=32, num_labels=3,
                                 num_attention_heads=4, intermediate_size=64, attn_implementation="eager")  # fmt: skip
    return _randomised(transformers.ViTForImageClassification(cfg))


def _lxt_maps(model: nn.Module, entry: nn.Module, x: torch.Tensor, logits) -> tuple[torch.Tensor, torch.Tensor]:
    """lxt's convention (its ViT example): input ⊙ gradient of the selected logits, at the pixels (summed over
    channels and per 8-px patch) and at the input of `entry` (the first block: the tokens), prefix token dropped."""
    x = x.clone().requires_grad_(True)
    seen = {}

    def keep(_m, args, kwargs):
        seen["t"] = args[0] if args else kwargs["hidden_states"]
        seen["t"].retain_grad()

    handle = entry.register_forward_pre_hook(keep, with_kwargs=True)
    try:
        logits(x).gather(1, TARGET[:, None]).sum().backward()
    finally:
        handle.remove()
    pixels = (x * x.grad).sum(1).reshape(-1, 4, 8, 4, 8).sum((2, 4))
    return pixels, (seen["t"] * seen["t"].grad).sum(-1)[:, 1:].reshape(-1, 4, 4)


def _check(model: nn.Module, rule: str, reference: tuple[torch.Tensor, torch.Tensor], atol: float) -> None:
    for at, expected in zip(("pixels", "tokens"), reference, strict=True):
        ours = attn_lrp(model, _images(), TARGET, rule=rule, at=at)
        assert expected.abs().max() > 1e-2
        torch.testing.assert_close(ours, expected, rtol=0, atol=atol)


def test_torchvision_equals_lxt_efficient_cp_lrp():
    patches, model = _lxt_efficient(), _torchvision()
    ref = _torchvision()
    for m in ref.modules():  # lxt.efficient.models.vit_torch.cp_LRP, applied to the instances
        if isinstance(m, nn.GELU):
            m.original_forward = m.forward
            m.forward = types.MethodType(patches.non_linear_forward, m)
        elif isinstance(m, nn.LayerNorm):
            m.forward = types.MethodType(patches.layer_norm_forward, m)
        elif isinstance(m, nn.MultiheadAttention):
            m.original_forward = m.forward
            m.forward = types.MethodType(patches.cp_multi_head_attention_forward, m)
    _check(model, "cp", _lxt_maps(ref, ref.encoder.layers[0], _images(), ref), atol=1e-8)


@pytest.mark.slow
def test_hugging_face_equals_lxt_efficient_attnlrp():
    """Slow only by its first import of transformers' ViT code (4 s to 48 s on a busy 2-core machine; the test
    itself takes 0.5 s). `make test` keeps the same property (the default rule equals lxt) on timm below."""
    from transformers.activations import GELUActivation
    from transformers.models.vit import modeling_vit

    patches, model = _lxt_efficient(), _hf()
    ref = _hf()
    for m in ref.modules():
        if isinstance(m, GELUActivation):
            m.original_forward = m.forward
            m.forward = types.MethodType(patches.non_linear_forward, m)
        elif isinstance(m, nn.LayerNorm):
            m.forward = types.MethodType(patches.layer_norm_forward, m)
    original = modeling_vit.eager_attention_forward
    modeling_vit.eager_attention_forward = patches.wrap_attention_forward(original)
    try:
        layers = ref.vit.layers if hasattr(ref.vit, "layers") else ref.vit.encoder.layer
        reference = _lxt_maps(ref, layers[0], _images(), lambda x: ref(pixel_values=x).logits)
    finally:
        modeling_vit.eager_attention_forward = original
    _check(model, "attnlrp", reference, atol=1e-8)


def _lxt_explicit_tokens(model: nn.Module, x: torch.Tensor, cp: bool) -> torch.Tensor:
    """timm's ViT forward with lxt.explicit's rules (stabilisers 1e-13); explicit relevance at the patch tokens."""
    eps = 1e-13
    t = model.norm_pre(model._pos_embed(model.patch_embed(x))).detach().requires_grad_(True)
    norm = lambda h, m: lf.layer_norm_grad_fn.apply(h, m.weight, m.bias, m.eps, eps)
    h = t
    for blk in model.blocks:
        at, mlp = blk.attn, blk.mlp
        qkv = lf.linear_epsilon(norm(h, blk.norm1), at.qkv.weight, at.qkv.bias, eps)
        q, k, v = qkv.reshape(x.shape[0], t.shape[1], 3, at.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        a = lf.softmax(lf.matmul(lf.mul2(q, at.scale), k.transpose(-1, -2), False, eps), -1)
        ctx = lxt_rules.epsilon_lrp(torch.matmul, eps, a.detach(), v) if cp else lf.matmul(a, v, False, eps)
        ctx = ctx.transpose(1, 2).reshape(x.shape[0], t.shape[1], -1)
        h = lf.add2(h, lf.linear_epsilon(ctx, at.proj.weight, at.proj.bias, eps), False, eps)
        f = lxt_rules.identity(mlp.act, lf.linear_epsilon(norm(h, blk.norm2), mlp.fc1.weight, mlp.fc1.bias, eps))
        h = lf.add2(h, lf.linear_epsilon(f, mlp.fc2.weight, mlp.fc2.bias, eps), False, eps)
    if model.global_pool == "token":
        pooled = norm(h, model.norm)[:, 0]
    else:
        pooled = norm(lf.mean(h[:, model.num_prefix_tokens :], 1, False, eps), model.fc_norm)
    y = lf.linear_epsilon(pooled, model.head.weight, model.head.bias, eps).gather(1, TARGET[:, None])
    y.backward(y)  # lxt.explicit: the relevance itself flows back, starting at the logit
    return t.grad.sum(-1)[:, model.num_prefix_tokens :].reshape(-1, 4, 4)


@pytest.mark.parametrize("kw", [{}, {"class_token": False, "global_pool": "avg"}, {"reg_tokens": 4}])
@pytest.mark.parametrize("rule", ["attnlrp", "cp"])
def test_timm_equals_lxt_explicit(kw, rule):
    model = _timm(**kw)
    expected = _lxt_explicit_tokens(model, _images(), cp=rule == "cp")
    assert expected.abs().max() > 1e-3
    torch.testing.assert_close(attn_lrp(model, _images(), TARGET, rule=rule, at="tokens"), expected, rtol=0, atol=1e-8)


def test_cp_lrp_conserves_on_a_bias_free_model():
    """No biases, no position embedding, no class token (average pooling): Σ pixel relevance = the logit. AttnLRP
    itself does not conserve: the softmax rule (Taylor with bias) keeps a share."""
    model = _timm(class_token=False, global_pool="avg")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or name == "pos_embed":
                p.zero_()
    x = _images()
    total = attn_lrp(model, x, TARGET, rule="cp").sum((1, 2))
    torch.testing.assert_close(total, model(x).gather(1, TARGET[:, None])[:, 0], rtol=0, atol=1e-9)
    tokens = _relevance(vit(model), x, TARGET, AttnLRPOps("attnlrp"), "tokens")
    assert (tokens.sum((1, 2)) - model(x).gather(1, TARGET[:, None])[:, 0]).abs().min() > 1e-3


def test_pixels_are_the_normalised_input_and_model_is_left_as_it_was():
    model, x = _timm(reg_tokens=4), _images()
    plain = attn_lrp(model, (x - 0.5) / 0.25, TARGET)
    normalise_input(model, (0.5,) * 3, (0.25,) * 3)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    hooks, before = dict(model._forward_pre_hooks), model(x)
    torch.testing.assert_close(attribute("attn_lrp", model, x, TARGET), plain, rtol=0, atol=1e-12)
    assert dict(model._forward_pre_hooks) == hooks and not model.training
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)


def test_deit_pairs_and_errors():
    model, x = _randomised(timm.create_model("deit_tiny_distilled_patch16_224", num_classes=3, **TINY)), _images()
    multi = torch.tensor([[1, 0, 1], [0, 1, 0]])
    maps = attn_lrp(model, x, multi)
    assert maps.shape == (3, 4, 4)
    torch.testing.assert_close(maps[1], attn_lrp(model, x[:1], torch.tensor([2]))[0], rtol=0, atol=1e-12)
    for bad, match in [({"rule": "lrp"}, "rule 'lrp'"), ({"at": "input"}, "at 'input'")]:
        with pytest.raises(ValueError, match=match):
            attn_lrp(model, x, TARGET, **bad)
    with pytest.raises(ValueError, match="create_graph"):
        attn_lrp(model, x, TARGET, create_graph=True)
    with pytest.raises(ValueError, match="Conv2d|Sequential|not a vision transformer"):
        attn_lrp(nn.Sequential(nn.Conv2d(3, 3, 3), nn.Flatten()).double(), x, TARGET)
