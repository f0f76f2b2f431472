"""Faithfulness measures of Quantus 0.6 that perturb the input feature by feature or patch by patch:
monotonicity (Arya et al. 2019), monotonicity correlation (Nguyen and Martínez 2020), faithfulness estimate
(Alvarez-Melis and Jaakkola 2018), infidelity (Yeh et al. 2019; also Captum's `infidelity`) and sufficiency
(Dasgupta et al. 2022).

A feature is one channel-pixel value: maps `[B, h, w]` are upsampled bilinearly to the input size and read at
every channel of their pixels, as Quantus broadcasts them. Every perturbed input of every image goes through the
model in chunks of `batch_size` rows, step after step (with `batch_size` equal to the number of images, each
model call holds the inputs of one Quantus call). Baselines (`baseline`): `"black"` / `"white"` / `"mean"`: the
image's minimum / maximum / mean over all its values; `"uniform"`: a value drawn uniformly in [0, 1) per image and
perturbation, from a `torch.Generator` seeded with `seed` on x's device; a number: that value.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from salience.attribution import upsample
from salience.attribution.core import perturbed_outputs
from salience.measures.registry import Probe
from salience.measures.similarity import _corr, _ranks

BASELINES = ("black", "white", "mean", "uniform")


def _features(maps: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The map at the input size, read at every channel: `[B, C * H * W]` in x's dtype (channel-major)."""
    if maps.dim() != 3 or maps.shape[0] != x.shape[0]:
        raise ValueError(f"maps must be [B, h, w] with B = {x.shape[0]} images; got {tuple(maps.shape)}")
    a = upsample(maps.detach().to(x.dtype), (x.shape[-2], x.shape[-1])).flatten(1)
    return a.repeat(1, x.shape[1])


def baseline_values(
    x: torch.Tensor, baseline: str | float, count: int, gen: torch.Generator, noise: torch.Tensor | None = None
) -> torch.Tensor:
    """`[B, count]`: the value each of `count` perturbations of each image of `x [B, ...]` sets (see the module
    docstring). `noise [B, count]`: the uniform draws to use instead of the generator's (test path)."""
    flat = x.detach().flatten(1)
    if isinstance(baseline, int | float):
        return torch.full((len(flat), count), float(baseline), dtype=x.dtype, device=x.device)
    stats = {"black": lambda: flat.amin(1), "white": lambda: flat.amax(1), "mean": lambda: flat.mean(1)}
    if baseline in stats:
        return stats[baseline]()[:, None].expand(-1, count)
    if baseline != "uniform":
        raise ValueError(f"baseline must be a number or one of {BASELINES}, got {baseline!r}")
    if noise is not None:
        if tuple(noise.shape) != (len(flat), count):
            raise ValueError(f"noise must be [B, {count}] = {(len(flat), count)}; got {tuple(noise.shape)}")
        return noise.to(x.device, x.dtype)
    return torch.rand(len(flat), count, generator=gen, device=x.device, dtype=x.dtype)


def _steps(a: torch.Tensor, features_in_step: int, descending: bool) -> tuple[torch.Tensor, int]:
    """`(step [B, d], steps)`: the step at which each feature is perturbed when the features go in the order of
    `a [B, d]` (ties in index order), `features_in_step` at a time; `steps = ceil(d / features_in_step)`."""
    if features_in_step < 1:
        raise ValueError(f"features_in_step must be at least 1, got {features_in_step}")
    b, d = a.shape
    order = torch.sort(a, dim=1, descending=descending, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(d, device=a.device).expand(b, -1))
    return rank // features_in_step, -(-d // features_in_step)


def _scores(model: nn.Module, target: torch.Tensor, probabilities: bool) -> Callable:
    """A `run` of `perturbed_outputs`: the target's softmax probability (or logit) of each input."""

    def run(inputs: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        out = model(inputs)
        out = out.softmax(1) if probabilities else out
        return out.gather(1, target[image, None])[:, 0]

    return run


def _clean(model: nn.Module, x: torch.Tensor, target: torch.Tensor, probabilities: bool) -> torch.Tensor:
    return _scores(model, target, probabilities)(x.detach(), torch.arange(len(x), device=x.device))


def monotonicity(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    maps: torch.Tensor,
    features_in_step: int = 1,
    baseline: str | float = "black",
    insert: str = "image",
    seed: int = 0,
    batch_size: int = 64,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Monotonicity (Arya et al.) per image -> `[B]` (1.0 or 0.0): start from the image filled with the baseline,
    put back the image's features `features_in_step` at a time in increasing order of |A| (|A| / max |A|, Quantus'
    `abs` and `normalise`), and check that the target's softmax probability never decreases.
    `insert="baseline"` reproduces Quantus 0.6's code, which sets each step's features to the baseline again
    (so the curve stays flat and every image scores 1 for a constant baseline). `noise [B, steps + 1]`: the uniform
    draws, the first filling the image (test path)."""
    if insert not in ("image", "baseline"):
        raise ValueError(f"insert must be 'image' or 'baseline', got {insert!r}")
    a = _features(maps, x).abs()
    step, steps = _steps(a, features_in_step, descending=False)
    flat = x.detach().flatten(1)
    gen = torch.Generator(device=x.device).manual_seed(seed)
    fill = baseline_values(x, baseline, steps + 1, gen, noise)  # the first fills the image, the others each step's

    def perturbed(image: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        s = step[image]
        back = flat[image] if insert == "image" else fill[image].gather(1, s + 1)
        return torch.where(s <= index[:, None], back, fill[image, :1]).view(-1, *x.shape[1:])

    with torch.no_grad():
        probs = perturbed_outputs(x, steps, perturbed, _scores(model, target, True), batch_size, block=1)
    return (probs.diff(dim=1) >= 0).all(1).to(x.dtype)


def monotonicity_correlation(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    maps: torch.Tensor,
    samples: int = 100,
    features_in_step: int = 1,
    baseline: str | float = "uniform",
    eps: float = 1e-5,
    seed: int = 0,
    batch_size: int = 64,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Monotonicity correlation (Nguyen and Martínez) per image -> `[B]`: for each step of `features_in_step`
    features in increasing order of |A| / max |A|, `samples` times set them to the baseline and take the mean
    squared change of the target's softmax probability p (divided by p^2 where p >= `eps`); the Spearman
    correlation over the steps between the step's sum of |A| / max |A| and that variance (0 for a constant
    series, 1 for two). `noise [B, steps * samples]`: the uniform draws, step-major (test path)."""
    a = _features(maps, x).abs()  # Quantus' division by max |A| leaves the ranks as they are
    step, steps = _steps(a, features_in_step, descending=False)
    flat = x.detach().flatten(1)
    gen = torch.Generator(device=x.device).manual_seed(seed)
    fill = baseline_values(x, baseline, steps * samples, gen, noise)

    def perturbed(image: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        hit = step[image] == (index // samples)[:, None]
        return torch.where(hit, fill[image, index, None], flat[image]).view(-1, *x.shape[1:])

    with torch.no_grad():
        p = _clean(model, x, target, True)
        probs = perturbed_outputs(x, steps * samples, perturbed, _scores(model, target, True), batch_size, block=1)
    inv = torch.where(p.abs() >= eps, 1 / p.abs().clamp(min=eps), torch.ones_like(p)) ** 2
    var = ((probs.view(len(x), steps, samples) - p[:, None, None]) ** 2).mean(2) * inv[:, None]
    atts = torch.zeros(len(x), steps, dtype=a.dtype, device=a.device).scatter_add_(1, step, a)
    return _corr(_ranks(atts.double()), _ranks(var.double())).to(x.dtype)


def faithfulness_estimate(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    maps: torch.Tensor,
    features_in_step: int = 1,
    baseline: str | float = "black",
    seed: int = 0,
    batch_size: int = 64,
) -> torch.Tensor:
    """Faithfulness estimate (Alvarez-Melis and Jaakkola) per image -> `[B]`: for each step of
    `features_in_step` features in decreasing order of the signed map, set them (alone) to the baseline; the
    Pearson correlation over the steps between the step's sum of A and the drop of the target's logit (0 for a
    constant series, 1 for two; A is read signed and unscaled: the correlation is scale-free)."""
    a = _features(maps, x)
    step, steps = _steps(a, features_in_step, descending=True)
    flat = x.detach().flatten(1)
    fill = baseline_values(x, baseline, steps, torch.Generator(device=x.device).manual_seed(seed))

    def perturbed(image: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        hit = step[image] == index[:, None]
        return torch.where(hit, fill[image, index, None], flat[image]).view(-1, *x.shape[1:])

    with torch.no_grad():
        drops = _clean(model, x, target, False)[:, None] - perturbed_outputs(
            x, steps, perturbed, _scores(model, target, False), batch_size, block=1
        )
    sums = torch.zeros(len(x), steps, dtype=a.dtype, device=a.device).scatter_add_(1, step, a)
    return _corr(sums.double(), drops.double()).to(x.dtype)


def patch_blocks(size: tuple[int, int], patch: int, device: torch.device | None = None) -> tuple[torch.Tensor, int]:
    """`(block [H, W] long, count)`: the patch of side `patch` each pixel falls in, numbered row by row, on the grid
    Quantus lays over the image padded (at the edges) to a multiple of `patch`, half the padding before."""
    h, w = size
    pads = [(-n % patch) // 2 for n in (h, w)]
    rows = (torch.arange(h, device=device) + pads[0]) // patch
    cols = (torch.arange(w, device=device) + pads[1]) // patch
    per_row = -(-(w + (-w % patch)) // patch)
    count = -(-(h + (-h % patch)) // patch) * per_row
    return rows[:, None] * per_row + cols[None, :], count


def _infidelity_rows(
    x: torch.Tensor, patch_sizes: Sequence[int], repeats: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The rows of the patch perturbations, repeat after repeat, patch size after patch size, patch after patch:
    `(blocks [P, H * W] per patch size, size [N], last [N] (the last patch set), first [N] (the row's first in
    its patch size))`, N = repeats * sum of the patch counts."""
    grids = [patch_blocks((x.shape[-2], x.shape[-1]), p, x.device) for p in patch_sizes]
    if any(p < 1 for p in patch_sizes) or not grids:
        raise ValueError(f"patch_sizes must be positive sizes, got {list(patch_sizes)}")
    blocks = torch.stack([g.flatten() for g, _ in grids])
    size = torch.cat([torch.full((n,), i, device=x.device) for i, (_, n) in enumerate(grids)])
    last = torch.cat([torch.arange(n, device=x.device) for _, n in grids])
    per_repeat = len(size)
    first = torch.arange(per_repeat, device=x.device) - last
    first = torch.cat([first + r * per_repeat for r in range(repeats)])
    return blocks, size.repeat(repeats), last.repeat(repeats), first


def _infidelity_value(
    drops: torch.Tensor, products: torch.Tensor, weights: torch.Tensor, normalise: bool
) -> torch.Tensor:
    """`sum_r w_r (beta I_r.A - drop_r)^2` per image over its rows `[B, N]` (weights `[N]` summing to 1), beta = 1,
    or with `normalise` Captum's optimal scale `sum w I.A drop / sum w (I.A)^2` (1 where that is 0 / 0)."""
    if normalise:
        num, den = (weights * products * drops).sum(1), (weights * products**2).sum(1)
        beta = torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.ones_like(den))
        products = beta[:, None] * products
    return (weights * (products - drops) ** 2).sum(1)


def infidelity(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    maps: torch.Tensor,
    patch_sizes: Sequence[int] = (4,),
    samples: int = 10,
    baseline: str | float = "black",
    perturbation: str = "patches",
    std: float = 0.003,
    normalise: bool = False,
    seed: int = 0,
    batch_size: int = 64,
    draws: torch.Tensor | None = None,
) -> torch.Tensor:
    """Infidelity (Yeh et al.) per image -> `[B]`: the mean over perturbations I of `(I.A - (f(x) - f(x - I)))^2`,
    f the target's logit, A the raw map read at every channel. `perturbation="patches"` (Quantus): the patches of
    side p (each of `patch_sizes`, row by row) set to the baseline cumulatively, I = x - the perturbed image; the
    mean over the patches, then over patch sizes and over `samples` repeats (only a `"uniform"` baseline makes the
    repeats differ; otherwise they are computed once). `"gaussian"` (the perturbation of Captum's example):
    `samples` draws I ~ N(0, std^2) on every value. `normalise`: Captum's `normalize` (A scaled by its optimal
    factor first). `draws`: the random numbers (test path): the uniform baseline values `[B, N]` in row order, or
    the Gaussian perturbations `[B, samples, C, H, W]`."""
    a = _features(maps, x)
    flat = x.detach().flatten(1)
    gen = torch.Generator(device=x.device).manual_seed(seed)
    if perturbation == "gaussian":
        count, weights = samples, torch.full((samples,), 1 / samples, dtype=x.dtype, device=x.device)

        def noise(image: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
            if draws is not None:
                return draws.to(x.device, x.dtype)[image, index].flatten(1)
            return torch.randn(len(image), flat.shape[1], generator=gen, device=x.device, dtype=x.dtype) * std

    elif perturbation == "patches":
        repeats = samples if baseline == "uniform" else 1
        blocks, size, last, first = _infidelity_rows(x, patch_sizes, repeats)
        count, c = len(size), x.shape[1]
        counts = torch.bincount(size[: len(size) // repeats])
        weights = 1 / (counts[size] * len(patch_sizes) * repeats).to(x.dtype)
        fill = baseline_values(x, baseline, count, gen, draws)

        def noise(image: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
            bid = blocks[size[index]]  # [n, H * W]
            values = fill[image].gather(1, first[index, None] + bid)  # the value set with each patch
            hit = (bid <= last[index, None]).repeat(1, c)
            return torch.where(hit, flat[image] - values.repeat(1, c), torch.zeros_like(flat[image]))

    else:
        raise ValueError(f"perturbation must be 'patches' or 'gaussian', got {perturbation!r}")

    def run(i: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        logits = model((flat[image] - i).view(-1, *x.shape[1:])).gather(1, target[image, None])[:, 0]
        return torch.stack([logits, (a[image] * i).sum(1)], 1)

    with torch.no_grad():
        clean = _clean(model, x, target, False)
        out = perturbed_outputs(x, count, noise, run, batch_size, block=1)  # [B, count, 2]
    drops, products = clean[:, None] - out[..., 0], out[..., 1]
    return _infidelity_value(drops.double(), products.double(), weights.double(), normalise).to(x.dtype)


def sufficiency(
    model: nn.Module, x: torch.Tensor, maps: torch.Tensor, threshold: float = 0.6, group_size: int = 64
) -> torch.Tensor:
    """Sufficiency (Dasgupta et al., as Quantus 0.6) per image -> `[B]`: within each group of `group_size`
    consecutive images (Quantus' batch), the share of the other images with a close map that the model predicts
    as the same class (0 where no map is close). Close: the standardised Euclidean distance of |A| (each pixel
    divided by its variance over the group, duplicated as SciPy's `cdist` stacks it; pixels of zero variance left
    out, where SciPy gives NaN), divided by the group's largest, at most `threshold`. Depends on the batch."""
    if group_size < 1:
        raise ValueError(f"group_size must be at least 1, got {group_size}")
    a = upsample(maps.detach(), (x.shape[-2], x.shape[-1])).flatten(1).abs().double()
    with torch.no_grad():
        pred = model(x.detach()).argmax(1)
    out = []
    for a_g, p_g in zip(a.split(group_size), pred.split(group_size), strict=True):
        g = len(a_g)
        var = 2 * ((a_g - a_g.mean(0)) ** 2).sum(0) / (2 * g - 1)  # of the group stacked twice, ddof 1
        keep = var > 0
        z = a_g[:, keep] / var[keep].sqrt()
        dist = torch.cdist(z, z) if keep.any() else torch.zeros(g, g, dtype=z.dtype, device=z.device)
        dist = dist / dist.max() if dist.max() > 0 else dist
        close = (dist <= threshold) & ~torch.eye(g, dtype=torch.bool, device=x.device)
        same = (p_g[None] == p_g[:, None]) & close
        n = close.sum(1)
        out.append(torch.where(n > 0, same.sum(1) / n.clamp(min=1), torch.zeros_like(n, dtype=torch.float)))
    return torch.cat(out).to(x.dtype)


# --- registry entries: `fn(probe, *, options)` over the probe's images and maps (see `salience.measures.entries`)
def _monotonicity(
    p: Probe, *, features_in_step: int = 1, baseline: str | float = "black", insert: str = "image", batch_size: int = 64
) -> torch.Tensor:
    return monotonicity(p.model, p.x, p.target, p.maps, features_in_step, baseline, insert, p.seed, batch_size)


def _monotonicity_correlation(
    p: Probe,
    *,
    samples: int | None = None,
    features_in_step: int = 1,
    baseline: str | float = "uniform",
    eps: float = 1e-5,
    batch_size: int = 64,
) -> torch.Tensor:
    """`samples`: None takes the probe's `samples`, else Quantus' 100."""
    n = samples or p.samples or 100
    return monotonicity_correlation(
        p.model, p.x, p.target, p.maps, n, features_in_step, baseline, eps, p.seed, batch_size
    )


def _faithfulness_estimate(
    p: Probe, *, features_in_step: int = 1, baseline: str | float = "black", batch_size: int = 64
) -> torch.Tensor:
    return faithfulness_estimate(p.model, p.x, p.target, p.maps, features_in_step, baseline, p.seed, batch_size)


def _infidelity(
    p: Probe,
    *,
    patch_sizes: Sequence[int] = (4,),
    samples: int | None = None,
    baseline: str | float = "black",
    perturbation: str = "patches",
    std: float = 0.003,
    normalise: bool = False,
    batch_size: int = 64,
) -> torch.Tensor:
    """`samples`: None takes the probe's `samples`, else Quantus' (and Captum's) 10."""
    n = samples or p.samples or 10
    return infidelity(
        p.model, p.x, p.target, p.maps, patch_sizes, n, baseline, perturbation, std, normalise, p.seed, batch_size
    )


def _sufficiency(p: Probe, *, threshold: float = 0.6, group_size: int = 64) -> torch.Tensor:
    return sufficiency(p.model, p.x, p.maps, threshold, group_size)
