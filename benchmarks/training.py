"""Guided vs plain training step time, per attribution method and depth, side by side in one run.

    .venv/bin/python benchmarks/training.py [--model resnet18] [--batch 8] [--size 112] [--repeats 3]

A step = forward, loss, backward, Adam step, on random images with one box per image. Each row
times the plain step of the same network (B-cos rows: the B-cos network; IntGrad: the X-ResNet)
and the energy-guided step, interleaved, and reports the median of `repeats` timings each.
Targets (issue 4): final-layer guidance <= 1.5x, input-layer IxG <= 3x.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from salience.guidance import Guide
from salience.models import build

ROWS = [  # (method, depth, model prefix)
    ("input_x_gradient", "input", ""),
    ("input_x_gradient", "mid2", ""),
    ("input_x_gradient", "final", ""),
    ("grad_cam", "final", ""),
    ("cam", "final", ""),
    ("bcos", "input", "bcos_"),
    ("integrated_gradients", "input", "x"),
]


def _batch(n: int, size: int, classes: int) -> dict:
    g = torch.Generator().manual_seed(0)
    labels = torch.zeros(n, classes)
    labels[torch.arange(n), torch.randint(classes, (n,), generator=g)] = 1
    s = size
    return {
        "image": torch.rand(n, 3, s, s, generator=g),
        "labels": labels,
        "annotated": torch.ones(n, dtype=torch.bool),
        "has_human_map": torch.ones(n, dtype=torch.bool),
        "human_map": torch.zeros(n, s, s),
        "mask": torch.zeros(n, s, s),
        "boxes": [torch.tensor([[s / 4, s / 4, 3 * s / 4, 3 * s / 4]])] * n,
        "box_labels": [labels[i].argmax()[None] for i in range(n)],
    }


def _time_step(model, optimizer, guide, batch) -> float:
    t0 = time.perf_counter()
    out = guide(model, batch, torch.Generator().manual_seed(0))
    optimizer.zero_grad(set_to_none=True)
    out["total"].backward()
    optimizer.step()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="resnet18", help="resnet18/34/50 (B-cos and X-ResNet rows use the same depth)"
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ig-steps", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    device = torch.device(args.device)
    batch = {
        k: (v.to(device) if isinstance(v, torch.Tensor) else [t.to(device) for t in v])
        for k, v in _batch(args.batch, args.size, 20).items()
    }
    print(
        f"# {args.model}, batch {args.batch}, {args.size} px, {device}, {torch.get_num_threads()} threads, "
        f"median of {args.repeats}"
    )
    print("| method | depth | plain step (s) | guided step (s) | guided / plain |")
    print("|---|---|---|---|---|")
    for method, depth, prefix in ROWS:
        model = build(prefix + args.model, 20).to(device).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        plain = Guide(None)
        guided = Guide("energy", method, depth, lam=1.0, ig_steps=args.ig_steps)
        guided.check(model)
        _time_step(model, optimizer, plain, batch)  # warm-up
        _time_step(model, optimizer, guided, batch)
        times = {"plain": [], "guided": []}
        for _ in range(args.repeats):
            times["plain"].append(_time_step(model, optimizer, plain, batch))
            times["guided"].append(_time_step(model, optimizer, guided, batch))
        p, g = statistics.median(times["plain"]), statistics.median(times["guided"])
        name = method + (f" ({args.ig_steps} steps)" if method == "integrated_gradients" else "")
        print(f"| {name} | {depth} | {p:.3f} | {g:.3f} | {g / p:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
