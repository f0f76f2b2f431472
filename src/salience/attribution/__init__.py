"""Attribution: batched salience maps `[P, h, w]` for explicit target classes, from a registry of methods.

`attribute(name, model, x, target, layer=None, **options)` runs one method; `attribute_many` runs several,
the gradient methods and CAMs from one forward and one backward; `METHODS` lists every method with what it
can do (`method_options(name)`: the options it takes). The families: gradients and CAMs (`methods`,
`guided`, `cams`), perturbation and noise (`perturbation`), propagation (`lrp`, `deeplift`), Shapley values
and LIME on feature masks (`shapley`, `features`), `partition` SHAP and `rise`. `core`: targets, layers and
`upsample`.
"""

from functools import partial

from salience.attribution.cams import ablation_cam, full_grad
from salience.attribution.core import capture, expand_targets, resolve_layer, upsample
from salience.attribution.deeplift import deep_lift, deep_lift_shap, gradient_shap
from salience.attribution.features import feature_masks
from salience.attribution.guided import deconvolution, guided_backprop, guided_grad_cam
from salience.attribution.lrp import lrp
from salience.attribution.many import Explainer, attribute, attribute_many
from salience.attribution.methods import bcos, integrated_gradients
from salience.attribution.partition import partition_shap
from salience.attribution.perturbation import occlusion, score_cam, smooth_grad, smooth_grad_sq, var_grad
from salience.attribution.registry import METHODS, Method, get_method, method_options, parse_method, token_grid
from salience.attribution.rise import rise
from salience.attribution.shapley import feature_ablation, kernel_shap, lime, shapley_sampling

# isort: split
# the vision-transformer methods register last (registry order is the order `salience methods` lists)
from salience.attribution import rollout as _rollout  # noqa: F401  (registers the rollouts)

# isort: split
from salience.attribution import chefer_lrp as _chefer_lrp  # noqa: F401  (registers chefer_lrp)

# isort: split
from salience.attribution import attn_lrp as _attn_lrp  # noqa: F401  (registers attn_lrp)

gradient = partial(attribute, "gradient")
input_x_gradient = partial(attribute, "input_x_gradient")
grad_cam = partial(attribute, "grad_cam")
cam = partial(attribute, "cam")

__all__ = [
    "METHODS",
    "ablation_cam",
    "attribute",
    "attribute_many",
    "bcos",
    "cam",
    "capture",
    "deconvolution",
    "deep_lift",
    "deep_lift_shap",
    "expand_targets",
    "Explainer",
    "feature_ablation",
    "feature_masks",
    "full_grad",
    "get_method",
    "grad_cam",
    "gradient",
    "gradient_shap",
    "guided_backprop",
    "guided_grad_cam",
    "input_x_gradient",
    "integrated_gradients",
    "kernel_shap",
    "lime",
    "lrp",
    "Method",
    "method_options",
    "occlusion",
    "parse_method",
    "partition_shap",
    "resolve_layer",
    "rise",
    "score_cam",
    "shapley_sampling",
    "smooth_grad",
    "smooth_grad_sq",
    "token_grid",
    "upsample",
    "var_grad",
]
