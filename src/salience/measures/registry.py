"""The measure registry: one `Measure` record per measure; everything else reads it.

`evaluate`, the measure run (`salience measure`), the study's `measures.select`, the columns of
`per_image.csv` and the report's rows and figures look a measure up here. A new measure is one
`register(Measure(...))` call in `salience.measures.entries`, its function and its test.

Kinds:
- `maps`: from the maps alone (and masks, for localisation): `fn(maps [B, h, w], masks [B, H, W] | None) -> [B]`;
  with `at_input`, the maps are first upsampled bilinearly to the input size (as Quantus expects explanations).
- `probe`: runs the model: `fn(probe: Probe) -> [B]`, on the images the probes run on.
- `group`: across the models of a group on the same images: `fn(maps [N, B, h, w]) -> [B]`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from salience.registry import Registry

KINDS = ("maps", "probe", "group")
FAMILIES = ("sanity", "faithfulness", "robustness", "complexity", "localisation", "explain_to_me", "stability")
"""Families in the order the report shows them: sanity checks first."""


@dataclass(frozen=True)
class Measure:
    """One measure. `range`: `(low, high)` of its values (`None` for an unbounded side); `better`: `"higher"`,
    `"lower"` or `None` (neither: a property to read, not a score); `family`: one of `FAMILIES`;
    `needs_masks`: undefined without object masks; `at_input`: maps-kind measures computed on maps upsampled to
    the input size; `needs_method`: a probe that explains other models, so it needs `Probe.method`;
    `reference`: what its test compares it with."""

    name: str
    label: str
    kind: str
    family: str
    fn: Callable
    range: tuple[float | None, float | None] = (0.0, 1.0)
    better: str | None = "higher"
    needs_masks: bool = False
    at_input: bool = False
    needs_method: bool = False
    reference: str = ""


MEASURES: Registry[Measure] = Registry("measure")
"""Name -> `Measure`, in registration order (the order of CSV columns and report rows)."""


def register(measure: Measure) -> Measure:
    if measure.kind not in KINDS:
        raise ValueError(f"measure {measure.name!r}: kind must be one of {KINDS}, got {measure.kind!r}")
    if measure.family not in FAMILIES:
        raise ValueError(f"measure {measure.name!r}: family must be one of {FAMILIES}, got {measure.family!r}")
    if measure.better not in ("higher", "lower", None):
        raise ValueError(f"measure {measure.name!r}: better must be 'higher', 'lower' or None")
    return MEASURES.add(measure.name, measure)


def get_measure(name: str) -> Measure:
    """The registry entry; an unknown name raises `ValueError` listing the registry."""
    return MEASURES.lookup(name)


def select(names: Sequence[str] | None, kind: str | None = None, masks: bool = True) -> list[str]:
    """The registered names among `names` (None: all), in registry order, of `kind` (None: any), leaving out
    those that need masks when `masks` is False. Unknown names raise `ValueError` listing the registry."""
    chosen = set(MEASURES) if names is None else {get_measure(n).name for n in names}
    return [
        n
        for n, m in MEASURES.items()
        if n in chosen and (kind is None or m.kind == kind) and (masks or not m.needs_masks)
    ]


@dataclass
class Probe:
    """What a probe measure reads: `model` (eval mode), `explain(x, target) -> maps`, images `x [B, C, H, W]`
    explained for `target [B]` (long) with maps `maps [B, h, w]`, `masks [B, H, W]` (bool) or None, `seed`,
    `deletion_steps`, the method (`method`, `layer`) for probes that explain other models (MPRT), and
    `samples`: noisy samples of the robustness measures and runs of faithfulness correlation (None: Quantus'
    defaults, 200 and 100).
    `once(key, thunk)` shares one computation between measures (blur's two modes); `curves` collects what
    the report draws."""

    model: nn.Module
    explain: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    x: torch.Tensor
    target: torch.Tensor
    maps: torch.Tensor
    masks: torch.Tensor | None = None
    seed: int = 0
    deletion_steps: int = 16
    method: str | None = None
    layer: str | None = None
    samples: int | None = None
    curves: dict = field(default_factory=dict)
    _memo: dict = field(default_factory=dict, repr=False)

    def once(self, key: str, thunk: Callable[[], Any]) -> Any:
        if key not in self._memo:
            self._memo[key] = thunk()
        return self._memo[key]
