"""Stability of explanations as Quantus 0.6 and Captum 0.9 define it: continuity (Montavon et al. 2018),
consistency (Dasgupta et al. 2022), relative input / output / representation stability (Agarwal et al. 2022) and
Captum's `sensitivity_max` (Yeh et al. 2019).

Maps are read at the input size (upsampled bilinearly), as both libraries read explanations of the input. The
perturbed inputs of all images are explained together, `batch_size` (image, perturbation) rows per call of
`explain`, on the model's device; noise comes from a `torch.Generator` seeded with `seed` on x's device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack

import torch
from torch import nn

from salience.attribution import upsample
from salience.attribution.core import capture, perturbed_outputs, resolve_layer
from salience.measures.robustness import _per_sample

Explain = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _abs_by_max(a: torch.Tensor) -> torch.Tensor:
    """`|a| / max |a|` per row of `a [n, d]`; an all-zero row stays zero."""
    a = a.abs()
    peak = a.amax(1, keepdim=True)
    return a / torch.where(peak > 0, peak, torch.ones_like(peak))


def translation_shifts(width: int, nr_steps: int) -> list[int]:
    """Quantus Continuity's horizontal shifts in pixels: `-W + k dx` for k = 1..nr_steps, `dx = (2W + 1) //
    nr_steps` (positive: the image moves right)."""
    if nr_steps < 1:
        raise ValueError(f"continuity: nr_steps must be >= 1, got {nr_steps}")
    dx = (2 * width + 1) // nr_steps
    return [-width + k * dx for k in range(1, nr_steps + 1)]


def translate(x: torch.Tensor, shift: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Images `x [n, C, H, W]` moved `shift [n]` pixels along the width (positive: right); uncovered columns take
    `fill [n]` (Quantus' `batched_translation`)."""
    w = x.shape[-1]
    src = torch.arange(w, device=x.device) - shift[:, None]  # [n, W]: the column each output column reads
    moved = x.gather(-1, src.clamp(0, w - 1)[:, None, None, :].expand_as(x))
    inside = ((src >= 0) & (src < w))[:, None, None, :]
    return torch.where(inside, moved, fill.to(x.dtype)[:, None, None, None])


def continuity(
    explain: Explain,
    x: torch.Tensor,
    target: torch.Tensor,
    maps: torch.Tensor,
    nr_steps: int = 28,
    batch_size: int = 64,
) -> torch.Tensor:
    """Continuity per image -> `[B]` (lower = smoother): the max over the `nr_steps` translations x' of x
    (`translation_shifts`; uncovered columns take the image's minimum, Quantus' "black") of
    `||Â(x) - Â(x')||_1 / (||x - x'||_2 + 1e-9)`, Â = |A| / max |A| per map at the input size (Quantus' `abs` and
    `normalise_by_max`, taken per image; an all-zero map stays zero). A zero shift leaves the image unchanged:
    it scores 0 without being explained again. Cost: one explanation per non-zero shift."""
    b, _, h, w = x.shape
    x, target = x.detach(), target.to(x.device)
    shifts = [s for s in translation_shifts(w, nr_steps) if s != 0]
    if not shifts:
        return x.new_zeros(b)
    shift = torch.tensor(shifts, device=x.device)
    a = _abs_by_max(upsample(maps.detach(), (h, w)).flatten(1))
    black = x.flatten(1).amin(1)

    def ratio(inputs: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        m = _abs_by_max(upsample(explain(inputs, target[image]).detach(), (h, w)).flatten(1))
        return (a[image] - m).abs().sum(1) / ((x[image] - inputs).flatten(1).norm(dim=1) + 1e-9)

    moved = lambda image, index: translate(x[image], shift[index], black[image])
    return perturbed_outputs(x, len(shifts), moved, ratio, batch_size).amax(1)


def predicted(model: nn.Module, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Logits of `x [B, C, H, W]`, `batch_size` images per forward, without gradients -> `[B, K]`."""
    with torch.no_grad():
        return torch.cat([model(chunk) for chunk in x.detach().split(batch_size)])


def consistency(
    model: nn.Module, x: torch.Tensor, maps: torch.Tensor, n: int = 5, batch_size: int = 64
) -> torch.Tensor:
    """Consistency per image -> `[B]` in [0, 1] (higher = better): the share of the other images with the same
    discretised map that the model gives the same predicted class (argmax of its logits); 0 when no other image
    has the same discretised map. The discretised map is Quantus' `top_n_sign` of |A| / max |A|: which of the
    first `n` pixels (raster order, at the input size) are non-zero. Images are compared within consecutive groups
    of `batch_size` (Quantus compares within its batches): the score depends on the other images. Cost: one
    forward per image."""
    if n < 1:
        raise ValueError(f"consistency: n must be >= 1, got {n}")
    b = x.shape[0]
    label = upsample(maps.detach(), (x.shape[-2], x.shape[-1])).flatten(1)[:, :n] != 0
    pred = predicted(model, x, batch_size).argmax(1)
    group = torch.arange(b, device=x.device) // batch_size
    others = (group[:, None] == group[None]) & ~torch.eye(b, dtype=torch.bool, device=x.device)
    same_label = (label.to(x.device)[:, None] == label.to(x.device)[None]).all(-1) & others
    agree = (same_label & (pred[:, None] == pred[None])).sum(1).to(x.dtype)
    return agree / (same_label.sum(1).to(x.dtype) + 1e-9)


def representation_modules(model: nn.Module, layer: str | Sequence[str]) -> list[nn.Module]:
    """The modules whose outputs form the internal representation: a module name or named depth (`final`), a
    list of them, or `"all"`: every module that is neither the model itself nor an `nn.Sequential` (Quantus'
    default `get_hidden_representations`)."""
    if layer == "all":
        return [m for _, m in model.named_modules() if not isinstance(m, (type(model), nn.Sequential))]
    names = [layer] if isinstance(layer, str) else list(layer)
    modules = [resolve_layer(model, name) for name in names]
    if not names or any(m is None for m in modules):
        raise ValueError(f"relative_representation_stability: layer must name modules of the model, got {layer!r}")
    return [m for m in modules if m is not None]


def _forward(model: nn.Module, modules: Sequence[nn.Module], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`(logits [n, K], representation [n, F])` of one forward without gradients: the outputs of `modules`
    (each call of each, flattened) side by side; `F = 0` without modules."""
    with torch.no_grad(), ExitStack() as stack:
        recorded = [stack.enter_context(capture(m)) for m in modules]
        logits = model(x)
    outs = [o.flatten(1) for r in recorded for o in r]
    return logits, torch.cat(outs, 1) if outs else logits.new_zeros(len(x), 0)


def _over_eps(t: torch.Tensor, eps: float) -> torch.Tensor:
    """`t + (t == 0) eps`: Quantus' guard against a division by zero."""
    return t + (t == 0).to(t.dtype) * eps


def relative_stability(
    model: nn.Module,
    explain: Explain,
    x: torch.Tensor,
    target: torch.Tensor,
    maps: torch.Tensor,
    samples: int = 200,
    lower_bound: float = 0.02,
    upper_bound: float = 0.2,
    eps_min: float = 1e-6,
    layer: str | Sequence[str] | None = None,
    return_nan_when_prediction_changes: bool = True,
    seed: int = 0,
    batch_size: int = 64,
    draw: Callable | None = None,
) -> dict[str, torch.Tensor]:
    """Relative input, output and representation stability per image (Quantus 0.6, lower = more stable):
    `{"input", "output", "representation": [B]}`, each the max over `samples` noisy copies `x' = x + u`, u uniform
    in [lower_bound, upper_bound] on every input value (Quantus' `batch_uniform_noise`), of
    `||(A - A') / A~||_F` divided by `||(x - x') / x~||_F` (input), `||h(x) - h(x')||_2` (output: the logits) or
    `||(L - L') / L~||_2` (representation: the outputs of `layer`, see `representation_modules`; None: none, NaN);
    `t~ = t + (t == 0) eps_min`, and a zero denominator becomes `eps_min`. A = `maps` and A' the maps of x', raw, at
    the input size. With `return_nan_when_prediction_changes`, a copy the model classifies differently from x
    gives NaN, and so does the image (Quantus takes the max with NaN). `draw(shape) -> noise`: another source of
    the noise, called with `(k, B, C, H, W)` for k samples at a time, in order. Cost per sample: one explanation
    and one forward (logits, prediction and representation together)."""
    if not lower_bound < upper_bound:
        raise ValueError(f"relative stability: lower_bound {lower_bound} must be below upper_bound {upper_bound}")
    if draw is None:
        gen = torch.Generator(device=x.device).manual_seed(seed)
        span = upper_bound - lower_bound
        draw = lambda shape: torch.rand(shape, generator=gen, device=x.device, dtype=x.dtype) * span + lower_bound
    x, target = x.detach(), target.to(x.device)
    modules = [] if layer is None else representation_modules(model, layer)
    a = upsample(maps.detach(), (x.shape[-2], x.shape[-1])).flatten(1)
    a_safe, x_safe = _over_eps(a, eps_min), _over_eps(x.flatten(1), eps_min)
    clean = [_forward(model, modules, chunk) for chunk in x.split(batch_size)]
    logits, rep = torch.cat([c[0] for c in clean]), torch.cat([c[1] for c in clean])
    rep_safe = _over_eps(rep, eps_min)

    def objectives(m: torch.Tensor, noise: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        xs = x[image] + noise
        out, r = _forward(model, modules, xs)
        num = ((a[image] - m) / a_safe[image]).norm(dim=1)
        ris = num / _over_eps(((x[image] - xs).flatten(1) / x_safe[image]).norm(dim=1), eps_min)
        ros = num / _over_eps((logits[image] - out).norm(dim=1), eps_min)
        rrs = num / _over_eps(((rep[image] - r) / rep_safe[image]).norm(dim=1), eps_min) if modules else num * torch.nan
        values = torch.stack([ris, ros, rrs.to(ris.dtype)], 1)
        if return_nan_when_prediction_changes:
            changed = out.argmax(1) != logits[image].argmax(1)
            values = torch.where(changed[:, None], torch.full_like(values, torch.nan), values)
        return values

    worst = _per_sample(explain, x, target, samples, draw, batch_size, objectives).amax(1)  # [B, 3], NaN wins
    return dict(zip(("input", "output", "representation"), worst.unbind(1), strict=True))


def sensitivity_max(
    explain: Explain,
    x: torch.Tensor,
    target: torch.Tensor,
    maps: torch.Tensor,
    n_perturb_samples: int = 10,
    perturb_radius: float = 0.02,
    seed: int = 0,
    batch_size: int = 64,
    draw: Callable | None = None,
) -> torch.Tensor:
    """Captum's `sensitivity_max` per image -> `[B]` (lower = more stable): the max over `n_perturb_samples`
    copies `x + u`, u uniform in [-perturb_radius, perturb_radius] on every input value (Captum's
    `default_perturb_func`), of `||A(x) - A(x + u)||_F / ||A(x)||_F` (a zero norm reads as 1), maps at the input
    size. The noise is drawn in float32 for the rows image after image (Captum's `repeat_interleave`), so on the
    CPU the draws equal Captum's after `torch.manual_seed(seed)`. `draw(shape) -> noise`: another source of the
    noise, called with `(n, C, H, W)` for the n rows of each batch, in order. Cost: one explanation per sample."""
    if n_perturb_samples < 1:
        raise ValueError(f"sensitivity_max: n_perturb_samples must be >= 1, got {n_perturb_samples}")
    if draw is None:
        gen = torch.Generator(device=x.device).manual_seed(seed)
        r = perturb_radius
        draw = lambda shape: torch.empty(shape, device=x.device).uniform_(-r, r, generator=gen)
    size = (x.shape[-2], x.shape[-1])
    x, target = x.detach(), target.to(x.device)
    a = upsample(maps.detach(), size).flatten(1)
    norm = a.norm(dim=1)
    norm = torch.where(norm == 0, torch.ones_like(norm), norm)
    noisy = lambda image, _: x[image] + draw((len(image), *x.shape[1:])).to(x.dtype)

    def change(inputs: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return (a[image] - upsample(explain(inputs, target[image]).detach(), size).flatten(1)).norm(dim=1) / norm[image]

    return perturbed_outputs(x, n_perturb_samples, noisy, change, batch_size).amax(1)
