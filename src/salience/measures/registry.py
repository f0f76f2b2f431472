"""The measure registry: one `Measure` record per measure; everything else reads it.

`evaluate`, the measure run (`salience measure`), the study's `measures.select`, the columns of
`per_image.csv` and the report's rows and figures look a measure up here. A new measure is one
`register(Measure(...))` call in `salience.measures.entries`, its function and its test.

Kinds:
- `maps`: from the maps alone (and masks, for localisation): `fn(maps [B, h, w], masks [B, H, W] | None) -> [B]`;
  with `at_input`, the maps are first upsampled bilinearly to the input size (as Quantus expects explanations).
- `probe`: runs the model: `fn(probe: Probe) -> [B]`, on the images the probes run on.
- `group`: across the models of a group on the same images: `fn(maps [N, B, h, w]) -> [B]`.

Cost (`Measure.passes`): model passes per probed image, in units of one explanation of the model (a forward and
a backward, as a gradient method's map); a forward alone counts as ½. Maps- and group-kind measures cost 0 (they
read stored maps). `DEFAULT_MAX_PASSES` bounds what a study runs without `measures.select` (`default_measures`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from salience.registry import Registry

KINDS = ("maps", "probe", "group")
FAMILIES = (
    "sanity",
    "faithfulness",
    "axiomatic",
    "robustness",
    "complexity",
    "localisation",
    "explain_to_me",
    "stability",
)
"""Families in the order the report shows them: sanity checks first."""


@dataclass(frozen=True)
class Measure:
    """One measure. `range`: `(low, high)` of its values (`None` for an unbounded side); `better`: `"higher"`,
    `"lower"` or `None` (neither: a property to read, not a score); `family`: one of `FAMILIES`;
    `needs_masks`: undefined without object masks; `at_input`: maps-kind measures computed on maps upsampled to
    the input size; `needs_method`: a probe that explains other models, so it needs `Probe.method`;
    `reference`: what its test compares it with; `passes`: its cost, model passes per probed image (see the module
    docstring: one explanation = 1, one forward = ½; 0 for the measures on stored maps), a number or a function
    of the `Costing` settings; `shares`: measures with the same key share one computation (`Probe.once`), counted
    once."""

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
    passes: float | Callable[[Costing], float] = 0.0
    shares: str | None = None
    on_mosaics: bool = False
    """Reads 2x2 mosaics (`salience.measures.focus.mosaics`: the probe's images, their target-class quadrants as
    its masks): run only where named, never by `select(None)` or `default_measures`."""


@dataclass(frozen=True)
class Costing:
    """The settings a measure's cost depends on (`Measure.passes`), at the registry's defaults: `samples` of the
    robustness measures and runs of faithfulness correlation (None: Quantus' 200 / 100), `deletion_steps`."""

    samples: int | None = None
    deletion_steps: int = 16


DEFAULT_MAX_PASSES = 15.0
"""The most model passes per probed image (`Measure.passes` at the `Costing()` defaults) of a measure that a study
runs without `measures.select`: the measures of "Explain To Me" (noise 9, transforms 13, blur 3, the entropies and
stability), random logit (1), the maps-kind measures (complexity, sparseness, localisation where there are boxes);
not MPRT (16 explanations over its cascade), deletion / insertion (17), ROAD (25 per order), faithfulness
correlation (50.5), max- / avg-sensitivity (200) or local Lipschitz (200). `measures.select: all` runs every
measure. With 16 probed images of 50, the defaults cost about 8 times the study's explaining (26 passes x 16 / 50)."""

ALL_MAX_PASSES = 1000.0
"""The most model passes per probed image of a measure that "every measure" (`measures.select: all`, `evaluate` or
`salience measure` without a selection) runs. Above it, run only when named: the measures that perturb one input
value per step (pixel flipping, sensitivity-n, monotonicity, monotonicity correlation, faithfulness estimate,
non-sensitivity: 10^4 to 10^7 passes per 224 px image at Quantus' defaults) and infidelity (1568)."""

DEFAULT_FAMILIES = ("sanity", "complexity", "localisation", "explain_to_me", "stability")
"""The families a study runs by default (within `DEFAULT_MAX_PASSES`). Left out: the faithfulness, axiomatic and
robustness measures, whose cheap members are pass/fail checks (completeness, input invariance), compare the images
of a batch with each other (sufficiency, consistency) or re-explain ten times (Captum's sensitivity_max)."""


MEASURES: Registry[Measure] = Registry("measure")
"""Name -> `Measure`, in registration order (the order of CSV columns and report rows)."""


def register(measure: Measure) -> Measure:
    if measure.kind not in KINDS:
        raise ValueError(f"measure {measure.name!r}: kind must be one of {KINDS}, got {measure.kind!r}")
    if measure.family not in FAMILIES:
        raise ValueError(f"measure {measure.name!r}: family must be one of {FAMILIES}, got {measure.family!r}")
    if measure.better not in ("higher", "lower", None):
        raise ValueError(f"measure {measure.name!r}: better must be 'higher', 'lower' or None")
    if measure.kind == "probe" and not callable(measure.passes) and not measure.passes > 0:
        raise ValueError(f"measure {measure.name!r}: a probe runs the model; give its cost, passes > 0")
    return MEASURES.add(measure.name, measure)


def get_measure(name: str) -> Measure:
    """The registry entry; an unknown name raises `ValueError` listing the registry."""
    return MEASURES.lookup(name)


def measure_options(name: str) -> list[str]:
    """The options measure `name` takes: the keyword-only parameters of its function (Quantus' settings, e.g.
    `top_k_intersection`'s `k`), given as `evaluate(..., options={name: {...}})` or a study's `measures.options`."""
    m = get_measure(name)
    params = list(inspect.signature(m.fn).parameters.values())[2 if m.kind == "maps" else 1 :]
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def check_measure_options(options: Mapping[str, Mapping[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """`{measure: {option: value}}` checked: an unknown measure or an option it does not take raises `ValueError`
    naming it and what is accepted."""
    checked = {}
    for name, opts in (options or {}).items():
        accepted = measure_options(name)
        unknown = [k for k in opts if k not in accepted]
        if unknown:
            takes = f"it takes {', '.join(accepted)}" if accepted else "it takes none"
            raise ValueError(f"measure {name!r}: unknown option {unknown[0]!r}; {takes}")
        checked[get_measure(name).name] = dict(opts)
    return checked


def passes(name: str, costing: Costing | None = None) -> float:
    """The model passes per probed image of measure `name` under `costing` (default: the registry's defaults)."""
    p = get_measure(name).passes
    return float(p(costing or Costing()) if callable(p) else p)


def default_measures(max_passes: float = DEFAULT_MAX_PASSES) -> list[str]:
    """The registered measures of `DEFAULT_FAMILIES` whose cost at the defaults is at most `max_passes`, in registry
    order, leaving out those read on mosaics (what a study runs without `measures.select`)."""
    return [
        n for n, m in MEASURES.items() if passes(n) <= max_passes and m.family in DEFAULT_FAMILIES and not m.on_mosaics
    ]


def estimate(names: Sequence[str], costing: Costing | None = None) -> list[tuple[list[str], float]]:
    """`[(measures, passes per probed image)]` of the probe-kind measures among `names`, in registry order, those
    sharing one computation (`Measure.shares`) together and counted once."""
    out: dict[str, tuple[list[str], float]] = {}
    for n in select(names, "probe"):
        key = MEASURES[n].shares or n
        if key in out:
            out[key][0].append(n)
        else:
            out[key] = ([n], passes(n, costing))
    return list(out.values())


def select(names: Sequence[str] | None, kind: str | None = None, masks: bool = True) -> list[str]:
    """The registered names among `names` (None: all, except those read on mosaics and those costing more than
    `ALL_MAX_PASSES`), in registry order, of `kind` (None: any), leaving out those that need masks when `masks` is
    False. Unknown names raise `ValueError` listing the registry."""
    if names is None:
        chosen = {n for n, m in MEASURES.items() if not m.on_mosaics and passes(n) <= ALL_MAX_PASSES}
    else:
        chosen = {get_measure(n).name for n in names}
    return [
        n
        for n, m in MEASURES.items()
        if n in chosen and (kind is None or m.kind == kind) and (masks or not m.needs_masks)
    ]


@dataclass
class Probe:
    """What a probe measure reads: `model` (eval mode), `explain(x, target) -> maps`, images `x [B, C, H, W]`
    explained for `target [B]` (long) with maps `maps [B, h, w]`, `masks [B, H, W]` (bool) or None, `seed`,
    `deletion_steps`, the method (`method`, `layer`, its `options`) for probes that explain other models
    (MPRT), and `samples`: noisy samples of the robustness measures and runs of faithfulness correlation (None:
    Quantus' defaults, 200 and 100).
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
    options: dict = field(default_factory=dict)
    curves: dict = field(default_factory=dict)
    _memo: dict = field(default_factory=dict, repr=False)

    def once(self, key: str, thunk: Callable[[], Any]) -> Any:
        if key not in self._memo:
            self._memo[key] = thunk()
        return self._memo[key]
