"""Training with explanations: per-image guidance losses and the guided objective."""

from salience.guidance.losses import LOSSES, cyborg, energy, l1, minmax, ppce, rrr
from salience.guidance.objective import objective, sample_classes, task_loss
from salience.guidance.step import METHODS, Guide

__all__ = [
    "METHODS",
    "Guide",
    "LOSSES",
    "cyborg",
    "energy",
    "l1",
    "minmax",
    "objective",
    "ppce",
    "rrr",
    "sample_classes",
    "task_loss",
]
