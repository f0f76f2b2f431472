"""Chefer et al.'s relevance for vision transformers (CVPR 2021, "Transformer Interpretability Beyond Attention
Visualization"; `hila-chefer/Transformer-Explainability`, `generate_LRP(method="transformer_attribution")`).

Per block b, `Ā_b = mean_heads((∇A_b ⊙ R_A_b)⁺)`: `∇A_b` the gradient of the target logit w.r.t. the attention
probabilities, `R_A_b` their LRP relevance, propagated from the one-hot target (relevance 1 at the logit). Then
the rollout `C = (Ā_L + I) ⋯ (Ā_s + I)` from block `start_layer` = s, with the identity added and no
renormalisation, as their code; the map is the row of the token(s) the head reads, over the patch tokens.

The relevance runs on the explicit forward of `salience.attribution.vit` with `LRPOps`: each operation is an
autograd function whose backward carries its rule as a modified gradient `g` with `R = value ⊙ g` (so the
model's reshapes, scales and poolings between them hand relevance on by the z-rule, as theirs do). Their rules:
linear layers alpha 1 / beta 0 on signed inputs without the bias; the two attention products by the z-rule on
both factors, each half kept; residual additions by the z-rule, the two shares rescaled to `|ΣR_a| : |ΣR_b|`
of `ΣR` (sums per (image, class) row: their code sums over the batch of one); LayerNorm, GELU and softmax
hand the relevance on unchanged. `safe_divide` is theirs: `a / (b + 1e-9)`, 0 where `b = 0`.
"""

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from salience.attribution.core import check_classes, check_input, expand_targets
from salience.attribution.registry import Method, register
from salience.attribution.vit import Ops, ViT, vit

EPS = 1e-9  # their `safe_divide` stabiliser, added whatever the sign


def safe_divide(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`a / (b + 1e-9)`, 0 where `b == 0` (Chefer et al.'s `safe_divide`)."""
    den = b.clamp(min=EPS) + b.clamp(max=EPS)
    den = den + den.eq(0).to(den.dtype) * EPS
    return a / den * b.ne(0).to(b.dtype)


def _exact_divide(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`a / b`, 0 where `b == 0`: the gradient that hands relevance `a` on unchanged to a value `b`."""
    nonzero = b.ne(0)
    return torch.where(nonzero, a / torch.where(nonzero, b, torch.ones_like(b)), torch.zeros_like(a))


def _row_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over all axes but the first, kept for broadcasting: `[P, ...]` -> `[P, 1, ...]`."""
    return t.sum(dim=tuple(range(1, t.dim())), keepdim=True)


class _Linear(torch.autograd.Function):
    """`x Wᵀ + b`; backward: alpha 1 / beta 0 on signed inputs, the bias left out:
    `R_in = x⁺ ⊙ (S W⁺) + x⁻ ⊙ (S W⁻)`, `S = R / (x⁺W⁺ᵀ + x⁻W⁻ᵀ)`, returned as `g = R_in / x`."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        out = F.linear(x, weight, bias)
        ctx.save_for_backward(x, weight, out)
        return out

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        x, weight, out = ctx.saved_tensors
        pw, nw = weight.clamp(min=0), weight.clamp(max=0)
        s = safe_divide(out * g, F.linear(x.clamp(min=0), pw) + F.linear(x.clamp(max=0), nw))
        return torch.where(x > 0, s @ pw, torch.where(x < 0, s @ nw, torch.zeros_like(x))), None, None


class _Product(torch.autograd.Function):
    """`a @ b`; backward: the z-rule on both factors, halved: `R_a = a ⊙ (S bᵀ) / 2`, `R_b = b ⊙ (aᵀ S) / 2`,
    `S = R / (a b)`."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        out = a @ b
        ctx.save_for_backward(a, b, out)
        return out

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b, out = ctx.saved_tensors
        s = safe_divide(out * g, out)
        return (s @ b.transpose(-1, -2)) / 2, (a.transpose(-1, -2) @ s) / 2


class _Residual(torch.autograd.Function):
    """`a + b` (a: the residual stream, b: the branch); backward: z-rule shares `a ⊙ S`, `b ⊙ S`,
    `S = R / (a + b)`, each rescaled per row so that their sums split `ΣR` as `|Σ a⊙S| : |Σ b⊙S|`. The residual's
    gradient is `safe_divide(R_a, a)`, so that with the norm's it hands on their `Clone` rule."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(a, b)
        return a + b

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = ctx.saved_tensors
        z = a + b
        r = z * g
        s = safe_divide(r, z)
        ra, rb = a * s, b * s
        a_sum, b_sum, total = _row_sum(ra), _row_sum(rb), _row_sum(r)
        both = a_sum.abs() + b_sum.abs()
        fa = safe_divide(safe_divide(a_sum.abs(), both) * total, a_sum)
        fb = safe_divide(safe_divide(b_sum.abs(), both) * total, b_sum)
        return safe_divide(ra * fa, a), s * fb


class _Unchanged(torch.autograd.Function):
    """`module(x)` (or the softmax); backward hands the relevance on unchanged: `R_in = R`, as `g = R / x`
    (`clone`: `safe_divide(R, x)`, the norms on the residual stream, their `Clone` rule)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, fn: Any, clone: bool) -> torch.Tensor:
        out = fn(x)
        ctx.save_for_backward(x, out)
        ctx.clone = clone
        return out

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        x, out = ctx.saved_tensors
        r = out * g
        return (safe_divide(r, x) if ctx.clone else _exact_divide(r, x)), None, None


class Recorder(Ops):
    """The plain forward; keeps each block's attention probabilities `[P, heads, N, N]` in `attns`."""

    def __init__(self) -> None:
        self.attns: list[torch.Tensor] = []

    def attention(self, i: int, a: torch.Tensor) -> torch.Tensor:
        self.attns.append(a)
        return a


class LRPOps(Recorder):
    """The explicit forward with Chefer et al.'s LRP rules in the backward (see the module docstring)."""

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return _Linear.apply(x, weight, bias)

    def matmul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return _Product.apply(a, b)

    def softmax(self, s: torch.Tensor) -> torch.Tensor:
        return _Unchanged.apply(s, lambda t: t.softmax(-1), False)

    def norm(self, x: torch.Tensor, module: nn.Module) -> torch.Tensor:
        return _Unchanged.apply(x, module, True)

    def act(self, x: torch.Tensor, module: nn.Module) -> torch.Tensor:
        return _Unchanged.apply(x, module, False)

    def add(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return _Residual.apply(a, b)


def attention_relevance(model_vit: ViT, x: torch.Tensor, image: torch.Tensor, cls: torch.Tensor) -> list[torch.Tensor]:
    """Per block `mean_heads((∇A ⊙ R_A)⁺)` `[P, N, N]`, one row per (image, class) pair (`image`, `cls` `[P]`):
    one plain forward and backward of the pairs' target logits (`∇A`), one forward and backward with `LRPOps`
    from relevance 1 at each pair's target logit (`R_A`). The embedding runs once per image."""
    with torch.enable_grad():
        tokens = model_vit.tokens(x.detach())[image].detach().requires_grad_(True)
        plain = Recorder()
        logits = model_vit.forward_tokens(tokens, plain)
        check_classes(cls, logits.shape[1])
        rows = torch.arange(cls.shape[0], device=x.device)
        grads = torch.autograd.grad(logits[rows, cls].sum(), plain.attns)
        lrp = LRPOps()
        out = model_vit.forward_tokens(tokens, lrp)
        seed = torch.zeros_like(out)
        seed[rows, cls] = _exact_divide(torch.ones_like(seed[rows, cls]), out.detach()[rows, cls])
        rel = torch.autograd.grad(out, lrp.attns, seed)
    return [(g * a.detach() * r).clamp(min=0).mean(1) for g, a, r in zip(grads, lrp.attns, rel, strict=True)]


def rollout(terms: list[torch.Tensor], start_layer: int = 0) -> torch.Tensor:
    """`(T_L + I) ⋯ (T_s + I)` for per-block matrices `T_b` `[P, N, N]`, s = `start_layer` (no renormalisation)."""
    eye = torch.eye(terms[0].shape[-1], dtype=terms[0].dtype, device=terms[0].device)
    joint = terms[start_layer] + eye
    for term in terms[start_layer + 1 :]:
        joint = (term + eye) @ joint
    return joint


def chefer_lrp(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, *, start_layer: int = 0, create_graph: bool = False
) -> torch.Tensor:
    """Chefer et al.'s relevance (CVPR 2021) of a vision transformer (`salience.attribution.vit`): the rollout
    of `mean_heads((∇A ⊙ R_A)⁺)` from block `start_layer`, read at the row of the token the head reads (class
    token; the mean of the patch rows for average pooling), over the patch tokens. Maps `[P, h, w]` on the patch
    grid, >= 0; two forwards and two backwards of the P (image, class) pairs. Not differentiable."""
    if create_graph:
        raise ValueError("chefer_lrp is not differentiable: create_graph=True is not supported")
    check_input(x)
    model_vit = vit(model)
    if not 0 <= start_layer < model_vit.depth:
        raise ValueError(f"start_layer must be in [0, {model_vit.depth}) for this {model_vit.depth}-block model; "
                         f"got {start_layer}")  # fmt: skip
    image, cls = (t.to(x.device) for t in expand_targets(target, x.shape[0]))
    if image.shape[0] == 0:
        h, w = model_vit.grid(x.shape[-2:])
        return x.new_zeros(0, h, w)
    joint = rollout(attention_relevance(model_vit, x, image, cls), start_layer)
    return model_vit.patches(model_vit.pooled(joint), x.shape[-2:]).detach()


register(
    Method(
        "chefer_lrp",
        "Chefer et al. 2021: rollout of gradient-weighted LRP relevance of the attention (vision transformers)",
        run=chefer_lrp,
        transformer_only=True,
        differentiable=False,
        extra_forwards="1 (the LRP forward; a plain and an LRP backward)",
    )
)

__all__ = ["LRPOps", "Recorder", "attention_relevance", "chefer_lrp", "rollout", "safe_divide"]
