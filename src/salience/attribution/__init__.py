"""Attribution: batched salience maps `[P, h, w]` for explicit target classes, from a registry of methods.

`attribute(name, model, x, target, layer=None, ...)` runs one method; `attribute_many` runs several from
one forward and one backward; `METHODS` lists every method with what it can do. See `methods` for the
definitions and `core` for targets, layers and `upsample`.
"""

from functools import partial

from salience.attribution.core import capture, expand_targets, resolve_layer, upsample
from salience.attribution.guided import guided_backprop, guided_grad_cam
from salience.attribution.many import Explainer, attribute, attribute_many
from salience.attribution.methods import bcos, integrated_gradients
from salience.attribution.perturbation import occlusion, score_cam, smooth_grad, var_grad
from salience.attribution.registry import METHODS, Method, get_method, parse_method, token_grid

gradient = partial(attribute, "gradient")
input_x_gradient = partial(attribute, "input_x_gradient")
grad_cam = partial(attribute, "grad_cam")
cam = partial(attribute, "cam")

__all__ = [
    "METHODS",
    "Explainer",
    "Method",
    "attribute",
    "attribute_many",
    "bcos",
    "cam",
    "capture",
    "expand_targets",
    "get_method",
    "grad_cam",
    "gradient",
    "guided_backprop",
    "guided_grad_cam",
    "input_x_gradient",
    "integrated_gradients",
    "occlusion",
    "parse_method",
    "resolve_layer",
    "score_cam",
    "smooth_grad",
    "token_grid",
    "upsample",
    "var_grad",
]
