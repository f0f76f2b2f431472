"""Training with explanations: per-image guidance losses and the guided objective."""

from salience.guidance.losses import LOSSES, cyborg, energy, l1, minmax, ppce, rrr
from salience.guidance.objective import dilate_boxes, objective, reduce_guidance, sample_classes, task_loss

__all__ = [
    "LOSSES",
    "cyborg",
    "dilate_boxes",
    "energy",
    "l1",
    "minmax",
    "objective",
    "ppce",
    "reduce_guidance",
    "rrr",
    "sample_classes",
    "task_loss",
]
