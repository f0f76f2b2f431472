"""Attention rollout and its gradient-weighted forms on vision transformers (`salience.attribution.vit`), from
the attention probabilities of the explicit forward (so they exist also where the model's attention is fused).

- `attention_rollout` (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers"): per block the heads
  fused (mean / max / min), optionally the lowest entries discarded, the identity added for the residual and the
  rows renormalised, `Â = (Ā + I) / rowsum`; the rollout `Â_L ⋯ Â_1`. Not class-specific.
- `grad_rollout` (jacobgil/vit-explain's `VITAttentionGradRollout`): as rollout, with
  `Ā = ReLU(mean_heads(A ⊙ ∂y_c/∂A))` and 90 % of the entries discarded by default.
- `chefer_grad` (Chefer et al., ICCV 2021, "Generic Attention-model Explainability", rules 5 and 6):
  `R = (I + Ā_L) ⋯ (I + Ā_1)`, `Ā = mean_heads((∂y_c/∂A ⊙ A)⁺)`, no renormalisation.

The map is the row of the rollout that the head reads (`ViT.pooled`: the class token's row; for average-pooled
models the mean of the patch rows), over the patch tokens: `[P, h, w]` on the patch grid. Only that row is
needed, so it is carried from the last block to the first as a vector (`v ← v Â_b`), not as an N×N product.
"""

from __future__ import annotations

import torch
from torch import nn

from salience.attribution.core import check_classes, check_input, expand_targets
from salience.attribution.methods import pairs
from salience.attribution.registry import Method, register
from salience.attribution.vit import Ops, ViT, vit

HEAD_FUSIONS = ("mean", "max", "min")


class AttentionRecorder(Ops):
    """The default operations, recording each block's attention probabilities `[B, heads, N, N]` in
    `attentions` (block order)."""

    def __init__(self) -> None:
        self.attentions: list[torch.Tensor] = []

    def attention(self, i: int, a: torch.Tensor) -> torch.Tensor:
        self.attentions.append(a)
        return a


def fuse_heads(a: torch.Tensor, head_fusion: str) -> torch.Tensor:
    """`[B, heads, N, N]` -> `[B, N, N]`: the mean, max or min over the heads."""
    if head_fusion == "mean":
        return a.mean(1)
    if head_fusion == "max":
        return a.amax(1)
    if head_fusion == "min":
        return a.amin(1)
    raise ValueError(f"head_fusion {head_fusion!r} is unknown; accepted: {', '.join(HEAD_FUSIONS)}")


def discard(a: torch.Tensor, ratio: float, keep_first: bool) -> torch.Tensor:
    """`[B, N, N]` with the `⌊ratio·N²⌋` lowest entries of each image's matrix set to 0 (ties: as `topk` picks);
    `keep_first`: entry (0, 0) is kept even when it is among them (vit-explain's rollout; its gradient rollout
    keeps nothing)."""
    flat = a.flatten(1)
    k = int(flat.shape[1] * ratio)
    if k == 0:
        return a
    drop = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, flat.topk(k, dim=1, largest=False).indices, True)
    if keep_first:
        drop[:, 0] = False
    return flat.masked_fill(drop, 0).view_as(a)


def residual_normalised(a: torch.Tensor) -> torch.Tensor:
    """`[B, N, N]` -> `(a + I) / 2`, each row divided by its sum (Abnar & Zuidema's residual attention)."""
    a = (a + torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)) / 2
    return a / a.sum(-1, keepdim=True)


def read_row(model: ViT, mixes: list[torch.Tensor], residual: bool) -> torch.Tensor:
    """`[B, N]`: the pooled row (`ViT.pooled`) of the product `M_L ⋯ M_1` of the per-block matrices `mixes`
    (`[B, N, N]`, block order), or of `(I + M_L) ⋯ (I + M_1)` when `residual`; carried as a row vector."""
    n = mixes[0].shape[-1]
    eye = torch.eye(n, dtype=mixes[0].dtype, device=mixes[0].device)
    row = model.pooled(eye.expand(mixes[0].shape[0], n, n))
    for m in reversed(mixes):
        step = (row[:, None] @ m)[:, 0]
        row = row + step if residual else step
    return row


def _check_discard(discard_ratio: float) -> None:
    if not 0 <= discard_ratio < 1:
        raise ValueError(f"discard_ratio must be in [0, 1); got {discard_ratio}")


def _attentions(model: ViT, x: torch.Tensor, cls: torch.Tensor) -> list[torch.Tensor]:
    """Each block's attention `[B, heads, N, N]` of images `x`, from one forward without a graph; the classes
    `cls` (of any rows) are checked against the number of logits."""
    recorder = AttentionRecorder()
    with torch.no_grad():
        check_classes(cls, model.forward(x, recorder).shape[1])
    return recorder.attentions


def _attentions_and_gradients(
    model: ViT, x: torch.Tensor, cls: torch.Tensor
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each block's attention `A` `[P, heads, N, N]` of images `x` `[P, C, H, W]` and `∂y/∂A`, y row p's logit of
    class `cls[p]` (one forward and one `autograd.grad` for all rows; the parameters get no gradient); detached."""
    recorder = AttentionRecorder()
    with torch.enable_grad():
        logits = model.forward(x.detach().requires_grad_(), recorder)
        check_classes(cls, logits.shape[1])
        grads = torch.autograd.grad(logits.gather(1, cls[:, None]).sum(), recorder.attentions)
    return [(a.detach(), g) for a, g in zip(recorder.attentions, grads, strict=True)]


def attention_rollout(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    create_graph: bool = False,
) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020): per block the attention fused over heads (`head_fusion`: "mean",
    "max", "min"), the lowest `discard_ratio` of its entries set to 0 (entry (0, 0) kept; 0: none, the paper),
    `Â = (Ā + I) / 2` with rows renormalised to 1; the map is the pooled row of `Â_L ⋯ Â_1` over the patches.
    The same map for every class of an image. One forward per image; not differentiable. `[P, h, w]`, >= 0."""
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"head_fusion {head_fusion!r} is unknown; accepted: {', '.join(HEAD_FUSIONS)}")
    _check_discard(discard_ratio)
    model_vit = vit(model)
    check_input(x)
    image, cls = expand_targets(target, x.shape[0])
    attentions = _attentions(model_vit, x, cls)
    with torch.no_grad():
        mixes = [residual_normalised(discard(fuse_heads(a, head_fusion), discard_ratio, True)) for a in attentions]
        return model_vit.patches(read_row(model_vit, mixes, residual=False), x.shape[-2:])[image.to(x.device)]


def grad_rollout(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    discard_ratio: float = 0.9,
    create_graph: bool = False,
) -> torch.Tensor:
    """Gradient-weighted rollout (vit-explain's `VITAttentionGradRollout`): per block
    `Ā = ReLU(mean_heads(A ⊙ ∂y_c/∂A))`, its lowest `discard_ratio` of entries set to 0, `Â = (Ā + I) / 2` with
    rows renormalised to 1; the map is the pooled row of `Â_L ⋯ Â_1` over the patches. One forward and one
    backward per (image, class) pair; not differentiable. `[P, h, w]`, >= 0."""
    _check_discard(discard_ratio)
    model_vit = vit(model)
    x, cls = pairs(x, target)
    with torch.no_grad():
        mixes = [
            residual_normalised(discard((a * g).mean(1).clamp(min=0), discard_ratio, False))
            for a, g in _attentions_and_gradients(model_vit, x, cls)
        ]
        return model_vit.patches(read_row(model_vit, mixes, residual=False), x.shape[-2:])


def chefer_grad(model: nn.Module, x: torch.Tensor, target: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
    """Chefer et al.'s generic attention rule (ICCV 2021) on a self-attention encoder: `R = I`, per block
    `R ← R + Ā R`, `Ā = mean_heads((∂y_c/∂A ⊙ A)⁺)`; the map is the pooled row of R over the patches. One
    forward and one backward per (image, class) pair; not differentiable. `[P, h, w]`, >= 0."""
    model_vit = vit(model)
    x, cls = pairs(x, target)
    with torch.no_grad():
        mixes = [(g * a).clamp(min=0).mean(1) for a, g in _attentions_and_gradients(model_vit, x, cls)]
        return model_vit.patches(read_row(model_vit, mixes, residual=True), x.shape[-2:])


for _method in (
    Method(
        "attention_rollout",
        "Attention rollout: the attention of each block fused over heads, with the residual, multiplied through "
        "the blocks; the same map for every class",
        run=attention_rollout,
        transformer_only=True,
        differentiable=False,
    ),
    Method(
        "grad_rollout",
        "Gradient-weighted attention rollout (vit-explain): the attention times its gradient, rolled out",
        run=grad_rollout,
        transformer_only=True,
        differentiable=False,
    ),
    Method(
        "chefer_grad",
        "Chefer et al.'s generic attention rule: positive gradient-weighted attention accumulated through the blocks",
        run=chefer_grad,
        transformer_only=True,
        differentiable=False,
    ),
):
    register(_method)

__all__ = [
    "AttentionRecorder",
    "HEAD_FUSIONS",
    "attention_rollout",
    "chefer_grad",
    "discard",
    "fuse_heads",
    "grad_rollout",
    "read_row",
    "residual_normalised",
]
