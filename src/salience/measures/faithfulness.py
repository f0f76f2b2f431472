"""Faithfulness as Quantus 0.6 defines it: ROAD (Rong et al. 2022) with noisy linear imputation, most- and
least-relevant first, and faithfulness correlation (Bhatt et al. 2020).

Maps are read at the input size (upsampled bilinearly). Everything is batched on the model's device: ROAD's
imputation solves every (image, percentage, channel) system at once by conjugate gradients on a 3 x 3 stencil
instead of one sparse factorisation per image and percentage.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from salience.attribution import upsample
from salience.attribution.core import perturbed_outputs
from salience.measures.similarity import _corr

ROAD_PERCENTAGES = tuple(range(1, 100, 2))
_W = ((1 / 12, 1 / 6, 1 / 12), (1 / 6, 0.0, 1 / 6), (1 / 12, 1 / 6, 1 / 12))
"""ROAD's neighbour weights (diagonals 1/12, edges 1/6)."""


def _neighbours(v: torch.Tensor) -> torch.Tensor:
    """Weighted sum of each pixel's in-frame neighbours (weights `_W`), `v [N, 1, H, W]`: eight shifted adds of
    the zero-padded field (faster than a float64 convolution on the CPU)."""
    h, w = v.shape[-2:]
    z = F.pad(v, (1, 1, 1, 1))
    edges = z[..., :h, 1 : w + 1] + z[..., 2:, 1 : w + 1] + z[..., 1 : h + 1, :w] + z[..., 1 : h + 1, 2:]
    corners = z[..., :h, :w] + z[..., :h, 2:] + z[..., 2:, :w] + z[..., 2:, 2:]
    return edges / 6 + corners / 12


def linear_imputation(x: torch.Tensor, mask: torch.Tensor, tol: float = 1e-7, max_iter: int = 5000) -> torch.Tensor:
    """ROAD's linear imputation of `x [N, C, H, W]` where `mask [N, H, W]` (bool) is set: each masked value
    equals the weighted mean of its in-frame neighbours (weights `_W`, renormalised at the border), the unmasked
    ones fixed; the same sparse system Quantus' `noisy_linear_imputation` solves with `spsolve`, here solved by
    conjugate gradients for all images and channels at once (each system until its residual norm is below `tol`
    times that of its right-hand side, at most `max_iter` steps; converged systems leave the batch), in float64
    (float32 stalls above such residuals). Returns the imputed images (no noise), in x's dtype."""
    n, c, h, w = x.shape
    m = mask[:, None].expand(n, c, h, w).reshape(n * c, 1, h, w).double()
    v = x.reshape(n * c, 1, h, w).double()
    s = _neighbours(torch.ones_like(v[:1]))  # in-frame weight sum per pixel
    b = m * _neighbours((1 - m) * v)
    out = b / s  # Jacobi start; rows are written back as their systems converge
    stop = (tol * b.flatten(1).norm(dim=1).clamp(min=1e-30)) ** 2
    active = torch.arange(n * c, device=x.device)
    mm, u = m, out
    apply = lambda z: mm * (s * z - _neighbours(mm * z))
    r = b - apply(u)
    p = r.clone()
    rr = (r * r).flatten(1).sum(1)
    for i in range(max_iter):
        if i % 10 == 0:
            done = rr <= stop[active]
            if bool(done.any()):
                out[active[done]] = u[done]
                keep = ~done
                if not bool(keep.any()):
                    break
                active, mm, u, r, p, rr = active[keep], mm[keep], u[keep], r[keep], p[keep], rr[keep]
        ap = apply(p)
        pap = (p * ap).flatten(1).sum(1)
        alpha = torch.where(pap > 0, rr / torch.where(pap > 0, pap, torch.ones_like(pap)), torch.zeros_like(pap))
        u = u + alpha.view(-1, 1, 1, 1) * p
        r = r - alpha.view(-1, 1, 1, 1) * ap
        rr_new = (r * r).flatten(1).sum(1)
        beta = torch.where(rr > 0, rr_new / torch.where(rr > 0, rr, torch.ones_like(rr)), torch.zeros_like(rr))
        p = r + beta.view(-1, 1, 1, 1) * p
        rr = rr_new
    else:
        out[active] = u  # max_iter reached: the last iterate
    return (m * out + (1 - m) * v).view(n, c, h, w).to(x.dtype)


def road(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    maps: torch.Tensor,
    order: str = "morf",
    percentages: Sequence[int] = ROAD_PERCENTAGES,
    noise: float = 0.01,
    seed: int = 0,
    chunk: int = 256,
) -> dict:
    """ROAD: for each percentage p, impute the `int(H W p / 100)` pixels of highest (`morf`) or lowest (`lerf`)
    map value (`linear_imputation` in every channel, plus Gaussian noise of sd `noise` on the imputed values,
    drawn from a `torch.Generator` seeded with `seed` on x's device) and check whether the model still predicts
    `target`. Returns `{"percentages": [P], "correct": [B, P] bool, "score": [B]}` (score: mean of `correct`
    over the percentages, the per-image area under Quantus' accuracy curve). `chunk`: (image, percentage)
    systems solved at once."""
    if order not in ("morf", "lerf"):
        raise ValueError(f"road order must be 'morf' or 'lerf', got {order!r}")
    b, _, h, w = x.shape
    a = upsample(maps.detach(), (h, w)).flatten(1)
    rank = torch.empty_like(a, dtype=torch.long)
    idx = torch.sort(a, dim=1, descending=order == "morf", stable=True).indices
    rank.scatter_(1, idx, torch.arange(h * w, device=a.device).expand(b, -1))
    ks = torch.tensor([int(h * w * p / 100) for p in percentages], device=a.device)
    gen = torch.Generator(device=x.device).manual_seed(seed)

    def imputed(image: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        mask = (rank[image] < ks[index, None]).view(-1, h, w)
        out = linear_imputation(x[image].detach(), mask)
        eps = torch.randn(out.shape, generator=gen, device=x.device, dtype=x.dtype)
        return out + noise * eps * mask[:, None].to(x.dtype)

    def still_correct(inputs: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(inputs).argmax(1) == target[image]

    # percentage after percentage, so a chunk holds like percentages: like iterations
    correct = perturbed_outputs(x, len(ks), imputed, still_correct, chunk, block=1)  # [B, P] bool
    return {"percentages": list(percentages), "correct": correct, "score": correct.to(x.dtype).mean(1)}


def faithfulness_correlation(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    maps: torch.Tensor,
    runs: int = 100,
    subset: int = 224,
    seed: int = 0,
    chunk: int | None = None,
    draw: Callable[[int, int], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Faithfulness correlation per image -> `[B]`: over `runs` random subsets of `subset` input features
    (channel-pixel values, drawn uniformly without replacement from a seeded `torch.Generator` on x's device),
    the Pearson correlation between the sum of the map over the subset (the map read at every channel of its
    pixels, as Quantus broadcasts it) and the drop of the target's logit when the subset is set to the image's
    minimum (Quantus' `black` baseline). A constant series gives 0 (1 when both are constant). `chunk`: runs
    per model call (None: as many as keep a call within 64 images). `draw(b, r) -> [B, r, subset]` long:
    another source of the subsets (called for `chunk` runs at a time, in order)."""
    b = x.shape[0]
    chunk = chunk or max(1, 64 // b)
    d = x[0].numel()
    if not 1 <= subset < d:
        raise ValueError(f"faithfulness_correlation: subset must be in [1, {d}) features, got {subset}")
    a = upsample(maps.detach(), (x.shape[-2], x.shape[-1])).flatten(1).repeat(1, x.shape[1])  # [B, C*H*W]
    flat = x.detach().flatten(1)
    low = flat.amin(1, keepdim=True)
    gen = torch.Generator(device=x.device).manual_seed(seed)

    def subsets(image: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
        """The features of r runs of every image, `[B * r, d]` bool, image-major."""
        r = len(image) // b
        pick = (
            torch.rand(b, r, d, generator=gen, device=x.device).topk(subset, dim=2).indices
            if draw is None
            else draw(b, r).to(x.device)
        )  # [B, r, k]
        return torch.zeros(b, r, d, dtype=torch.bool, device=x.device).scatter_(2, pick, True).view(b * r, d)

    def sum_and_drop(hit: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """`[n, 2]`: the map's sum over the subset, the drop of the target's logit when it is set to the minimum."""
        perturbed = torch.where(hit, low[image], flat[image]).view(-1, *x.shape[1:])
        drop = base[image] - model(perturbed).gather(1, target[image, None])[:, 0]
        return torch.stack([(a[image] * hit).sum(1), drop], 1)

    with torch.no_grad():
        base = model(x).gather(1, target[:, None])[:, 0]
        out = perturbed_outputs(x, runs, subsets, sum_and_drop, chunk * b, block=chunk)  # [B, runs, 2]
    sums, drops = out.double().movedim(2, 0).contiguous()
    return _corr(sums, drops).to(x.dtype)
