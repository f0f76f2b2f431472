"""Probes that run a model: measures (b) out-of-set response, (c) transformation consistency and
(d) stability across training runs of "Explain To Me" (docs/definitions.md, "The five salience measures").

An `explain` callable maps `(x [B, C, H, W], target long [B]) -> maps [B, h, w]`, e.g.
`salience.attribution.Explainer("grad_cam", model, "final")` (which also gives the scores of its forward, saving
the probes a forward per input) or `functools.partial(salience.attribution.grad_cam, model, layer="final")`. Scores are the softmax
probability of the target class. Work is batched over images and perturbation steps together, in
chunks of `batch_size` inputs.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn

from salience.attribution import Explainer, upsample
from salience.measures._checks import check_maps
from salience.measures.entropy import entropy
from salience.measures.similarity import SIMILARITIES, similarity
from salience.measures.summary import compare_groups

Explain = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
NOISE_AMOUNTS = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0)
TRANSFORMS = ("hflip", "vflip", "rot90_cw", "rot90_ccw") + tuple(
    f"shift_{dy:+d}_{dx:+d}" for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)
)


def check_inputs(x: torch.Tensor, target: torch.Tensor) -> None:
    """Check images `[B, C, H, W]` and a long target `[B]`."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"x must be images [B, C, H, W], got {tuple(x.shape) if isinstance(x, torch.Tensor) else x}")
    if not isinstance(target, torch.Tensor) or target.dtype != torch.long or target.shape != (x.shape[0],):
        got = (target.dtype, tuple(target.shape)) if isinstance(target, torch.Tensor) else type(target).__name__
        raise ValueError(f"target must be a long tensor [B] = [{x.shape[0]}], got {got}")


def explain_batched(explain: Explain, x: torch.Tensor, target: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Run `explain` over `x` in chunks of `batch_size`; returns detached maps `[B, h, w]` (NaN/inf refused)."""
    out = [explain(x[i : i + batch_size], target[i : i + batch_size]).detach() for i in range(0, len(x), batch_size)]
    return check_maps(torch.cat(out), "maps returned by explain")


def explain_scored(
    explain: Explain, model: nn.Module, x: torch.Tensor, target: torch.Tensor, batch_size: int = 64
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(maps [B, h, w], score [B], predicted class [B])` of `x` for `target`, in chunks of `batch_size`: the maps
    as `explain_batched`, the softmax probability of `target` and the argmax as `predict`. An `Explainer` of
    `model` reads the scores off its maps' forward; any other callable costs one forward more."""
    if not (isinstance(explain, Explainer) and explain.model is model):
        return explain_batched(explain, x, target, batch_size), *predict(model, x, target, batch_size)
    maps, scores, preds = [], [], []
    for i in range(0, len(x), batch_size):
        logits, m = explain.scored(x[i : i + batch_size], target[i : i + batch_size])
        score, pred = _score(logits, target[i : i + batch_size])
        maps.append(m.detach())
        scores.append(score)
        preds.append(pred)
    return check_maps(torch.cat(maps), "maps returned by explain"), torch.cat(scores), torch.cat(preds)


@torch.no_grad()
def predict(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor | None = None, batch_size: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(score [B], predicted class [B])`: softmax probability of `target` (default: the predicted class)."""
    scores, preds = [], []
    for i in range(0, len(x), batch_size):
        score, pred = _score(model(x[i : i + batch_size]), None if target is None else target[i : i + batch_size])
        scores.append(score)
        preds.append(pred)
    return torch.cat(scores), torch.cat(preds)


def _score(logits: torch.Tensor, target: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """`(softmax probability of target [B], predicted class [B])` from `logits [B, C]` (target None: the prediction)."""
    p = logits.softmax(1)
    pred = p.argmax(1)
    return p.gather(1, (pred if target is None else target)[:, None])[:, 0], pred


def _similarities(a: torch.Tensor, b: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
    return {n: similarity(n, a, b) for n in names}


# --- (b) out-of-set response ---------------------------------------------------------------------


def salt_and_pepper(
    x: torch.Tensor, amounts: Sequence[float], generator: torch.Generator, low: float = 0.0, high: float = 1.0
) -> torch.Tensor:
    """`[A, B, C, H, W]`: for each amount, each pixel (all channels together) is replaced with probability
    `amount`, by `low` or `high` with equal odds. Draws come from `generator` on the CPU (device-independent)."""
    a = torch.as_tensor(amounts, dtype=torch.float64)
    if ((a < 0) | (a > 1)).any():
        raise ValueError(f"noise amounts must lie in [0, 1], got {list(amounts)}")
    shape = (len(a), x.shape[0], 1, *x.shape[-2:])
    hit = torch.rand(shape, generator=generator, dtype=torch.float64) < a.view(-1, 1, 1, 1, 1)
    salt = torch.rand(shape, generator=generator) < 0.5
    value = torch.where(salt, high, low).to(x.dtype)
    return torch.where(hit.to(x.device), value.to(x.device), x.unsqueeze(0))


def noise_response(
    model: nn.Module,
    explain: Explain,
    x: torch.Tensor,
    target: torch.Tensor,
    amounts: Sequence[float] = NOISE_AMOUNTS,
    seed: int = 0,
    similarities: Sequence[str] = SIMILARITIES,
    batch_size: int = 64,
) -> dict:
    """Maps and scores of `x` vs `x` with seeded salt-and-pepper noise at each amount.

    Returns `{"amounts": [A], "similarity": {name: [B, A]}, "score": [B, A], "score_change": [B, A]
    (noisy - clean), "agreement": [B, A] (same predicted class as clean)}`.
    """
    check_inputs(x, target)
    noisy = salt_and_pepper(x, amounts, torch.Generator().manual_seed(seed))
    n_a, b = noisy.shape[:2]
    flat_x = torch.cat([x, noisy.flatten(0, 1)])
    flat_t = target.repeat(n_a + 1)
    maps, score, pred = explain_scored(explain, model, flat_x, flat_t, batch_size)
    clean_maps = maps[:b].repeat(n_a, 1, 1)
    sims = _similarities(clean_maps, maps[b:], similarities)
    per = lambda t: t.view(n_a, b).T
    return {
        "amounts": torch.as_tensor(amounts, dtype=torch.float64),
        "similarity": {k: per(v) for k, v in sims.items()},
        "score": per(score[b:]),
        "score_change": per(score[b:] - score[:b].repeat(n_a)),
        "agreement": per(pred[b:] == pred[:b].repeat(n_a)),
    }


def out_of_set_response(
    model: nn.Module,
    explain: Explain,
    x_in: torch.Tensor,
    target_in: torch.Tensor,
    x_out: torch.Tensor,
    seed: int = 0,
    batch_size: int = 64,
) -> dict:
    """Entropy (both kinds) and score of in-set images (explained for `target_in`) and of out-of-set images
    (explained for their predicted class), and the shift between the two sets per quantity
    (`compare_groups(out, in)`: difference of means, Cohen's d, permutation p-value)."""
    check_inputs(x_in, target_in)
    _, pred_out = predict(model, x_out, batch_size=batch_size)
    sets: dict[str, dict] = {}
    for name, x, t in (("in", x_in, target_in), ("out", x_out, pred_out)):
        maps, score, _ = explain_scored(explain, model, x, t, batch_size)
        sets[name] = {
            "entropy_histogram": entropy(maps, "histogram"),
            "entropy_spatial": entropy(maps, "spatial"),
            "score": score,
        }
    sets["shift"] = {k: compare_groups(sets["out"][k].cpu(), sets["in"][k].cpu(), seed=seed) for k in sets["in"]}
    return sets


# --- (c) transformation consistency --------------------------------------------------------------


def apply_transform(name: str, t: torch.Tensor) -> torch.Tensor:
    """Apply one of `TRANSFORMS` to `t [..., H, W]`. Shifts move the content by `round(side / 14)` pixels
    (sign per axis, `shift_{dy}_{dx}`) and fill with the nearest edge pixel (replicate padding)."""
    if name == "hflip":
        return t.flip(-1)
    if name == "vflip":
        return t.flip(-2)
    if name == "rot90_cw":
        return torch.rot90(t, -1, dims=(-2, -1))
    if name == "rot90_ccw":
        return torch.rot90(t, 1, dims=(-2, -1))
    if name in TRANSFORMS:
        (dy, dx), (h, w) = _shift(name, t.shape[-2:]), t.shape[-2:]
        rows = (torch.arange(h, device=t.device) - dy).clamp(0, h - 1)
        cols = (torch.arange(w, device=t.device) - dx).clamp(0, w - 1)
        return t[..., rows, :][..., cols]
    raise ValueError(f"unknown transform {name!r}; choose from {TRANSFORMS}")


def valid_region(name: str, size: tuple[int, int]) -> tuple[slice, slice]:
    """Rows and columns of a transformed image that hold real (not padded) pixels."""
    if not name.startswith("shift_"):
        return slice(None), slice(None)
    (dy, dx), (h, w) = _shift(name, size), size
    return slice(max(dy, 0), h + min(dy, 0)), slice(max(dx, 0), w + min(dx, 0))


def _shift(name: str, size: Sequence[int]) -> tuple[int, int]:
    sy, sx = (int(v) for v in name.split("_")[1:])
    return sy * round(size[0] / 14), sx * round(size[1] / 14)


def transform_consistency(
    model: nn.Module,
    explain: Explain,
    x: torch.Tensor,
    target: torch.Tensor,
    transforms: Sequence[str] = TRANSFORMS,
    similarities: Sequence[str] = SIMILARITIES,
    batch_size: int = 64,
) -> dict:
    """Similarity of `T(map(x))` with `map(T(x))` on T's valid region, per image and transform.

    Maps are upsampled bilinearly to the input size `(H, W)` before T is applied to them. Rotations need
    square images. Returns `{"transforms": names, "similarity": {name: [B, T]}, "agreement": [B, T]}`
    (agreement: the predicted class of `T(x)` equals that of `x`).
    """
    check_inputs(x, target)
    size = (x.shape[-2], x.shape[-1])
    if size[0] != size[1] and any(n.startswith("rot90") for n in transforms):
        raise ValueError(f"rot90 transforms need square images, got {size}; pass transforms without them")
    b = len(x)
    flat_x = torch.cat([x] + [apply_transform(n, x) for n in transforms])
    flat_t = target.repeat(len(transforms) + 1)
    maps, _, pred = explain_scored(explain, model, flat_x, flat_t, batch_size)
    maps = upsample(maps, size)
    sims: dict[str, list[torch.Tensor]] = {k: [] for k in similarities}
    for i, n in enumerate(transforms):
        rows, cols = valid_region(n, size)
        expected = apply_transform(n, maps[:b])[:, rows, cols]
        observed = maps[(i + 1) * b : (i + 2) * b][:, rows, cols]
        for k, v in _similarities(expected, observed, similarities).items():
            sims[k].append(v)
    return {
        "transforms": list(transforms),
        "similarity": {k: torch.stack(v, 1) for k, v in sims.items()},
        "agreement": (pred[b:].view(len(transforms), b) == pred[:b]).T,
    }


# --- (d) stability across training runs ----------------------------------------------------------


def seed_stability(maps: Sequence[torch.Tensor] | torch.Tensor, similarities: Sequence[str] = SIMILARITIES) -> dict:
    """Pairwise similarity of N models' maps of the same images, `maps` `[N, B, h, w]` (or a list of N).

    Returns `{"pairs": [(i, j)], "similarity": {name: [B, P]}, "mean": {name: [B]}}` over all
    P = N(N-1)/2 pairs; `mean` is the per-image stability.
    """
    stack = torch.stack(list(maps)) if not isinstance(maps, torch.Tensor) else maps
    if stack.dim() != 4 or stack.shape[0] < 2:
        raise ValueError(f"seed_stability needs maps [N >= 2, B, h, w], got {tuple(stack.shape)}")
    n, b = stack.shape[:2]
    pairs = list(itertools.combinations(range(n), 2))
    i, j = (torch.tensor(p, device=stack.device) for p in zip(*pairs, strict=True))
    a, c = stack[i].flatten(0, 1), stack[j].flatten(0, 1)
    sims = {k: v.view(len(pairs), b).T for k, v in _similarities(a, c, similarities).items()}
    return {"pairs": pairs, "similarity": sims, "mean": {k: v.mean(1) for k, v in sims.items()}}
