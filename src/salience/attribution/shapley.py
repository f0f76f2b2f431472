"""Shapley values, LIME and feature ablation on feature masks (superpixels, a grid or the user's mask; see
`features`). A feature is "on" when its pixels keep the input's values and "off" when they take `baseline`'s.
Each method scores perturbed inputs (every image's samples batched together, `batch_size` rows per model call)
and gives one value per feature; the map `[P, H, W]` carries its feature's value at every pixel. Signed, not
differentiable.

Sampling matches Captum 0.9 (KernelShap, Lime, ShapleyValueSampling) run one (image, class) pair after
another from `torch.manual_seed(seed)`: the draws come from torch's global generator, inside
`torch.random.fork_rng`, so the caller's global random state is left as it was. The regressions run batched
in torch: weighted least squares (minimum-norm, as scikit-learn's LinearRegression) and a weighted Lasso by
coordinate descent (scikit-learn's objective and sample-weight scaling, run to convergence).
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import nn
from torch.distributions import Categorical

from salience.attribution.core import check_input, class_scores, expand_targets, perturbed_outputs
from salience.attribution.features import feature_masks
from salience.attribution.registry import Method, register

INF_WEIGHT = 1e6  # Captum's KernelShap weight of the all-on and all-off samples
LASSO_ALPHA = 0.01  # Captum's Lime default interpretable model: SkLearnLasso(alpha=0.01)


@dataclass(frozen=True)
class Problem:
    """One row per (image, class) pair: inputs `x` and baselines `base` `[P, C, H, W]`, classes `[P]`, feature
    ids `masks` `[P, H, W]` in `0..counts[p] − 1`, `counts` `[P]`."""

    x: torch.Tensor
    base: torch.Tensor
    cls: torch.Tensor
    masks: torch.Tensor
    counts: torch.Tensor

    @property
    def width(self) -> int:
        """The largest feature count: the columns of the padded per-pair feature tables."""
        return int(self.counts.max())

    def feature_sums(self, pixels: torch.Tensor) -> torch.Tensor:
        """Per-pixel values `[P, H, W]` summed over each feature -> `[P, F]`."""
        out = pixels.new_zeros(pixels.shape[0], self.width)
        return out.scatter_add_(1, self.masks.flatten(1), pixels.flatten(1))

    def paint(self, values: torch.Tensor) -> torch.Tensor:
        """Per-feature values `[P, F]` -> maps `[P, H, W]`, each pixel carrying its feature's value."""
        return values.gather(1, self.masks.flatten(1)).view(self.masks.shape)


def problem(
    x: torch.Tensor, target: torch.Tensor, feature_mask: torch.Tensor | str, baseline: float | torch.Tensor
) -> Problem:
    """Check and expand the inputs to (image, class) pairs; masks are computed once per image."""
    check_input(x)
    image, cls = expand_targets(target, x.shape[0])
    image, cls = image.to(x.device), cls.to(x.device)
    if isinstance(baseline, torch.Tensor):
        try:
            shape = torch.broadcast_shapes(baseline.shape, x.shape)
        except RuntimeError:
            shape = None
        if shape != x.shape:
            raise ValueError(
                f"baseline of shape {tuple(baseline.shape)} does not broadcast to x {tuple(x.shape)}; "
                "accepted: a float or a tensor broadcastable to x"
            )
        base = baseline.to(x.device, x.dtype).expand_as(x)
    elif isinstance(baseline, (int, float)):
        base = torch.full_like(x, float(baseline))
    else:
        raise ValueError(f"baseline must be a float or a tensor broadcastable to x; got {type(baseline).__name__}")
    masks, counts = feature_masks(x, feature_mask)
    x = x.detach()
    return Problem(x[image], base[image], cls, masks[image], counts[image])


def scores(model: nn.Module, prob: Problem, owner: torch.Tensor, keep: torch.Tensor, batch_size: int) -> torch.Tensor:
    """`[R]`: the explained logit of pair `owner[r]` on its input with the features `keep[r]` (bool `[R, F]`)
    on and the others at the baseline; `batch_size` rows per model call, across pairs and samples."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    height, width = prob.masks.shape[-2:]

    def perturb(rows: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
        p = owner[rows]
        on = keep[rows].gather(1, prob.masks[p].flatten(1)).view(-1, 1, height, width)
        return torch.where(on, prob.x[p], prob.base[p])

    with torch.no_grad():
        return perturbed_outputs(owner, 1, perturb, class_scores(model, prob.cls[owner]), batch_size)[:, 0]


def check_samples(n_samples: int, least: int = 1) -> None:
    if not isinstance(n_samples, int) or n_samples < least:
        raise ValueError(f"n_samples must be an integer >= {least}; got {n_samples!r}")


T = TypeVar("T")


def seeded(seed: int, draw: Callable[[], T]) -> T:
    """`draw()` from torch's global generator seeded with `seed`; the caller's global state is restored."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return draw()


def skip_fit_draws(features: int) -> None:
    """Consume what Captum's Lime / KernelShap fit takes from the global generator after an image's samples: its
    `DataLoader` draws an int64 base seed, and the `nn.Linear(F, 1)` it builds (then overwrites with the fitted
    coefficients) draws its initial weights and bias by `uniform_`, in the default dtype."""
    torch.empty((), dtype=torch.int64).random_()
    torch.empty(1, features).uniform_()
    torch.empty(1).uniform_()


def kernel_shap_samples(counts: torch.Tensor, n: int) -> torch.Tensor:
    """Bool `[P, n, F]` coalitions, Captum's KernelShap draws pair after pair from the global generator: all on,
    all off, then `k ~ p(k) ∝ (F − 1)/(k (F − k))`, k = 1..F−1, and the k features with the largest of F
    standard normals on (the first `F_p` columns; padding off). One feature: all on / all off alternate."""
    z = torch.zeros(counts.shape[0], n, int(counts.max()), dtype=torch.bool)
    for p, f in enumerate(counts.tolist()):
        z[p, slice(0, None, 2) if f < 2 else slice(0, 1), :f] = True
        if f < 2:
            skip_fit_draws(f)
            continue
        k = torch.arange(f, dtype=torch.float)
        probs = torch.tensor(f - 1) / (k * (f - k))
        probs[0] = 0.0
        size = Categorical(probs)
        for i in range(2, n):
            on = size.sample()
            vals = torch.randn(1, f)
            z[p, i, :f] = vals[0] > torch.kthvalue(vals, int(f - on)).values
        skip_fit_draws(f)
    return z


def lime_samples(counts: torch.Tensor, n: int) -> torch.Tensor:
    """Bool `[P, n, F]`: each feature on with probability ½ (Captum's Lime default: `torch.bernoulli` of ½,
    pair after pair; padding off)."""
    z = torch.zeros(counts.shape[0], n, int(counts.max()), dtype=torch.bool)
    for p, f in enumerate(counts.tolist()):
        z[p, :, :f] = torch.bernoulli(torch.full((n, f), 0.5)).bool()
        skip_fit_draws(f)
    return z


def centred(z: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`z` `[P, n, F]` and `y` `[P, n]` minus their means weighted by `w` `[P, n]` (as scikit-learn)."""
    s = w / w.sum(1, keepdim=True)
    return z - torch.einsum("pn,pnf->pf", s, z)[:, None], y - (s * y).sum(1, keepdim=True)


def weighted_least_squares(z: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Coefficients `[P, F]` of `y ≈ b + z·c` minimising `Σ_i w_i (y_i − b − z_i·c)²`, the minimum-norm solution
    (scikit-learn's LinearRegression with `sample_weight`: weighted centring, rows scaled by √w, an SVD
    least-squares solve with cutoff `max(n, F)·eps`), batched over P. All-zero columns get 0."""
    zc, yc = centred(z, y, w)
    root = w.sqrt()
    return (torch.linalg.pinv(root[..., None] * zc) @ (root * yc)[..., None])[..., 0]


def weighted_lasso(
    z: torch.Tensor, y: torch.Tensor, w: torch.Tensor, alpha: float, max_sweeps: int = 1000
) -> torch.Tensor:
    """Coefficients `[P, F]` minimising `½ Σ_i s_i (y_i − b − z_i·c)² + α ‖c‖₁`, `s = w / Σw` (scikit-learn's
    Lasso with `sample_weight`, which rescales the weights to sum to n), by cyclic coordinate descent over the
    weighted Gram matrix, batched over P, until no coefficient moves by more than 100·eps·max|c|.
    Constant columns get 0."""
    zc, yc = centred(z, y, w)
    s = w / w.sum(1, keepdim=True)
    gram = torch.einsum("pn,pnf,png->pfg", s, zc, zc)
    corr = torch.einsum("pn,pnf,pn->pf", s, zc, yc)
    diag = gram.diagonal(dim1=1, dim2=2)
    scale = torch.where(diag > 0, diag, torch.ones_like(diag))  # a constant column: rho = 0, so c = 0
    coef = torch.zeros_like(corr)
    grad = corr.clone()  # corr − gram @ coef, kept up to date
    tol = 100 * torch.finfo(z.dtype).eps
    for _ in range(max_sweeps):
        before = coef.clone()
        for j in range(coef.shape[1]):
            new = torch.nn.functional.softshrink(grad[:, j] + diag[:, j] * coef[:, j], alpha) / scale[:, j]
            grad.addcmul_(gram[:, :, j], (new - coef[:, j])[:, None], value=-1)
            coef[:, j] = new
        if bool(((coef - before).abs().amax(1) <= tol * coef.abs().amax(1).clamp(min=tol)).all()):
            break
    return coef


def _sampled_scores(
    model: nn.Module, prob: Problem, z: torch.Tensor, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores `[P, n]` of the coalitions `z` (bool `[P, n, F]`, on the inputs' device), and `z` as x's dtype."""
    n = z.shape[1]
    owner = torch.arange(z.shape[0], device=z.device).repeat_interleave(n)
    y = scores(model, prob, owner, z.flatten(0, 1), batch_size).view(-1, n)
    return y.to(prob.x.dtype), z.to(prob.x.dtype)


def kernel_shap(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    feature_mask: torch.Tensor | str = "slic",
    n_samples: int = 256,
    baseline: float | torch.Tensor = 0.0,
    batch_size: int = 64,
    seed: int = 0,
    create_graph: bool = False,
) -> torch.Tensor:
    """Kernel SHAP (Lundberg & Lee 2017), as Captum's KernelShap: `n_samples` coalitions (all on, all off, then
    sizes drawn with the Shapley kernel's probability, members uniform; `kernel_shap_samples`), weights 10⁶ for
    all on / all off and 1 otherwise, and the weighted least-squares coefficients (with intercept) as the
    features' values. `[P, H, W]`, signed."""
    check_samples(n_samples)
    prob = problem(x, target, feature_mask, baseline)
    z = seeded(seed, lambda: kernel_shap_samples(prob.counts.cpu(), n_samples)).to(x.device)
    y, zf = _sampled_scores(model, prob, z, batch_size)
    size = zf.sum(2)
    w = torch.where((size == 0) | (size == prob.counts[:, None]), INF_WEIGHT, 1.0).to(zf.dtype)
    return prob.paint(weighted_least_squares(zf, y, w))


def lime_weights(prob: Problem, z: torch.Tensor) -> torch.Tensor:
    """`[P, n]`: `exp(−d²/2)`, `d = 1 − cos(x, x_z)` over the whole flattened input, `x_z` the coalition's input
    (`z` `[P, n, F]` in x's dtype), from per-feature sums of `x·x`, `x·b`, `b·b`; norms clamped at 1e-8 as
    `torch.cosine_similarity` (Captum's default exponential kernel, cosine distance, width 1)."""
    xx, xb, bb = (
        prob.feature_sums((a * b).sum(1)) for a, b in [(prob.x, prob.x), (prob.x, prob.base), (prob.base, prob.base)]
    )
    off = 1 - z
    dot = torch.einsum("pnf,pf->pn", z, xx) + torch.einsum("pnf,pf->pn", off, xb)
    norm2 = torch.einsum("pnf,pf->pn", z, xx) + torch.einsum("pnf,pf->pn", off, bb)
    eps = 1e-8
    cos = dot / (xx.sum(1, keepdim=True).sqrt().clamp(min=eps) * norm2.clamp(min=0).sqrt().clamp(min=eps))
    return torch.exp(-((1 - cos) ** 2) / 2)


def lime(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    feature_mask: torch.Tensor | str = "slic",
    n_samples: int = 256,
    baseline: float | torch.Tensor = 0.0,
    batch_size: int = 64,
    seed: int = 0,
    alpha: float = LASSO_ALPHA,
    create_graph: bool = False,
) -> torch.Tensor:
    """LIME (Ribeiro et al. 2016), as Captum's Lime defaults: `n_samples` coalitions, each feature on with
    probability ½ (`lime_samples`), weighted by `lime_weights`; the coefficients of a weighted Lasso (`alpha`
    0.01 as Captum's `SkLearnLasso(alpha=0.01)`, with intercept; `weighted_lasso`) are the features' values.
    Scores that move by much less than `alpha` give all-zero maps. `[P, H, W]`, signed."""
    if not alpha >= 0:
        raise ValueError(f"alpha must be >= 0; got {alpha}")
    check_samples(n_samples)
    prob = problem(x, target, feature_mask, baseline)
    z = seeded(seed, lambda: lime_samples(prob.counts.cpu(), n_samples)).to(x.device)
    y, zf = _sampled_scores(model, prob, z, batch_size)
    return prob.paint(weighted_lasso(zf, y, lime_weights(prob, zf), alpha))


def _ragged(counts: torch.Tensor, tables: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of per-pair bool tables (`tables[p]` `[r_p, F_p]`) padded to F columns -> `(owner [R], keep [R, F])`."""
    width = int(counts.max())
    keep = torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1])) for t in tables])
    owner = torch.cat([torch.full((t.shape[0],), p, dtype=torch.long) for p, t in enumerate(tables)])
    return owner.to(counts.device), keep.to(counts.device)


def feature_ablation(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    feature_mask: torch.Tensor | str = "slic",
    baseline: float | torch.Tensor = 0.0,
    batch_size: int = 64,
    create_graph: bool = False,
) -> torch.Tensor:
    """Feature ablation (as Captum's FeatureAblation): a feature's value is `y_c(x) − y_c(x with that feature at
    the baseline)`. 1 + F forwards per pair. `[P, H, W]`, signed."""
    prob = problem(x, target, feature_mask, baseline)
    counts = prob.counts.tolist()
    tables = [torch.cat([torch.ones(1, f, dtype=torch.bool), ~torch.eye(f, dtype=torch.bool)]) for f in counts]
    owner, keep = _ragged(prob.counts, tables)  # per pair: all on, then each feature off in turn
    y = scores(model, prob, owner, keep, batch_size).to(x.dtype).split([f + 1 for f in counts])
    values = torch.zeros(len(counts), prob.width, dtype=x.dtype, device=x.device)
    for p, (f, chain) in enumerate(zip(counts, y, strict=True)):
        values[p, :f] = chain[0] - chain[1:]
    return prob.paint(values)


def permutations(counts: list[int], n: int) -> list[torch.Tensor]:
    """`n` permutations `[n, F_p]` per pair, `torch.randperm(F_p)` each, pair after pair (Captum's draws)."""
    return [torch.stack([torch.randperm(f) for _ in range(n)]) for f in counts]


def shapley_sampling(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    feature_mask: torch.Tensor | str = "slic",
    n_samples: int = 8,
    baseline: float | torch.Tensor = 0.0,
    batch_size: int = 64,
    seed: int = 0,
    create_graph: bool = False,
) -> torch.Tensor:
    """Shapley value sampling (Castro et al. 2009), as Captum's ShapleyValueSampling: for each of `n_samples`
    permutations (`permutations`) the features go on one by one from the all-off input; a feature's value is its
    mean marginal gain `y_c(S ∪ {f}) − y_c(S)`. 1 + n·F forwards per pair. `[P, H, W]`, signed."""
    check_samples(n_samples)
    prob = problem(x, target, feature_mask, baseline)
    counts = prob.counts.tolist()
    perms = seeded(seed, lambda: permutations(counts, n_samples))
    tables = []
    for f, perm in zip(counts, perms, strict=True):
        steps = perm.argsort(1)[:, None, :] <= torch.arange(f)[None, :, None]  # [n, step, feature]: on yet?
        tables.append(torch.cat([torch.zeros(1, f, dtype=torch.bool), steps.flatten(0, 1)]))
    owner, keep = _ragged(prob.counts, tables)
    y = scores(model, prob, owner, keep, batch_size).to(x.dtype).split([1 + n_samples * f for f in counts])
    values = torch.zeros(len(counts), prob.width, dtype=x.dtype, device=x.device)
    for p, (f, perm, chain) in enumerate(zip(counts, perms, y, strict=True)):
        path = torch.cat([chain[:1].expand(n_samples, 1), chain[1:].view(n_samples, f)], 1)  # [n, 1 + F]
        values[p].index_add_(0, perm.flatten().to(x.device), path.diff(dim=1).flatten())
    return prob.paint(values / n_samples)


FORWARDS = "per image: n_samples (default 256)"
ENTRIES: list[tuple[str, Callable[..., torch.Tensor], str, str]] = [
    ("kernel_shap", kernel_shap, "Kernel SHAP: weighted least squares on sampled superpixel coalitions", FORWARDS),
    ("lime", lime, "LIME: a weighted Lasso on random superpixel coalitions", FORWARDS),
    (
        "feature_ablation",
        feature_ablation,
        "Feature ablation: the score drop when one superpixel is set to the baseline",
        "1 + F per image (F features, SLIC ~50)",
    ),
    (
        "shapley_sampling",
        shapley_sampling,
        "Shapley value sampling: mean marginal gains of superpixels over random orders",
        "1 + n_samples·F per image (8·F by default)",
    ),
]
for name, fn, summary, forwards in ENTRIES:
    register(
        Method(
            name,
            summary,
            run=fn,
            differentiable=False,
            needs_grad=False,
            signed=True,
            random=name != "feature_ablation",
            extra_forwards=forwards,
        )
    )

__all__ = ["feature_ablation", "kernel_shap", "lime", "shapley_sampling"]
