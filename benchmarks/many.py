"""Several methods in one pass: `attribute_many` vs Captum running them one after another, side by side.

    python benchmarks/many.py                      # ResNet-18, 112 px, batch 16, CPU, 1 thread
    python benchmarks/many.py --model resnet50 --size 224 --batch 64 --device cuda --threads 0

The three methods are gradient (Captum `Saliency`), input x gradient (`InputXGradient`) and GradCAM at the
final block (`LayerGradCam`). Each repeat times Captum's three calls, our three single-method calls and one
`attribute_many` call on the same model and batch, rotating which goes first; medians over the repeats
(after one warm-up round) are reported. The maps are checked to agree before timing.
"""

import argparse
import statistics

import torch
from captum import attr as captum_attr

from common import timed
from salience import attribution as A
from salience.models import build

METHODS = ["gradient", "input_x_gradient", "grad_cam@final"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: leave torch's default)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build(args.model, 20).to(device).eval()
    x = torch.rand(args.batch, 3, args.size, args.size, device=device)
    t = torch.randint(0, 20, (args.batch,), device=device)
    final = model.layer4

    def captum():
        return {
            "gradient": captum_attr.Saliency(model).attribute(x, target=t, abs=True).amax(1),
            "input_x_gradient": captum_attr.InputXGradient(model).attribute(x, target=t).sum(1),
            "grad_cam@final": captum_attr.LayerGradCam(model, final).attribute(x, target=t, relu_attributions=True)[
                :, 0
            ],
        }

    def singles():
        return {m: A.attribute(m.partition("@")[0], model, x, t, layer=m.partition("@")[2] or None) for m in METHODS}

    def many():
        return A.attribute_many(model, x, t, METHODS)

    ref, ours, one = captum(), singles(), many()
    for m in METHODS:
        for name, got in (("attribute_many", one[m]), ("single method", ours[m])):
            err = ((got - ref[m]).abs().max() / ref[m].abs().max()).item()
            assert err < 1e-4, f"{m}: {name} and Captum disagree (relative error {err:.2e})"
        assert torch.allclose(one[m], ours[m], rtol=1e-5, atol=1e-5 * ours[m].abs().max().item()), m

    cases = {
        "Captum, 3 methods one after another": captum,
        "salience, 3 single-method calls": singles,
        "salience attribute_many, 3 methods": many,
    }
    times = {name: [] for name in cases}
    names = list(cases)
    for r in range(args.repeats + 1):  # round 0 warms up and is dropped
        for name in names[r % 3 :] + names[: r % 3]:  # rotate who goes first
            times[name].append(timed(cases[name], device))
    med = {name: statistics.median(v[1:]) for name, v in times.items()}
    base = med[names[0]]
    print(
        f"{args.model}, {args.size} px, batch {args.batch}, {device.type}, {torch.get_num_threads()} threads, "
        f"median of {args.repeats}; methods {', '.join(METHODS)}\n"
    )
    print("| what | ms per batch | img/s | speed-up vs Captum |")
    print("|---|---|---|---|")
    for name in names:
        print(f"| {name} | {1000 * med[name]:.0f} | {args.batch / med[name]:.1f} | {base / med[name]:.2f}x |")


if __name__ == "__main__":
    main()
