"""Monotonicity, monotonicity correlation, faithfulness estimate, infidelity, sufficiency, completeness,
non-sensitivity and input invariance vs Quantus 0.6, for `benchmarks/quantus.py`: `cases(c)` gives
`{name: (theirs, ours, floor)}`, zero-argument callables, where `c` holds the locals of its `main()` (model, x, y,
maps, masks, explain, explain_func, q, n, s, args, device).

Both sides at Quantus' defaults (one input value per step, `black` / `uniform` baselines, 4 x 4 patches), except
monotonicity correlation: steps of one image row (s values) and `--samples` samples (`c.args.samples`, 20 when
absent), since Quantus' 100 samples of every input value take hours. Monotonicity: ours puts the values back
(Arya et al.), Quantus 0.6 refills the baseline; both make the same forwards. Input invariance runs on a small
model whose first module is a convolution with a bias (Quantus' shift needs one; smallcnn's first child is a
container). The floor is the forwards (or the explanation) each definition needs, in batches of the n images,
nothing else; Quantus' infidelity repeats its 10 identical samples, ours computes them once. Ours runs n rows
per model call here (`batch_size=n`), as Quantus and the floor do: on a CPU a call of 64 small images costs more
per image than one of 16 (memory-bound); the default 64 is for GPUs.

Run by `python benchmarks/quantus.py [--only NAME ...]`.
"""

import torch

from common import forwards
from salience.attribution import attribute, upsample
from salience.measures.axiomatic import completeness, input_invariance, non_sensitivity
from salience.measures.monotonicity import (
    faithfulness_estimate,
    infidelity,
    monotonicity,
    monotonicity_correlation,
    sufficiency,
)


def _shiftable(c):
    """A small model Quantus can shift (its first module a convolution with a bias), its maps and explain_func."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(4),
                              torch.nn.Flatten(), torch.nn.Linear(256, 10)).to(c.device).eval()  # fmt: skip
    explain = lambda m, xx, t: attribute("gradient", m, xx, t)

    def explain_func(model, inputs, targets, **kwargs):
        xx = torch.as_tensor(inputs, device=c.device).float()
        return explain(model, xx, torch.as_tensor(targets, device=c.device).long()).detach()[:, None].cpu().numpy()

    return net, explain, explain_func, explain(net, c.x, c.y).detach()


def cases(c) -> dict:
    import quantus

    s, n, m, x, y, maps = c.s, c.n, c.model, c.x, c.y, c.maps
    qa = dict(c.q, a_batch=upsample(maps, (s, s))[:, None].cpu().numpy())
    off = dict(disable_warnings=True, return_aggregate=False)
    values, samples = x[0].numel(), getattr(c.args, "samples", 20)
    net, explain, explain_func, net_maps = _shiftable(c)
    qi = dict(c.q, model=net, a_batch=net_maps[:, None].cpu().numpy(), explain_func=explain_func)
    return {
        "monotonicity": (
            lambda: quantus.Monotonicity(**off)(**qa),
            lambda: monotonicity(m, x, y, maps, batch_size=n),
            forwards(m, x, values),
        ),
        "monotonicity_correlation": (
            lambda: quantus.MonotonicityCorrelation(nr_samples=samples, features_in_step=s, **off)(**qa),
            lambda: monotonicity_correlation(m, x, y, maps, samples, s, batch_size=n),
            forwards(m, x, 1 + values // s * samples),
        ),
        "faithfulness_estimate": (
            lambda: quantus.FaithfulnessEstimate(**off)(**qa),
            lambda: faithfulness_estimate(m, x, y, maps, batch_size=n),
            forwards(m, x, 1 + values),
        ),
        "infidelity": (
            lambda: quantus.Infidelity(**off)(**qa),
            lambda: infidelity(m, x, y, maps, batch_size=n),
            forwards(m, x, 1 + (s // 4) ** 2),
        ),
        "sufficiency": (lambda: quantus.Sufficiency(**off)(**qa), lambda: sufficiency(m, x, maps), forwards(m, x, 1)),
        "completeness": (
            lambda: quantus.Completeness(**off)(**qa),
            lambda: completeness(m, x, y, maps),
            forwards(m, x, 2),
        ),
        "non_sensitivity": (
            lambda: quantus.NonSensitivity(**off)(**qa),
            lambda: non_sensitivity(m, x, y, maps, batch_size=n),
            forwards(m, x, 1 + values),
        ),
        "input_invariance": (
            lambda: quantus.InputInvariance(**off)(**qi),
            lambda: input_invariance(net, x, y, net_maps, explain),
            lambda: explain(net, x - 1, y),
        ),
    }
