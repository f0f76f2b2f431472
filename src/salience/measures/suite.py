"""Every single-model measure of the registry (`salience.measures.MEASURES`) on one batch of images, one number
per image each: what `evaluate`, the measure run and the study report per model."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

import salience.measures.entries  # noqa: F401  (registers every measure)
from salience.attribution import upsample
from salience.measures.probes import Explain, out_of_set_response
from salience.measures.registry import MEASURES, Probe, check_measure_options, select


def map_values(
    maps: torch.Tensor,
    masks: torch.Tensor | None = None,
    size: tuple[int, int] | None = None,
    names: Sequence[str] | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, torch.Tensor]:
    """Per-image values `{name: [B]}` of the maps-kind measures among `names` (None: all), from `maps [B, h, w]`
    alone and, with `masks [B, H, W]`, those that need masks (NaN for an image with an empty mask). Measures
    computed at the input size (`Measure.at_input`) read the maps upsampled bilinearly to `size` (default: the
    masks' size, else the maps' own). `options`: `{measure: {option: value}}` (see `measure_options`)."""
    options = options or {}
    if size is None:
        size = (masks.shape[-2], masks.shape[-1]) if masks is not None else (maps.shape[-2], maps.shape[-1])
    up = None
    out = {}
    for name in select(names, "maps", masks=masks is not None):
        m = MEASURES[name]
        if m.at_input:
            up = upsample(maps, size) if up is None else up
        out[name] = m.fn(up if m.at_input else maps, masks, **options.get(name, {}))
    return out


def probe_suite(
    model: nn.Module,
    explain: Explain,
    x: torch.Tensor,
    target: torch.Tensor,
    maps: torch.Tensor,
    out_of_set: torch.Tensor | None = None,
    seed: int = 0,
    deletion_steps: int = 16,
    names: Sequence[str] | None = None,
    masks: torch.Tensor | None = None,
    method: str | None = None,
    layer: str | None = None,
    samples: int | None = None,
    shared: dict | None = None,
    on_measure: Callable[[str], None] | None = None,
    options: Mapping[str, Any] | None = None,
    measure_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict:
    """Run the probe-kind measures among `names` (None: all that the inputs support) on images `x [B, C, H, W]` explained for
    `target [B]`, whose maps are `maps [B, h, w]` (`masks [B, H, W]` for probes that need them).

    Returns `{"values": {name: [B]}, "curves": {...}}`; the curves are what the probes store for the report
    (means over the images: noise, transforms, blur, deletion / insertion, MPRT per layer, ...), and with
    `out_of_set [N, C, H, W]` the entropies and scores of in-set vs out-of-set images with their shift (see
    `out_of_set_response`). `shared`: results computed once for several probes (`{"mprt": mprt(...)}` of these
    inputs, from `mprt_many`), used instead of computing them again. `on_measure(name)` is called as each measure
    starts (a progress bar names it). `options`: the method's options, for the probes that explain again;
    `measure_options`: `{measure: {option: value}}` (see `measure_options`).
    """
    probe = Probe(
        model, explain, x, target, maps, masks, seed, deletion_steps, method, layer, samples, dict(options or {})
    )
    probe._memo.update(shared or {})
    chosen = select(names, "probe", masks=masks is not None)
    if method is None:  # measures that explain other models (MPRT) need the method's name
        if names is not None and any(MEASURES[n].needs_method for n in chosen):
            raise ValueError(f"measures {[n for n in chosen if MEASURES[n].needs_method]} need method=")
        chosen = [n for n in chosen if not MEASURES[n].needs_method]
    values = {}
    for name in chosen:
        if on_measure is not None:
            on_measure(name)
        values[name] = MEASURES[name].fn(probe, **(measure_options or {}).get(name, {}))
    curves = probe.curves
    if out_of_set is not None:
        oos = out_of_set_response(model, explain, x, target, out_of_set, seed=seed)
        curves["out_of_set"] = {
            "entropy_in": oos["in"]["entropy_histogram"].tolist(),
            "entropy_out": oos["out"]["entropy_histogram"].tolist(),
            "score_in": oos["in"]["score"].double().mean().item(),
            "score_out": oos["out"]["score"].double().mean().item(),
            "scores_out": oos["out"]["score"].double().tolist(),  # per out-of-set image, for `salience view`
            "shift": oos["shift"],
        }
    return {"values": {k: v.detach().cpu() for k, v in values.items()}, "curves": curves}


def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    target: torch.Tensor,
    method: str = "grad_cam",
    layer: str | None = "final",
    masks: torch.Tensor | None = None,
    measures: Sequence[str] | None = None,
    seed: int = 0,
    deletion_steps: int = 16,
    samples: int | None = None,
    method_options: Mapping[str, Any] | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, torch.Tensor]:
    """Every single-model measure among `measures` (names of `MEASURES`; None: all the inputs support), per
    image, in one call: `{name: [B]}` in registry order.

    `images [B, C, H, W]` are explained for `target` (long `[B]`) with `method` at `layer` (see
    `salience.attribution.attribute`, with the method's `method_options`; model in eval mode); the maps give the maps-kind measures (those that need
    masks only with `masks [B, H, W]`, bool or float read as > 0.5); the probe-kind measures run the model.
    `samples`: noisy samples / runs of the robustness and faithfulness-correlation measures (None: Quantus').
    `options`: each measure's keyword arguments under its name, e.g. `{"top_k_intersection": {"k": 1000}}`
    (Quantus' settings; `salience.measures.registry.measure_options(name)` lists what a measure takes).
    Group measures (stability) need several models: see `salience.measures.probes.seed_stability`.
    """
    from salience.attribution import Explainer

    names = select(measures)
    group = [n for n in names if MEASURES[n].kind == "group"]
    if measures is not None and group:
        raise ValueError(f"measures {group} compare the models of a group; evaluate measures one model")
    unmasked = [n for n in names if MEASURES[n].needs_masks]
    if measures is not None and masks is None and unmasked:
        raise ValueError(f"measures {unmasked} need masks; pass masks [B, H, W]")
    options = check_measure_options(options)
    explain = Explainer(method, model, layer, dict(method_options or {}))
    maps = explain(images, target)
    size = (images.shape[-2], images.shape[-1])
    values = {k: v.detach().cpu() for k, v in map_values(maps, masks, size, names, options).items()}
    if any(MEASURES[n].kind == "probe" for n in names):
        probes = probe_suite(
            model, explain, images, target, maps, None, seed, deletion_steps, names, masks, method, layer, samples,
            options=method_options, measure_options=options,
        )  # fmt: skip
        values |= probes["values"]
    return {n: values[n] for n in names if n in values}
