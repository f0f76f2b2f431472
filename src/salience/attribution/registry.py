"""The attribution-method registry: one `Method` record per method; everything else reads it.

`attribute`, `attribute_many`, guidance, `explain`, the CLI's `--method` and the study file look a
method up here. A new method is one `register(Method(...))` call next to its map function.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from salience.registry import Registry


@dataclass(frozen=True)
class Pass:
    """What a shared forward and backward recorded for one method spec, rows = (image, class) pairs.

    `feats`: the input `[P, C, H, W]` or the layer's output (`[P, K, h, w]`, or tokens, see
    `token_grid`); `grad`: `∂y/∂feats` of the explained score (None when the method needs no gradient);
    `classes` `[P]`; `model`; `probs` `[P, C]`: the softmax of the logits when the explained score is the
    log-probability (guidance with `output: log_softmax`), else None.
    """

    feats: torch.Tensor
    grad: torch.Tensor | None
    classes: torch.Tensor
    model: torch.nn.Module
    probs: torch.Tensor | None = None
    grid: tuple[int, int] | None = None
    channels_last: bool = False

    def acts(self) -> torch.Tensor:
        """The features as `[P, K, h, w]` (see `token_grid`)."""
        return token_grid(self.feats, self.grid, self.channels_last)

    def acts_and_grad(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and gradient as `[P, K, h, w]` (see `token_grid`)."""
        if self.grad is None:
            raise ValueError("this method reads the gradient, and the pass recorded none")
        return self.acts(), token_grid(self.grad, self.grid, self.channels_last)


def token_grid(feats: torch.Tensor, grid: tuple[int, int] | None = None, channels_last: bool = False) -> torch.Tensor:
    """Layer outputs as `[P, K, h, w]`. 4-D outputs: unchanged, or permuted from `[P, h, w, K]` when
    `channels_last` (Swin). Tokens `[P, N, D]` (ViT, DeiT): the last h·w tokens, in row-major patch order,
    become `[P, D, h, w]`, the N − h·w leading ones (class, distillation, register tokens) dropped; `grid`
    gives `(h, w)` (see `patch_grid`), else a square `s = ⌊√N⌋` is assumed."""
    if feats.dim() == 4:
        return feats.permute(0, 3, 1, 2) if channels_last else feats
    if feats.dim() == 3:
        h, w = grid if grid is not None else (math.isqrt(feats.shape[1]),) * 2
        if 0 < h * w <= feats.shape[1]:
            return feats[:, feats.shape[1] - h * w :].transpose(1, 2).reshape(feats.shape[0], -1, h, w)
        raise ValueError(f"layer output {tuple(feats.shape)}: {feats.shape[1]} tokens cannot hold a {h}x{w} grid")
    raise ValueError(f"layer output {tuple(feats.shape)} is neither a feature map [B, K, h, w] nor tokens [B, N, D]")


@dataclass(frozen=True)
class Method:
    """One attribution method and what it can do.

    Exactly one of `from_pass` and `run` is set:
    - `from_pass(Pass) -> maps [P, h, w]`: the map from the recorded features and gradient of the one
      forward and `autograd.grad` that `attribute_many` shares between methods;
    - `run(model, x, target, layer=..., create_graph=..., **options) -> maps [P, h, w]`: its own passes.

    `layer`: the default layer (`None`: the input); `takes_layer`: whether another layer may be given.
    `needs_grad`: whether `from_pass` reads the gradient. `differentiable`: maps keep their graph with
    `create_graph=True`, so they can be guided. `linear_head`: needs a linear `fc` after global average
    pooling. `bcos_only`: needs a B-cos network. `transformer_only`: needs a vision transformer
    (`salience.attribution.vit`). `random`: draws random numbers from its `seed` option,
    so the same seed gives the same maps, and a map depends on its image's row in the batch. `signed`: maps take both signs. `extra_forwards`: forwards
    beyond the one pass, in words.
    """

    name: str
    summary: str
    from_pass: Callable[[Pass], torch.Tensor] | None = None
    run: Callable[..., torch.Tensor] | None = None
    layer: str | None = None
    takes_layer: bool = False
    needs_grad: bool = True
    differentiable: bool = True
    linear_head: bool = False
    bcos_only: bool = False
    transformer_only: bool = False
    random: bool = False
    signed: bool = False
    extra_forwards: str = "0"

    @property
    def shared(self) -> bool:
        """Computed from the shared forward and backward of `attribute_many`."""
        return self.from_pass is not None


METHODS: Registry[Method] = Registry("method")
"""Name -> `Method`, in registration order."""


def register(method: Method) -> Method:
    if (method.from_pass is None) == (method.run is None):
        raise ValueError(f"method {method.name!r}: give exactly one of from_pass and run")
    return METHODS.add(method.name, method)


def get_method(name: str) -> Method:
    """The registry entry; an unknown name raises `ValueError` listing the registry."""
    return METHODS.lookup(name)


def layer_methods() -> list[str]:
    return [m.name for m in METHODS.values() if m.takes_layer]


def method_spec(name: str, layer: str | None) -> str:
    """The spec `parse_method` reads back: `NAME@LAYER` for a method that takes a layer and is given one, else
    `NAME` (also for a name the registry does not know, e.g. a store written by other code)."""
    entry = METHODS.get(name)
    return f"{name}@{layer}" if layer and entry is not None and entry.takes_layer else name


def parse_method(spec: str) -> tuple[str, str | None]:
    """`"NAME"` or `"NAME@LAYER"` -> `(name, layer or None)`; an unknown name or a layer on a method that
    takes none raises `ValueError` naming it."""
    name, sep, layer = spec.partition("@")
    if name not in METHODS:
        raise ValueError(f"method {spec!r}: {METHODS.unknown(name)} (optionally NAME@LAYER, e.g. grad_cam@final)")
    if sep and not layer:
        raise ValueError(f"method {spec!r}: empty layer after '@'")
    if sep and not METHODS[name].takes_layer:
        raise ValueError(f"method {spec!r}: {name} takes no layer; layers are accepted by {', '.join(layer_methods())}")
    return name, layer or None


def method_options(name: str) -> list[str]:
    """The options a method takes (`attribute(name, ..., **options)`): the keyword parameters of its `run` beyond
    the model, images, target, layer and `create_graph`; none for the shared methods."""
    run = get_method(name).run
    if run is None:
        return []
    fixed = {"model", "x", "target", "layer", "create_graph"}
    return [p for p in inspect.signature(run).parameters if p not in fixed]


def check_options(name: str, options: Mapping[str, object]) -> None:
    """ValueError naming an option that method `name` does not take, with the ones it does."""
    accepted = method_options(name)
    unknown = [k for k in options if k not in accepted]
    if unknown:
        takes = f"it takes {', '.join(accepted)}" if accepted else "it takes none"
        raise ValueError(f"method {name!r}: unknown option {unknown[0]!r}; {takes}")


def options_by_spec(specs: list[str], options: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """`{spec: options}` from options keyed by method spec or name (`{"kernel_shap": {"n_samples": 64}}`); a key
    that is none of `specs`, or an option the method does not take, raises `ValueError` naming it."""
    keyed = {}
    for key, opts in options.items():
        spec = key if key in specs else next((s for s in specs if parse_method(s)[0] == key), None)
        if spec is None:
            raise ValueError(f"options: {key!r} is not one of the methods {specs}")
        check_options(parse_method(spec)[0], opts)
        keyed[spec] = dict(opts)
    return keyed


def check_layer(name: str, layer: str | None) -> str | None:
    """The layer a method runs at: the given one, or the method's default when None."""
    method = get_method(name)
    if layer is not None and not method.takes_layer:
        raise ValueError(
            f"layer: method {name!r} takes no layer (it uses {method.layer or 'the input'}); layers are accepted "
            f"by {', '.join(layer_methods())}"
        )
    return method.layer if layer is None else layer
