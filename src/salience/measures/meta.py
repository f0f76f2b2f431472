"""MetaQuantus' meta-evaluation of measures (Hedström et al., "The Meta-Evaluation Problem in Explainable AI",
TMLR 2023): is a measure resilient to minor perturbations and reactive to disruptive ones?

Four perturbation tests, each repeated `perturbations` (K) times per iteration, for `iterations` (I):
- input resilience / adversary (IPT): uniform noise in [-a, a] on every input value (clipped below at the images'
  minimum), a = 0.001 / 5.0; the maps stay those of the clean images (as `metaquantus` does), the measure reads
  the noisy images;
- model resilience / adversary (MPT): every parameter multiplied by N(1, s^2) noise, s = 0.001 / 0.5; the maps
  are those of the perturbed model.
The images are explained for the class the unperturbed model predicts. A resilience test keeps the images whose
prediction did not change, an adversary test those whose prediction changed. Per measure, method, iteration and
perturbation: IAC is the two-sided Wilcoxon signed-rank p-value of the clean vs the perturbed scores (resilience)
or 1 - p (adversary); IEC compares the methods per image: resilience, the share of rank positions of the methods
that stay the same; adversary, the share of (method, image) pairs whose score got worse. IAC_NR, IAC_AR, IEC_NR,
IEC_AR: means over methods and perturbations per iteration; MC: their mean, with mean ± sd over iterations.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping

import torch
from torch import nn

Explain = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Scorer = Callable[[nn.Module, Explain, torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]
"""`scorer(model, explain, x [N, C, H, W], target [N], maps [N, h, w], seed) -> [N]`: a measure's per-image values."""

TESTS = ("input_resilience", "input_adversary", "model_resilience", "model_adversary")
SCORES = ("IAC_NR", "IAC_AR", "IEC_NR", "IEC_AR")
_EXACT_MAX = 50
_PERMUTATION_MAX = 13


def _subset_sum_counts(n_max: int, device: torch.device) -> torch.Tensor:
    """`[n_max + 1, n_max (n_max + 1) / 2 + 1]` float64: row n counts the subsets of {1..n} with each sum (the
    null distribution of Wilcoxon's W+ times 2^n); exact in float64 up to n = 50."""
    size = n_max * (n_max + 1) // 2 + 1
    counts = torch.zeros(n_max + 1, size, dtype=torch.float64, device=device)
    counts[0, 0] = 1
    for n in range(1, n_max + 1):
        counts[n] = counts[n - 1]
        counts[n, n:] += counts[n - 1, : size - n]
    return counts


def _ranks(a: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average ranks (1-based) of `a [R, B]` among the kept entries of each row (0 where not kept), and each
    entry's tie count (entries equal to it, itself included; 0 where not kept)."""
    k = keep[:, None, :] & keep[:, :, None]
    less = ((a[:, None, :] < a[:, :, None]) & k).sum(2)
    ties = ((a[:, None, :] == a[:, :, None]) & k).sum(2)
    rank = less + (ties + 1) / 2
    return torch.where(keep, rank, 0.0).to(torch.float64), torch.where(keep, ties, 0)


def _exact_p(r_plus: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """Two-sided exact p `2 min(P(W+ >= floor r), P(W+ <= ceil r))` for n <= 50 (scipy's `exact`)."""
    counts = _subset_sum_counts(_EXACT_MAX, r_plus.device)
    cdf = counts.cumsum(1)[n] / 2.0 ** n[:, None].double()
    hi = torch.ceil(r_plus).long().clamp(0, cdf.shape[1] - 1)
    lo = torch.floor(r_plus).long().clamp(0, cdf.shape[1] - 1)
    below = cdf.gather(1, hi[:, None])[:, 0]
    above = 1 - torch.where(lo > 0, cdf.gather(1, (lo - 1).clamp(min=0)[:, None])[:, 0], 0.0)
    return (2 * torch.minimum(below, above)).clamp(0, 1)


def _permutation_p(rank: torch.Tensor, d: torch.Tensor, keep: torch.Tensor, r_plus: torch.Tensor) -> torch.Tensor:
    """Two-sided p of W+ over all 2^n sign flips of the kept differences (scipy's exact permutation test, for
    n <= 13 with ties or zeros): rows `rank, d, keep [R, B]`, observed `r_plus [R]`."""
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices[:, :_PERMUTATION_MAX]
    live = torch.where((d != 0) & keep, rank, 0.0).gather(1, order)  # [R, 13]; zeros never count as positive
    half_zero = (torch.where((d == 0) & keep, rank, 0.0)).sum(1) / 2
    width = live.shape[1]  # at most 13 kept entries; fewer columns when B < 13
    codes = torch.arange(2**width, device=d.device)
    bits = ((codes[:, None] >> torch.arange(width, device=d.device)) & 1).double()  # [2^w, w]: every sign flip
    out = []
    for i in range(0, len(live), 256):
        null = live[i : i + 256] @ bits.T + half_zero[i : i + 256, None]
        obs = r_plus[i : i + 256, None]
        gamma = (torch.finfo(torch.float64).eps * 100 * obs).abs()
        less = (null <= obs + gamma).double().mean(1)
        greater = (null >= obs - gamma).double().mean(1)
        out.append((2 * torch.minimum(less, greater)).clamp(0, 1))
    return torch.cat(out) if out else r_plus.new_zeros(0)


def wilcoxon_p(q: torch.Tensor, q_hat: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Two-sided Wilcoxon signed-rank p-values of `q - q_hat` over the kept entries of each row `[R, B]` -> `[R]`,
    zeros split between the signs (scipy's `wilcoxon(q, q_hat, zero_method="zsplit")`, method `auto`: exact for
    n <= 50 without ties or zeros; with them, a permutation over every sign flip for n <= 13, else the normal
    approximation with the tie correction, no continuity correction). NaN where no entry is kept or a kept
    score is NaN; 0 for a single kept zero difference (scipy raises there; `metaquantus` scores it 0)."""
    d = (q.double() - q_hat.double()).where(keep, 0.0)
    n = keep.sum(1)
    rank, ties = _ranks(d.abs(), keep)
    pos = (d > 0) & keep
    zero = (d == 0) & keep
    r_plus = (rank * pos).sum(1) + (rank * zero).sum(1) / 2
    tied = (ties > 1).any(1) | zero.any(1)
    nf = n.double()
    se = (nf * (nf + 1) * (2 * nf + 1) - ((ties.double() ** 3 - ties.double()) / ties.clamp(min=1)).sum(1) / 2) / 24
    z = (r_plus - nf * (nf + 1) / 4) / se.clamp(min=1e-300).sqrt()
    p = 2 * torch.special.ndtr(-z.abs())
    exact = (n <= _EXACT_MAX) & ~tied
    p = torch.where(exact, _exact_p(r_plus, n.clamp(max=_EXACT_MAX)), p)
    perm = (n <= _PERMUTATION_MAX) & tied & (n > 1)
    if bool(perm.any()):
        p[perm] = _permutation_p(rank[perm], d[perm], keep[perm], r_plus[perm])
    p = torch.where((n == 1) & zero.any(1), 0.0, p)
    bad = (torch.isnan(q.double()) | torch.isnan(q_hat.double())) & keep
    return torch.where((n == 0) | bad.any(1), torch.nan, p)


def intra_consistency(q: torch.Tensor, q_hat: torch.Tensor, keep: torch.Tensor, adversary: bool) -> torch.Tensor:
    """IAC: Wilcoxon p of the clean scores `q [M, B]` vs the perturbed `q_hat [M, I, K, B]` over the kept images
    `keep [I, K, B]` (resilience) or 1 - p (adversary) -> `[M, I, K]`."""
    m, i, k, b = q_hat.shape
    rows = wilcoxon_p(q[:, None, None].expand_as(q_hat).reshape(-1, b), q_hat.reshape(-1, b),
                      keep.expand(m, i, k, b).reshape(-1, b))  # fmt: skip
    p = rows.view(m, i, k)
    return 1 - p if adversary else p


def inter_consistency(
    q: torch.Tensor, q_hat: torch.Tensor, keep: torch.Tensor, adversary: bool, better: str | None
) -> torch.Tensor:
    """IEC -> `[I, K]`. Resilience: over kept images, the share of rank positions where the methods' order by
    score (stable ascending sort) is unchanged. Adversary: over kept images and methods, the share of perturbed
    scores worse than the clean ones (lower when `better="higher"`, else higher). NaN where no image is kept."""
    keep_f = keep.to(torch.float64)  # [I, K, B]
    if adversary:
        worse = q[:, None, None] > q_hat if better == "higher" else q[:, None, None] < q_hat  # [M, I, K, B]
        hits = (worse.double() * keep_f).sum((0, 3))
        total = keep_f.sum(2) * q.shape[0]
    else:
        r_star = torch.sort(q, dim=0, stable=True).indices[:, None, None]  # [M, 1, 1, B]
        r_hat = torch.sort(q_hat, dim=0, stable=True).indices
        hits = ((r_star == r_hat).double() * keep_f).sum((0, 3))
        total = keep_f.sum(2) * q.shape[0]
    return torch.where(total > 0, hits / total.clamp(min=1), torch.nan)


def _nanstd(v: torch.Tensor) -> float:
    v = v[~torch.isnan(v)]
    return float(v.std(unbiased=False)) if len(v) else math.nan


def meta_consistency(parts: Mapping[str, torch.Tensor]) -> dict:
    """MC of one perturbation type from `parts` (IAC_NR, IAC_AR `[M, I, K]`; IEC_NR, IEC_AR `[I, K]`): each
    part's per-iteration NaN-mean, its mean and sd (population, over iterations), MC per iteration (the mean
    of the four), `mc_mean` (the NaN-mean of all four parts' per-iteration values) and `mc_std` (sd over
    iterations), as `metaquantus`' current code (NaN-means)."""
    per_iter = {
        name: torch.nanmean(v.flatten(1) if v.dim() == 2 else v.movedim(1, 0).flatten(1), dim=1)
        for name, v in ((s, parts[s]) for s in SCORES)
    }
    stacked = torch.stack([per_iter[s] for s in SCORES])  # [4, I]
    mc = torch.nanmean(stacked, dim=0)
    out: dict = {s: {"mean": float(torch.nanmean(v)), "std": _nanstd(v), "per_iteration": v.tolist()}
                 for s, v in per_iter.items()}  # fmt: skip
    out["MC"] = {"mean": float(torch.nanmean(stacked)), "std": _nanstd(mc), "per_iteration": mc.tolist()}
    return out


def _predict(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The predicted classes of `x [N, ...]`, `batch_size` images per forward."""
    with torch.no_grad():
        return torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def _input_scores(
    model: nn.Module,
    explainers: Mapping[str, Callable[[nn.Module], Explain]],
    scorers: Mapping[str, Scorer],
    x: torch.Tensor,
    y: torch.Tensor,
    maps: Mapping[str, torch.Tensor],
    noise: torch.Tensor,
    seed: int,
    batch_size: int,
    reexplain: bool = False,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One input test: `noise [I, K, B, C, H, W]` added to `x` (clipped below at x's minimum); per measure the
    scores `[M, I, K, B]` of the clean maps (`reexplain`: the noisy images' maps) on the noisy images (all K
    perturbations of an iteration in one call of each measure), and whether each prediction stayed `[I, K, B]`."""
    i_n, k_n, b = noise.shape[:3]
    same: list[torch.Tensor] = []
    scores: dict[str, list[torch.Tensor]] = {s: [] for s in scorers}
    for it in range(i_n):
        xs = (x[None] + noise[it]).clamp(min=float(x.min())).flatten(0, 1)  # [K B, C, H, W], k-major
        ys = y.repeat(k_n)
        same.append((_predict(model, xs, batch_size) == ys).view(k_n, b))
        for name, score in scorers.items():
            per_method = []
            for method, make in explainers.items():
                explain = make(model)
                m = explain(xs, ys).detach() if reexplain else maps[method].repeat(k_n, 1, 1)
                v = score(model, explain, xs, ys, m, seed + 1 + it)
                per_method.append(v.detach().view(k_n, b))
            scores[name].append(torch.stack(per_method))
    return {s: torch.stack(v, 1) for s, v in scores.items()}, torch.stack(same)


def _set_parameters(work: nn.Module, original: list[torch.Tensor], factors: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for p, p0, f in zip(work.parameters(), original, factors, strict=True):
            p.copy_(p0 * f)


def _model_scores(
    model: nn.Module,
    explainers: Mapping[str, Callable[[nn.Module], Explain]],
    scorers: Mapping[str, Scorer],
    x: torch.Tensor,
    y: torch.Tensor,
    factors: Callable[[int], list[torch.Tensor]],
    shape: tuple[int, int],
    seed: int,
    batch_size: int,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One model test: for each of the I x K perturbed models (parameters times `factors(copy)`, set in place in
    one working copy of `model` on its device), the maps of every method on x and their scores per measure
    `[M, I, K, B]`, and whether each prediction stayed `[I, K, B]`."""
    work = copy.deepcopy(model).eval()
    original = [p.detach().clone() for p in model.parameters()]
    copies, b = shape[0] * shape[1], len(x)
    same = torch.empty(copies, b, dtype=torch.bool, device=x.device)
    scores = {s: torch.empty(len(explainers), copies, b, dtype=torch.float64, device=x.device) for s in scorers}
    for c in range(copies):
        _set_parameters(work, original, factors(c))
        same[c] = _predict(work, x, batch_size) == y
        for j, make in enumerate(explainers.values()):
            explain = make(work)
            maps = explain(x, y).detach()
            for name, score in scorers.items():
                scores[name][j, c] = score(work, explain, x, y, maps, seed + 1 + c).detach().double()
    return {s: v.view(len(explainers), *shape, b) for s, v in scores.items()}, same.view(*shape, b)


def _weight_factors(
    model: nn.Module, std: float, seed: int, device: torch.device, given: list[torch.Tensor] | None
) -> Callable[[int], list[torch.Tensor]]:
    """`factors(copy)`: per parameter, multiplicative N(1, std^2) noise drawn on `device` from a generator seeded
    with `seed` (copy after copy), or the `given` tensors' row `copy` (each `[I K, *parameter shape]`)."""
    if given is not None:
        return lambda c: [g[c].to(device) for g in given]
    gen = torch.Generator(device=device).manual_seed(seed)

    def draw(_: int) -> list[torch.Tensor]:
        return [1 + std * torch.randn(p.shape, generator=gen, device=device, dtype=p.dtype) for p in model.parameters()]

    return draw


def _input_noise(shape: tuple[int, ...], bound: float, seed: int, like: torch.Tensor) -> torch.Tensor:
    gen = torch.Generator(device=like.device).manual_seed(seed)
    return (torch.rand(shape, generator=gen, device=like.device, dtype=like.dtype) * 2 - 1) * bound


def meta_evaluate(
    model: nn.Module,
    x: torch.Tensor,
    explainers: Mapping[str, Callable[[nn.Module], Explain]],
    scorers: Mapping[str, Scorer],
    better: Mapping[str, str | None],
    *,
    iterations: int = 5,
    perturbations: int = 10,
    input_noise: tuple[float, float] = (0.001, 5.0),
    model_std: tuple[float, float] = (0.001, 0.5),
    seed: int = 0,
    batch_size: int = 64,
    noise: Mapping[str, torch.Tensor | list[torch.Tensor]] | None = None,
    reexplain: bool = False,
) -> dict[str, dict]:
    """MetaQuantus' scores of every measure of `scorers` on `model` and images `x [B, C, H, W]`, the methods
    `explainers` (name -> `make(model) -> explain(x, target) -> maps`, at least two for a meaningful IEC_NR),
    explained for the predicted class. `better[measure]`: `"higher"`, `"lower"` or None (None: reactivity read
    as for `"lower"`). `input_noise`: the bounds of the input resilience and adversary tests; `model_std`: the
    sd of the multiplicative weight noise of the model tests (`metaquantus`' ImageNet settings). Randomness:
    from `seed` (torch generators on x's device); `noise`: the tests' draws instead (test name -> `[I, K, B, C,
    H, W]` added noise, or a list per parameter of `[I K, *shape]` weight factors), as the tests reproduce
    `metaquantus`. `reexplain`: the input tests explain the noisy images (the paper's definition) instead of
    scoring the clean images' maps on them (`metaquantus`' code, the default). Returns `{measure: {"input": meta_consistency, "model": ..., "tests": {test: {"IAC": [M, I, K],
    "IEC": [I, K]}}}}` (lists)."""
    model.eval()
    noise = noise or {}
    y = _predict(model, x, batch_size)
    maps = {m: make(model)(x, y).detach() for m, make in explainers.items()}
    q = {s: torch.stack([f(model, explainers[m](model), x, y, maps[m], seed).detach().double() for m in explainers])
         for s, f in scorers.items()}  # fmt: skip
    shape = (iterations, perturbations)
    tests: dict[str, tuple[dict[str, torch.Tensor], torch.Tensor]] = {}
    for t, test in enumerate(TESTS):
        level = (input_noise if test.startswith("input") else model_std)[test.endswith("adversary")]
        given = noise.get(test)
        if test.startswith("input"):
            drawn = given if isinstance(given, torch.Tensor) else None
            drawn = drawn if drawn is not None else _input_noise((*shape, *x.shape), level, seed + 1000 * t, x)
            tests[test] = _input_scores(
                model, explainers, scorers, x, y, maps, drawn.to(x), seed, batch_size, reexplain
            )
        else:
            factors = _weight_factors(
                model, level, seed + 1000 * t, x.device, given if isinstance(given, list) else None
            )
            tests[test] = _model_scores(model, explainers, scorers, x, y, factors, shape, seed, batch_size)
    return {s: _consistency(q[s], {t: (v[0][s], v[1]) for t, v in tests.items()}, better.get(s)) for s in scorers}


def _consistency(q: torch.Tensor, tests: Mapping[str, tuple[torch.Tensor, torch.Tensor]], better: str | None) -> dict:
    """One measure's IAC and IEC per test (clean scores `q [M, B]`; per test the perturbed scores `[M, I, K, B]`
    and whether each prediction stayed `[I, K, B]`) and its meta-consistency per perturbation type."""
    parts: dict[str, dict[str, torch.Tensor]] = {"input": {}, "model": {}}
    out: dict = {"tests": {}}
    for test, (q_hat, same) in tests.items():
        adversary = test.endswith("adversary")
        keep = ~same if adversary else same
        iac = intra_consistency(q, q_hat, keep, adversary)
        iec = inter_consistency(q, q_hat, keep, adversary, better)
        kind, suffix = test.split("_")[0], "AR" if adversary else "NR"
        parts[kind][f"IAC_{suffix}"], parts[kind][f"IEC_{suffix}"] = iac, iec
        out["tests"][test] = {"IAC": iac.tolist(), "IEC": iec.tolist(), "kept": keep.double().mean().item()}
    for kind, p in parts.items():
        out[kind] = meta_consistency(p)
    return out


def registry_scorer(
    name: str,
    masks: torch.Tensor | None = None,
    options: Mapping[str, object] | None = None,
    samples: int | None = None,
    deletion_steps: int = 16,
) -> Scorer:
    """The `Scorer` of registry measure `name` (maps or probe kind; not one that needs the method, as MPRT):
    maps-kind on the maps (upsampled to the images' size where `at_input`) and `masks [B, H, W]` repeated over
    the rows; probe-kind on a `Probe` of the rows with `seed`, `samples` and `deletion_steps`; `options`: the
    measure's keyword options."""
    from salience.attribution import upsample
    from salience.measures.registry import Probe, get_measure

    m = get_measure(name)
    if m.kind == "group" or m.needs_method or (m.needs_masks and masks is None):
        why = "needs masks" if m.needs_masks and masks is None else f"is a {m.kind}-kind measure needing the method"
        raise ValueError(f"meta-evaluation: measure {name!r} {why}; it cannot be meta-evaluated here")
    opts = dict(options or {})

    def rows(n: int) -> torch.Tensor | None:
        return None if masks is None else masks.repeat(n // len(masks), 1, 1)

    def score(
        model: nn.Module, explain: Explain, x: torch.Tensor, y: torch.Tensor, maps: torch.Tensor, seed: int
    ) -> torch.Tensor:
        if m.kind == "maps":
            return m.fn(upsample(maps, (x.shape[-2], x.shape[-1])) if m.at_input else maps, rows(len(x)), **opts)
        probe = Probe(model, explain, x, y, maps, rows(len(x)), seed, deletion_steps, samples=samples)
        return m.fn(probe, **opts)

    return score


def meta_measures(names: list[str] | None, masks: bool) -> list[str]:
    """The measures among `names` (None: all) that can be meta-evaluated: maps- and probe-kind ones that do not
    need the method (MPRT explains randomised models itself), with masks only when there are masks."""
    from salience.measures.registry import MEASURES, select

    return [n for n in select(names, masks=masks) if MEASURES[n].kind != "group" and not MEASURES[n].needs_method]
