"""DeepLift (rescale rule), DeepLiftShap and GradientShap. Maps `[P, H, W]` at the input's resolution, signed:
the attributions `[P, C, H, W]` summed over channels.

DeepLift runs the pairs' inputs and their references as one batch `[x; x0]` (2P rows) and replaces the
backward of every ReLU, ELU, LeakyReLU, Sigmoid, Tanh, Softplus, Softmax and 2-d max pool (modules and functional
calls alike, each call on its own) by the rescale rule, as Captum's DeepLift does for the modules it hooks.
"""

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair
from torch.overrides import TorchFunctionMode

from salience.attribution.core import check_input, expand_targets, selected_logit_sum
from salience.attribution.methods import grad_of_selected
from salience.attribution.registry import Method, register

EPS = 1e-10
"""Where `|Δin| < EPS` the ordinary gradient is kept (Captum's `eps`)."""


def _both(t: torch.Tensor) -> torch.Tensor:
    return torch.cat([t, t])


class _RescaleElementwise(torch.autograd.Function):
    """`fn(a)` for an element-wise `fn`, whose backward multiplies by `Δout/Δin` (the same for row i and its
    reference row n + i), or by the ordinary derivative where `|Δin| < EPS`."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, n: int, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        out = fn(a)
        ctx.save_for_backward(a, out)
        ctx.n, ctx.fn = n, fn
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        a, out = ctx.saved_tensors
        n = ctx.n
        d_in = a[:n] - a[n:]
        small = d_in.abs() < EPS
        new = grad * _both((out[:n] - out[n:]) / torch.where(small, 1.0, d_in))
        if small.any():
            with torch.enable_grad():
                leaf = a.detach().requires_grad_(True)
                (plain,) = torch.autograd.grad(ctx.fn(leaf), leaf, grad)
            new = torch.where(_both(small), plain, new)
        return new, None, None


class _RescaleMaxPool(torch.autograd.Function):
    """2-d max pool with Captum's DeepLift backward: `Δout` taken against the cross maximum of a row's and its
    reference's outputs, sent back to each side's argmax (summed over overlapping windows) and divided by `Δin`;
    the ordinary gradient where `|Δin| < EPS`."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, n: int, pool: tuple) -> torch.Tensor:
        out, idx = F.max_pool2d(a, *pool, return_indices=True)
        ctx.save_for_backward(a, out, idx)
        ctx.n, ctx.pool = n, pool
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        a, out, idx = ctx.saved_tensors
        n, (kernel, stride, padding, dilation, ceil_mode) = ctx.n, ctx.pool
        spread = lambda g: torch.ops.aten.max_pool2d_with_indices_backward(
            g, a, kernel, stride, padding, dilation, ceil_mode, idx
        )
        top = torch.maximum(out[:n], out[n:])
        moved = spread(grad * torch.cat([top - out[n:], out[:n] - top]))
        d_in = _both(a[:n] - a[n:])
        return torch.where(d_in.abs() < EPS, spread(grad), _both(moved[:n] + moved[n:]) / d_in), None, None


class _RescaleSoftmax(torch.autograd.Function):
    """Softmax along `dim` with Captum's DeepLift backward: the rescale rule (ordinary gradient where
    `|Δin| < EPS`), minus its mean over a pair's two rows (Captum: over the whole batch)."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, n: int, dim: int) -> torch.Tensor:
        out = torch.softmax(a, dim)
        ctx.save_for_backward(a, out)
        ctx.n, ctx.dim = n, dim
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        a, out = ctx.saved_tensors
        n = ctx.n
        d_in = _both(a[:n] - a[n:])
        plain = torch.ops.aten._softmax_backward_data(grad, out, ctx.dim, a.dtype)
        unnorm = torch.where(d_in.abs() < EPS, plain, grad * _both(out[:n] - out[n:]) / d_in)
        mean = unnorm.flatten(1).mean(1).view(2, n).mean(0)
        return unnorm - _both(mean).view(-1, *[1] * (a.dim() - 1)), None, None


_ELEMENTWISE: dict[Callable, Callable] = {
    F.relu: F.relu,
    F.relu_: torch.relu,
    torch.relu: torch.relu,
    torch.relu_: torch.relu,
    torch.Tensor.relu: torch.relu,
    torch.Tensor.relu_: torch.relu,
    F.elu: F.elu,
    F.leaky_relu: F.leaky_relu,
    F.softplus: F.softplus,
    torch.sigmoid: torch.sigmoid,
    torch.Tensor.sigmoid: torch.sigmoid,
    torch.Tensor.sigmoid_: torch.sigmoid,
    F.sigmoid: torch.sigmoid,
    torch.tanh: torch.tanh,
    torch.Tensor.tanh: torch.tanh,
    torch.Tensor.tanh_: torch.tanh,
    F.tanh: torch.tanh,
}
_POOL = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")


class _RescaleMode(TorchFunctionMode):
    """Within the block, the nonlinearities above (2-d max pool without `return_indices`, softmax with a `dim`)
    apply the rescale rule between rows `i` and `n + i` of their input; in-place forms return a new tensor."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def _check(self, func: Callable, a: Any) -> None:
        if not isinstance(a, torch.Tensor) or a.dim() == 0 or a.shape[0] != 2 * self.n:
            shape = tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__
            raise ValueError(
                f"deep_lift: {getattr(func, '__name__', func)} got {shape}; the rescale rule pairs each input row "
                f"with its reference row, so every nonlinearity must see the batch of {2 * self.n} rows "
                "[inputs; references] in dimension 0 (not reshaped, not batch-second)"
            )

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = dict(kwargs or {})
        if func in _ELEMENTWISE:
            self._check(func, args[0])
            kwargs.pop("inplace", None)
            fn, rest = _ELEMENTWISE[func], args[1:]
            return _RescaleElementwise.apply(args[0], self.n, lambda t: fn(t, *rest, **kwargs))
        if func is F.max_pool2d:
            pool = dict(zip(_POOL, args[1:], strict=False)) | kwargs
            if not pool.get("return_indices", False):
                self._check(func, args[0])
                kernel = _pair(pool["kernel_size"])
                stride = _pair(pool.get("stride") or kernel)
                spec = (kernel, stride, _pair(pool.get("padding", 0)), _pair(pool.get("dilation", 1)))
                return _RescaleMaxPool.apply(args[0], self.n, (*spec, bool(pool.get("ceil_mode", False))))
        if func is F.softmax and (len(args) > 1 or kwargs.get("dim") is not None):
            self._check(func, args[0])
            a = args[0] if kwargs.get("dtype") is None else args[0].to(kwargs["dtype"])
            return _RescaleSoftmax.apply(a, self.n, args[1] if len(args) > 1 else kwargs["dim"])
        return func(*args, **kwargs)


def _pair_rows(x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(image [P], class [P], x[image] [P, C, H, W])` for the (image, class) pairs of `target`."""
    check_input(x)
    image, cls = expand_targets(target, x.shape[0])
    image, cls = image.to(x.device), cls.to(x.device)
    return image, cls, x.detach()[image]


def _per_pair(value: Any, x: torch.Tensor, image: torch.Tensor, name: str) -> torch.Tensor:
    """A float or a tensor broadcastable to `x` `[B, C, H, W]`, as `[P, C, H, W]` for the pairs' images."""
    ref = torch.as_tensor(value, dtype=x.dtype, device=x.device)
    try:
        return ref.detach().expand_as(x)[image]
    except RuntimeError:
        raise ValueError(f"{name}: {tuple(ref.shape)} is not broadcastable to the input {tuple(x.shape)}") from None


def _references(baselines: torch.Tensor | None, x: torch.Tensor, name: str) -> torch.Tensor:
    """Reference images `[P, N, C, H, W]` for pair inputs `x` `[P, C, H, W]`: the given `[N, C, H, W]` for every
    pair, or by default N = 4 constant images per pair at `min x + k/3 (max x − min x)`, k = 0..3."""
    if baselines is None:
        lo, hi = x.flatten(1).amin(1), x.flatten(1).amax(1)
        levels = lo[:, None] + torch.arange(4, dtype=x.dtype, device=x.device) / 3 * (hi - lo)[:, None]
        return levels[:, :, None, None, None].expand(-1, -1, *x.shape[1:])
    refs = torch.as_tensor(baselines, dtype=x.dtype, device=x.device).detach()
    if refs.dim() != 4 or refs.shape[1:] != x.shape[1:] or refs.shape[0] < 1:
        raise ValueError(
            f"{name}: baselines must be reference images [N, C, H, W] with [C, H, W] = {tuple(x.shape[1:])}; "
            f"got {tuple(refs.shape)}"
        )
    return refs.expand(x.shape[0], *refs.shape)


def deep_lift_grads(model: nn.Module, x: torch.Tensor, ref: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """DeepLift's multipliers `[P, C, H, W]`: the gradient of `Σ_p y_{c_p}(x_p) + y_{c_p}(x0_p)` with respect to
    `x`, from one forward of `[x; x0]` and one backward with the rescale rule (Captum's layout)."""
    n = x.shape[0]
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        with _RescaleMode(n):
            logits = model(torch.cat([x, ref.detach()]))
        selected = selected_logit_sum(logits, torch.arange(2 * n, device=x.device), _both(cls))
        (grad,) = torch.autograd.grad(selected, x)
    return grad


def deep_lift(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, baseline: Any = 0.0, create_graph: bool = False
) -> torch.Tensor:
    """DeepLift, rescale rule (Shrikumar et al. 2017): `Σ_ch (x − x0) ⊙ m`, `m` the multipliers of
    `deep_lift_grads`; `baseline` x0: a float or a tensor broadcastable to `x` (default 0). Not differentiable.
    `[P, H, W]`, signed; over the channels and pixels it sums to `y_c(x) − y_c(x0)`."""
    image, cls, xs = _pair_rows(x, target)
    ref = _per_pair(baseline, x, image, "baseline")
    return ((xs - ref) * deep_lift_grads(model, xs, ref, cls)).sum(1)


def deep_lift_shap(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    baselines: torch.Tensor | None = None,
    create_graph: bool = False,
) -> torch.Tensor:
    """DeepLiftShap (Lundberg & Lee 2017): the mean over reference images x0_j of `deep_lift` against x0_j, all
    `P × N` (pair, reference) rows in one forward and backward. `baselines`: `[N, C, H, W]` shared by all
    images; default, per pair, 4 constant images from the image's minimum to its maximum (see `_references`).
    Not differentiable. `[P, H, W]`, signed."""
    _, cls, xs = _pair_rows(x, target)
    refs = _references(baselines, xs, "deep_lift_shap")
    count = refs.shape[1]
    rows = xs.repeat_interleave(count, 0)
    refs = refs.reshape(-1, *xs.shape[1:])
    attr = (rows - refs) * deep_lift_grads(model, rows, refs, cls.repeat_interleave(count))
    return attr.sum(1).view(xs.shape[0], count, *xs.shape[2:]).mean(1)


def gradient_shap(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    baselines: torch.Tensor | None = None,
    samples: int = 5,
    stdevs: float = 0.0,
    seed: int = 0,
    create_graph: bool = False,
) -> torch.Tensor:
    """GradientShap (Lundberg & Lee 2017; Captum): the mean over `samples` draws per pair of
    `Σ_ch (x̃ − x0) ⊙ ∂y_c/∂x(x0 + α (x̃ − x0))`, `x̃ = x + ε`, `ε ~ N(0, stdevs²)`, x0 a reference drawn uniformly
    from `baselines` (as `deep_lift_shap`), `α ~ U(0, 1)`; all `P × samples` rows (pairs outer) in one batch.
    Draws: the reference indices and then the α from `numpy.random.RandomState(seed)`, ε from a torch generator
    seeded with `seed`, in Captum's layout. Differentiable. `[P, H, W]`, signed."""
    if samples < 1 or stdevs < 0:
        raise ValueError(f"gradient_shap: samples must be >= 1 and stdevs >= 0; got {samples}, {stdevs}")
    _, cls, xs = _pair_rows(x, target)
    refs = _references(baselines, xs, "gradient_shap")
    rows = xs.shape[0] * samples
    state = np.random.RandomState(seed)
    pick = torch.as_tensor(state.choice(refs.shape[1], rows), device=x.device)
    alpha = torch.as_tensor(state.uniform(0.0, 1.0, rows), dtype=x.dtype, device=x.device)
    noisy = xs.repeat_interleave(samples, 0)
    if stdevs > 0:
        generator = torch.Generator(device=x.device).manual_seed(seed)
        noisy = noisy + torch.normal(0.0, torch.full_like(noisy, stdevs).detach(), generator=generator)
    base = refs[torch.arange(rows, device=x.device) // samples, pick]
    alpha = alpha.view(-1, *[1] * (xs.dim() - 1))
    with torch.enable_grad():
        points = alpha * noisy + (1 - alpha) * base
        if not points.requires_grad:
            points = points.requires_grad_(True)
        grad = grad_of_selected(model(points), cls.repeat_interleave(samples), points, create_graph)
    maps = ((noisy - base) * grad).sum(1).view(xs.shape[0], samples, *xs.shape[2:]).mean(1)
    return maps if create_graph else maps.detach()


for _name, _run, _summary, _extra in [
    ("deep_lift", deep_lift, "DeepLift (rescale rule): input − baseline times the rescaled multipliers", "1 (the baseline)"),
    ("deep_lift_shap", deep_lift_shap, "DeepLiftShap: DeepLift averaged over reference images",
     "2 N − 1 per image (N references, default 4), backward included"),
]:  # fmt: skip
    register(Method(_name, _summary, run=_run, signed=True, differentiable=False, extra_forwards=_extra))
register(
    Method(
        "gradient_shap",
        "GradientShap: expected gradient × (input − reference) at random points towards random references",
        run=gradient_shap,
        signed=True,
        random=True,
        extra_forwards="samples − 1 per image (default 5), backward included",
    )
)

__all__ = ["deep_lift", "deep_lift_grads", "deep_lift_shap", "gradient_shap"]
