"""Layer-wise relevance propagation (Bach et al. 2015; Montavon et al. 2019) with Zennit's composites.

`lrp(model, x, target, composite)` -> maps `[P, H, W]`: the input relevance summed over channels,
signed, started from the target logit (`R_out = y_c · e_c`, so the map sums to about `y_c`). Rules per
layer as `zennit.composites` (see `COMPOSITES`); canonizers as `zennit.torchvision` (batch norm merged into
the layer before it; ResNet additions split in proportion to the summands); rules in `lrp_rules`.
All (image, class) pairs run in one forward and one `autograd.grad`. Hooks and rewritten forwards are
removed on exit, also on error; the parameters are never written.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from salience.attribution.canonizers import canonized, merge_pairs, merged_params
from salience.attribution.core import check_classes
from salience.attribution.lrp_rules import Relevance, Rule, Step
from salience.attribution.methods import pairs
from salience.attribution.registry import Method, register
from salience.models.adapt import normalisation_apart

POOLS = (nn.AvgPool2d, nn.AdaptiveAvgPool2d)
PLAIN = (nn.MaxPool2d, nn.Flatten, nn.Dropout, nn.Identity)  # no rule: the gradient (winner takes all)
SUPPORTED = "Conv2d, Linear, BatchNorm2d, ReLU, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, Flatten, Dropout, Identity"
# (conv rule, first-layer rule, first-layer types): Zennit's composites
COMPOSITES: dict[str, tuple[str, str | None, tuple[type, ...]]] = {
    "epsilon_plus": ("zplus", None, ()),
    "epsilon_plus_flat": ("zplus", "flat", (nn.Conv2d, nn.Linear)),
    "epsilon_gamma_box": ("gamma", "zbox", (nn.Conv2d,)),
    "epsilon_alpha2_beta1": ("alpha_beta", None, ()),
    "epsilon_alpha2_beta1_flat": ("alpha_beta", "flat", (nn.Conv2d, nn.Linear)),
    "epsilon": ("epsilon", None, ()),
}
# autograd nodes a forward may contain besides the rules: they move relevance without changing it
STRUCTURAL = {
    "AccumulateGrad", "CloneBackward0", "ViewBackward0", "UnsafeViewBackward0", "ReshapeAliasBackward0",
    "CatBackward0", "SliceBackward0", "PermuteBackward0", "TransposeBackward0", "SqueezeBackward0",
    "SqueezeBackward1", "UnsqueezeBackward0", "ToCopyBackward0", "AliasBackward0",
    "MaxPool2DWithIndicesBackward0", "RelevanceBackward", "ResidualSumBackward",
}  # fmt: skip


def _rule_for(kind: type, composite: str, options: dict[str, Any]) -> Rule | None:
    stabilizer, eps = options["stabilizer"], options["epsilon"]
    conv = COMPOSITES[composite][0]
    if kind is nn.Conv2d:
        return Rule(conv, eps if conv == "epsilon" else stabilizer, gamma=options["gamma"])
    if kind is nn.Linear or (kind is nn.MaxPool2d and composite == "epsilon"):  # Captum's rule for max pooling
        return Rule("epsilon", eps)
    if kind in (nn.ReLU, nn.BatchNorm2d):
        return Rule("pass")
    return Rule("norm", stabilizer) if kind in POOLS else None


def layer_rules(model: nn.Module, composite: str, options: dict[str, Any]) -> dict[nn.Module, Rule | None]:
    """`{leaf module: its rule}` (None: plain gradient) in Zennit's layer map for `composite`; the first
    layer rule goes to the first module of its types in `named_modules` order. Types match exactly (a
    subclass may compute something else): ValueError naming a module without a rule."""
    _, first, first_types = COMPOSITES[composite]
    rules: dict[nn.Module, Rule | None] = {}
    for name, m in model.named_modules():
        if next(m.children(), None) is not None or m in rules:
            continue
        if type(m) not in (nn.Conv2d, nn.Linear, nn.ReLU, nn.BatchNorm2d, *POOLS, *PLAIN):
            raise ValueError(f"LRP: module {name!r} ({type(m).__name__}) has no LRP rule; supported: {SUPPORTED}")
        _check_module(name, m)
        if first is not None and type(m) in first_types:
            rules[m] = Rule(first, options["stabilizer"], low=options["low"], high=options["high"])
            first = None
        else:
            rules[m] = _rule_for(type(m), composite, options)
    return rules


def _check_module(name: str, m: nn.Module) -> None:
    if isinstance(m, (nn.BatchNorm2d, nn.Dropout)) and m.training:
        raise ValueError(f"LRP: module {name!r} ({type(m).__name__}) is in training mode; call model.eval() first")
    if isinstance(m, nn.Conv2d) and m.padding_mode != "zeros":
        raise ValueError(f"LRP: module {name!r} uses padding_mode={m.padding_mode!r}; supported: 'zeros'")


def _layer_forward(m: nn.Module) -> Callable[..., torch.Tensor]:
    if isinstance(m, nn.Conv2d):
        return lambda t, w, b: m._conv_forward(t, w, b)
    if isinstance(m, nn.Linear):
        return F.linear
    return lambda t, _w, _b: m(t)


@dataclass
class LRPHooks:
    """Forward hooks that wrap each module's output in `Relevance` with its rule; merged batch norms are
    checked to take their layer's output."""

    rules: dict[nn.Module, Rule | None]
    merged: dict[nn.Module, nn.Module]
    steps: dict[nn.Module, Step] = field(default_factory=dict)
    inputs: dict[nn.Module, list[torch.Tensor]] = field(default_factory=dict)
    outputs: dict[nn.Module, torch.Tensor] = field(default_factory=dict)
    handles: list[RemovableHandle] = field(default_factory=list)

    def attach(self, names: dict[nn.Module, str]) -> None:
        layer_bn = {layer: bn for bn, layer in self.merged.items()}
        for m, rule in self.rules.items():
            if rule is None:
                continue
            w, b = merged_params(m, layer_bn.get(m)) if isinstance(m, (nn.Conv2d, nn.Linear)) else (None, None)
            self.steps[m] = Step(rule, _layer_forward(m), w, b)
            self.handles.append(m.register_forward_pre_hook(self._pre(names[m])))
            self.handles.append(m.register_forward_hook(self._post))

    def _pre(self, name: str) -> Callable[[nn.Module, tuple], tuple]:
        def hook(m: nn.Module, args: tuple) -> tuple:
            layer = self.merged.get(m)
            if layer is not None and args[0] is not self.outputs.get(layer):
                raise ValueError(
                    f"LRP: batch norm {name!r} follows a Conv2d/Linear in registration order but does not take "
                    "its output in the forward; LRP cannot merge it"
                )
            self.inputs.setdefault(m, []).append(args[0])
            torch.set_grad_enabled(False)  # the module's own graph is not needed; `_post` turns it back on
            return (args[0].detach(), *args[1:])

        return hook

    def _post(self, m: nn.Module, _args: tuple, out: torch.Tensor) -> torch.Tensor:
        torch.set_grad_enabled(True)  # `lrp` runs the forward under enable_grad, which restores it on error
        result: torch.Tensor = Relevance.apply(self.inputs[m].pop(), out.detach(), self.steps[m])
        self.outputs[m] = result
        return result

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def check_graph(out: torch.Tensor) -> None:
    """ValueError when the forward did something between the hooked modules that changes values (an
    addition, a functional activation or pooling): its relevance would be a plain gradient."""
    seen, todo = set(), [out.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if type(node).__name__ not in STRUCTURAL:
            raise ValueError(
                f"LRP: the forward runs {type(node).__name__}, an operation outside the modules LRP has rules for "
                f"(tensor arithmetic or a functional call in a forward); supported modules: {SUPPORTED}, and "
                "torchvision ResNet / DenseNet blocks"
            )
        todo += [nxt for nxt, _ in node.next_functions]


def lrp(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    composite: str = "epsilon_plus",
    *,
    epsilon: float = 1e-6,
    stabilizer: float = 1e-6,
    gamma: float = 0.25,
    low: torch.Tensor | float | None = None,
    high: torch.Tensor | float | None = None,
    create_graph: bool = False,
) -> torch.Tensor:
    """LRP with a Zennit composite (or `"epsilon"`: the epsilon rule on every conv and linear layer, as
    Captum's default rules). Relevance `y_c · e_c` at the logits; maps `Σ_ch R_in` `[P, H, W]`, signed.
    `low`/`high` (z^B box of `epsilon_gamma_box`): default each image's min and max, `[P, 1, 1, 1]`."""
    if composite not in COMPOSITES:
        raise ValueError(f"LRP composite {composite!r} is unknown; accepted: {', '.join(COMPOSITES)}")
    if create_graph:
        raise ValueError("LRP is not differentiable: create_graph=True is not supported")
    x, cls = pairs(x, target)
    if x.shape[0] == 0:
        return x.new_zeros(0, *x.shape[2:])
    with normalisation_apart(model) as normalise:  # the network's input: the relevance of each pixel, 1:1
        x = normalise(x.detach()).requires_grad_(True)
        flat = x.flatten(1)
        low = flat.amin(1).reshape(-1, 1, 1, 1) if low is None else low
        high = flat.amax(1).reshape(-1, 1, 1, 1) if high is None else high
        options = {"epsilon": epsilon, "stabilizer": stabilizer, "gamma": gamma, "low": low, "high": high}
        hooks = LRPHooks(layer_rules(model, composite, options), merge_pairs(model))
        try:
            hooks.attach({m: name for name, m in model.named_modules()})
            with torch.enable_grad(), canonized(model, stabilizer):
                logits = model(x)
        finally:
            hooks.remove()
    check_graph(logits)
    check_classes(cls, logits.shape[1])
    rows = torch.arange(cls.shape[0], device=x.device)
    seed = torch.zeros_like(logits)
    seed[rows, cls] = logits.detach()[rows, cls]
    (relevance,) = torch.autograd.grad(logits, x, seed)
    return relevance.sum(1)


def _entry(composite: str, doc: str) -> Callable[..., torch.Tensor]:
    def run(
        model: nn.Module,
        x: torch.Tensor,
        target: torch.Tensor,
        *,
        epsilon: float = 1e-6,
        stabilizer: float = 1e-6,
        gamma: float = 0.25,
        low: torch.Tensor | float | None = None,
        high: torch.Tensor | float | None = None,
        create_graph: bool = False,
    ) -> torch.Tensor:
        return lrp(
            model, x, target, composite, epsilon=epsilon, stabilizer=stabilizer, gamma=gamma, low=low, high=high,
            create_graph=create_graph,
        )  # fmt: skip

    run.__doc__ = doc
    run.__name__ = f"lrp_{composite}"
    return run


_DOCS = {
    "epsilon_plus": "epsilon (linear) and z+ (conv)",
    "epsilon_plus_flat": "epsilon (linear), z+ (conv), flat (first layer)",
    "epsilon_gamma_box": "epsilon (linear), gamma 0.25 (conv), z^B (first conv; box: each image's min/max)",
    "epsilon_alpha2_beta1": "epsilon (linear) and alpha 2 beta 1 (conv)",
    "epsilon_alpha2_beta1_flat": "epsilon (linear), alpha 2 beta 1 (conv), flat (first layer)",
}
for _name, _rules in _DOCS.items():
    register(
        Method(
            f"lrp_{_name}",
            f"LRP, Zennit's {_name} composite: {_rules}",
            run=_entry(_name, f"LRP with Zennit's {_name} composite ({_rules}); `[P, H, W]`, signed. See `lrp`."),
            signed=True,
            differentiable=False,
        )
    )

__all__ = ["COMPOSITES", "lrp"]
