"""AttnLRP (Achtibat et al., ICML 2024, "AttnLRP: Attention-Aware Layer-Wise Relevance Propagation for
Transformers") on vision transformers, as the `lxt` library (2.x, "efficient") computes it: relevance is
input ⊙ gradient of one backward through an explicit forward (`salience.attribution.vit`) whose operations carry
the LRP rules in their backward:

- softmax: the gradient itself (input ⊙ gradient of the softmax *is* the paper's softmax rule, Prop. 3.1);
- the two products of attention (`q @ kᵀ`, `A @ v`): the uniform rule, half the relevance to each operand;
- LayerNorm: the identity rule on the normalisation (the standard deviation detached), epsilon on the rest;
- GELU (any element-wise activation): the identity rule, the gradient scaled by `f(x) / x`;
- linear layers, residual additions, pooling: the gradient (LRP-0 / epsilon with ε → 0, biases absorb relevance).

`rule="cp"`: CP-LRP inside the attention (Ali et al. 2022; lxt's patch of torchvision's ViT): the attention
probabilities are constants, all of `A @ v`'s relevance goes to `v`. Maps `[P, h, w]` on the patch grid.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from salience.attribution.core import check_classes
from salience.attribution.methods import grad_of_selected, pairs
from salience.attribution.registry import Method, register
from salience.attribution.vit import Ops, ViT, vit
from salience.models.adapt import normalisation_apart

RULES = ("attnlrp", "cp")
PLACES = ("pixels", "tokens")
IDENTITY_EPSILON = 1e-10  # stabiliser of `f(x) / x` in the identity rule (lxt's value)


class _ScaleGradient(torch.autograd.Function):
    """Identity in the forward; the gradient multiplied by `factor` in the backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.factor, None


class _IdentityRule(torch.autograd.Function):
    """`fn(x)` in the forward; the backward passes `grad · fn(x) / x`, so input ⊙ gradient gives the input all of
    the output's relevance (the identity rule, AttnLRP eq. 9). `x` stabilised by ±1e-10 (sign of `x`)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, fn: nn.Module) -> torch.Tensor:
        y = fn(x)
        eps = max(IDENTITY_EPSILON, torch.finfo(x.dtype).tiny)  # 1e-10 unless the dtype cannot hold it (float16)
        ctx.save_for_backward(y / (x + torch.where(x >= 0, eps, -eps)))
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (ratio,) = ctx.saved_tensors
        return grad * ratio, None


class AttnLRPOps(Ops):
    """The explicit ViT forward with AttnLRP's rules in the backward (see the module's docstring); `rule`
    "attnlrp" (relevance through the softmax) or "cp" (CP-LRP: attention probabilities held constant)."""

    def __init__(self, rule: str = "attnlrp") -> None:
        if rule not in RULES:
            raise ValueError(f"rule {rule!r} is unknown; accepted: {', '.join(RULES)}")
        self.rule = rule

    def matmul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """`a @ b`; when both operands carry relevance, half the gradient to each (the uniform rule)."""
        out = a @ b
        return _ScaleGradient.apply(out, 0.5) if a.requires_grad and b.requires_grad else out

    def softmax(self, s: torch.Tensor) -> torch.Tensor:
        """Probabilities over the last axis; detached (constants) under CP-LRP."""
        p = s.softmax(-1)
        return p.detach() if self.rule == "cp" else p

    def norm(self, x: torch.Tensor, module: nn.Module) -> torch.Tensor:
        """LayerNorm over the last axis with its standard deviation detached (the identity rule on `1/σ`)."""
        if isinstance(module, nn.Identity):
            return x
        if not isinstance(module, nn.LayerNorm) or len(module.normalized_shape) != 1:
            raise ValueError(f"attn_lrp: normalisation {type(module).__name__} is not a LayerNorm over the last axis")
        centred = x - x.mean(-1, keepdim=True)
        std = (centred.pow(2).mean(-1, keepdim=True) + module.eps).sqrt()
        y = centred / std.detach()
        if module.weight is not None:
            y = y * module.weight
        return y + module.bias if module.bias is not None else y

    def act(self, x: torch.Tensor, module: nn.Module) -> torch.Tensor:
        """An element-wise activation under the identity rule."""
        return _IdentityRule.apply(x, module)


def _per_patch(relevance: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Pixel relevance `[P, H, W]` summed over each patch -> `[P, h, w]` (pixels past the last whole patch,
    which the patch embedding does not read, carry none)."""
    (h, w), (height, width) = grid, relevance.shape[-2:]
    ph, pw = height // h, width // w
    return relevance[:, : h * ph, : w * pw].reshape(-1, h, ph, w, pw).sum((2, 4))


def _relevance(model: ViT, x: torch.Tensor, cls: torch.Tensor, ops: AttnLRPOps, at: str) -> torch.Tensor:
    """Input ⊙ modified gradient of each row's class `cls` `[P]`: at the network's (normalised) pixels
    `[P, C, H, W]`, or at the tokens entering block 0 `[P, N, D]`; one forward and one backward for all rows."""
    with normalisation_apart(model.model) as normalise, torch.enable_grad():
        pixels = normalise(x.detach()).requires_grad_(at == "pixels")
        tokens = model.tokens(pixels)
        if at == "tokens":
            tokens = tokens.detach().requires_grad_(True)
        logits = model.forward_tokens(tokens, ops)
        check_classes(cls, logits.shape[1])
        wrt = pixels if at == "pixels" else tokens
        grad = grad_of_selected(logits, cls, wrt, create_graph=False)
    return wrt.detach() * grad


def attn_lrp(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    rule: str = "attnlrp",
    at: str = "pixels",
    create_graph: bool = False,
) -> torch.Tensor:
    """AttnLRP relevance of the target logit, `[P, h, w]` on the patch grid (prefix tokens dropped), signed.
    `rule`: "attnlrp" (the paper's rules through the softmax) or "cp" (CP-LRP inside the attention, lxt's
    choice for torchvision's ViT). `at`: "pixels" (the network's input after salience's normalisation: input ⊙
    gradient through the patch embedding, summed over channels and over each patch's pixels, as lxt's ViT
    example reads it) or "tokens" (the tokens entering block 0, summed over the embedding: position embeddings and
    patch-embedding bias keep their share). One forward and one backward for all (image, class) pairs."""
    if rule not in RULES:
        raise ValueError(f"rule {rule!r} is unknown; accepted: {', '.join(RULES)}")
    if at not in PLACES:
        raise ValueError(f"at {at!r} is unknown; accepted: {', '.join(PLACES)}")
    if create_graph:
        raise ValueError("attn_lrp is not differentiable: create_graph=True is not supported")
    transformer = vit(model)
    x, cls = pairs(x, target)
    grid = transformer.grid(x.shape[-2:])
    if x.shape[0] == 0:
        return x.new_zeros(0, *grid)
    relevance = _relevance(transformer, x, cls, AttnLRPOps(rule), at)
    if at == "pixels":
        return _per_patch(relevance.sum(1), grid)
    return transformer.patches(relevance.sum(-1), x.shape[-2:])


register(
    Method(
        "attn_lrp",
        "AttnLRP (Achtibat et al. 2024; as the lxt library): LRP through the softmax, attention products and "
        "LayerNorm of a vision transformer, on the patch grid",
        run=attn_lrp,
        transformer_only=True,
        differentiable=False,
        signed=True,
        extra_forwards="1 explicit forward and 1 backward (the shared pass is not used)",
    )
)

__all__ = ["AttnLRPOps", "RULES", "PLACES", "attn_lrp"]
