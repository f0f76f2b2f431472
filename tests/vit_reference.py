"""Transcriptions, written here, of the reference computations of the attention rollouts (tests only).

- `jacobgil/vit-explain` (commit 15a81d3): `vit_rollout.rollout` and `vit_grad_rollout.grad_rollout`, the
  functions behind `VITAttentionRollout` and `VITAttentionGradRollout`;
- `hila-chefer/Transformer-MM-Explainability` (commit 58eaea8), `Transformer_MM_explainability_ViT.ipynb`:
  `avg_heads`, `apply_self_attention_rules` and the loop of `generate_relevance`.

Each takes one image's per-block attention `[heads, N, N]` (and gradients), carries the full N×N matrix
through the blocks as the references do, and returns it `[N, N]`: the references read its class token's row
over the patch tokens, `[0, 1:]`, and scale it for display. The references' departures from the papers are
options, off by default: `their_division=True` divides by `a.sum(-1)` without keepdim, as vit-explain does
(for one image: each column j divided by the sum of row j); `their_gradient_order=True` pairs block b's
attention with the gradient of block L - 1 - b, as `VITAttentionGradRollout` does (its backward hooks append
the gradients last block first).
The gradients are taken as given: `VITAttentionGradRollout`'s (non-full) backward hook on timm's `attn_drop`,
an identity in eval mode, sits on the softmax's autograd node and receives the gradient w.r.t. the attention
*scores* before the softmax; pass those to reproduce it. vit-explain discards only for the first image of a
batch; one image at a time, that departure does not show.
"""

from __future__ import annotations

import torch


def _fuse(attention: torch.Tensor, head_fusion: str) -> torch.Tensor:
    if head_fusion == "mean":
        return attention.mean(0)
    if head_fusion == "max":
        return attention.max(0).values
    return attention.min(0).values


def _zero_lowest(fused: torch.Tensor, ratio: float, spare_first: bool) -> torch.Tensor:
    """The `int(N² ratio)` lowest entries set to 0; with `spare_first`, the flat index 0 is spared."""
    out = fused.clone().reshape(-1)
    lowest = torch.topk(out, int(out.numel() * ratio), largest=False).indices
    if spare_first:
        lowest = lowest[lowest != 0]
    out[lowest] = 0
    return out.reshape(fused.shape)


def _step(fused: torch.Tensor, their_division: bool) -> torch.Tensor:
    eye = torch.eye(fused.shape[-1], dtype=fused.dtype)
    a = (fused + eye) / 2
    if their_division:
        return a / a.sum(-1)[None, :]  # a [N, N] over a [1, N] sum: column j over the sum of row j
    return a / a.sum(-1)[:, None]


def rollout_reference(
    attentions: list[torch.Tensor], discard_ratio: float, head_fusion: str, their_division: bool = False
) -> torch.Tensor:
    """vit-explain's attention rollout of one image: attentions `[heads, N, N]` per block -> `[N, N]`."""
    result = torch.eye(attentions[0].shape[-1], dtype=attentions[0].dtype)
    for attention in attentions:
        fused = _zero_lowest(_fuse(attention, head_fusion), discard_ratio, spare_first=True)
        result = _step(fused, their_division) @ result
    return result


def grad_rollout_reference(
    attentions: list[torch.Tensor],
    gradients: list[torch.Tensor],
    discard_ratio: float,
    their_division: bool = False,
    their_gradient_order: bool = False,
) -> torch.Tensor:
    """vit-explain's gradient rollout of one image: attentions and their gradients `[heads, N, N]` per block (in
    block order) -> `[N, N]`."""
    if their_gradient_order:
        gradients = gradients[::-1]
    result = torch.eye(attentions[0].shape[-1], dtype=attentions[0].dtype)
    for attention, gradient in zip(attentions, gradients, strict=True):
        fused = (attention * gradient).mean(0)
        fused = torch.where(fused < 0, torch.zeros_like(fused), fused)
        fused = _zero_lowest(fused, discard_ratio, spare_first=False)
        result = _step(fused, their_division) @ result
    return result


def chefer_grad_reference(attentions: list[torch.Tensor], gradients: list[torch.Tensor]) -> torch.Tensor:
    """Chefer et al.'s generic rule on one image: `R = I`, per block `R += mean_heads((grad ⊙ A)⁺) @ R` -> `R`
    `[N, N]`."""
    relevance = torch.eye(attentions[0].shape[-1], dtype=attentions[0].dtype)
    for attention, gradient in zip(attentions, gradients, strict=True):
        cam = (gradient * attention).clamp(min=0).mean(0)
        relevance = relevance + cam @ relevance
    return relevance
