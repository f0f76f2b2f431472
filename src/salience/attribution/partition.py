"""Partition SHAP as the `shap` library explains images: `shap.PartitionExplainer` (its `owen` recursion)
over the hierarchy of image halves that `shap.maskers.Image` builds, hidden features blurred, inpainted
(OpenCV, optional) or set to a constant. All images run in lock-step: each round of every image's queue
goes through the model together, `batch_size` masked images per call. Maps `[P, H, W]`."""

import heapq
import importlib
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from salience.attribution.core import class_scores, perturbed_outputs
from salience.attribution.methods import pairs
from salience.attribution.registry import Method, register

Box = tuple[int, int, int, int, int, int]
"""A node of the partition tree: the features `[c0:c1, h0:h1, w0:w1]` of a `[C, H, W]` image, as
`(h0, h1, w0, w1, c0, c1)` (shap's x, y, z axes: rows, columns, channels)."""
Coalition = tuple[Box, ...]
"""The features shown (not masked): a union of disjoint nodes."""


def halves(box: Box) -> tuple[Box, Box] | None:
    """The (left, right) children of a node in the tree of `shap.maskers.Image`, None for one feature. It halves
    the rows while there are at least as many rows as columns, else the columns, and the channels only once a node
    is a single pixel; shap numbers the features backwards while splitting, so of n rows (columns, channels) the
    left child holds the last `⌊n/2⌋` and the right child the first `⌈n/2⌉`."""
    h0, h1, w0, w1, c0, c1 = box
    if h1 - h0 >= w1 - w0 and h1 - h0 > 1:
        mid = h1 - (h1 - h0) // 2
        return (mid, h1, w0, w1, c0, c1), (h0, mid, w0, w1, c0, c1)
    if w1 - w0 > 1:
        mid = w1 - (w1 - w0) // 2
        return (h0, h1, mid, w1, c0, c1), (h0, h1, w0, mid, c0, c1)
    if c1 - c0 > 1:
        mid = c1 - (c1 - c0) // 2
        return (h0, h1, w0, w1, mid, c1), (h0, h1, w0, w1, c0, mid)
    return None


def box_blur(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """OpenCV's `cv2.blur(image, (width, height))` of `[P, C, H, W]`: the mean over a `height`×`width` window
    anchored at its centre (`k // 2`), the border reflected without repeating the edge (`BORDER_REFLECT_101`,
    repeatedly where the window is larger than the image). Computed in float64, returned in x's dtype."""

    def reflect(size: int, k: int) -> torch.Tensor:
        i = torch.arange(size + k - 1, device=x.device) - k // 2
        period = max(2 * (size - 1), 1)
        i = i.remainder(period)
        return torch.where(i >= size, period - i, i)

    padded = x.double()[:, :, reflect(x.shape[2], height)][:, :, :, reflect(x.shape[3], width)]
    return F.avg_pool2d(padded, (height, width), stride=1).to(x.dtype)


def paint(coalitions: list[Coalition], shape: tuple[int, int, int]) -> np.ndarray:
    """Boolean masks `[n, C, H, W]`, True on the features of each coalition."""
    out = np.zeros((len(coalitions), *shape), dtype=bool)
    for i, boxes in enumerate(coalitions):
        for h0, h1, w0, w1, c0, c1 in boxes:
            out[i, c0:c1, h0:h1, w0:w1] = True
    return out


def _opencv() -> Any:
    try:
        cv2 = importlib.import_module("cv2")
    except ImportError:
        cv2 = None
    if cv2 is None or not hasattr(cv2, "inpaint"):
        raise ImportError("partition_shap: the inpaint maskers need OpenCV; pip install opencv-python-headless")
    return cv2


class ImageMasker:
    """`shap.maskers.Image(masker, (H, W, C))` applied to the images `x` `[P, C, H, W]` as given: a hidden
    feature takes the value of `cv2.blur(image, (kw, kh))` (`"blur(kw,kh)"`, `box_blur`), or of a constant (a
    number); `"inpaint_telea"` / `"inpaint_ns"` return OpenCV's `cv2.inpaint(image as uint8, hole, 3)` of the
    whole image, the hole = the pixels with any hidden channel (every pixel hidden: the per-channel mean)."""

    def __init__(self, masker: str | float, x: torch.Tensor) -> None:
        self.x, self.flag = x, None
        blur = re.fullmatch(r"blur\(\s*(\d+)\s*,\s*(\d+)\s*\)", masker) if isinstance(masker, str) else None
        if isinstance(masker, int | float) and not isinstance(masker, bool):
            self.background = torch.full_like(x, float(masker))
        elif blur is not None and int(blur[1]) > 0 and int(blur[2]) > 0:
            self.background = box_blur(x, int(blur[2]), int(blur[1]))
        elif masker in ("inpaint_telea", "inpaint_ns"):
            cv2 = _opencv()
            self.flag = cv2.INPAINT_TELEA if masker == "inpaint_telea" else cv2.INPAINT_NS
            self.image = x.permute(0, 2, 3, 1).cpu().numpy()  # HWC, as shap's
            self.bytes = self.image.astype(np.uint8)  # shap's cast: truncation
        else:
            raise ValueError(
                f"masker: {masker!r} is not 'blur(kw,kh)' (positive ints, e.g. 'blur(16,16)'), 'inpaint_telea', "
                "'inpaint_ns' or a number"
            )

    def __call__(self, image: torch.Tensor, shown: np.ndarray) -> torch.Tensor:
        """The masked images `[n, C, H, W]` of the images `image` (long `[n]`), `shown` bool `[n, C, H, W]`."""
        if self.flag is None:
            keep = torch.from_numpy(shown).to(self.x.device)
            return torch.where(keep, self.x[image], self.background[image])
        cv2, out = _opencv(), []
        for p, keep in zip(image.tolist(), shown, strict=True):
            hole = (~keep).any(0).astype(np.uint8)
            if hole.all():
                filled = np.broadcast_to(self.image[p].mean((0, 1)), self.image[p].shape)
            else:
                filled = cv2.inpaint(self.bytes[p], hole, 3, flags=self.flag).astype(self.image.dtype)
            out.append(torch.from_numpy(np.ascontiguousarray(filled).reshape(self.image[p].shape)))
        return torch.stack(out).permute(0, 3, 1, 2).to(self.x.device, self.x.dtype)


@dataclass(frozen=True)
class _Item:
    shown: Coalition  # shap's m00
    f00: float  # the score with `shown`
    f11: float  # the score with `shown` and the node
    node: Box
    weight: float


class OwenQueue:
    """One image's run of shap's `PartitionExplainer.owen` (its `max_evals − 2` budget after the two base
    evaluations, its rounds of `round_size` masked inputs, its priorities `−|Δf| · weight`), driven from
    outside: `take()` the round's coalitions, `give()` their scores. Ties of priority go in insertion order
    (shap breaks them with `np.random.randn()`). `dvalues` maps each node to its credit, as shap's."""

    def __init__(self, root: Box, f00: float, f11: float, budget: int, round_size: int, fixed: int | None) -> None:
        self.heap: list[tuple[float, int, _Item]] = [(0.0, 0, _Item((), f00, f11, root, 1.0))]
        self.pushed, self.count, self.budget, self.round_size, self.fixed = 1, 0, budget, round_size, fixed
        self.dvalues: dict[Box, float] = {}
        self.pending: list[tuple[_Item, Box, Box]] = []

    def credit(self, node: Box, value: float) -> None:
        self.dvalues[node] = self.dvalues.get(node, 0.0) + value

    def push(self, priority: float, item: _Item) -> None:
        heapq.heappush(self.heap, (priority, self.pushed, item))
        self.pushed += 1

    def take(self) -> list[Coalition]:
        """Pop the round's nodes (crediting leaves on the way) and return their two coalitions each; with the
        budget spent, credit every queued node `(f11 − f00) · weight` and return none."""
        if self.count >= self.budget:
            for _, _, item in self.heap:
                self.credit(item.node, (item.f11 - item.f00) * item.weight)
            self.heap = []
        asks: list[Coalition] = []
        while self.heap and len(asks) < self.round_size and self.count + len(asks) < self.budget:
            item = heapq.heappop(self.heap)[2]
            children = halves(item.node)
            if children is None:
                self.credit(item.node, (item.f11 - item.f00) * item.weight)
                continue
            self.pending.append((item, *children))
            asks += [(*item.shown, children[0]), (*item.shown, children[1])]
        return asks

    def give(self, scores: list[float]) -> None:
        """The scores of the last `take()`'s coalitions, in order: queue the children."""
        self.count += len(scores)
        for i, (it, left, right) in enumerate(self.pending):
            f10, f01 = scores[2 * i], scores[2 * i + 1]
            weight = it.weight / 2 if self.fixed is None else it.weight
            if self.fixed is not None:
                sign = 1 if self.fixed == 0 else -1
                self.credit(it.node, sign * ((it.f11 - f10 - f01 + it.f00) * it.weight))
            if self.fixed != 1:
                self.push(-abs(f10 - it.f00) * weight, _Item(it.shown, it.f00, f10, left, weight))
                self.push(-abs(f01 - it.f00) * weight, _Item(it.shown, it.f00, f01, right, weight))
            if self.fixed != 0:
                self.push(-abs(it.f11 - f01) * weight, _Item((*it.shown, right), f01, it.f11, left, weight))
                self.push(-abs(it.f11 - f10) * weight, _Item((*it.shown, left), f10, it.f11, right, weight))
        self.pending = []

    def values(self, height: int, width: int) -> np.ndarray:
        """The SHAP values summed over channels, float64 `[H, W]`: each node's credit shared out equally over
        its features (shap's `lower_credit`)."""
        out = np.zeros((height, width))
        for (h0, h1, w0, w1, c0, c1), value in self.dvalues.items():
            out[h0:h1, w0:w1] += value * (c1 - c0) / ((h1 - h0) * (w1 - w0) * (c1 - c0))
        return out


def _scores(
    model: nn.Module, fill: ImageMasker, cls: torch.Tensor, owners: list[int], asks: list[Coalition], batch_size: int
) -> list[float]:
    """The target logits of the masked images, `batch_size` (balanced) per model call."""
    if not asks:
        return []
    owner = torch.tensor(owners, device=fill.x.device)
    chunk = math.ceil(len(asks) / math.ceil(len(asks) / batch_size))
    shape = (fill.x.shape[1], fill.x.shape[2], fill.x.shape[3])

    perturb = lambda rows, _: fill(owner[rows], paint([asks[r] for r in rows.tolist()], shape))
    return perturbed_outputs(owner, 1, perturb, class_scores(model, cls[owner]), chunk)[:, 0].tolist()


def partition_shap(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    masker: str | float = "blur(16,16)",
    max_evals: int = 500,
    fixed_context: int | None = None,
    round_size: int = 10,
    batch_size: int = 64,
    create_graph: bool = False,
) -> torch.Tensor:
    """Partition SHAP (Owen values on shap's image-halves tree) of the target logit, as
    `shap.PartitionExplainer(f, shap.maskers.Image(masker, (H, W, C)))(images, max_evals=max_evals,
    fixed_context=fixed_context, batch_size=round_size, outputs=[c])` with `f` the model's logits on HWC
    images: `ImageMasker` hides features, `OwenQueue` runs the recursion, all images in lock-step.
    The SHAP values `[P, H, W, C]` summed over channels: `[P, H, W]`, signed, in x's dtype."""
    if max_evals < 2 or round_size < 1 or batch_size < 1 or fixed_context not in (None, 0, 1):
        raise ValueError(
            f"partition_shap: need max_evals >= 2, round_size >= 1, batch_size >= 1, fixed_context None, 0 or 1; "
            f"got {max_evals}, {round_size}, {batch_size}, {fixed_context!r}"
        )
    x, cls = pairs(x, target)
    n, c, h, w = x.shape
    with torch.no_grad():
        fill = ImageMasker(masker, x.detach())
        root: Box = (0, h, 0, w, 0, c)
        base = _scores(model, fill, cls, [p for p in range(n) for _ in "01"], [(), (root,)] * n, batch_size)
        queues = [
            OwenQueue(root, base[2 * p], base[2 * p + 1], max_evals - 2, round_size, fixed_context) for p in range(n)
        ]
        while any(q.heap for q in queues):
            asks = [q.take() for q in queues]
            flat = [a for ask in asks for a in ask]
            scores = _scores(model, fill, cls, [p for p, ask in enumerate(asks) for _ in ask], flat, batch_size)
            start = 0
            for q, ask in zip(queues, asks, strict=True):
                q.give(scores[start : start + len(ask)])
                start += len(ask)
        maps = np.stack([q.values(h, w) for q in queues])
    return torch.from_numpy(maps).to(x.device, x.dtype)


register(
    Method(
        "partition_shap",
        "Partition SHAP: Owen values of the target logit over shap's tree of image halves (blurred when hidden)",
        run=partition_shap,
        differentiable=False,
        signed=True,
        extra_forwards="max_evals per image (default 500)",
    )
)

__all__ = ["ImageMasker", "OwenQueue", "box_blur", "halves", "paint", "partition_shap"]
