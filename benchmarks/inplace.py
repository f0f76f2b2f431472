"""The cost of in-place safety on ResNets: layer methods and the guided step with the layer capture
as it is (the rest of the network gets a copy of the captured output) against the capture before
the fix (the output itself, which an in-place op after the layer would change), side by side.

    python benchmarks/inplace.py                                  # ResNet-18 and -50, 112 px, CPU
    python benchmarks/inplace.py --models resnet50 --size 224 --batch 64 --device cuda

Each repeat runs every case with three arms: the copy, the capture before the fix, and the copy again (an
A/A control that shows the noise floor), each arm taking each position in turn; medians are reported.
ResNets have no in-place op after `layer3` / `layer4`, so both captures give the same maps (checked).
"""

import argparse
import statistics
from contextlib import contextmanager

import torch
from torch import nn

from common import timed
from salience import attribution as A
from salience.attribution import core
from salience.guidance.step import Guide
from salience.models import build

FIXED = core.capture


@contextmanager
def capture_without_copy(module: nn.Module, grad_from_here: bool = False):
    """The capture before the fix: the hook hands the recorded tensor itself to the rest of the network."""
    outputs: list[torch.Tensor] = []

    def hook(_module, _inputs, out):
        if grad_from_here:
            torch.set_grad_enabled(True)
        if torch.is_grad_enabled() and not out.requires_grad:
            out = out.detach().requires_grad_(True)
        outputs.append(out)
        return out

    handle = module.register_forward_hook(hook)
    try:
        yield outputs
    finally:
        handle.remove()


def cases(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> dict:
    n = x.shape[0]
    labels = torch.nn.functional.one_hot(t, 20).float()
    batch = {
        "image": x,
        "labels": labels,
        "annotated": torch.ones(n, dtype=torch.bool),
        "has_human_map": torch.ones(n, dtype=torch.bool),
        "mask": torch.zeros(n, *x.shape[-2:], device=x.device),
        "boxes": [torch.tensor([[8.0, 8.0, x.shape[-1] - 8.0, x.shape[-2] - 8.0]], device=x.device)] * n,
        "box_labels": [t[i, None] for i in range(n)],
    }
    guide = Guide("energy", "grad_cam", "final")

    def guided_step():
        model.train()
        model.zero_grad(set_to_none=True)
        guide(model, batch, torch.Generator().manual_seed(0))["total"].backward()
        model.eval()

    return {
        "grad_cam (final)": lambda: A.grad_cam(model, x, t, layer="final"),
        "input_x_gradient (mid3)": lambda: A.input_x_gradient(model, x, t, layer="mid3"),
        "grad_cam (final), create_graph": lambda: A.grad_cam(model, x, t, layer="final", create_graph=True),
        "guided step (energy, grad_cam final)": guided_step,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(
        f"{args.size} px, batch {args.batch}, {device.type}, {torch.get_num_threads()} threads, "
        f"median of {args.repeats}\n"
    )
    print("| model | case | with copy (ms) | before the fix (ms) | ratio | with copy again / with copy |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        torch.manual_seed(0)
        model = build(name, 20).to(device).eval()
        x = torch.rand(args.batch, 3, args.size, args.size, device=device)
        t = torch.randint(0, 20, (args.batch,), device=device)
        runs = cases(model, x, t)
        core.capture = capture_without_copy
        before = A.grad_cam(model, x, t, layer="final")
        core.capture = FIXED
        assert torch.equal(before, A.grad_cam(model, x, t, layer="final")), "the captures disagree on a ResNet"
        arms = (FIXED, capture_without_copy, FIXED)  # the third arm repeats the first: the noise floor
        times = {case: ([], [], []) for case in runs}
        for r in range(args.repeats + 1):  # the first round warms up and is dropped
            for case, fn in runs.items():
                for i in [(r + k) % 3 for k in range(3)]:  # each arm takes each position in turn
                    core.capture = arms[i]
                    times[case][i].append(timed(fn, device))
        core.capture = FIXED
        for case, (fixed, old, again) in times.items():
            f, o, a = (statistics.median(v[1:]) for v in (fixed, old, again))
            print(f"| {name} | {case} | {1000 * f:.1f} | {1000 * o:.1f} | {f / o:.3f} | {a / f:.3f} |")


if __name__ == "__main__":
    main()
