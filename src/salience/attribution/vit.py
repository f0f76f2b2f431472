"""Vision transformers read by name: `vit(model)` describes a timm, torchvision or Hugging Face ViT, and
`ViT.forward(x, ops)` runs its blocks explicitly, every operation through a replaceable `Ops`, so the attention
probabilities exist even where the model itself uses a fused kernel (`scaled_dot_product_attention`).

The explicit forward is built from the model's own modules and parameters; nothing of the model is patched or
hooked, so nothing survives a call. With the default `Ops()` it equals the model's own forward (eval mode).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from salience.attribution.core import patch_grid

SUPPORTED = (
    "timm VisionTransformer / VisionTransformerDistilled (ViT, DeiT; class, distillation and register tokens; "
    "class-token or average pooling), torchvision VisionTransformer (vit_b_16, ...), "
    "Hugging Face ViTForImageClassification, DeiTForImageClassification(WithTeacher)"
)


class Ops:
    """The operations of the explicit forward. Subclasses change what they record or their backward (LRP rules)."""

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """Every linear layer of the blocks and of the head: `x Wᵀ + b`."""
        return F.linear(x, weight, bias)

    def matmul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The two products of attention: `(q·scale) @ kᵀ` and `A @ v`."""
        return a @ b

    def softmax(self, s: torch.Tensor) -> torch.Tensor:
        """Attention scores `[B, heads, N, N]` -> probabilities (over the last axis)."""
        return s.softmax(-1)

    def norm(self, x: torch.Tensor, module: nn.Module) -> torch.Tensor:
        """A normalisation module (LayerNorm of the blocks, q/k norms, the final norm)."""
        return module(x)

    def act(self, x: torch.Tensor, module: nn.Module) -> torch.Tensor:
        """An activation module (the MLP's GELU; a pre-logits Tanh)."""
        return module(x)

    def add(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """A residual addition."""
        return a + b

    def attention(self, i: int, a: torch.Tensor) -> torch.Tensor:
        """Block `i`'s attention probabilities `A` `[B, heads, N, N]`: record it, or return a replacement."""
        return a


@dataclass(frozen=True)
class Block:
    """One pre-norm transformer block as modules: `x + ls1(proj(attn(norm1(x))))`, then
    `x + ls2(fc2(mlp_norm(act(fc1(norm2(x))))))`. `qkv`: one linear with the three projections stacked (timm),
    or three (Hugging Face), or a `MultiheadAttention` (torchvision's `in_proj`). Optional parts are None."""

    norm1: nn.Module
    qkv: tuple[nn.Module, ...]
    proj: nn.Linear
    norm2: nn.Module
    fc1: nn.Linear
    act: nn.Module
    fc2: nn.Linear
    heads: int
    scale: float
    q_norm: nn.Module | None = None
    k_norm: nn.Module | None = None
    attn_norm: nn.Module | None = None
    mlp_norm: nn.Module | None = None
    ls1: nn.Module | None = None
    ls2: nn.Module | None = None

    def qkv_params(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The stacked projection `[3D, D]` and its bias `[3D]` (None when there is none)."""
        pairs: list[tuple[Any, Any]] = [
            (m.in_proj_weight, m.in_proj_bias) if isinstance(m, nn.MultiheadAttention) else (m.weight, m.bias)
            for m in self.qkv
        ]
        if len(pairs) == 1:
            return pairs[0]
        weight = torch.cat([w for w, _ in pairs])
        if all(b is None for _, b in pairs):
            return weight, None
        return weight, torch.cat([b if b is not None else w.new_zeros(w.shape[0]) for w, b in pairs])

    def __call__(self, x: torch.Tensor, i: int, ops: Ops) -> torch.Tensor:
        """Tokens `[B, N, D]` through the block, block index `i` (for `ops.attention`)."""
        b, n, _ = x.shape
        weight, bias = self.qkv_params()
        q, k, v = ops.linear(ops.norm(x, self.norm1), weight, bias).reshape(b, n, 3, self.heads, -1).unbind(2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, heads, N, d]
        if self.q_norm is not None and self.k_norm is not None:
            q, k = ops.norm(q, self.q_norm), ops.norm(k, self.k_norm)
        a = ops.attention(i, ops.softmax(ops.matmul(q * self.scale, k.transpose(-2, -1))))
        ctx = ops.matmul(a, v).transpose(1, 2).reshape(b, n, -1)
        if self.attn_norm is not None:
            ctx = ops.norm(ctx, self.attn_norm)
        out = ops.linear(ctx, self.proj.weight, self.proj.bias)
        x = ops.add(x, self.ls1(out) if self.ls1 is not None else out)
        h = ops.act(ops.linear(ops.norm(x, self.norm2), self.fc1.weight, self.fc1.bias), self.act)
        if self.mlp_norm is not None:
            h = ops.norm(h, self.mlp_norm)
        h = ops.linear(h, self.fc2.weight, self.fc2.bias)
        return ops.add(x, self.ls2(h) if self.ls2 is not None else h)


def _linear(x: torch.Tensor, module: nn.Module, ops: Ops) -> torch.Tensor:
    """A head layer: `ops.linear` for an `nn.Linear`, the module itself otherwise (Identity, Dropout)."""
    return ops.linear(x, module.weight, module.bias) if isinstance(module, nn.Linear) else module(x)


@dataclass(frozen=True)
class ViT:
    """A vision transformer read by name: `family` ("timm" | "torchvision" | "hf"), `prefix` (leading non-patch
    tokens: class, distillation, register tokens), `depth` (blocks), `heads`, and the model itself.

    `pool`: what the head reads of the final tokens: "token" (the class token), "avg" (the mean of the patch
    tokens, or of all tokens when `pool_prefix`), "distilled" (DeiT: the mean of the class and distillation heads).
    `embed`: images (as the blocks' model sees them) -> tokens; `head`: final tokens -> logits."""

    family: str
    prefix: int
    depth: int
    heads: int
    model: nn.Module
    blocks: tuple[Block, ...]
    final_norm: nn.Module
    pool: str
    embed: Callable[[torch.Tensor], torch.Tensor]
    head: Callable[[torch.Tensor, Ops], torch.Tensor]
    pool_prefix: bool = False

    def grid(self, size: Sequence[int]) -> tuple[int, int]:
        """The patch grid `(h, w)` of an input of spatial size `(H, W)`."""
        found = patch_grid(self.model, size)
        if found is None:
            raise ValueError(f"{type(self.model).__name__}: cannot read the patch size off the model")
        return found

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The token embeddings `[B, N, D]` that enter block 0, from images `x` `[B, C, H, W]` (the model's forward
        pre-hooks, e.g. salience's input normalisation, applied first)."""
        if self.model.training:
            raise ValueError(
                f"{type(self.model).__name__} is in train mode; the explicit ViT forward applies no dropout: "
                f"call model.eval() first"
            )
        return self.embed(_pre_hooks(self.model, x))

    def forward_tokens(self, t: torch.Tensor, ops: Ops | None = None) -> torch.Tensor:
        """Logits `[B, classes]` from tokens `t` `[B, N, D]` (as `tokens` gives them): the blocks, the final norm,
        the pooling and the head, every operation through `ops` (default `Ops()`)."""
        ops = ops or Ops()
        for i, block in enumerate(self.blocks):
            t = block(t, i, ops)
        return self.head(ops.norm(t, self.final_norm), ops)

    def forward(self, x: torch.Tensor, ops: Ops | None = None) -> torch.Tensor:
        """Logits `[B, classes]` of images `x` `[B, C, H, W]`, equal to the model's own (eval mode)."""
        return self.forward_tokens(self.tokens(x), ops)

    def pooled(self, rows: torch.Tensor) -> torch.Tensor:
        """`[B, N, ...]` per token -> `[B, ...]`: the token rows the head reads, as the pooling combines them — the
        class token's row ("token"; also "distilled", DeiT's class token), or the mean of the patch rows ("avg";
        of all rows when the model pools the prefix tokens too)."""
        if self.pool == "avg":
            return rows[:, 0 if self.pool_prefix else self.prefix :].mean(1)
        return rows[:, 0]

    def patches(self, values: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """`[B, N]` per token -> maps `[B, h, w]` over the patch grid of inputs of `size` `(H, W)` (prefix tokens
        dropped)."""
        h, w = self.grid(size)
        if values.shape[-1] != self.prefix + h * w:
            raise ValueError(
                f"{values.shape[-1]} tokens do not hold {self.prefix} prefix tokens and a {h}x{w} patch grid"
            )
        return values[:, self.prefix :].reshape(values.shape[0], h, w)


def _pre_hooks(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`x` as the model's forward pre-hooks pass it on (salience's `normalise_input`, among others)."""
    for key, hook in model._forward_pre_hooks.items():
        if key in model._forward_pre_hooks_with_kwargs:
            out = hook(model, (x,), {})
            out = out[0] if out is not None else None
        else:
            out = hook(model, (x,))
        if out is not None:
            x = out[0] if isinstance(out, tuple) else out
    return x


def _module_class(name: str, attr: str) -> type | None:
    """A class of an already imported module (the model's library is imported if the model is of it)."""
    return getattr(sys.modules.get(name), attr, None)


def _is(model: nn.Module, name: str, attr: str) -> bool:
    cls = _module_class(name, attr)
    return cls is not None and isinstance(model, cls)


def _unsupported(model: nn.Module, why: str) -> ValueError:
    return ValueError(f"{type(model).__name__}: {why}; the ViT methods support {SUPPORTED}")


def _optional(module: nn.Module) -> nn.Module | None:
    return None if isinstance(module, nn.Identity) else module


def _timm_block(model: nn.Module, blk: Any) -> Block:
    kinds = (type(blk), type(blk.attn), type(blk.mlp))
    expected = (
        _module_class("timm.models.vision_transformer", "Block"),
        _module_class("timm.layers.attention", "Attention"),
        _module_class("timm.layers.mlp", "Mlp"),
    )
    if kinds != expected or getattr(blk.attn, "gate", None) is not None:
        raise _unsupported(model, f"block {type(blk).__name__} (attention {type(blk.attn).__name__}) is not timm's "
                                  f"pre-norm Block with Attention and Mlp")  # fmt: skip
    at, mlp = blk.attn, blk.mlp
    return Block(
        norm1=blk.norm1, qkv=(at.qkv,), proj=at.proj, norm2=blk.norm2, fc1=mlp.fc1, act=mlp.act, fc2=mlp.fc2,
        heads=at.num_heads, scale=float(at.scale), q_norm=_optional(at.q_norm), k_norm=_optional(at.k_norm),
        attn_norm=_optional(at.norm), mlp_norm=_optional(mlp.norm), ls1=_optional(blk.ls1), ls2=_optional(blk.ls2),
    )  # fmt: skip


def _timm(model: Any) -> ViT:
    distilled = _is(model, "timm.models.deit", "VisionTransformerDistilled")
    pool = "distilled" if distilled else model.global_pool
    if getattr(model, "attn_pool", None) is not None or pool not in ("token", "avg", "distilled"):
        raise _unsupported(model, f"global_pool {model.global_pool!r} (supported: 'token', 'avg')")
    blocks = tuple(_timm_block(model, blk) for blk in model.blocks)

    def embed(x: torch.Tensor) -> torch.Tensor:
        return model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))

    def head(t: torch.Tensor, ops: Ops) -> torch.Tensor:
        if distilled:
            return (_linear(t[:, 0], model.head, ops) + _linear(t[:, 1], model.head_dist, ops)) / 2
        pooled = model.pool(t)
        if not isinstance(model.fc_norm, nn.Identity):
            pooled = ops.norm(pooled, model.fc_norm)
        return _linear(pooled, model.head, ops)

    return ViT(
        family="timm", prefix=model.num_prefix_tokens, depth=len(blocks), heads=blocks[0].heads, model=model,
        blocks=blocks, final_norm=model.norm, pool=pool, embed=embed, head=head,
        pool_prefix=bool(getattr(model, "pool_include_prefix", False)),
    )  # fmt: skip


def _torchvision_block(blk: Any) -> Block:
    at: nn.MultiheadAttention = blk.self_attention
    fc1, act, fc2 = blk.mlp[0], blk.mlp[1], blk.mlp[3]
    return Block(
        norm1=blk.ln_1, qkv=(at,), proj=at.out_proj, norm2=blk.ln_2, fc1=fc1, act=act, fc2=fc2,
        heads=at.num_heads, scale=float(at.head_dim) ** -0.5,
    )  # fmt: skip


def _torchvision(model: Any) -> ViT:
    blocks = tuple(_torchvision_block(blk) for blk in model.encoder.layers)

    def embed(x: torch.Tensor) -> torch.Tensor:
        t = model._process_input(x)
        t = torch.cat([model.class_token.expand(t.shape[0], -1, -1), t], dim=1)
        return model.encoder.dropout(t + model.encoder.pos_embedding)

    def head(t: torch.Tensor, ops: Ops) -> torch.Tensor:
        out = t[:, 0]
        for module in model.heads:
            out = _linear(out, module, ops) if isinstance(module, nn.Linear) else ops.act(out, module)
        return out

    return ViT(
        family="torchvision", prefix=1, depth=len(blocks), heads=blocks[0].heads, model=model, blocks=blocks,
        final_norm=model.encoder.ln, pool="token", embed=embed, head=head,
    )  # fmt: skip


def _hf_block(layer: Any) -> Block:
    at = layer.attention
    if hasattr(at, "q_proj"):  # transformers >= 5
        qkv, proj, mlp = (at.q_proj, at.k_proj, at.v_proj), at.o_proj, layer.mlp
        fc1, act, fc2 = mlp.fc1, mlp.activation_fn, mlp.fc2
    else:  # transformers 4: ViTAttention(attention=ViTSelfAttention, output=ViTSelfOutput)
        inner = at.attention
        qkv, proj = (inner.query, inner.key, inner.value), at.output.dense
        fc1, act, fc2 = layer.intermediate.dense, layer.intermediate.intermediate_act_fn, layer.output.dense
    if not isinstance(act, nn.Module):
        raise ValueError(f"Hugging Face ViT layer: activation {act!r} is not a module")
    heads = int(getattr(at, "num_attention_heads", 0) or at.attention.num_attention_heads)
    return Block(
        norm1=layer.layernorm_before, qkv=qkv, proj=proj, norm2=layer.layernorm_after, fc1=fc1, act=act, fc2=fc2,
        heads=heads, scale=(qkv[0].weight.shape[0] // heads) ** -0.5,
    )  # fmt: skip


_HF = {  # class -> (its module, the backbone's attribute, prefix tokens)
    "ViTForImageClassification": ("transformers.models.vit.modeling_vit", "vit", 1),
    "DeiTForImageClassification": ("transformers.models.deit.modeling_deit", "deit", 2),
    "DeiTForImageClassificationWithTeacher": ("transformers.models.deit.modeling_deit", "deit", 2),
}


def _hf(model: Any, backbone: Any, prefix: int) -> ViT:
    layers = backbone.layers if hasattr(backbone, "layers") else backbone.encoder.layer  # transformers 5 | 4
    blocks = tuple(_hf_block(layer) for layer in layers)
    teacher = hasattr(model, "distillation_classifier")

    def embed(x: torch.Tensor) -> torch.Tensor:
        return backbone.embeddings(x.to(backbone.embeddings.patch_embeddings.projection.weight.dtype))

    def head(t: torch.Tensor, ops: Ops) -> torch.Tensor:
        if teacher:  # DeiT with its distillation head: the mean of the two heads
            return (
                _linear(t[:, 0], model.cls_classifier, ops) + _linear(t[:, 1], model.distillation_classifier, ops)
            ) / 2
        return _linear(t[:, 0], model.classifier, ops)

    return ViT(
        family="hf", prefix=prefix, depth=len(blocks), heads=blocks[0].heads, model=model, blocks=blocks,
        final_norm=backbone.layernorm, pool="distilled" if teacher else "token", embed=embed, head=head,
    )  # fmt: skip


def vit(model: nn.Module) -> ViT:
    """The model as a `ViT`; `ValueError` naming the model's class and the supported families otherwise (a CNN,
    Swin's windowed attention, attention pooling, other block types)."""
    if _is(model, "timm.models.vision_transformer", "VisionTransformer"):
        return _timm(model)
    if _is(model, "torchvision.models.vision_transformer", "VisionTransformer"):
        return _torchvision(model)
    for name, (module, backbone, prefix) in _HF.items():
        if _is(model, module, name):
            return _hf(model, getattr(model, backbone), prefix)
    raise _unsupported(model, "not a vision transformer with global self-attention that salience can read")


__all__ = ["Block", "Ops", "SUPPORTED", "ViT", "vit"]
