"""Attribution: batched, differentiable salience maps `[P, h, w]` for explicit target classes.

See `methods` for the definitions and `core` for targets, layers and `upsample`.
"""

from salience.attribution.core import capture, expand_targets, resolve_layer, upsample
from salience.attribution.many import attribute_many
from salience.attribution.methods import (
    METHODS,
    attribute,
    bcos,
    cam,
    grad_cam,
    gradient,
    input_x_gradient,
    integrated_gradients,
)

__all__ = [
    "METHODS",
    "attribute",
    "attribute_many",
    "bcos",
    "cam",
    "capture",
    "expand_targets",
    "grad_cam",
    "gradient",
    "input_x_gradient",
    "integrated_gradients",
    "resolve_layer",
    "upsample",
]
