"""One guided training step on a batch: logits, task loss and guidance loss from a shared forward.

Any differentiable method of the attribution registry can guide. For the shared methods (IxG, the
gradient CAMs, CAM; `Method.shared`) the task loss and the attribution share one forward pass (the
layer's output is captured, then one `autograd.grad` of the sum of the selected logits with
`create_graph=True`), which keeps guidance at the final layer close to the cost of a plain step.
So does `bcos`: the map comes from the forward that gave the logits (one batch-norm update per step), its
gradient taken in the network's explanation mode. The others (`integrated_gradients`, `smooth_grad`, ...) run
their own passes through `salience.attribution.attribute`. In train mode, batch norm couples the images
of a batch, so as in the reference code each map includes the batch-norm cross terms.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from salience.attribution import METHODS as ATTRIBUTION_METHODS
from salience.attribution import attribute
from salience.attribution.core import channels_last, forward_at, patch_grid, resolve_layer
from salience.attribution.methods import cam_weights, ixg_map
from salience.attribution.registry import Pass, get_method
from salience.data.core import object_masks
from salience.guidance.losses import LOSSES
from salience.guidance.objective import objective, sample_classes, task_loss
from salience.models import DEPTHS, BcosResNet, layer_name
from salience.models.bcos import encode

METHODS = tuple(name for name, m in ATTRIBUTION_METHODS.items() if m.differentiable)
"""Attribution methods accepted for guidance: the differentiable ones of the registry."""
SHARED_FORWARD = tuple(name for name in METHODS if ATTRIBUTION_METHODS[name].shared)


@dataclass(frozen=True)
class Guide:
    """Guidance settings. `loss=None` trains on the task loss only.

    `depth`: a named depth (`input`, `mid1`..`mid3`, `final`) or a module name; the CAMs need a layer
    (`cam`: one whose output has as many channels as the head has inputs, e.g. CYBORG's `layer4.2.conv3` of
    ResNet-50), methods that take no layer (`gradient`, `integrated_gradients`) use the input. `lam` >= 0
    weighs the guidance mean.
    `dilation` p grows each training box by p·w and p·h per side (guidance masks only).
    """

    loss: str | None = None
    method: str = "input_x_gradient"
    depth: str = "input"
    lam: float = 1.0
    ig_steps: int = 16
    dilation: float = 0.0
    output: str = "logit"
    """What the gradient-based maps explain: the sampled class's `logit`, or its `log_softmax`
    (log-probability). In a softmax classifier a cue can count as evidence *against* the other classes,
    which the logit's map never shows; the log-probability's gradient `∇y_c − Σ_j p_j ∇y_j` does.
    For `cam` the log-probability's map uses the class weights `w_c − Σ_j p_j w_j`.
    `log_softmax` needs a shared-forward method (`SHARED_FORWARD`)."""
    target: str = "true"
    """Whose map is guided: the drawn `true` class, or the `predicted` class (the argmax of the logits,
    as CYBORG; `cyborg` loss only, since the human map does not depend on the class)."""
    task_weight: float = 1.0
    """The objective is `task_weight · task + lam · guidance` (CYBORG: α and 1 − α)."""
    reduction: str = "mean"
    """How the per-image guidance losses make `guidance`: their `mean` over the guided images, or their
    `sum` (Rao et al.'s `train.py`; the same step as `mean` with `lam` divided by the number of guided images)."""

    def check(self, model: nn.Module) -> None:
        """Fail early, naming the config key, when the settings do not fit `model`."""
        model = _inner(model)
        if self.loss is None:
            return
        if self.loss not in LOSSES:
            raise ValueError(f"guidance.loss: {self.loss!r} is unknown; accepted: {', '.join(LOSSES)}")
        if self.method not in METHODS:
            known = "is unknown" if self.method not in ATTRIBUTION_METHODS else "is not differentiable"
            raise ValueError(f"guidance.method: {self.method!r} {known}; accepted: {', '.join(METHODS)}")
        method = get_method(self.method)
        if self.lam < 0:
            raise ValueError(f"guidance.lambda must be >= 0, got {self.lam}")
        if self.dilation < 0:
            raise ValueError(f"guidance.box_dilation must be >= 0, got {self.dilation}")
        if self.output not in ("logit", "log_softmax"):
            raise ValueError(f"guidance.output: {self.output!r} is unknown; accepted: logit, log_softmax")
        if self.output == "log_softmax" and not method.shared:
            raise ValueError(
                f"guidance.output: 'log_softmax' needs method {', '.join(SHARED_FORWARD)}, "
                f"not {self.method!r}; use output: logit"
            )
        if method.bcos_only and not isinstance(model, BcosResNet):
            raise ValueError(
                f"guidance.method: {self.method!r} needs a B-cos model (bcos_resnet18/34/50), not {type(model).__name__}"
            )
        if method.linear_head:
            try:
                cam_weights(model)
            except ValueError as err:
                raise ValueError(f"guidance.method: {err}") from None
        if not method.takes_layer and self.depth != (method.layer or "input"):
            raise ValueError(
                f"guidance.depth: {self.method!r} works at {method.layer or 'the input'} only; got {self.depth!r}"
            )
        if self.reduction not in ("mean", "sum"):
            raise ValueError(f"guidance.reduction: {self.reduction!r} is unknown; accepted: mean, sum")
        if self.target not in ("true", "predicted"):
            raise ValueError(f"guidance.target: {self.target!r} is unknown; accepted: true, predicted")
        if self.target == "predicted" and self.loss != "cyborg":
            raise ValueError(
                f"guidance.target: 'predicted' needs loss 'cyborg' (a box loss needs the class before the forward); "
                f"got loss {self.loss!r}"
            )
        try:
            module = resolve_layer(model, self.depth)
        except ValueError as err:
            raise ValueError(f"guidance.depth: {err}") from None
        if method.layer is not None and module is None:
            raise ValueError(f"guidance.depth: {self.method!r} needs a layer, not the input")

    def __call__(
        self, model: nn.Module, batch: dict, generator: torch.Generator | None = None, multi_label: bool = False
    ) -> dict[str, Any]:
        """Losses for one batch (model in train mode).

        Returns `total`, `task`, `guidance` (scalars; guidance = mean, or sum with `reduction="sum"`, over the
        annotated images whose mask of the sampled class is not empty, 0 when none), `logits` `[B, C]` and `guided` (number of
        images that received guidance).
        """
        x, labels = batch["image"], batch["labels"]
        if self.loss is None:
            logits = model(x)
            task = task_loss(logits, labels, multi_label)
            zero = task.new_zeros(())
            return {"total": task, "task": task, "guidance": zero, "logits": logits, "guided": 0}
        classes = sample_classes(labels, generator)
        if self.loss == "cyborg":
            selected = batch["annotated"] & batch["has_human_map"] & (classes >= 0)
        else:
            selected = batch["annotated"] & (classes >= 0)
        index = selected.nonzero()[:, 0]
        target = self.targets(batch, index, classes[index])
        if self.loss != "cyborg":  # a pair whose mask is empty has nothing to guide to (energy would be 1)
            keep = target.flatten(1).any(1)
            index, target = index[keep.to(index.device)], target[keep]
        guided = None if self.target == "predicted" else classes[index]  # None: the argmax, after the forward
        logits, maps = self.forward_and_maps(model, x, index, guided)
        task = task_loss(logits, labels, multi_label)
        if index.numel() == 0:
            guidance = task.new_zeros(())
        else:
            assert maps is not None  # forward_and_maps returns maps when index is not empty
            maps = maps.to(torch.promote_types(maps.dtype, torch.float32))  # losses in >= fp32 under AMP
            per_image = LOSSES[self.loss](maps, target.to(maps.device, maps.dtype))
            guidance = per_image.sum() if self.reduction == "sum" else per_image.mean()
        total = objective(task, guidance, self.lam, self.task_weight)
        return {"total": total, "task": task, "guidance": guidance, "logits": logits, "guided": int(index.numel())}

    def forward_and_maps(
        self, model: nn.Module, x: Tensor, index: Tensor, classes: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        """Logits `[B, C]` for every image and maps `[len(index), h, w]` (with graph) of `classes`
        (`[len(index)]`; None: each image's predicted class)."""
        if index.numel() == 0:
            return model(x), None
        with torch.enable_grad():
            return self._forward_and_maps(model, x, index, classes)

    def _forward_and_maps(self, model, x, index, classes):
        inner = _inner(model)
        method = get_method(self.method)
        if not method.shared and not method.bcos_only:
            logits = model(x)
            classes = _predicted(logits, index) if classes is None else classes
            layer = None if self.depth == "input" else self.depth
            options = {"steps": self.ig_steps} if self.method == "integrated_gradients" else {}
            maps = attribute(self.method, inner, x[index], classes, layer=layer, create_graph=True, **options)
            return logits, maps
        depth = self.depth if method.takes_layer else (method.layer or "input")
        layer = layer_name(inner, depth) if depth in DEPTHS else depth
        if layer is not None and inner is not model:  # a DDP wrapper: hook the wrapped module's layer
            layer = "module." + layer
        if method.bcos_only and layer is None:  # B-cos explains its encoded 6-channel input
            x = encode(x) if x.shape[1] == 3 else x
        logits, feats = forward_at(model, x, layer)
        classes = _predicted(logits, index) if classes is None else classes
        probs = logits.softmax(1)[index] if self.output == "log_softmax" else None
        grad = None
        if method.needs_grad:
            explained = logits.log_softmax(1) if probs is not None else logits
            # B-cos: W(x) constant in this first-order gradient, still differentiable in θ (models/bcos.py)
            with _gradient_mode(inner, method.bcos_only):
                (grad,) = torch.autograd.grad(explained[index, classes].sum(), feats, create_graph=True)
            grad = grad[index]
        at_layer = layer is not None
        grid = patch_grid(inner, x.shape[-2:]) if at_layer else None
        recorded = Pass(feats[index], grad, classes, inner, probs, grid, at_layer and channels_last(inner))
        if method.bcos_only:  # a B-cos map: Σ F ⊙ ∂y/∂F
            return logits, ixg_map(recorded)
        assert method.from_pass is not None  # a shared method
        return logits, method.from_pass(recorded)

    def targets(self, batch: dict, index: Tensor, classes: Tensor) -> Tensor:
        """Masks `[len(index), H, W]`: the sampled class's boxes (dilated), or the human maps for `cyborg`."""
        if self.loss == "cyborg":
            return batch["human_map"][index]
        return object_masks(batch, index, classes, self.dilation)


def _predicted(logits: Tensor, index: Tensor) -> Tensor:
    """The argmax class `[len(index)]` of the images `index` (no gradient), as CYBORG's `pred`."""
    return logits.detach()[index].argmax(1)


def _gradient_mode(model: nn.Module, bcos: bool) -> AbstractContextManager:
    """A B-cos network's explanation mode (for `bcos`), else nothing."""
    if not bcos:
        return nullcontext()
    assert isinstance(model, BcosResNet)  # Guide.check refused other models
    return model.explanation_mode()


def _inner(model: nn.Module) -> nn.Module:
    """The wrapped module of a DistributedDataParallel model, else the model."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
