"""Attribution throughput vs Captum and vs the model's own forward+backward, side by side in one run.

    python benchmarks/attribution.py                      # ResNet-18, 112 px, batch 32, CPU
    python benchmarks/attribution.py --model resnet50 --size 224 --batch 64 --device cuda

Each repeat times every method (ours and Captum's, interleaved) on the same model and batch; the
median over repeats is reported in images per second. Outputs are checked to agree before timing.
"""

import argparse
import statistics

import torch
from captum import attr as captum_attr

from common import timed
from salience import attribution as A
from salience.models import build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--ig-steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build(args.model, 20).to(device).eval()
    x = torch.rand(args.batch, 3, args.size, args.size, device=device)
    t = torch.randint(0, 20, (args.batch,), device=device)
    n = args.batch
    ig_chunk = n * args.ig_steps // 2  # the same two chunks for both libraries

    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        model(x)[torch.arange(n, device=device), t].sum().backward()

    cases = {
        "gradient": (
            lambda: A.gradient(model, x, t),
            lambda: captum_attr.Saliency(model).attribute(x, target=t, abs=True).amax(1),
        ),
        "input_x_gradient (input)": (
            lambda: A.input_x_gradient(model, x, t),
            lambda: captum_attr.InputXGradient(model).attribute(x, target=t).sum(1),
        ),
        "input_x_gradient (layer3)": (
            lambda: A.input_x_gradient(model, x, t, layer="layer3"),
            lambda: captum_attr.LayerGradientXActivation(model, model.layer3).attribute(x, target=t).sum(1),
        ),
        f"integrated_gradients ({args.ig_steps} steps)": (
            lambda: A.integrated_gradients(model, x, t, steps=args.ig_steps, internal_batch_size=ig_chunk),
            lambda: (
                captum_attr.IntegratedGradients(model)
                .attribute(x, target=t, n_steps=args.ig_steps, method="riemann_middle", internal_batch_size=ig_chunk)
                .sum(1)
            ),
        ),
        "grad_cam (layer4)": (
            lambda: A.grad_cam(model, x, t, layer="layer4"),
            lambda: captum_attr.LayerGradCam(model, model.layer4).attribute(x, target=t, relu_attributions=True)[:, 0],
        ),
    }
    for name, (ours, ref) in cases.items():
        a, b = ours(), ref()
        err = ((a - b).abs().max() / b.abs().max()).item()
        assert err < 1e-3, f"{name}: ours and Captum's disagree (relative error {err:.2e})"

    times = {"forward+backward": []} | {name: ([], []) for name in cases}
    for r in range(args.repeats + 1):  # the first round warms up and is dropped
        times["forward+backward"].append(timed(fwd_bwd, device))
        for name, (ours, ref) in cases.items():
            order = (0, 1) if r % 2 else (1, 0)  # alternate who goes first: no allocator-order bias
            for i in order:
                times[name][i].append(timed((ours, ref)[i], device))
    fb = statistics.median(times.pop("forward+backward")[1:])

    print(
        f"{args.model}, {args.size} px, batch {n}, {device.type}, {torch.get_num_threads()} threads, "
        f"median of {args.repeats}"
    )
    print(f"model forward+backward: {n / fb:.1f} img/s\n")
    print("| method | salience img/s | Captum img/s | salience / Captum | salience / fwd+bwd |")
    print("|---|---|---|---|---|")
    for name, (ours, ref) in times.items():
        o, r = statistics.median(ours[1:]), statistics.median(ref[1:])
        print(f"| {name} | {n / o:.1f} | {n / r:.1f} | {r / o:.2f}x | {fb / o:.2f} |")


if __name__ == "__main__":
    main()
