# ruff: noqa: E402  (quantus is imported after taking this folder off sys.path: this file is named quantus.py)
"""salience's measures vs Quantus 0.6, side by side on the same model, images and maps.

    python benchmarks/quantus.py                                  # smallcnn, 32 px, 16 images, CPU
    python benchmarks/quantus.py --model resnet18 --size 64 --device cuda

Both explain with salience's `input_x_gradient` (Quantus through an `explain_func`), so the difference is
the measure's own work: Quantus' per-sample NumPy loops and one sparse solve per image and percentage
(ROAD) vs salience's batched torch on the model's device. Parameters are Quantus' defaults except the
sample counts (`--samples`, `--runs`), the same on both sides. Each measure is timed once per side after one
warm-up call of salience's; the table gives seconds and the speed-up. For the measures that run the model, the
last columns time the model passes the definition needs (forwards, or explanations), batched and nothing else,
and how far Quantus is from that floor: no implementation can be faster than Quantus by more than that ratio.
"""

import argparse
import sys
import warnings
from types import SimpleNamespace

import numpy as np
import torch

_here = sys.path.pop(0)  # this file is named quantus.py: import the library, not itself
import quantus

sys.path.insert(0, _here)
import quantus_q1
import quantus_q2
import quantus_q3
import quantus_q4
from common import timed
from salience.attribution import attribute, upsample
from salience.measures import (
    auc,
    complexity,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
    sparseness,
    top_k_intersection,
)
from salience.measures.faithfulness import ROAD_PERCENTAGES, faithfulness_correlation, road
from salience.measures.robustness import local_lipschitz, sensitivity
from salience.measures.sanity import mprt, random_logit, randomisable
from salience.models import build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smallcnn")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--samples", type=int, default=20, help="noisy samples of the robustness measures")
    parser.add_argument("--runs", type=int, default=50, help="runs of faithfulness correlation")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", nargs="*", help="measures to time (default: all)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build(args.model, 10).to(device).eval()
    n, s = args.batch, args.size
    x = torch.rand(n, 3, s, s, device=device)
    y = torch.randint(0, 10, (n,), device=device)
    explain = lambda xx, t: attribute("input_x_gradient", model, xx, t)
    maps = explain(x, y).detach()
    masks = torch.zeros(n, s, s, dtype=torch.bool, device=device)
    masks[:, s // 4 : 3 * s // 4, s // 5 : s // 2] = True

    def explain_func(model, inputs, targets, **kwargs):
        xx = torch.as_tensor(inputs, device=device).float()
        t = torch.as_tensor(targets, device=device).long()
        return upsample(attribute("input_x_gradient", model, xx, t).detach(), (s, s))[:, None].cpu().numpy()

    xn, yn, an, sn = x.cpu().numpy(), y.cpu().numpy(), maps[:, None].cpu().numpy(), masks[:, None].cpu().numpy()
    q = dict(model=model, x_batch=xn, y_batch=yn, channel_first=True, device=str(device))
    k = max(1, round(1000 * s * s / 224**2))
    cases = {
        "sparseness": (lambda: quantus.Sparseness()(**q, a_batch=an), lambda: sparseness(maps)),
        "complexity": (lambda: quantus.Complexity()(**q, a_batch=an), lambda: complexity(maps)),
        "relevance_mass_accuracy": (
            lambda: quantus.RelevanceMassAccuracy()(**q, a_batch=an, s_batch=sn),
            lambda: relevance_mass_accuracy(maps, masks),
        ),
        "relevance_rank_accuracy": (
            lambda: quantus.RelevanceRankAccuracy()(**q, a_batch=an, s_batch=sn),
            lambda: relevance_rank_accuracy(maps, masks),
        ),
        "top_k_intersection": (
            lambda: quantus.TopKIntersection(k=k)(**q, a_batch=an, s_batch=sn),
            lambda: top_k_intersection(maps, masks, k=k),
        ),
        "auc": (lambda: quantus.AUC()(**q, a_batch=an, s_batch=sn), lambda: auc(maps, masks)),
        "mprt": (
            lambda: quantus.MPRT()(**q, a_batch=an, explain_func=explain_func, batch_size=n),
            lambda: mprt(model, x, y, "input_x_gradient", maps=maps, max_steps=None),
        ),
        "random_logit": (
            lambda: quantus.RandomLogit(num_classes=10)(**q, a_batch=an, explain_func=explain_func),
            lambda: random_logit(model, explain, x, y, maps=maps),
        ),
        "road_morf": (
            lambda: quantus.ROAD()(**(q | {"x_batch": xn[:, :1]}), a_batch=an, model_predict_kwargs={}),
            None,
        ),
        "faithfulness_correlation": (
            lambda: quantus.FaithfulnessCorrelation(nr_runs=args.runs, return_aggregate=False)(**q, a_batch=an),
            lambda: faithfulness_correlation(model, x, y, maps, runs=args.runs),
        ),
        "max_sensitivity + avg_sensitivity": (
            lambda: [
                M(nr_samples=args.samples)(**q, a_batch=an, explain_func=explain_func)
                for M in (quantus.MaxSensitivity, quantus.AvgSensitivity)
            ],
            lambda: sensitivity(explain, x, y, maps, samples=args.samples),  # one set of samples serves both
        ),
        "local_lipschitz": (
            lambda: quantus.LocalLipschitzEstimate(nr_samples=args.samples)(**q, a_batch=an, explain_func=explain_func),
            lambda: local_lipschitz(explain, x, y, maps, samples=args.samples),
        ),
    }
    gray = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(4),
                               torch.nn.Flatten(), torch.nn.Linear(256, 10)).to(device).eval()  # fmt: skip
    # Quantus' ROAD handles one channel only (it indexes the channel-broadcast map): both sides on grey images
    cases["road_morf"] = (
        lambda: quantus.ROAD()(
            model=gray, x_batch=xn[:, :1], y_batch=yn, a_batch=an, channel_first=True, device=str(device)
        ),  # fmt: skip
        lambda: road(gray, x[:, :1], y, maps),
    )
    # the model passes each definition needs, in batches of the n images, and nothing else: no implementation
    # can take less (much larger batches are slower on the CPU: memory-bound)
    layers = len(randomisable(model))
    repeat = lambda fn, times: [fn() for _ in range(times)]
    floors = {
        "mprt": lambda: repeat(lambda: explain(x, y), layers),
        "random_logit": lambda: explain(x, y),
        "road_morf": lambda: repeat(lambda: gray(x[:, :1]), len(ROAD_PERCENTAGES)),
        "faithfulness_correlation": lambda: repeat(lambda: model(x), args.runs + 1),
        "max_sensitivity + avg_sensitivity": lambda: repeat(lambda: explain(x, y), args.samples),
        "local_lipschitz": lambda: repeat(lambda: explain(x, y), args.samples),
    }
    c = SimpleNamespace(model=model, x=x, y=y, maps=maps, masks=masks, explain=explain, explain_func=explain_func,
                        q=q, n=n, s=s, args=args, device=device)  # fmt: skip
    for family in (quantus_q1, quantus_q2, quantus_q3, quantus_q4):  # the measures after the first fourteen
        for name, (theirs, ours, floor) in family.cases(c).items():
            cases[name] = (theirs, ours)
            if floor is not None:
                floors[name] = floor
    print(f"{args.model}, {s} px, {n} images, {args.device}, {torch.get_num_threads()} threads, "
          f"samples {args.samples}, runs {args.runs}, input_x_gradient")  # fmt: skip
    print("\n| measure | Quantus s | salience s | speed-up | model passes alone s | Quantus / passes alone |")
    print("|---|---|---|---|---|---|")
    for name, (theirs, ours) in cases.items():
        if args.only and name not in args.only:
            continue
        ours()  # warm-up
        t_ours = timed(ours, device)
        np.random.seed(0)
        t_theirs = timed(theirs, device)
        floor = ""
        if name in floors:
            with torch.no_grad() if name in ("road_morf", "faithfulness_correlation") else torch.enable_grad():
                t_floor = timed(floors[name], device)
            floor = f" {t_floor:.4f} | {t_theirs / t_floor:.1f}x |"
        else:
            floor = " | |"
        print(f"| {name} | {t_theirs:.3f} | {t_ours:.4f} | {t_theirs / t_ours:.0f}x |{floor}", flush=True)


if __name__ == "__main__":
    main()
