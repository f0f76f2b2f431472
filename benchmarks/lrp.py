"""LRP throughput vs Zennit (same composite and canonizer), side by side in one process.

    python benchmarks/lrp.py                                  # ResNet-50, 224 px, batch 8, CPU, 2 threads
    python benchmarks/lrp.py --model resnet18 --size 112 --composites epsilon_plus epsilon_gamma_box

Same model (torchvision, random weights, non-trivial batch-norm statistics) and batch for both; the
maps are checked to agree first (Zennit keeps `1/√(1 + ε)` of each merged batch norm in its forward, so
they agree to about 1e-3 relative, not to rounding; see docs/definitions.md). Each repeat runs both,
alternating who goes first; the median over repeats (after a warm-up round, which also checks agreement)
is reported in images/s. The default (ResNet-50, epsilon_plus) takes about 1.5 minutes on a quiet 2-core CPU;
Zennit's gamma and alpha-beta composites cost it 2-3x more each.
"""

import argparse
import statistics

import torch
import torchvision
from torch import nn
from zennit.attribution import Gradient
from zennit.composites import COMPOSITES as ZENNIT
from zennit.torchvision import ResNetCanonizer, VGGCanonizer

from common import timed
from salience.attribution.lrp import lrp


def zennit_maps(model: nn.Module, x: torch.Tensor, t: torch.Tensor, composite: str) -> torch.Tensor:
    kwargs = {}
    if composite == "epsilon_gamma_box":
        flat = x.flatten(1)
        kwargs = {"low": flat.amin(1).reshape(-1, 1, 1, 1), "high": flat.amax(1).reshape(-1, 1, 1, 1)}
    canonizer = VGGCanonizer() if isinstance(model, torchvision.models.VGG) else ResNetCanonizer()
    with Gradient(model, ZENNIT[composite](canonizers=[canonizer], **kwargs)) as attributor:
        _, relevance = attributor(x, lambda out: torch.eye(out.shape[1], dtype=out.dtype)[t] * out)
    return relevance.sum(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--composites", nargs="+", default=["epsilon_plus"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = getattr(torchvision.models, args.model)(weights=None, num_classes=20).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.bias.uniform_(-0.1, 0.1)
    x = torch.randn(args.batch, 3, args.size, args.size)
    t = torch.randint(0, 20, (args.batch,))
    device = x.device

    cases = {c: (lambda c=c: lrp(model, x, t, c), lambda c=c: zennit_maps(model, x, t, c)) for c in args.composites}
    times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in cases}
    errors = {}
    for r in range(args.repeats + 1):  # the first round checks agreement and warms up, untimed
        for name, (ours, ref) in cases.items():
            if r == 0:
                a, b = ours(), ref()
                errors[name] = ((a - b).abs().max() / b.abs().max()).item()
                assert errors[name] < 1e-2, f"{name}: ours and Zennit's disagree (relative error {errors[name]:.2e})"
                continue
            for i in (0, 1) if r % 2 else (1, 0):
                times[name][i].append(timed((ours, ref)[i], device))

    n = args.batch
    print(f"{args.model}, {args.size} px, batch {n}, cpu, {torch.get_num_threads()} threads, median of {args.repeats}")
    print("| composite | salience img/s | Zennit img/s | salience / Zennit | max rel. difference |")
    print("|---|---|---|---|---|")
    for name, (ours, ref) in times.items():
        o, z = statistics.median(ours), statistics.median(ref)
        print(f"| {name} | {n / o:.2f} | {n / z:.2f} | {z / o:.2f}x | {errors[name]:.1e} |")


if __name__ == "__main__":
    main()
