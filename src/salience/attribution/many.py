"""Several attribution maps of one batch from one forward and one backward (`attribute_many`).

Gradient, IxG (at the input and at layers), GradCAM and CAM all read the same two things: a feature
tensor F (the input or a layer's output) and `∂y/∂F`, the gradient of the sum of the selected logits.
One forward records every requested F; one `torch.autograd.grad` call returns every `∂y/∂F` at once.
Integrated gradients (its own path points) and B-cos (explanation mode) run their own pass.
"""

from __future__ import annotations

from contextlib import ExitStack, nullcontext

import torch
from torch import nn

from salience.attribution.core import capture, resolve_layer, selected_logit_sum
from salience.attribution.methods import (
    _TAKES_LAYER,
    METHODS,
    _pairs,
    attribute,
    cam_map,
    cam_weights,
    grad_cam_map,
    ixg_map,
)
from salience.models import layer_name

SHARED = ("gradient", "input_x_gradient", "grad_cam", "cam")
"""Methods computed from the shared forward and backward; the others run their own pass."""


def parse_method(spec: str) -> tuple[str, str | None]:
    """`"NAME"` or `"NAME@LAYER"` -> `(name, layer or None)`; an unknown name or a layer on an input-only
    method raises `ValueError` naming it."""
    name, sep, layer = spec.partition("@")
    if name not in METHODS:
        raise ValueError(
            f"method {spec!r}: {name!r} is unknown; accepted: {', '.join(METHODS)} "
            f"(optionally NAME@LAYER, e.g. grad_cam@final)"
        )
    if sep and not layer:
        raise ValueError(f"method {spec!r}: empty layer after '@'")
    if sep and name not in _TAKES_LAYER:
        raise ValueError(
            f"method {spec!r}: {name} works on the input only; layers are accepted by {', '.join(sorted(_TAKES_LAYER))}"
        )
    return name, layer or None


def attribute_many(
    model: nn.Module, x: torch.Tensor, target, methods: list[str] | tuple[str, ...], create_graph: bool = False
) -> dict[str, torch.Tensor]:
    """`{spec: maps [P, h, w]}` for each method spec `NAME` or `NAME@LAYER` (`"gradient"`,
    `"input_x_gradient@mid2"`, `"grad_cam@final"`, `"cam"`), each equal to `attribute(NAME, ..., layer=LAYER)`.

    The shared methods (`SHARED`) come from one forward, with the output of every distinct requested layer
    recorded, and one `torch.autograd.grad` of the selected-logit sum with respect to the input (when an
    input method is asked for) and those layer outputs. Without `create_graph` and without input methods,
    the network below the first recorded layer runs without a graph. `gradient` reduces by `absmax`;
    `grad_cam` without a layer uses `final`. Other methods run through `attribute` with their defaults.
    """
    if isinstance(methods, str):
        methods = [methods]
    specs = {spec: parse_method(spec) for spec in methods}
    if len(specs) != len(methods) or not specs:
        dup = [m for m in methods if list(methods).count(m) > 1]
        raise ValueError(f"methods: {'give at least one' if not specs else f'{dup[0]!r} is given twice'}")
    out: dict[str, torch.Tensor] = {}
    shared = {
        s: (n, "final" if n == "grad_cam" and layer is None else layer)
        for s, (n, layer) in specs.items()
        if n in SHARED
    }
    for spec, (name, layer) in specs.items():
        if name not in SHARED:
            out[spec] = attribute(name, model, x, target, layer=layer, create_graph=create_graph)
    if shared:
        out |= _shared(model, x, target, shared, create_graph)
    return {spec: out[spec] for spec in methods}


def _shared(model, x, target, specs: dict[str, tuple[str, str | None]], create_graph: bool) -> dict[str, torch.Tensor]:
    layers: dict[str, nn.Module | None] = {}  # spec -> module (None: the input)
    for spec, (name, layer) in specs.items():
        if name == "cam":
            layer = layer_name(model, "final")
            cam_weights(model)
        module = resolve_layer(model, layer)
        if module is None and name == "grad_cam":
            raise ValueError(f"method {spec!r}: grad_cam needs a convolutional layer, not the input")
        layers[spec] = module
    modules = list({id(m): m for m in layers.values() if m is not None}.values())  # distinct, in order
    wants_input = any(m is None for m in layers.values())
    x, cls = _pairs(x, target)
    if wants_input and not x.requires_grad:
        x = x.detach().requires_grad_(True)
    from_layer = not create_graph and not wants_input  # the graph can start at the first recorded layer
    with torch.enable_grad(), ExitStack() as stack:
        with torch.no_grad() if from_layer else nullcontext():
            recorded = [stack.enter_context(capture(m, grad_from_here=from_layer)) for m in modules]
            logits = model(x)
        for module, outputs in zip(modules, recorded, strict=True):
            if len(outputs) != 1:
                name = next(n for n, mod in model.named_modules() if mod is module)
                raise ValueError(
                    f"layer {name!r} ran {len(outputs)} times in one forward; pick a module that runs once"
                )
        feats = {id(m): outputs[0] for m, outputs in zip(modules, recorded, strict=True)}
        feats[id(None)] = x
        need = list({id(layers[s]): layers[s] for s, (name, _) in specs.items() if name != "cam"})
        grads: dict[int, torch.Tensor] = {}
        if need:
            selected = selected_logit_sum(logits, torch.arange(cls.shape[0], device=cls.device), cls)
            grads = dict(
                zip(
                    need,
                    torch.autograd.grad(selected, [feats[k] for k in need], create_graph=create_graph),
                    strict=True,
                )
            )
        else:  # CAM alone: still check the classes against the logits
            selected_logit_sum(logits, torch.arange(cls.shape[0], device=cls.device), cls)
    maps: dict[str, torch.Tensor] = {}
    with torch.set_grad_enabled(create_graph):
        for spec, (name, _) in specs.items():
            key = id(layers[spec])
            f = feats[key]
            if name == "gradient":
                m = grads[key].abs().amax(1)
            elif name == "input_x_gradient":
                m = ixg_map(f, grads[key])
            elif name == "grad_cam":
                m = grad_cam_map(f, grads[key])
            else:
                m = cam_map(cam_weights(model, f)[cls], f)
            maps[spec] = m if create_graph else m.detach()
    return maps


__all__ = ["SHARED", "attribute_many", "parse_method"]
