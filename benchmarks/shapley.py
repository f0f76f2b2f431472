"""Kernel SHAP and LIME (and feature ablation) on a feature mask vs Captum, side by side in one run.

    python benchmarks/shapley.py                       # ResNet-18, 112 px, 16 images, SLIC, 64 samples, CPU
    python benchmarks/shapley.py --mask slic --device cuda

salience runs every image's perturbed inputs together, `batch_size` rows per model call; Captum runs one image
at a time, `perturbations_per_eval` inputs per call: each of 1, 16 and 64 is timed once and the fastest is
Captum's entry. Outputs are checked to agree first (same masks, same samples from the same seed). Then each
repeat times ours and Captum's best, alternating who goes first; the table gives the medians in images per
second. ResNet-50 at 224 px with several hundred forwards per image is too slow for a 2-core CPU. The choice of
`perturbations_per_eval` and the agreement check use the first `--check` images. The random-init model's logits
are scaled by 100, so that LIME's Lasso (α = 0.01) keeps some features.
"""

import argparse
import statistics
import warnings

import torch
from captum import attr as captum_attr
from captum._utils.models.linear_model import SkLearnLasso

from common import timed
from salience import attribution as A
from salience.attribution.features import feature_masks
from salience.models import build

PPE = (1, 16, 64)


class Scale(torch.nn.Module):
    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return 100 * logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--mask", default="slic")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--check", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # Captum's "multiple inputs for Lime / Kernel SHAP" advice
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = torch.nn.Sequential(build(args.model, 20), Scale()).to(device).eval()
    x = torch.rand(args.batch, 3, args.size, args.size, device=device)
    t = torch.randint(0, 20, (args.batch,), device=device)
    masks, counts = feature_masks(x, args.mask)
    captum_mask = masks[:, None]  # our renumbered ids, [B, 1, H, W]
    n = args.batch

    def captum(cls, ppe, images=n):
        def run():
            torch.manual_seed(0)  # ours draws the same numbers from seed 0
            return cls(model).attribute(
                x[:images],
                target=t[:images],
                feature_mask=captum_mask[:images],
                n_samples=args.samples,
                perturbations_per_eval=ppe,
            )[:, 0]

        return run

    cases = {
        "kernel_shap": (
            lambda: A.attribute("kernel_shap", model, x, t, feature_mask=args.mask, n_samples=args.samples),
            captum_attr.KernelShap,
            2e-2,  # Captum fits in float32: with about as many samples as features its least squares is ill-posed
        ),
        "lime": (
            lambda: A.attribute("lime", model, x, t, feature_mask=args.mask, n_samples=args.samples),
            captum_attr.Lime,
            5e-3,  # float32 coordinate descent vs scikit-learn in float32, both converged
        ),
    }
    print(
        f"{args.model}, {args.size} px, {n} images, mask {args.mask} ({counts.min().item()}-{counts.max().item()} "
        f"features), {args.samples} samples, {device.type}, {torch.get_num_threads()} threads, median of {args.repeats}\n"
    )
    best = {}
    for name, (_, cls, tol) in cases.items():
        a = A.attribute(  # also the warm-up
            name, model, x[: args.check], t[: args.check], feature_mask=args.mask, n_samples=args.samples
        )
        scale = a.abs().max()
        per_ppe = {}
        for ppe in PPE:
            out = []
            run = captum(cls, ppe, args.check)
            per_ppe[ppe] = timed(lambda run=run, out=out: out.append(run()), device)
        if name == "lime":  # compare with scikit-learn's Lasso run to convergence, as ours
            tight = SkLearnLasso(alpha=0.01, tol=1e-12, max_iter=100000)
            out = [captum(lambda m, tight=tight: captum_attr.Lime(m, tight), 64, args.check)()]
        err = ((a - out[0]).abs().max() / scale).item()
        assert err < tol, f"{name}: ours and Captum's disagree ({err:.2e})"
        best[name] = min(per_ppe, key=per_ppe.get)
        print(
            f"{name}: Captum seconds per perturbations_per_eval {', '.join(f'{k}: {v:.2f}' for k, v in per_ppe.items())}; max rel. difference {err:.1e}"
        )

    times = {name: ([], []) for name in cases}
    for r in range(args.repeats):
        for name, (ours, cls, _) in cases.items():
            for i in (0, 1) if r % 2 else (1, 0):  # alternate who goes first
                times[name][i].append(timed((ours, captum(cls, best[name]))[i], device))
    print("\n| method | salience img/s | Captum img/s (best perturbations_per_eval) | salience / Captum |")
    print("|---|---|---|---|")
    for name, (ours_t, ref_t) in times.items():
        o, r = statistics.median(ours_t), statistics.median(ref_t)
        print(f"| {name} | {n / o:.2f} | {n / r:.2f} ({best[name]}) | {r / o:.2f}x |")


if __name__ == "__main__":
    main()
