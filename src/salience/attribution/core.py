"""Shared pieces of the attribution methods: input and target checks, layer capture, upsampling, and the model
run on perturbed inputs in chunks."""

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from salience.models.depths import DEPTHS, layer_name


def patch_grid(model: nn.Module, size: Sequence[int]) -> tuple[int, int] | None:
    """The patch grid `(h, w)` of a vision transformer for inputs of `size` `(H, W)`, read off the model
    (torchvision `patch_size`, timm `patch_embed`, Hugging Face `config.patch_size`); None for other models."""
    embed = getattr(model, "patch_embed", None)
    if embed is not None and hasattr(embed, "dynamic_feat_size"):  # timm ViT / DeiT: any input size
        h, w = embed.dynamic_feat_size((size[0], size[1]))
        return int(h), int(w)
    patch = getattr(model, "patch_size", None)
    if patch is None and not channels_last(model):  # Hugging Face ViT / DeiT; Swin's stages shrink the grid
        patch = getattr(getattr(model, "config", None), "patch_size", None)
    if isinstance(patch, int) and patch > 0:
        return size[0] // patch, size[1] // patch
    return None


def channels_last(model: nn.Module) -> bool:
    """Whether the model's 4-D layer outputs are `[B, h, w, C]` (Swin transformers), not `[B, C, h, w]`."""
    return type(model).__name__.startswith("Swin")


def check_input(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a float tensor [B, C, H, W]; got {shape}")


def expand_targets(target: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`(image_index, class_index)` long `[P]` for a class index per image `[B]` or a multi-hot `[B, C]`.

    Multi-hot rows expand to one pair per 1, in row-major order.
    """
    if not isinstance(target, torch.Tensor):
        target = torch.as_tensor(target)
    if target.dim() == 1 and target.shape[0] == batch_size and not target.is_floating_point():
        return torch.arange(batch_size, device=target.device), target.long()
    if target.dim() == 2 and target.shape[0] == batch_size:
        if not ((target == 0) | (target == 1)).all():
            raise ValueError("target: a [B, C] target must be multi-hot (0/1 entries)")
        image, cls = target.nonzero(as_tuple=True)
        return image, cls
    raise ValueError(
        f"target must be a long tensor [B] (class per image) or a multi-hot [B, C] with "
        f"B = {batch_size}; got {target.dtype} {tuple(target.shape)}"
    )


def check_classes(classes: torch.Tensor, num_classes: int) -> None:
    if classes.numel() and (classes.min() < 0 or classes.max() >= num_classes):
        bad = classes[(classes < 0) | (classes >= num_classes)][0].item()
        raise ValueError(
            f"target: class index {bad} is out of range for a model with {num_classes} "
            f"outputs (accepted 0..{num_classes - 1})"
        )


def resolve_layer(model: nn.Module, layer: str | None) -> nn.Module | None:
    """The module for a module name or named depth; `None` (or `"input"`) means the input."""
    if layer is None:
        return None
    if getattr(model, "salience_opaque", False) and layer != "input":
        raise ValueError(
            f"layer {layer!r}: {type(model).__name__} was loaded from a TorchScript / torch.export "
            "file, whose layers cannot be hooked; use an input method (gradient, input_x_gradient or "
            "integrated_gradients without a layer) or load the weights into `build(name, ...)`"
        )
    name = layer_name(model, layer) if layer in DEPTHS else layer
    if name is None:
        return None
    modules = dict(model.named_modules())
    if name not in modules or name == "":
        top = [n for n, _ in model.named_children()]
        raise ValueError(
            f"layer {layer!r} is not a module of {type(model).__name__}; accepted: "
            f"{', '.join(DEPTHS)} or a module name such as {', '.join(top[:8])}"
        )
    return modules[name]


@contextmanager
def capture(module: nn.Module, grad_from_here: bool = False) -> Iterator[list[torch.Tensor]]:
    """Record `module`'s output during the block in `outputs` (a list); the hook always goes away.

    An output that does not require grad (frozen parameters, detached input, or a forward run under
    `no_grad`) is replaced by a leaf that does, so gradients with respect to it exist. With
    `grad_from_here`, gradient recording is switched on at the module's output: a forward started
    under `torch.no_grad()` builds the graph only from the layer on (the caller restores the mode).

    A module returning a tuple whose first element is a tensor (a transformer block's hidden states and
    attention weights) is recorded at that first element. The rest of the network receives a copy of
    the output, so an in-place op after the layer (DenseNet's `F.relu(features, inplace=True)`, VGG's
    `ReLU(inplace=True)`) changes the copy and the recorded tensor keeps the layer's own values;
    gradients pass through the copy unchanged.
    """
    outputs: list[torch.Tensor] = []

    def hook(_module: nn.Module, _inputs: Any, out: Any) -> Any:
        rest = None
        if isinstance(out, tuple) and out and isinstance(out[0], torch.Tensor):
            out, rest = out[0], out[1:]  # a transformer block's (hidden states, attention weights, ...)
        if not isinstance(out, torch.Tensor):
            raise ValueError(
                f"layer {type(_module).__name__} returns {type(out).__name__}, not a tensor; "
                "pick a module whose output is one feature tensor (or a tuple starting with one)"
            )
        if grad_from_here:
            torch.set_grad_enabled(True)
        if torch.is_grad_enabled() and not out.requires_grad:
            out = out.detach().requires_grad_(True)
        outputs.append(out)
        return out.clone() if rest is None else (out.clone(), *rest)

    handle = module.register_forward_hook(hook)
    try:
        yield outputs
    finally:
        handle.remove()


def forward_at(
    model: nn.Module, x: torch.Tensor, layer: str | None, create_graph: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run `model(x)`; return `(logits, F)`, F = the input (made differentiable) or the layer's output.

    Without `create_graph` (maps only, no parameter gradients) the part of the network before the
    layer runs without recording a graph: less memory and time, the same gradients at the layer.
    """
    module = resolve_layer(model, layer)
    if module is None:
        if not x.requires_grad:
            x = x.detach().requires_grad_(True)
        return model(x), x
    prefix_mode = torch.no_grad() if not create_graph else nullcontext()
    with prefix_mode, capture(module, grad_from_here=not create_graph) as outputs:
        logits = model(x)
    if len(outputs) != 1:
        raise ValueError(f"layer {layer!r} ran {len(outputs)} times in one forward; pick a module that runs once")
    return logits, outputs[0]


def selected_logit_sum(logits: torch.Tensor, image: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """Sum over pairs of `logits[image, class]`; its gradient gives every pair's gradient at once."""
    if logits.dim() != 2:
        raise ValueError(f"model must return logits [B, num_classes]; got {tuple(logits.shape)}")
    check_classes(cls, logits.shape[1])
    return logits[image, cls].sum()


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of `[B, h, w]` maps to `[B, *size]` (align_corners=False)."""
    if maps.dim() != 3:
        raise ValueError(f"maps must be [B, h, w]; got {tuple(maps.shape)}")
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


def perturbed_outputs(
    x: torch.Tensor,
    count: int,
    perturb: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    run: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    batch_size: int,
    block: int | None = None,
) -> torch.Tensor:
    """`[B, count, ...]`: `run(perturb(image, index), image)` for each of the `count` perturbations (`index`) of
    each image of `x` `[B, ...]`, `batch_size` rows `(image, index)` per call; `image`, `index`: long `[n]` on
    x's device.

    `perturb` gives what `run` takes: the perturbed inputs, or a perturbation that `run` applies; it is called
    chunk by chunk in row order, so it may draw random numbers as it goes. `run(that, image) -> [n, ...]` runs
    the model and reads its output. Rows go in blocks of `block` perturbation indices (None: one block of all
    `count`), image-major within a block: None keeps an image's perturbations together, `block=1` runs every
    image's first perturbation, then every image's second, and so on."""
    b = x.shape[0]
    block = block or count
    row = torch.arange(b * count, device=x.device)
    start = row // (b * block) * block  # the first perturbation index of the row's block
    width = (count - start).clamp(max=block)  # the number of perturbation indices in that block
    image, index = (row - start * b) // width, start + (row - start * b) % width
    chunks = zip(image.split(batch_size), index.split(batch_size), strict=True)
    values = torch.cat([run(perturb(i, j), i) for i, j in chunks])
    out = values.new_empty(b, count, *values.shape[1:])
    out[image, index] = values
    return out


def class_scores(model: nn.Module, classes: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A `run` of `perturbed_outputs`: `(inputs [n, C, H, W], image [n]) -> [n]`, the logit of `classes[image]`;
    a model that does not return logits `[n, num_classes]`, or a class out of its range, raises `ValueError`."""

    def run(inputs: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        logits = model(inputs)
        if logits.dim() != 2:
            raise ValueError(f"model must return logits [B, num_classes]; got {tuple(logits.shape)}")
        check_classes(classes, logits.shape[1])
        return logits.gather(1, classes[image, None])[:, 0]

    return run


@contextmanager
def instance_attributes(changes: Iterable[tuple[nn.Module, dict[str, Any]]]) -> Iterator[None]:
    """Within the block, each module of `changes` has the given instance attributes (e.g. a `forward` that
    replaces its class's); on exit, also on error, each is removed or put back as it was."""
    saved: list[tuple[nn.Module, dict[str, Any], list[str]]] = []
    try:
        for module, values in changes:
            saved.append((module, {k: module.__dict__[k] for k in values if k in module.__dict__}, list(values)))
            module.__dict__.update(values)
        yield
    finally:
        for module, before, keys in saved:
            for key in keys:
                module.__dict__.pop(key, None)
            module.__dict__.update(before)
