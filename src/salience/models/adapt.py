"""Where a model's class scores are: `adapt(model, output)` makes `model(x)` return scores `[B, C]`
whatever its forward returns (a tensor, a tuple, a dict, a Hugging Face `ModelOutput`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn


def describe(out: Any) -> str:
    """What a forward returned, in words: `a tuple of 2: [0] Tensor [4, 3], [1] Tensor [4, 10]`."""

    def one(v: Any) -> str:
        return f"Tensor {list(v.shape)}" if isinstance(v, torch.Tensor) else type(v).__name__

    if isinstance(out, torch.Tensor):
        return f"a {one(out)}"
    if isinstance(out, (tuple, list)):
        return f"a {type(out).__name__} of {len(out)}: " + ", ".join(f"[{i}] {one(v)}" for i, v in enumerate(out))
    if isinstance(out, dict):
        return f"a {type(out).__name__} with keys: " + ", ".join(f"{k} ({one(v)})" for k, v in out.items())
    fields = {k: v for k, v in vars(out).items() if not k.startswith("_")} if hasattr(out, "__dict__") else {}
    return f"a {type(out).__name__} with attributes: " + (
        ", ".join(f"{k} ({one(v)})" for k, v in fields.items()) or "none"
    )


def select(out: Any, output: int | str | None = None) -> torch.Tensor:
    """The scores in a forward's result `out`: `output` an index (tuple or list), a key (dict or `ModelOutput`)
    or an attribute name; None: `out` itself when it is a tensor, else its `logits`. ValueError naming what
    `out` holds when the part is missing or not a tensor."""
    if output is None:
        found = out if isinstance(out, torch.Tensor) else _part(out, "logits")
        if not isinstance(found, torch.Tensor):
            raise ValueError(
                f"the forward returns {describe(out)}; say where the class scores are with "
                f"output: <index> or <key> (salience.models.adapt(model, output=...))"
            )
        return found
    found = _part(out, output)
    if not isinstance(found, torch.Tensor):
        what = "no" if found is None else f"a {type(found).__name__} at"
        raise ValueError(f"output {output!r}: the forward returns {describe(out)}; {what} tensor {output!r} in it")
    return found


def _part(out: Any, output: int | str) -> Any:
    if isinstance(output, int) and not isinstance(output, bool):
        return out[output] if isinstance(out, (tuple, list)) and -len(out) <= output < len(out) else None
    if isinstance(out, dict):
        return out.get(output)
    return getattr(out, output, None) if isinstance(output, str) else None


class _Scores:
    """Forward hook that replaces the model's result with `select(result, output)`."""

    def __init__(self, output: int | str | None) -> None:
        self.output = output

    def __call__(self, _module: nn.Module, _args: Any, out: Any) -> torch.Tensor:
        return select(out, self.output)


def adapt(model: nn.Module, output: int | str | None = None) -> nn.Module:
    """`model` itself, now returning scores `[B, C]`: its forward's result goes through `select(result, output)`
    (a forward hook, so module names, named depths and `state_dict` stay as they were). A selection set
    before is replaced."""
    for key, hook in list(model._forward_hooks.items()):
        if isinstance(hook, _Scores):
            del model._forward_hooks[key]
    model.register_forward_hook(_Scores(output))
    return model


def adapted(model: nn.Module) -> bool:
    """Whether `adapt` has set where `model`'s scores are."""
    return any(isinstance(h, _Scores) for h in model._forward_hooks.values())


def check_scores(model: nn.Module, x: torch.Tensor, num_classes: int | None = None) -> None:
    """Run `model` once on images `x` `[B, 3, H, W]` (eval mode, no gradient; modes restored) and check it
    returns scores `[B, C]` (C = `num_classes` when given). ValueError saying what it returned."""
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        for m, flag in flags.items():
            m.training = flag
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"the forward returns {describe(out)}, not scores [B, C]; adapt(model, output=...) picks them")
    if out.dim() != 2 or out.shape[0] != x.shape[0] or (num_classes is not None and out.shape[1] != num_classes):
        want = f"[{x.shape[0]}, {num_classes if num_classes is not None else 'C'}]"
        raise ValueError(f"on images {list(x.shape)} the model returns scores {list(out.shape)}, expected {want}")


IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
"""torchvision's ImageNet mean and std per channel."""


def normalise_input(
    model: nn.Module, mean: tuple[float, ...] | list[float], std: tuple[float, ...] | list[float]
) -> None:
    """Make `model` take images in [0, 1]: `(x - mean) / std` per channel before its forward (a forward
    pre-hook, so maps stay in the image's pixels and module names are unchanged)."""
    mean_t = torch.tensor(mean).view(1, 3, 1, 1)
    std_t = torch.tensor(std).view(1, 3, 1, 1)

    def pre(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]
        return ((x - mean_t.to(x)) / std_t.to(x),) + tuple(args[1:])

    pre.normalises_input = True  # type: ignore[attr-defined]  # methods that must see the network's input (LRP)
    model.register_forward_pre_hook(pre)


@contextlib.contextmanager
def normalisation_apart(model: nn.Module) -> Iterator[Callable[[torch.Tensor], torch.Tensor]]:
    """In the block, `model` without its `normalise_input` pre-hook; yields what the hook does to an input (the
    identity when there is none). Restored on exit, in order, also on error."""
    hooks = model._forward_pre_hooks
    saved = list(hooks.items())
    found = [hook for _, hook in saved if getattr(hook, "normalises_input", False)]
    for key in [key for key, hook in saved if hook in found]:
        del hooks[key]
    try:
        yield (lambda x: found[0](model, (x,))[0]) if found else (lambda x: x)
    finally:
        hooks.clear()
        hooks.update(saved)
