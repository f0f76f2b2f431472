"""LRP rules: how one layer hands the relevance arriving at its output back to its input.

A rule sees the layer's input `x` (`[P, ...]`), the relevance `R` at its output (same shape as the output)
and the layer as `fwd(input, weight, bias)` with its (batch-norm merged) parameters, and returns the
relevance at the input, `x`'s shape. The definitions follow `zennit.rules` (Epsilon, ZPlus, AlphaBeta,
Gamma, ZBox, Flat, WSquare, Norm, Pass); `stab(z) = z + ε·sign(z)` with sign(0) = +1. `x⁺ = max(x, 0)`,
`x⁻ = min(x, 0)`, `W⁺`, `W⁻` likewise.

`Relevance` is the autograd function that carries a rule: its forward returns the layer's output
unchanged, its backward returns the rule's input relevance instead of the gradient, so one
`torch.autograd.grad` of the seeded logits propagates relevance through the whole network.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

Forward = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor | None], torch.Tensor]
Term = tuple[str, torch.Tensor | None, torch.Tensor | None]  # (input key, weight, bias)

RULES = ("epsilon", "zplus", "alpha_beta", "gamma", "zbox", "flat", "wsquare", "norm", "pass")


@dataclass(frozen=True)
class Rule:
    """One rule and its parameters. `stabilizer` is ε of `stab` (the `epsilon` of the epsilon rule);
    `low`/`high`: the z^B box, a float or a tensor broadcastable to the input (`[P, 1, 1, 1]` per image)."""

    name: str
    stabilizer: float = 1e-6
    gamma: float = 0.25
    alpha: float = 2.0
    beta: float = 1.0
    low: torch.Tensor | float | None = None
    high: torch.Tensor | float | None = None

    def __post_init__(self) -> None:
        if self.name not in RULES:
            raise ValueError(f"LRP rule {self.name!r} is unknown; accepted: {', '.join(RULES)}")
        if self.name == "alpha_beta" and (self.alpha < 0 or self.beta < 0 or self.alpha - self.beta != 1):
            raise ValueError(
                f"alpha-beta rule: needs alpha, beta >= 0 and alpha - beta = 1; got {self.alpha}, {self.beta}"
            )
        if self.name == "zbox" and (self.low is None or self.high is None):
            raise ValueError("zbox rule: low and high are required")


def stab(z: torch.Tensor, eps: float) -> torch.Tensor:
    """`z + ε·sign(z)`, sign(0) = +1 (Zennit's and Captum's stabilizer)."""
    return z + torch.where(z >= 0, eps, -eps)


def _pos(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.clamp(min=0)


def _neg(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.clamp(max=0)


def _propagate(
    fwd: Forward, inputs: dict[str, torch.Tensor], terms: list[Term], grads: Callable[[list[torch.Tensor]], list]
) -> dict[str, torch.Tensor]:
    """Run `fwd` on each term `(key, W, b)` (input `inputs[key]`), map the outputs to the gradients to push
    back (`grads(outputs)`, one per term), and return `∂/∂input` of `Σ_terms <grad, output>` per input key."""
    keys = sorted({key for key, _, _ in terms})
    leaves = {key: inputs[key].detach().requires_grad_(True) for key in keys}
    with torch.enable_grad():
        outs = [fwd(leaves[key], w, b) for key, w, b in terms]
        got = torch.autograd.grad(outs, [leaves[k] for k in keys], grads(outs))
    return dict(zip(keys, got, strict=True))


def _signed_inputs(x: torch.Tensor) -> tuple[dict[str, torch.Tensor], bool]:
    """`{"p": x⁺, "n": x⁻}` and whether any entry is negative (terms in `x⁻` vanish otherwise)."""
    negative = bool(x.lt(0).any())
    return {"p": x.clamp(min=0), "n": x.clamp(max=0)}, negative


def _total(outs: list[torch.Tensor]) -> torch.Tensor:
    total = outs[0]
    for t in outs[1:]:
        total = total + t
    return total


def _reduce(inputs: dict[str, torch.Tensor], grads: dict[str, torch.Tensor]) -> torch.Tensor:
    return _total([inputs[k] * g for k, g in grads.items()])


def epsilon(rule: Rule, fwd: Forward, x: torch.Tensor, r: torch.Tensor, w: Any, b: Any) -> torch.Tensor:
    """`R_in = x ⊙ Wᵀ(R / stab(Wx + b))`."""
    g = _propagate(fwd, {"x": x}, [("x", w, b)], lambda o: [r / stab(o[0], rule.stabilizer)])
    return x * g["x"]


def zplus(rule: Rule, fwd: Forward, x: torch.Tensor, r: torch.Tensor, w: Any, b: Any) -> torch.Tensor:
    """`z = W⁺x⁺ + b⁺ + W⁻x⁻`; `R_in = x⁺ ⊙ W⁺ᵀ(R/stab(z)) + x⁻ ⊙ W⁻ᵀ(R/stab(z))` (alpha 1, beta 0)."""
    inputs, negative = _signed_inputs(x)
    terms: list[Term] = [("p", w.clamp(min=0), _pos(b))] + ([("n", w.clamp(max=0), None)] if negative else [])
    g = _propagate(fwd, inputs, terms, lambda o: [r / stab(_total(o), rule.stabilizer)] * len(o))
    return _reduce(inputs, g)


def alpha_beta(rule: Rule, fwd: Forward, x: torch.Tensor, r: torch.Tensor, w: Any, b: Any) -> torch.Tensor:
    """`z_a = W⁺x⁺ + b⁺ + W⁻x⁻`, `z_b = W⁻x⁺ + b⁻ + W⁺x⁻`; `R_in = α (x⁺ W⁺ᵀ + x⁻ W⁻ᵀ)(R/stab(z_a))
    − β (x⁺ W⁻ᵀ + x⁻ W⁺ᵀ)(R/stab(z_b))`."""
    inputs, negative = _signed_inputs(x)
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    terms: list[Term] = [("p", wp, _pos(b)), ("p", wn, _neg(b))]
    if negative:
        terms += [("n", wn, None), ("n", wp, None)]

    def grads(o: list[torch.Tensor]) -> list[torch.Tensor]:
        za, zb = (o[0] + o[2], o[1] + o[3]) if negative else (o[0], o[1])
        ga, gb = rule.alpha * r / stab(za, rule.stabilizer), -rule.beta * r / stab(zb, rule.stabilizer)
        return [ga, gb, ga, gb][: len(o)]

    return _reduce(inputs, _propagate(fwd, inputs, terms, grads))


def gamma(rule: Rule, fwd: Forward, x: torch.Tensor, r: torch.Tensor, w: Any, b: Any) -> torch.Tensor:
    """Generalised gamma: `W↑ = W + γW⁺`, `W↓ = W + γW⁻` (biases alike); where `z = Wx + b > 0`,
    `R_in = (x⁺ W↑ᵀ + x⁻ W↓ᵀ)(R / stab(W↑x⁺ + b↑ + W↓x⁻))`; where `z < 0`, the same with ↑ and ↓ swapped;
    0 where `z = 0`."""
    inputs, negative = _signed_inputs(x)
    with torch.no_grad():
        z = fwd(x, w, b)
    up, down = w + rule.gamma * w.clamp(min=0), w + rule.gamma * w.clamp(max=0)
    b_up = None if b is None else b + rule.gamma * b.clamp(min=0)
    b_down = None if b is None else b + rule.gamma * b.clamp(max=0)
    terms: list[Term] = [("p", up, b_up), ("p", down, b_down)]
    if negative:
        terms += [("n", down, None), ("n", up, None)]

    def grads(o: list[torch.Tensor]) -> list[torch.Tensor]:
        z_pos, z_neg = (o[0] + o[2], o[1] + o[3]) if negative else (o[0], o[1])
        g_pos = (z > 0) * r / stab(z_pos, rule.stabilizer)
        g_neg = (z < 0) * r / stab(z_neg, rule.stabilizer)
        return [g_pos, g_neg, g_pos, g_neg][: len(o)]

    return _reduce(inputs, _propagate(fwd, inputs, terms, grads))


def zbox(rule: Rule, fwd: Forward, x: torch.Tensor, r: torch.Tensor, w: Any, b: Any) -> torch.Tensor:
    """z^B (bounded input `l ≤ x ≤ h`): `z = Wx + b − (W⁺l + b⁺) − (W⁻h + b⁻)`,
    `R_in = x ⊙ Wᵀs − l ⊙ W⁺ᵀs − h ⊙ W⁻ᵀs`, `s = R / stab(z)`."""
    low = torch.as_tensor(rule.low, dtype=x.dtype, device=x.device).expand_as(x)
    high = torch.as_tensor(rule.high, dtype=x.dtype, device=x.device).expand_as(x)
    inputs = {"x": x, "l": low, "h": high}
    terms: list[Term] = [("x", w, b), ("l", w.clamp(min=0), _pos(b)), ("h", w.clamp(max=0), _neg(b))]

    def grads(o: list[torch.Tensor]) -> list[torch.Tensor]:
        s = r / stab(o[0] - o[1] - o[2], rule.stabilizer)
        return [s, -s, -s]

    return _reduce(inputs, _propagate(fwd, inputs, terms, grads))


def flat(rule: Rule, fwd: Forward, x: torch.Tensor, r: torch.Tensor, w: Any, b: Any) -> torch.Tensor:
    """Flat: every weight 1, no bias, inputs 1: `R_in = 1ᵀ(R / stab(1·1))` (the input's values are not used)."""
    ones = torch.ones_like(x)
    g = _propagate(fwd, {"x": ones}, [("x", torch.ones_like(w), None)], lambda o: [r / stab(o[0], rule.stabilizer)])
    return g["x"]


def wsquare(rule: Rule, fwd: Forward, x: torch.Tensor, r: torch.Tensor, w: Any, b: Any) -> torch.Tensor:
    """w²: `R_in = (W²)ᵀ(R / stab(W²·1 + b²))` (parameters squared, inputs 1)."""
    ones, w2, b2 = torch.ones_like(x), w * w, None if b is None else b * b
    g = _propagate(fwd, {"x": ones}, [("x", w2, b2)], lambda o: [r / stab(o[0], rule.stabilizer)])
    return g["x"]


def norm(rule: Rule, fwd: Forward, x: torch.Tensor, r: torch.Tensor, w: Any, b: Any) -> torch.Tensor:
    """Norm (average pooling, sums): `R_in = x ⊙ Jᵀ(R / stab(f(x)))`, f the pooling."""
    return epsilon(rule, fwd, x, r, None, None)


def pass_(rule: Rule, fwd: Forward, x: torch.Tensor, r: torch.Tensor, w: Any, b: Any) -> torch.Tensor:
    """Pass: `R_in = R` (element-wise layers: activations, batch norm)."""
    return r


APPLY = {
    "epsilon": epsilon,
    "zplus": zplus,
    "alpha_beta": alpha_beta,
    "gamma": gamma,
    "zbox": zbox,
    "flat": flat,
    "wsquare": wsquare,
    "norm": norm,
    "pass": pass_,
}


@dataclass
class Step:
    """One use of a layer in the forward: its rule, `fwd`, and the (merged) parameters."""

    rule: Rule
    fwd: Forward
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None


class Relevance(torch.autograd.Function):
    """Forward: the layer's output `out` unchanged; backward: the rule's relevance for the input `x`."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, out: torch.Tensor, step: Step) -> torch.Tensor:
        ctx.step = step
        if step.rule.name != "pass":
            ctx.save_for_backward(x)
        return out.detach()

    @staticmethod
    def backward(ctx: Any, r: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        step: Step = ctx.step
        if step.rule.name == "pass":
            return r, None, None
        (x,) = ctx.saved_tensors
        return APPLY[step.rule.name](step.rule, step.fwd, x, r, step.weight, step.bias), None, None


class ResidualSum(torch.autograd.Function):
    """`a + b` whose backward splits the relevance in proportion to the summands (Zennit's `Sum` with the
    Norm rule): `R_a = a ⊙ R / stab(a + b)`, `R_b = b ⊙ R / stab(a + b)`."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
        ctx.save_for_backward(a, b)
        ctx.eps = eps
        return a + b

    @staticmethod
    def backward(ctx: Any, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        a, b = ctx.saved_tensors
        s = r / stab(a + b, ctx.eps)
        return a * s, b * s, None
