"""Overlay pictures of salience maps (`salience explain ... --png`): the image, its map upsampled to the
image's size on top in a semi-transparent colormap, and a colour bar, one PNG per image and method."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

import torch
import torch.nn.functional as F

from salience.store.explain import dataset_ids
from salience.store.zarr_store import MapStore

ALPHA = 0.5
"""The map's opacity over the image."""


def picture_names(ids: Sequence[str], targets: Sequence[int]) -> list[str]:
    """The relative file name of each store item's picture: its image id with the suffix `.png`
    (`dog/001.jpg` -> `dog/001.png`); the image's class is added when an image has several items
    (`001.class3.png`), and the whole id is kept when two images would share a name (`a.jpg.png`)."""
    stems = [str(PurePosixPath(i).with_suffix("")) for i in ids]
    by_stem: dict[str, set[str]] = {}
    for stem, i in zip(stems, ids, strict=True):
        by_stem.setdefault(stem, set()).add(i)
    count: dict[str, int] = {}
    for i in ids:
        count[i] = count.get(i, 0) + 1
    names = []
    for stem, i, t in zip(stems, ids, targets, strict=True):
        base = stem if len(by_stem[stem]) == 1 else i
        names.append(f"{base}.class{t}.png" if count[i] > 1 else f"{base}.png")
    return names


def colour_scale(lo: float, hi: float) -> tuple[str, float, float]:
    """`(colormap, vmin, vmax)` for map values from `lo` to `hi`: with negative values a diverging colormap
    centred on 0 (`RdBu_r`: red positive, blue negative, limits `±max(|lo|, hi)`), else `inferno` from `lo` to
    `hi` (a constant map gets a tiny span, so it is drawn at the bottom colour)."""
    if lo < 0:
        bound = max(-lo, hi) or 1.0
        return "RdBu_r", -bound, bound
    return "inferno", lo, hi if hi > lo else lo + 1e-12


def upsampled(saliency: torch.Tensor, size: Sequence[int]):
    """A map `[h, w]` bilinearly upsampled to `size` (`(H, W)`), as a NumPy array."""
    m = saliency.detach().float().cpu()
    return F.interpolate(m[None, None], size=tuple(size), mode="bilinear", align_corners=False)[0, 0].numpy()


def image_pixels(image: torch.Tensor):
    """An image `[C, H, W]` in [0, 1] as a NumPy `[H, W, 3]` array to draw (one channel: grey; a B-cos input's
    six channels `[r, g, b, 1-r, 1-g, 1-b]`: its first three)."""
    x = image.detach().float().cpu().clamp(0, 1)
    x = x.expand(3, -1, -1) if x.shape[0] == 1 else x[:3]
    return x.permute(1, 2, 0).numpy()


def overlay(image: torch.Tensor, saliency: torch.Tensor, title: str = ""):
    """A matplotlib `Figure`: `image` (`[3, H, W]` in [0, 1]) with `saliency` (`[h, w]`, bilinearly upsampled to
    `H x W`) on top at opacity `ALPHA` and a colour bar of the map's values. A map with negative values gets a
    diverging colormap centred on 0 (red positive, blue negative), any other `inferno` from its least to its
    largest value."""
    from matplotlib.figure import Figure

    m = saliency.detach().float().cpu()
    cmap, lo, hi = colour_scale(float(m.min()), float(m.max()))
    fig = Figure(figsize=(4.6, 3.8), dpi=100)
    ax = fig.add_subplot()
    ax.imshow(image_pixels(image), interpolation="bilinear")
    shown = ax.imshow(upsampled(m, image.shape[-2:]), cmap=cmap, vmin=lo, vmax=hi, alpha=ALPHA, interpolation="nearest")
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=8)
    return fig


def write_overlays(
    stores: Mapping[str, MapStore], dataset, out: str | Path, classes: Sequence[str] = ()
) -> dict[str, list[Path]]:
    """Write one overlay picture per item of each store (`{method spec: store}`, maps of `dataset`'s images) to
    `out/<spec>/<picture_names>`; returns `{spec: [paths]}` in store order. The title names the image, the
    method and the class explained (by name when `classes` has it)."""
    index = {i: k for k, i in enumerate(dataset_ids(dataset))}
    written: dict[str, list[Path]] = {}
    for spec, store in stores.items():
        ids = list(store.meta.image_ids)
        missing = [i for i in ids if i not in index]
        if missing:
            raise ValueError(f"{store.path}: image {missing[0]!r} is not among the images given")
        paths: list[Path] = []
        names: list[str] | None = None
        for start, maps, targets in store.iter_chunks():
            if names is None:
                names = picture_names(ids, store.read(0, store.n)[1].tolist())
            for j in range(len(maps)):
                i, t = start + j, int(targets[j])
                label = f"class {t}" + (f" ({classes[t]})" if 0 <= t < len(classes) else "")
                fig = overlay(dataset[index[ids[i]]]["image"], maps[j], f"{ids[i]}\n{spec} · {label}")
                path = Path(out) / spec / names[i]
                path.parent.mkdir(parents=True, exist_ok=True)
                fig.savefig(path, bbox_inches="tight")
                paths.append(path)
        written[spec] = paths
    return written
