"""`attribute` (one method) and `attribute_many` (several methods of one batch from one forward and one
backward), both driven by the registry.

The shared methods (`Method.from_pass`) all read a feature tensor F (the input or a layer's output) and
`∂y/∂F`, the gradient of the sum of the selected logits. One forward records every requested F; one
`torch.autograd.grad` call returns every `∂y/∂F` at once. The other methods run their own passes.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from salience.attribution.core import capture, channels_last, patch_grid, resolve_layer, selected_logit_sum
from salience.attribution.methods import cam_weights, pairs
from salience.attribution.registry import Pass, check_layer, check_options, get_method, parse_method


def attribute(
    method: str,
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    layer: str | None = None,
    create_graph: bool = False,
    **options: Any,
) -> torch.Tensor:
    """The maps `[P, h, w]` of one registered method: `attribute("grad_cam", model, x, target, layer="final")`.

    `layer=None` uses the method's default layer (`METHODS[method].layer`); `options` go to methods that
    run their own passes (`steps` for integrated gradients, `samples` for SmoothGrad, ...).
    """
    entry = get_method(method)
    layer = check_layer(method, layer)
    if create_graph and not entry.differentiable:
        raise ValueError(f"method {method!r} is not differentiable; create_graph=True needs another method")
    check_options(method, options)
    if entry.shared:
        return shared_pass(model, x, target, {method: (method, layer)}, create_graph)[1][method]
    if layer is not None:
        options["layer"] = layer
    assert entry.run is not None  # a registry entry has exactly one of from_pass and run
    return entry.run(model, x, target, create_graph=create_graph, **options)


def attribute_many(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    methods: list[str] | tuple[str, ...],
    create_graph: bool = False,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, torch.Tensor]:
    """`{spec: maps [P, h, w]}` for each method spec `NAME` or `NAME@LAYER` (`"gradient"`,
    `"input_x_gradient@mid2"`, `"grad_cam@final"`, `"cam"`), each equal to `attribute(NAME, ..., layer=LAYER,
    **options[spec])`; `options`: `{spec: {option: value}}` for methods that run their own passes.

    The shared methods come from one forward, with the output of every distinct requested layer recorded, and
    one `torch.autograd.grad` of the selected-logit sum with respect to the input (when an input method is
    asked for) and those layer outputs. Without `create_graph` and without input methods, the network below
    the first recorded layer runs without a graph. Other methods run through `attribute`, with their
    `options` (defaults where none are given).
    """
    if isinstance(methods, str):
        methods = [methods]
    specs = {spec: parse_method(spec) for spec in methods}
    if len(specs) != len(methods) or not specs:
        dup = [m for m in methods if list(methods).count(m) > 1]
        raise ValueError(f"methods: {'give at least one' if not specs else f'{dup[0]!r} is given twice'}")
    options = options or {}
    unknown = set(options) - set(specs)
    if unknown:
        raise ValueError(f"options: {sorted(unknown)} are not among the methods {list(specs)}")
    out: dict[str, torch.Tensor] = {}
    shared = {}
    for spec, (name, layer) in specs.items():
        if get_method(name).shared and not options.get(spec):
            shared[spec] = (name, check_layer(name, layer))
        else:
            opts = options.get(spec, {})
            out[spec] = attribute(name, model, x, target, layer=layer, create_graph=create_graph, **opts)
    if shared:
        out |= shared_pass(model, x, target, shared, create_graph)[1]
    return {spec: out[spec] for spec in methods}


@dataclass(frozen=True)
class Explainer:
    """One method bound to a model: `explainer(x, target)` is `attribute(method, model, x, target, layer,
    **options)`, maps `[P, h, w]`; `explainer.scored(x, target)` returns `(scores [P, C], maps)`, the model's
    output for each pair's image with its maps. A shared method reads both from its one forward; the others
    run one more forward, without a graph. Measures and evaluation that need a map and a score of the same
    input call `scored` and save a forward."""

    method: str
    model: nn.Module
    layer: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def __call__(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return attribute(self.method, self.model, x, target, layer=self.layer, **self.options)

    def scored(self, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if get_method(self.method).shared and not self.options:
            layer = check_layer(self.method, self.layer)
            logits, by_spec = shared_pass(self.model, x, target, {self.method: (self.method, layer)}, False)
            return logits.detach(), by_spec[self.method]
        maps = self(x, target)
        with torch.no_grad():
            return self.model(pairs(x, target)[0]), maps


def shared_layers(model: nn.Module, specs: dict[str, tuple[str, str | None]]) -> dict[str, nn.Module | None]:
    """spec -> the module whose output the method reads (None: the input); a layer method given the input,
    or a method that needs a linear head on a model without one, raises `ValueError` naming the spec."""
    layers = {}
    for spec, (name, layer) in specs.items():
        entry = get_method(name)
        module = resolve_layer(model, layer)
        if module is None and entry.layer is not None:
            raise ValueError(f"method {spec!r}: {name} needs a layer, not the input")
        if entry.linear_head:
            cam_weights(model)
        layers[spec] = module
    return layers


def record(
    model: nn.Module, x: torch.Tensor, modules: list[nn.Module], from_layer: bool
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run `model(x)` recording each module's output once; `(logits, [outputs])`. With `from_layer`, the
    network below the first recorded layer runs without a graph."""
    with ExitStack() as stack, torch.no_grad() if from_layer else nullcontext():
        recorded = [stack.enter_context(capture(m, grad_from_here=from_layer)) for m in modules]
        logits = model(x)
    for m, outputs in zip(modules, recorded, strict=True):
        if len(outputs) != 1:
            name = next(n for n, mod in model.named_modules() if mod is m)
            raise ValueError(f"layer {name!r} ran {len(outputs)} times in one forward; pick a module that runs once")
    return logits, [outputs[0] for outputs in recorded]


def shared_pass(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    specs: dict[str, tuple[str, str | None]],
    create_graph: bool,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`(logits [P, C], {spec: maps})` for shared methods `{spec: (name, layer)}` from one forward and one
    backward, P the (image, class) pairs of `target`."""
    layers = shared_layers(model, specs)
    modules = list({id(m): m for m in layers.values() if m is not None}.values())  # distinct, in order
    wants_input = any(m is None for m in layers.values())
    x, cls = pairs(x, target)
    if wants_input and not x.requires_grad:
        x = x.detach().requires_grad_(True)
    from_layer = not create_graph and not wants_input  # the graph can start at the first recorded layer
    with torch.enable_grad():
        logits, outputs = record(model, x, modules, from_layer)
        feats = {id(m): out for m, out in zip(modules, outputs, strict=True)} | {id(None): x}
        selected = selected_logit_sum(logits, torch.arange(cls.shape[0], device=cls.device), cls)
        need = list({id(layers[s]): None for s, (name, _) in specs.items() if get_method(name).needs_grad})
        grads = {}
        if need:
            found = torch.autograd.grad(selected, [feats[k] for k in need], create_graph=create_graph)
            grads = dict(zip(need, found, strict=True))
    maps = {}
    grid, last = patch_grid(model, x.shape[-2:]), channels_last(model)
    with torch.set_grad_enabled(create_graph):
        for spec, (name, _) in specs.items():
            key, at_layer = id(layers[spec]), layers[spec] is not None
            recorded = Pass(feats[key], grads.get(key), cls, model, None, grid if at_layer else None, at_layer and last)
            from_pass = get_method(name).from_pass
            assert from_pass is not None  # shared specs only
            m = from_pass(recorded)
            maps[spec] = m if create_graph else m.detach()
    return logits, maps


__all__ = ["Explainer", "attribute", "attribute_many", "parse_method", "shared_pass"]
