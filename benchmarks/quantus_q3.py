"""Continuity, consistency, the relative stabilities, effective complexity and EPG's options vs Quantus 0.6, and
`sensitivity_max` vs Captum 0.9, for `benchmarks/quantus.py`: `cases(c)` gives `{name: (theirs, ours, floor)}`,
zero-argument callables, where `c` holds the locals of its `main()` (model, x, y, maps, masks, explain,
explain_func, q, n, s, args, device).

Both sides at the references' defaults except the samples of the relative stabilities (`args.samples`, the same on
both sides). Quantus' RRS reads the last module inside the `final` depth (its default, every module, is other
work than ours). The floor is the model passes each definition needs (explanations of the n images, forwards
under `no_grad`), batched, nothing else; None for the measures on maps alone.

Run by `python benchmarks/quantus.py [--only NAME ...]`.
"""

import torch
from torch import nn

from salience.attribution import upsample
from salience.attribution.core import resolve_layer
from salience.measures import epg
from salience.measures.complexity import effective_complexity
from salience.measures.stability import (
    consistency,
    continuity,
    relative_stability,
    sensitivity_max,
    translation_shifts,
)


def _passes(c, explanations: int, forwards: int):
    def run():
        for _ in range(explanations):
            c.explain(c.x, c.y)
        with torch.no_grad():
            for _ in range(forwards):
                c.model(c.x)

    return run


def _captum_explain(c):
    """`c.explain` in Captum's form: the clean inputs come (and go back) as a one-tensor tuple."""

    def fn(inputs, target):
        one = inputs[0] if isinstance(inputs, tuple) else inputs
        with torch.enable_grad():
            a = upsample(c.explain(one, target).detach(), (c.s, c.s))
        return (a,) if isinstance(inputs, tuple) else a

    return fn


def _last_leaf(model: nn.Module, depth: str) -> str:
    """The name of the last module inside the module at `depth` that is not an `nn.Sequential` (Quantus skips those)."""
    top = resolve_layer(model, depth)
    prefix = next(n for n, mm in model.named_modules() if mm is top)
    return [n for n, mm in top.named_modules(prefix=prefix) if not isinstance(mm, nn.Sequential)][-1]


def cases(c) -> dict:
    from captum.metrics import sensitivity_max as captum_sensitivity_max

    import quantus

    s, k = c.s, c.args.samples
    an = upsample(c.maps, (s, s))[:, None].cpu().numpy()
    qa = dict(c.q, a_batch=an)
    off = dict(disable_warnings=True)
    m, x, y, maps, ex = c.model, c.x, c.y, c.maps, c.explain
    masks = c.masks
    sn = masks[:, None].float().cpu().numpy()
    up = upsample(maps, (s, s))
    steps = sum(1 for d in translation_shifts(s, 28) if d != 0)
    leaf = _last_leaf(m, "final")
    return {
        "continuity": (
            lambda: quantus.Continuity(**off)(**qa, explain_func=c.explain_func),
            lambda: continuity(ex, x, y, maps),
            _passes(c, steps, 0),
        ),
        "consistency": (
            lambda: quantus.Consistency(**off)(**qa),
            lambda: consistency(m, x, maps),
            _passes(c, 0, 1),
        ),
        "relative_input_stability + relative_output_stability": (
            lambda: [
                M(nr_samples=k, **off)(**qa, explain_func=c.explain_func)
                for M in (quantus.RelativeInputStability, quantus.RelativeOutputStability)
            ],
            lambda: relative_stability(m, ex, x, y, maps, k),  # one set of samples serves both
            _passes(c, k, k + 1),
        ),
        "relative_representation_stability": (
            lambda: quantus.RelativeRepresentationStability(nr_samples=k, layer_names=[leaf], **off)(
                **qa, explain_func=c.explain_func
            ),
            lambda: relative_stability(m, ex, x, y, maps, k, layer="final")["representation"],
            _passes(c, k, k + 1),
        ),
        "sensitivity_max (Captum)": (
            lambda: captum_sensitivity_max(_captum_explain(c), x, target=y),
            lambda: sensitivity_max(ex, x, y, maps),
            _passes(c, 10, 0),
        ),
        "effective_complexity": (
            lambda: quantus.EffectiveComplexity(**off)(**qa),
            lambda: effective_complexity(up),
            None,
        ),
        "epg weighted": (
            lambda: quantus.AttributionLocalisation(
                weighted=True, abs=False, normalise=False, positive_attributions=True, **off
            )(**qa, s_batch=sn),
            lambda: epg(maps, masks, weighted=True),
            None,
        ),  # fmt: skip
    }
