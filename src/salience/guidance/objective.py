"""The guided objective: task loss + λ · (mean guidance over annotated images).

Reduction: the task loss is the mean over all images of the batch (CE for single-label,
BCE-with-logits averaged over images and classes for multi-label); the guidance term is the
mean of the per-image losses over the *annotated* images only (0 where none is annotated).
The reference code of Rao et al. sums the per-image guidance over the batch instead, so its λ
equals ours divided by the number of annotated images per batch (λ_ours = λ_ref · n_annotated).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def sample_classes(labels: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One class per image drawn uniformly among its true classes.

    labels ``[B, C]`` multi-hot -> long ``[B]``; an image without a true class gets -1.
    """
    if labels.dim() != 2:
        raise ValueError(f"labels must be multi-hot [B, C], got shape {tuple(labels.shape)}")
    positive = labels > 0
    has_any = positive.any(dim=1)
    weights = torch.where(has_any[:, None], positive.float(), torch.ones_like(labels, dtype=torch.float))
    drawn = torch.multinomial(weights.cpu(), 1, generator=generator)[:, 0].to(labels.device)
    return torch.where(has_any, drawn, torch.full_like(drawn, -1))


def task_loss(logits: Tensor, labels: Tensor, multi_label: bool) -> Tensor:
    """Mean CE over images (single-label) or mean BCE-with-logits over images and classes.

    logits ``[B, C]``, labels ``[B, C]`` multi-hot (exactly one 1 per row when single-label).
    """
    if multi_label:
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
    return F.cross_entropy(logits, labels.argmax(dim=1))


def objective(task: Tensor, guidance: Tensor, lam: float, task_weight: float = 1.0) -> Tensor:
    """``task_weight · task + lam · guidance`` (both already reduced to scalars); CYBORG: α and 1 − α."""
    return task_weight * task + lam * guidance
