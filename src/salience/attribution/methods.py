"""The attribution methods and their registry entries. Each map is raw `[P, h, w]`, at the resolution
of the layer it is taken at (input methods: the input's), unnormalised.

`target` is a long `[B]` (one class per image, P = B) or a multi-hot `[B, C]` (one map per (image,
class) pair, P = number of ones, in row-major order; see `expand_targets`). The explained score is the
selected logit `y_c`. Shared methods (`Method.from_pass`) read a feature tensor F (the input or a layer's
output) and `∂y/∂F` from one forward and one `torch.autograd.grad` of the sum of the selected logits;
the others run their own passes. With `create_graph=True` differentiable maps keep their graph, so a loss
on them reaches the parameters (double backward); otherwise maps are detached. Methods leave the model's
train/eval mode alone: explain in eval mode, guide in train mode. Definitions: docs/definitions.md.
"""

import torch
from torch import nn

from salience.attribution.core import check_input, expand_targets, forward_at, selected_logit_sum
from salience.attribution.registry import Method, Pass, register
from salience.models.bcos import BcosResNet, encode


def pairs(x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs `[P, C, H, W]` and classes `[P]`, one row per (image, class) pair."""
    check_input(x)
    image, cls = expand_targets(target, x.shape[0])
    image, cls = image.to(x.device), cls.to(x.device)
    if image.shape[0] != x.shape[0] or not torch.equal(image, torch.arange(x.shape[0], device=x.device)):
        x = x[image]
    return x, cls


def grad_of_selected(logits: torch.Tensor, cls: torch.Tensor, wrt: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """`∂(Σ_p y_{c_p})/∂wrt`: every pair's gradient from one `autograd.grad`."""
    selected = selected_logit_sum(logits, torch.arange(cls.shape[0], device=cls.device), cls)
    (grad,) = torch.autograd.grad(selected, wrt, create_graph=create_graph)
    return grad


def detach_unless(maps: torch.Tensor, create_graph: bool) -> torch.Tensor:
    return maps if create_graph else maps.detach()


def _safe_divide(num: torch.Tensor, den: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """`num / den` where `where`, else 0, with finite gradients everywhere (no 0/0 in the graph)."""
    return torch.where(where, num / torch.where(where, den, torch.ones_like(den)), torch.zeros_like(num))


def _weighted_cam(weights: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
    """`ReLU(Σ_k w_k A_k)`: channel weights `[P, K]` and activations `[P, K, h, w]` -> `[P, h, w]`."""
    return torch.relu(torch.einsum("pk,pkhw->phw", weights, acts))


def gradient_map(p: Pass) -> torch.Tensor:
    """Saliency (Simonyan et al. 2014): `max_ch |∂y_c/∂x|`, `[P, C, H, W]` -> `[P, H, W]`, >= 0."""
    return p.acts_and_grad()[1].abs().amax(1)


def ixg_map(p: Pass) -> torch.Tensor:
    """Input x gradient (Shrikumar et al. 2016): `Σ_ch F ⊙ ∂y_c/∂F`, F = the input or a layer. Signed."""
    feats, grad = p.acts_and_grad()
    return (feats * grad).sum(1)


def grad_cam_map(p: Pass) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al. 2017): `ReLU(Σ_k mean_hw(∂y_c/∂A_k) · A_k)`."""
    acts, grad = p.acts_and_grad()
    return _weighted_cam(grad.mean(dim=(2, 3)), acts)


def grad_cam_pp_map(p: Pass) -> torch.Tensor:
    """Grad-CAM++ (Chattopadhay et al. 2018): `ReLU(Σ_k w_k A_k)`, `w_k = Σ_ij α_kij ReLU(g_kij)`,
    `α_kij = g²_kij / (2 g²_kij + (Σ_ab A_kab) g³_kij)` where `g_kij ≠ 0` (else 0), g = ∂y_c/∂A."""
    acts, grad = p.acts_and_grad()
    g2 = grad.pow(2)
    denom = 2 * g2 + acts.sum(dim=(2, 3), keepdim=True) * g2 * grad
    alpha = _safe_divide(g2, denom, (grad != 0) & (denom != 0))
    return _weighted_cam((alpha * torch.relu(grad)).sum(dim=(2, 3)), acts)


def xgrad_cam_map(p: Pass) -> torch.Tensor:
    """XGrad-CAM (Fu et al. 2020): `ReLU(Σ_k w_k A_k)`, `w_k = Σ_ij A_kij g_kij / Σ_ij A_kij` (0 when the sum is 0)."""
    acts, grad = p.acts_and_grad()
    total = acts.sum(dim=(2, 3))
    return _weighted_cam(_safe_divide((acts * grad).sum(dim=(2, 3)), total, total != 0), acts)


def layer_cam_map(p: Pass) -> torch.Tensor:
    """Layer-CAM (Jiang et al. 2021): `ReLU(Σ_k ReLU(∂y_c/∂A_k) ⊙ A_k)`, per-location weights."""
    acts, grad = p.acts_and_grad()
    return torch.relu((torch.relu(grad) * acts).sum(1))


def hires_cam_map(p: Pass) -> torch.Tensor:
    """HiResCAM (Draelos & Carin 2020): `ReLU(Σ_k ∂y_c/∂A_k ⊙ A_k)`, i.e. layer IxG, positive part."""
    acts, grad = p.acts_and_grad()
    return torch.relu((grad * acts).sum(1))


def eigen_cam_map(p: Pass) -> torch.Tensor:
    """Eigen-CAM (Muhammad & Yeasin 2020): the layer's activations, each location a K-vector, centred over
    locations and projected on their first right-singular vector; the sign is chosen so that the largest
    magnitude is positive (|max| >= |min|), then ReLU. Class-agnostic: the target is not used."""
    acts = p.acts()
    flat = acts.flatten(2).transpose(1, 2)  # [P, hw, K]
    flat = flat - flat.mean(dim=1, keepdim=True)
    first = torch.linalg.svd(flat, full_matrices=False).Vh[:, 0, :]  # [P, K]
    proj = torch.einsum("pnk,pk->pn", flat, first)
    flip = proj.amin(1).abs() > proj.amax(1).abs()
    proj = torch.where(flip[:, None], -proj, proj)
    return torch.relu(proj).reshape(acts.shape[0], *acts.shape[2:])


def eigen_grad_cam_map(p: Pass) -> torch.Tensor:
    """Eigen-Grad-CAM (pytorch-grad-cam): `eigen_cam_map` of `∂y_c/∂A ⊙ A` instead of `A`: centred over
    locations, projected on the first right-singular vector, sign with |max| >= |min|, ReLU."""
    acts, grad = p.acts_and_grad()
    return eigen_cam_map(Pass(acts * grad, None, p.classes, p.model))


def grad_cam_elementwise_map(p: Pass) -> torch.Tensor:
    """Grad-CAM element-wise (pytorch-grad-cam's GradCAMElementWise): `Σ_k ReLU(∂y_c/∂A_k ⊙ A_k)`."""
    acts, grad = p.acts_and_grad()
    return torch.relu(grad * acts).sum(1)


def cam_weights(model: nn.Module, acts: torch.Tensor | None = None) -> torch.Tensor:
    """The class weights `[C, K]` of the model's linear head (`fc` or `classifier`, a plain `nn.Linear` after
    global average pooling); with `acts` `[P, K, h, w]` also checks that K matches. ValueError when CAM does
    not apply."""
    head = next(
        (h for h in (getattr(model, "fc", None), getattr(model, "classifier", None)) if type(h) is nn.Linear), None
    )
    if head is None:
        raise ValueError(
            f"cam needs a model whose classifier `fc` or `classifier` is a plain nn.Linear after global "
            f"average pooling (ResNet, DenseNet, X-ResNet, SmallCNN); {type(model).__name__} has none"
        )
    if acts is not None and (acts.dim() != 4 or acts.shape[1] != head.in_features):
        raise ValueError(
            f"cam: the layer gives {tuple(acts.shape)}, but the head takes {head.in_features} channels; pick a "
            f"layer whose output has as many channels as the head has inputs (the default: final)"
        )
    return head.weight


def cam_map(p: Pass) -> torch.Tensor:
    """CAM (Zhou et al. 2016): `Σ_k w_ck A_k`, A the `final` depth's output (or another layer with as many
    channels as the head has inputs, as CYBORG's tap), `w_c` the row of the linear head (no bias, no ReLU).
    For the log-probability (`p.probs`): `w_c − Σ_j p_j w_j`. Signed."""
    acts = p.acts()
    weights = cam_weights(p.model, acts)
    class_weights = weights[p.classes]
    if p.probs is not None:
        class_weights = class_weights - p.probs.to(weights.dtype) @ weights
    return torch.einsum("pk,pkhw->phw", class_weights.to(acts.dtype), acts)


def integrated_gradients(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    steps: int = 32,
    baseline: torch.Tensor | None = None,
    internal_batch_size: int | None = None,
    create_graph: bool = False,
) -> torch.Tensor:
    """Integrated gradients (Sundararajan et al. 2017):
    `Σ_channels (x − x0) ⊙ mean_k ∂y_c/∂x(x0 + α_k (x − x0))`, α_k = (k + ½)/steps (midpoint rule).

    All `steps × P` path points run as one batch, or in chunks of `internal_batch_size`.
    `baseline`: broadcastable to `x`; zeros by default. `[P, H, W]`, signed.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps}")
    x, cls = pairs(x, target)
    x0 = (
        torch.zeros_like(x)
        if baseline is None
        else torch.as_tensor(baseline, dtype=x.dtype, device=x.device).expand_as(x)
    )
    delta = x - x0
    n_pairs = x.shape[0]
    total = steps * n_pairs
    chunk = internal_batch_size or total
    alphas = (torch.arange(steps, dtype=x.dtype, device=x.device) + 0.5) / steps
    grad_sum = torch.zeros_like(x)
    with torch.enable_grad():
        for start in range(0, total, chunk):
            idx = torch.arange(start, min(start + chunk, total), device=x.device)
            k, p = idx // n_pairs, idx % n_pairs
            points = (x0[p] + alphas[k, None, None, None] * delta[p]).detach().requires_grad_(True)
            g = grad_of_selected(model(points), cls[p], points, create_graph)
            grad_sum = grad_sum.index_add(0, p, g)
    return detach_unless((delta * grad_sum / steps).sum(1), create_graph)


def bcos(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, layer: str | None = None, create_graph: bool = False
) -> torch.Tensor:
    """B-cos contributions (Böhle et al. 2022) `Σ_channels F ⊙ ∂y_c/∂F` in explanation mode (W(x) held
    constant). F = the encoded 6-channel input (`layer=None`), so the map sums to the logit minus the logit
    bias, or a layer's output. `[P, h, w]`, signed.
    """
    if not isinstance(model, BcosResNet):
        raise ValueError(f"bcos attributions need a B-cos network (bcos_resnet18/34/50); got {type(model).__name__}")
    x, cls = pairs(x, target)
    if x.shape[1] == 3:
        x = encode(x)
    with torch.enable_grad(), model.explanation_mode():
        logits, feats = forward_at(model, x.detach(), layer, create_graph)
        g = grad_of_selected(logits, cls, feats, create_graph)
    return detach_unless(ixg_map(Pass(feats, g, cls, model)), create_graph)


for _name, _map, _summary, _extra in [
    ("gradient", gradient_map, "Saliency: max over channels of |∂y_c/∂x|", {}),
    ("input_x_gradient", ixg_map, "Input × gradient, at the input or a layer", {"takes_layer": True, "signed": True}),
    ("grad_cam", grad_cam_map, "Grad-CAM: channels weighted by their mean gradient", {}),
    ("grad_cam_pp", grad_cam_pp_map, "Grad-CAM++: channels weighted by α-weighted positive gradients", {}),
    ("xgrad_cam", xgrad_cam_map, "XGrad-CAM: channels weighted by activation-normalised gradients", {}),
    ("layer_cam", layer_cam_map, "Layer-CAM: activations weighted by their positive gradients, per location", {}),
    ("hires_cam", hires_cam_map, "HiResCAM: positive part of Σ_k gradient ⊙ activation", {}),
    ("eigen_cam", eigen_cam_map, "Eigen-CAM: first principal component of the activations (class-agnostic)",
     {"needs_grad": False, "differentiable": False}),
    ("cam", cam_map, "CAM: the classifier row applied to the final features",
     {"needs_grad": False, "linear_head": True, "signed": True}),
]:  # fmt: skip
    _caps = (
        {"layer": "final", "takes_layer": True} | _extra if _name not in ("gradient", "input_x_gradient") else _extra
    )
    register(Method(_name, _summary, from_pass=_map, **_caps))

register(
    Method(
        "eigen_grad_cam",
        "Eigen-Grad-CAM: first principal component of gradient ⊙ activations",
        from_pass=eigen_grad_cam_map,
        layer="final",
        takes_layer=True,
        differentiable=False,
    )
)
register(
    Method(
        "grad_cam_elementwise",
        "Grad-CAM element-wise: Σ_k ReLU(gradient ⊙ activation)",
        from_pass=grad_cam_elementwise_map,
        layer="final",
        takes_layer=True,
    )
)
register(
    Method(
        "integrated_gradients",
        "Integrated gradients: input × mean gradient along the path from a baseline",
        run=integrated_gradients,
        signed=True,
        extra_forwards="steps per image (default 32), backward included",
    )
)
register(
    Method("bcos", "B-cos contributions in explanation mode", run=bcos, takes_layer=True, bcos_only=True, signed=True)
)

__all__ = ["bcos", "cam_weights", "integrated_gradients", "pairs"]
