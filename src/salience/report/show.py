"""`salience.show(images, maps)`: a grid of images with their salience maps, the figure of notebooks and the
tutorials. Drawn as `salience explain --png` draws one map (`salience.report.overlays`: the map upsampled over
the image, `inferno`, or red-blue centred on 0 for maps with negative values)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import torch
from matplotlib.figure import Figure

from salience.report.overlays import ALPHA, colour_scale, image_pixels, upsampled

SCALES = ("column", "shared", "own")

Maps = torch.Tensor | Mapping[str, torch.Tensor] | Mapping[str, Mapping[str, torch.Tensor]]


class ShowFigure(Figure):
    """A matplotlib `Figure` that notebooks display inline as a PNG (whatever the matplotlib backend)."""

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        self.savefig(buf, format="png", dpi=self.dpi, bbox_inches="tight")
        return buf.getvalue()


def show(
    images: torch.Tensor,
    maps: Maps,
    *,
    scale: str = "column",
    titles: Sequence[str] | None = None,
    image: bool = True,
    colorbar: bool = True,
    alpha: float = ALPHA,
    size: float = 1.8,
) -> ShowFigure:
    """A grid of `images` with their `maps`; returns the matplotlib `Figure` (displayed inline in a notebook;
    `fig.savefig(path)` writes it).

    `images`: `[N, C, H, W]` (or one `[C, H, W]`) in [0, 1], C = 1, 3, or 6 for B-cos inputs (the first three
    drawn). `maps`, each `[N, h, w]` (or `[h, w]` for one image), one per image in order, e.g. what
    `salience.attribution.attribute` returns for one class per image:

    - a tensor: one column of maps;
    - `{name: maps}`: one column per name (methods, or models), e.g. the dict of `attribute_many`;
    - `{row: {name: maps}}`: one row per image and row key (e.g. models), one column per name (e.g. methods).

    The first column shows the image itself (`image=False` leaves it out). Each map is upsampled bilinearly to
    its image's size and drawn over it at opacity `alpha`, in `inferno` from the least to the largest value of
    its colour scale, or in red-blue centred on 0 when the scale holds negative values. `scale`: `"column"`
    (default) one colour scale per column, shared by its images and rows, so maps of one method compare;
    `"shared"` one scale for every map of the figure; `"own"` each map min to max on its own (no colour bars).
    `titles`: one per image, shown left of its row. `size`: inches per panel.

    Maps that do not fit (not `[N, h, w]`, another number of maps than images, not finite) raise `ValueError`
    naming the column and the shape.
    """
    if scale not in SCALES:
        raise ValueError(f"scale {scale!r}: expected one of {', '.join(SCALES)}")
    x = _images(images)
    rows, columns = _grid(maps, len(x))
    if titles is not None and len(titles) != len(x):
        raise ValueError(f"titles: {len(titles)} given for {len(x)} images")
    limits = _limits(rows, columns, scale)
    n_rows, n_cols = len(x) * len(rows), len(columns) + image
    fig = ShowFigure(figsize=(size * n_cols + 0.6 * colorbar, size * n_rows + 0.3), dpi=100, layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    shown = _draw(axes, x, rows, columns, limits, titles, image, alpha)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if colorbar and scale == "column":
        for j, name in enumerate(columns):
            fig.colorbar(shown[name], ax=axes[:, j + image], location="bottom", shrink=0.9, aspect=15)
    elif colorbar and scale == "shared":
        fig.colorbar(shown[columns[-1]], ax=axes, shrink=0.8)
    return fig


def _draw(
    axes, x: torch.Tensor, rows: dict, columns: list[str], limits: dict, titles, image: bool, alpha: float
) -> dict:
    """Draw every panel on `axes` (`[images x rows, columns (+ 1)]`); returns `{column: its last map's artist}`
    for the colour bars."""
    shown: dict[str, object] = {}
    for i in range(len(x)):
        pixels = image_pixels(x[i])
        for r, row in enumerate(rows):
            k = i * len(rows) + r
            label = " · ".join(s for s in ((titles[i] if titles else ""), row) if s)
            if image:
                axes[k, 0].imshow(pixels, interpolation="bilinear")
                axes[k, 0].set_ylabel(label or f"image {i}", fontsize=8)
            for j, name in enumerate(columns):
                m = rows[row][name][i]
                cmap, lo, hi = limits[(row, name, i)]
                ax = axes[k, j + image]
                ax.imshow(pixels, interpolation="bilinear")
                shown[name] = ax.imshow(
                    upsampled(m, x.shape[-2:]), cmap=cmap, vmin=lo, vmax=hi, alpha=alpha, interpolation="nearest"
                )
                if k == 0:
                    ax.set_title(name, fontsize=8)
                if not image and j == 0:
                    ax.set_ylabel(label or f"image {i}", fontsize=8)
    return shown


def _images(images: torch.Tensor) -> torch.Tensor:
    given = torch.as_tensor(images).detach()
    x = given[None] if given.dim() == 3 else given
    if x.dim() != 4 or x.shape[1] not in (1, 3, 6):
        raise ValueError(
            f"images of shape {tuple(given.shape)}: expected [N, C, H, W] (or [C, H, W]) with C = 1, 3 or 6"
        )
    return x


def _grid(maps: Maps, n: int) -> tuple[dict[str, dict[str, torch.Tensor]], list[str]]:
    """`({row: {column: maps [N, h, w]}}, columns)`; a flat input has one row, named ``."""
    if isinstance(maps, torch.Tensor):
        rows: Mapping = {"": {"": maps}}
    elif isinstance(maps, Mapping) and maps and all(isinstance(v, torch.Tensor) for v in maps.values()):
        rows = {"": maps}
    elif isinstance(maps, Mapping) and maps and all(isinstance(v, Mapping) and v for v in maps.values()):
        rows = maps
    else:
        raise ValueError("maps: expected a tensor [N, h, w], {name: maps} or {row: {name: maps}}, none empty")
    columns = list(dict.fromkeys(c for row in rows.values() for c in row))
    out: dict[str, dict[str, torch.Tensor]] = {}
    for r, row in rows.items():
        missing = [c for c in columns if c not in row]
        if missing:
            raise ValueError(f"maps[{r!r}] has no {missing[0]!r}: every row needs the same columns {columns}")
        out[str(r)] = {
            str(c): _maps(row[c], n, " / ".join(s for s in (str(r), str(c)) if s) or "maps") for c in columns
        }
    return out, [str(c) for c in columns]


def _maps(m: torch.Tensor, n: int, name: str) -> torch.Tensor:
    m = torch.as_tensor(m).detach().float().cpu()
    if m.dim() == 2 and n == 1:
        m = m[None]
    if m.dim() != 3 or len(m) != n:
        raise ValueError(f"{name}: maps of shape {tuple(m.shape)}; expected [N, h, w] with N = {n}, one per image")
    if not torch.isfinite(m).all():
        raise ValueError(f"{name}: maps of shape {tuple(m.shape)} hold NaN or inf")
    return m


def _limits(rows: dict[str, dict[str, torch.Tensor]], columns: list[str], scale: str) -> dict:
    """`{(row, column, image): (colormap, vmin, vmax)}` by `scale`."""

    def span(ms: list[torch.Tensor]) -> tuple[str, float, float]:
        return colour_scale(min(float(m.min()) for m in ms), max(float(m.max()) for m in ms))

    every = [m for row in rows.values() for m in row.values()]
    shared = span(every) if scale == "shared" else None
    per_column = {c: span([row[c] for row in rows.values()]) for c in columns}
    return {
        (r, c, i): shared or (per_column[c] if scale == "column" else span([row[c][i]]))
        for r, row in rows.items()
        for c in columns
        for i in range(len(row[c]))
    }
