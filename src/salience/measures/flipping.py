"""Faithfulness by removing features in the order of the map, as Quantus 0.6 defines it: pixel flipping (Bach et
al. 2015), region perturbation (Samek et al. 2016), IROF (Rieger and Hansen 2020), selectivity (Montavon et al.
2018) and sensitivity-n (Ancona et al. 2018, in Quantus' form).

Maps `[B, h, w]` are read at the input size (upsampled bilinearly) and, as Quantus broadcasts them, at every
channel of their pixel. Removed features take Quantus' default baselines: the image's minimum (`black`) or, for
IROF, the mean of the image as perturbed so far (`mean`). The model's output is the target's softmax probability
(Quantus' `softmax=True`) or its logit. Every curve runs as one batched loop over (image, step) rows in chunks of
`batch_size` model inputs, under `torch.no_grad`, on the model's device. Quantus' `normalise_by_max` scales a
batch's maps by one positive number: no order or correlation below depends on it, so it is not applied.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from salience.attribution import upsample
from salience.attribution.core import check_classes, perturbed_outputs
from salience.attribution.features import feature_masks
from salience.measures.similarity import _corr

IROF_SLIC = {"n_segments": 100, "compactness": 10.0, "start_label": 0}
"""Quantus' IROF segmentation: scikit-image `slic` at its defaults (100 segments, compactness 10, Lab conversion
of 3-channel images) on the raw image, channels last."""


def _probabilities(model: nn.Module, target: torch.Tensor, softmax: bool) -> Callable:
    """A `run` of `perturbed_outputs`: `(inputs [n, C, H, W], image [n]) -> [n]`, the target's softmax probability
    (`softmax`) or logit."""

    def run(inputs: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        out = model(inputs)
        if out.dim() != 2:
            raise ValueError(f"model must return logits [B, num_classes]; got {tuple(out.shape)}")
        check_classes(target, out.shape[1])
        return (out.softmax(1) if softmax else out).gather(1, target[image, None])[:, 0]

    return run


def _at_input(x: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    if x.dim() != 4 or maps.dim() != 3 or maps.shape[0] != x.shape[0]:
        raise ValueError(f"need x [B, C, H, W] and maps [B, h, w] of as many images; got x {tuple(x.shape)}, "
                         f"maps {tuple(maps.shape)}")  # fmt: skip
    return upsample(maps.detach(), (x.shape[-2], x.shape[-1])).to(x.dtype)


def _ranks(order: torch.Tensor) -> torch.Tensor:
    """`order [B, N]` (positions -> items) inverted: `rank [B, N]` (items -> positions)."""
    rank = torch.empty_like(order)
    return rank.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))


def _feature_order(x: torch.Tensor, maps: torch.Tensor, order: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """The map at every input value `[B, C*H*W]` and the features in decreasing map value `[B, C*H*W]` (a stable
    sort: a pixel's channels in channel order), or `order` where given (e.g. NumPy's `argsort(-a)`, whose order
    among a pixel's tied channels is its own)."""
    a = _at_input(x, maps)[:, None].expand_as(x).flatten(1)
    if order is None:
        order = torch.sort(a, dim=1, descending=True, stable=True).indices
    elif tuple(order.shape) != tuple(a.shape):
        raise ValueError(f"order must be [B, C*H*W] = {tuple(a.shape)}; got {tuple(order.shape)}")
    return a, order.to(x.device).long()


def _flip_curve(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, order: torch.Tensor, k: int, steps: int, **kw: int
) -> torch.Tensor:
    """`[B, steps]`: the model's output (`_probabilities`) after step j has set the first `(j + 1) k` features of
    `order` (cumulatively) to the image's minimum. `kw`: `softmax`, `batch_size`."""
    flat = x.detach().flatten(1)
    low, rank, d = flat.amin(1, keepdim=True), _ranks(order), flat.shape[1]

    def perturb(image: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        cut = ((index + 1) * k).clamp(max=d)
        return torch.where(rank[image] < cut[:, None], low[image], flat[image]).view(-1, *x.shape[1:])

    run = _probabilities(model, target.to(x.device), bool(kw["softmax"]))
    with torch.no_grad():
        return perturbed_outputs(x, steps, perturb, run, kw["batch_size"])


def pixel_flipping(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    maps: torch.Tensor,
    features_in_step: int = 1,
    softmax: bool = True,
    batch_size: int = 64,
    order: torch.Tensor | None = None,
) -> dict:
    """Pixel flipping: set the input values (`C*H*W` features, the map read at each channel) to the image's minimum
    `features_in_step` at a time in decreasing map value, reading the target's output after each step ->
    `{"steps": features set after each step, "curve": [B, S], "auc": [B]}`, `S = ceil(C H W / features_in_step)`,
    auc = `np.trapz(curve, dx=1)` as Quantus' `return_auc_per_sample`. `order [B, C*H*W]`: another feature
    order (see `_feature_order`)."""
    d = x[0].numel()
    if not 1 <= features_in_step <= d:
        raise ValueError(f"pixel_flipping: features_in_step must be in [1, {d}], got {features_in_step}")
    _, order = _feature_order(x, maps, order)
    steps = math.ceil(d / features_in_step)
    curve = _flip_curve(model, x, target, order, features_in_step, steps, softmax=softmax, batch_size=batch_size)
    done = [min((j + 1) * features_in_step, d) for j in range(steps)]
    return {"steps": done, "curve": curve, "auc": torch.trapezoid(curve, dim=1)}


def patch_ids(height: int, width: int, patch_size: int, device: torch.device | None = None) -> torch.Tensor:
    """`[H, W]` long: the patch of each pixel, patches of `patch_size` x `patch_size` on the image padded to a
    multiple of `patch_size` (half the padding before, rounded down, as Quantus pads), numbered row by row."""
    if patch_size < 1:
        raise ValueError(f"patch_size must be >= 1, got {patch_size}")

    def axis(n: int) -> tuple[torch.Tensor, int]:
        pad = (patch_size - n % patch_size) % patch_size
        return (torch.arange(n, device=device) + pad // 2) // patch_size, (n + pad) // patch_size

    rows, _ = axis(height)
    cols, per_row = axis(width)
    return rows[:, None] * per_row + cols[None, :]


def _patch_curve(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor, **kw: Any
) -> torch.Tensor:
    """`[B, count]`: the model's output after step j has set the first j + 1 patches (`patch_ids`) in order of the
    map's sum over the patch (`order`: `morf` decreasing, `lerf` increasing, `random` a permutation per image from
    a generator seeded with `seed`) to the image's minimum, in every channel. `kw`: `patch_size`, `order`,
    `count`, `seed`, `softmax`, `batch_size`."""
    b, _, h, w = x.shape
    ids = patch_ids(h, w, kw["patch_size"], x.device)
    patches = int(ids.max()) + 1
    sums = torch.zeros(b, patches, device=x.device, dtype=torch.float64)
    sums.index_add_(1, ids.flatten(), _at_input(x, maps).flatten(1).double())
    if kw["order"] == "random":
        gen = torch.Generator(device=x.device).manual_seed(kw["seed"])
        ranking = torch.rand(b, patches, generator=gen, device=x.device).argsort(1)
    elif kw["order"] in ("morf", "lerf"):
        ranking = torch.sort(sums, dim=1, descending=kw["order"] == "morf", stable=True).indices
    else:
        raise ValueError(f"order must be 'morf', 'lerf' or 'random', got {kw['order']!r}")
    rank = _ranks(ranking)[:, ids][:, None]  # [B, 1, H, W]: the step that removes each pixel
    xd = x.detach()
    low = xd.flatten(1).amin(1)[:, None, None, None]

    def perturb(image: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return torch.where(rank[image] <= index[:, None, None, None], low[image], xd[image])

    run = _probabilities(model, target.to(x.device), kw["softmax"])
    with torch.no_grad():
        return perturbed_outputs(x, min(kw["count"], patches), perturb, run, kw["batch_size"])


def region_perturbation(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    maps: torch.Tensor,
    patch_size: int = 8,
    order: str = "morf",
    regions_evaluation: int = 100,
    softmax: bool = True,
    seed: int = 0,
    batch_size: int = 64,
) -> dict:
    """Region perturbation: the drop of the target's output (clean minus perturbed) as the first
    `regions_evaluation` patches in `order` are set to the image's minimum, one more per step (`_patch_curve`) ->
    `{"curve": [B, R], "auc": [B]}`, R = min(regions_evaluation, patches), auc = `np.trapz(curve, dx=1)`."""
    if regions_evaluation < 1:
        raise ValueError(f"regions_evaluation must be >= 1, got {regions_evaluation}")
    kw = dict(patch_size=patch_size, order=order, count=regions_evaluation, seed=seed)
    probe = _patch_curve(model, x, target, maps, softmax=softmax, batch_size=batch_size, **kw)
    with torch.no_grad():
        clean = _probabilities(model, target.to(x.device), softmax)(x.detach(), torch.arange(len(x), device=x.device))
    curve = clean[:, None] - probe
    return {"curve": curve, "auc": torch.trapezoid(curve, dim=1)}


def selectivity(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    maps: torch.Tensor,
    patch_size: int = 8,
    softmax: bool = True,
    batch_size: int = 64,
) -> dict:
    """Selectivity: the target's output as every patch, in decreasing map sum, is set to the image's minimum, one
    more per step (`_patch_curve`, all patches) -> `{"curve": [B, P], "auc": [B]}`, auc = `np.trapz(curve, dx=1)`
    (lower: the output falls sooner)."""
    kw = dict(patch_size=patch_size, order="morf", count=x.shape[-2] * x.shape[-1], seed=0)
    curve = _patch_curve(model, x, target, maps, softmax=softmax, batch_size=batch_size, **kw)
    return {"curve": curve, "auc": torch.trapezoid(curve, dim=1)}


def irof_segments(x: torch.Tensor) -> torch.Tensor:
    """Quantus' IROF superpixels of each image of `x [B, C, H, W]`: scikit-image `slic` with `IROF_SLIC` on the raw
    image, channels last -> long `[B, H, W]` (ids as `slic` gives them). Segmentation runs on the CPU."""
    from skimage.segmentation import slic

    images = x.detach().double().permute(0, 2, 3, 1).cpu().numpy()
    labels = [np.ascontiguousarray(slic(image, **IROF_SLIC)) for image in images]
    return torch.from_numpy(np.stack(labels)).long().to(x.device)


def _fill_values(x: torch.Tensor, seg: torch.Tensor, ranking: torch.Tensor, f: int) -> torch.Tensor:
    """`[B, F]`: the value set at step j: the mean (all channels) of the image as perturbed by steps < j, which sets
    segment `ranking[:, j]` of `seg [B, H, W]`. Each segment is set once, so the image's total follows
    `total_j = total_{j-1} - S_j + n_j m_j` (S: the clean sum over the segment, n its values); in float64."""
    b, c, h, w = x.shape
    xs = x.detach().double()
    seg_sum = torch.zeros(b, f, device=x.device, dtype=torch.float64).scatter_add_(
        1, seg.flatten(1), xs.sum(1).flatten(1)
    )
    seg_n = torch.zeros_like(seg_sum).scatter_add_(
        1, seg.flatten(1), torch.full_like(seg_sum[:, :1], c).expand(b, h * w)
    )
    s, n = seg_sum.gather(1, ranking), seg_n.gather(1, ranking)
    total, fill = xs.flatten(1).sum(1), torch.empty_like(s)
    for j in range(f):  # a recursion over steps (about 100), batched over images
        fill[:, j] = total / (c * h * w)
        total = total - s[:, j] + n[:, j] * fill[:, j]
    return fill.to(x.dtype)


def irof(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    maps: torch.Tensor,
    segments: torch.Tensor | str = "quantus",
    softmax: bool = True,
    batch_size: int = 64,
) -> dict:
    """Iterative removal of features: the superpixels, in decreasing mean map value, are set one more per step to
    the mean of the image as perturbed so far (`_fill_values`); the curve is the target's output over the clean
    one -> `{"curve": [B, F_max], "counts": [B], "aoc": [B]}`, aoc = `F_b - np.trapz(curve[:F_b], dx=1)` per image
    (F_b segments; the curve is 0 beyond). `segments`: `"quantus"` (`irof_segments`), or what
    `salience.attribution.features.feature_masks` takes (a long tensor `[B, H, W]`, `"slic:N"`, `"grid:N"`)."""
    seg, counts = feature_masks(
        x, irof_segments(x) if isinstance(segments, str) and segments == "quantus" else segments
    )
    b, f = x.shape[0], int(counts.max())
    pixels = torch.zeros(b, f, device=x.device, dtype=torch.float64)
    pixels.scatter_add_(1, seg.flatten(1), torch.ones_like(seg.flatten(1), dtype=torch.float64))
    means = torch.zeros_like(pixels).scatter_add_(1, seg.flatten(1), _at_input(x, maps).flatten(1).double())
    valid = torch.arange(f, device=x.device) < counts[:, None]
    means = torch.where(valid, means / pixels.clamp(min=1), -torch.inf)
    ranking = torch.sort(means, dim=1, descending=True, stable=True).indices
    fill = _fill_values(x, seg, ranking, f)
    rank = _ranks(ranking).gather(1, seg.flatten(1)).view_as(seg)[:, None]  # [B, 1, H, W]
    fill_px = fill.gather(1, rank.flatten(1)).view_as(rank)
    xd = x.detach()

    def perturb(image: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return torch.where(rank[image] <= index[:, None, None, None], fill_px[image], xd[image])

    run = _probabilities(model, target.to(x.device), softmax)
    with torch.no_grad():
        clean = run(xd, torch.arange(b, device=x.device))
        curve = perturbed_outputs(x, f, perturb, run, batch_size) / clean[:, None] * valid
    area = ((curve[:, :-1] + curve[:, 1:]) / 2 * valid[:, 1:]).sum(1)
    return {"curve": curve, "counts": counts, "aoc": counts.to(x.dtype) - area}


def sensitivity_n(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    maps: torch.Tensor,
    n_max_percentage: float = 0.8,
    features_in_step: int = 1,
    softmax: bool = True,
    batch_size: int = 64,
    order: torch.Tensor | None = None,
) -> dict:
    """Sensitivity-n in Quantus' form: features set to the image's minimum `features_in_step` at a time in
    decreasing map value (as `pixel_flipping`), for the first `N = int(n_max_percentage H W // features_in_step)`
    steps -> `{"steps", "pred_deltas" [B, N]` (clean minus perturbed output), `"att_sums" [B, N]` (the map summed
    over the step's own features), `"correlation" [N]` (Quantus' result: at each step, the Pearson correlation of
    the two across the images; 0 where one is constant), `"score" [B]` (ours, per image: the Pearson correlation
    over the steps of the map summed over all features removed so far with `pred_deltas`)}."""
    h, w = x.shape[-2:]
    d = x[0].numel()
    if not 1 <= features_in_step <= d:
        raise ValueError(f"sensitivity_n: features_in_step must be in [1, {d}], got {features_in_step}")
    steps = min(int(n_max_percentage * h * w // features_in_step), math.ceil(d / features_in_step))
    if steps < 1:
        raise ValueError(f"sensitivity_n: n_max_percentage {n_max_percentage} leaves no step of {features_in_step}")
    a, order = _feature_order(x, maps, order)
    probe = _flip_curve(model, x, target, order, features_in_step, steps, softmax=softmax, batch_size=batch_size)
    with torch.no_grad():
        clean = _probabilities(model, target.to(x.device), softmax)(x.detach(), torch.arange(len(x), device=x.device))
    deltas = clean[:, None] - probe
    ranked = a.gather(1, order)[:, : steps * features_in_step]
    ranked = torch.nn.functional.pad(ranked, (0, steps * features_in_step - ranked.shape[1]))
    sums = ranked.view(len(x), steps, features_in_step).sum(2)
    return {
        "steps": [min((j + 1) * features_in_step, d) for j in range(steps)],
        "pred_deltas": deltas,
        "att_sums": sums,
        "correlation": _corr(deltas.T.double(), sums.T.double()).to(x.dtype),
        "score": _corr(sums.double().cumsum(1), deltas.double()).to(x.dtype),
    }
