"""RISE (Petsiuk et al. 2018): the mean of random smooth masks weighted by the target's probability on the
masked image. Masks as the authors' code (github.com/eclique/RISE, `explanations.py`). Maps `[P, H, W]`."""

import math

import torch
from torch import nn

from salience.attribution.core import check_classes, perturbed_outputs
from salience.attribution.methods import pairs
from salience.attribution.registry import Method, register


def upsampling_matrix(cells: int, size: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """`[size, cells]`: linear interpolation of `cells` values to `size` (pixel centres aligned,
    `align_corners=False`), mirrored at the ends (`−1 → 1`, `cells → cells − 2`): skimage's
    `resize(order=1, mode="reflect", anti_aliasing=False)`, i.e. scipy's `zoom(grid_mode=True, mode="mirror")`."""
    coord = (torch.arange(size, dtype=torch.float64) + 0.5) * (cells / size) - 0.5
    low = coord.floor()
    frac = coord - low
    period = max(2 * (cells - 1), 1)

    def mirror(i: torch.Tensor) -> torch.Tensor:
        i = i.long().remainder(period)
        return torch.where(i >= cells, period - i, i)

    out = torch.zeros(size, cells, dtype=torch.float64)
    rows = torch.arange(size)
    out.index_put_((rows, mirror(low)), 1 - frac, accumulate=True)
    out.index_put_((rows, mirror(low + 1)), frac, accumulate=True)
    return out.to(dtype)


class RiseMasks:
    """`n` RISE masks for `(H, W)` images, built on demand: a `cells`×`cells` grid of independent 0/1 cells
    (1 with probability `p`), upsampled linearly (`upsampling_matrix`) to `(cells + 1)·⌈H/cells⌉` by
    `(cells + 1)·⌈W/cells⌉` and cropped to `H`×`W` at a random shift in `[0, ⌈H/cells⌉)` × `[0, ⌈W/cells⌉)`.
    Draws `grid` (`torch.rand < p`) then the row and the column shifts (`torch.randint`) from `generator`,
    or takes them given (`grid` `[n, cells, cells]`, `shifts` long `[n, 2]`); builds them on `device`."""

    def __init__(
        self,
        size: tuple[int, int],
        n: int,
        cells: int,
        p: float,
        generator: torch.Generator | None = None,
        grid: torch.Tensor | None = None,
        shifts: torch.Tensor | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        cell = [math.ceil(s / cells) for s in size]
        if grid is None or shifts is None:
            grid = (torch.rand(n, cells, cells, generator=generator, dtype=torch.float64) < p).double()
            shifts = torch.stack([torch.randint(0, c, (n,), generator=generator) for c in cell], 1)
        self.grid, self.shifts, self.size = grid.to(device, torch.float64), shifts.to(device, torch.long), size
        self.up = [upsampling_matrix(cells, (cells + 1) * c).to(device) for c in cell]

    def __len__(self) -> int:
        return self.grid.shape[0]

    def __call__(self, index: torch.Tensor) -> torch.Tensor:
        """The masks `index` (long `[k]`) as float64 `[k, H, W]`, in [0, 1]."""
        index = index.to(self.grid.device)
        rows, cols = (
            up[self.shifts[index, axis, None] + torch.arange(size, device=index.device)]
            for axis, (up, size) in enumerate(zip(self.up, self.size, strict=True))
        )
        return torch.einsum("khs,kst,kwt->khw", rows, self.grid[index], cols)


def _check_rise(x: torch.Tensor, n_masks: int, cells: int, p: float, masks: torch.Tensor | None) -> None:
    if masks is not None and (masks.dim() != 3 or tuple(masks.shape[1:]) != tuple(x.shape[-2:])):
        raise ValueError(f"masks must be [N, H, W] with (H, W) = {tuple(x.shape[-2:])}; got {tuple(masks.shape)}")
    if masks is None and (n_masks < 1 or cells < 1):
        raise ValueError(f"n_masks and cells must be >= 1; got n_masks {n_masks}, cells {cells}")
    if not 0 < p <= 1:
        raise ValueError(f"p (the keep probability) must be in (0, 1]; got {p}")


def rise(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    n_masks: int = 4000,
    cells: int = 7,
    p: float = 0.5,
    seed: int = 0,
    batch_size: int = 64,
    masks: torch.Tensor | None = None,
    create_graph: bool = False,
) -> torch.Tensor:
    """RISE: `S = Σ_i P_c(x ⊙ m_i) m_i / (N p)`, P_c the softmax probability of the target class, m_i the
    `n_masks` = N masks of `RiseMasks` (`cells`, keep probability `p`) drawn from a generator seeded with
    `seed`, shared by all images. `masks` `[N, H, W]`: use these instead (e.g. the authors' own).
    Masked images run `batch_size` at a time across images and masks. Not differentiable. `[P, H, W]`, >= 0."""
    _check_rise(x, n_masks, cells, p, masks)
    x, cls = pairs(x, target)
    if masks is not None:
        given = masks.to(x.device, x.dtype)
        mask_of = lambda i: given[i]
        count = given.shape[0]
    else:
        made = RiseMasks(
            (x.shape[2], x.shape[3]), n_masks, cells, p, torch.Generator().manual_seed(seed), device=x.device
        )
        mask_of = lambda i: made(i).to(x.dtype)
        count = n_masks

    def probability(inputs: torch.Tensor, pair: torch.Tensor) -> torch.Tensor:
        logits = model(inputs)
        check_classes(cls, logits.shape[1])
        return logits.softmax(1).gather(1, cls[pair, None])[:, 0]

    with torch.no_grad():
        x = x.detach()
        scores = perturbed_outputs(x, count, lambda q, i: x[q] * mask_of(i)[:, None], probability, batch_size)
        total = x.new_zeros(x.shape[0], x.shape[2], x.shape[3])
        for chunk in torch.arange(count, device=x.device).split(batch_size):
            total += torch.einsum("pk,khw->phw", scores[:, chunk], mask_of(chunk))
        return total / count / p


register(
    Method(
        "rise",
        "RISE: random smooth masks weighted by the target probability of the masked image",
        run=rise,
        differentiable=False,
        random=True,
        extra_forwards="n_masks per image (default 4000)",
    )
)

__all__ = ["RiseMasks", "rise", "upsampling_matrix"]
