"""DeepLift family, deconvolution, SmoothGrad² (vs Captum 0.9) and four CAMs (vs pytorch-grad-cam 1.5.7), side by
side in one process on the same model and batch.

    python benchmarks/deeplift.py                                   # ResNet-18, 64 px, batch 4, CPU, 2 threads
    python benchmarks/deeplift.py --model resnet50 --size 224 --batch 8

Captum's DeepLift raises on torchvision's ResNet (its blocks call one ReLU module several times), so Captum runs
on a copy whose blocks call a ReLU module per use. Before timing, every pair is checked to agree in float64 on
two images (Captum's DeepLift with a `+ 0` before each hooked module and a summing max-unpool, the two fixes
tests/test_deeplift_cams.py describes; pytorch-grad-cam before its min-max and resize). Timings are float32, the
references as users call them (pytorch-grad-cam with its post-processing). Ablation-CAM runs one forward per
channel of layer4 (512 on ResNet-18/50: 2048): it is timed on the first `--ablation-images` images at
`--ablation-size` px. The median of `--repeats` rounds (after one warm-up round), ours and theirs alternating.
"""

import argparse
import contextlib
import copy
import functools
import statistics
import sys
from pathlib import Path

import numpy as np
import pytorch_grad_cam as pgc
import torch
import torchvision
from captum import attr as captum_attr
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from common import timed
from salience import attribution as A
from salience.attribution.perturbation import smooth_grad_sq

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from reference_patches import captum_deep_lift_mended, dedup_relu, raw_pytorch_grad_cam


def _pgc(cls, model, x, t, raw=False):
    cam = cls(model, [model.layer4] if cls is not pgc.FullGrad else [])
    if raw and cls is pgc.FullGrad:
        cam.aggregate_multi_layers = lambda per_layer: np.sum(per_layer, axis=1)
    with raw_pytorch_grad_cam() if raw and cls is not pgc.FullGrad else contextlib.nullcontext():
        out = cam(x, [ClassifierOutputTarget(int(c)) for c in t])
    cam.activations_and_grads.release()
    return torch.from_numpy(np.asarray(out)).double()


def _seeded(fn):
    """`fn` after seeding NumPy's and torch's global generators with 0 (GradientShap's draws)."""

    def run(*a):
        np.random.seed(0)
        torch.manual_seed(0)
        return fn(*a)

    return run


def _raw(cls):
    """pytorch-grad-cam's map before its post-processing, ReLU'd (EigenGradCAM: sign with |max| >= |min|)."""

    def run(m, cm, x, t):
        b = _pgc(cls, m, x, t, raw=True)
        if cls is pgc.EigenGradCAM:
            flip = b.flatten(1).amin(1).abs() > b.flatten(1).amax(1).abs()
            b = torch.where(flip[:, None, None], -b, b)
        return torch.relu(b)

    return run


def cases(refs, args):
    """name -> (ours(m, cm, x, t), reference as timed, reference as checked, tolerance); m / cm: our / Captum's
    model."""
    r = lambda x: refs.to(x.dtype)[..., : x.shape[-2], : x.shape[-1]]
    dl = lambda m, cm, x, t: captum_attr.DeepLift(cm).attribute(x, target=t).sum(1)
    dls = lambda m, cm, x, t: captum_attr.DeepLiftShap(cm).attribute(x, r(x), target=t).sum(1)
    gs = _seeded(lambda m, cm, x, t: captum_attr.GradientShap(m).attribute(x, r(x), target=t).sum(1))
    deconv = lambda m, cm, x, t: captum_attr.Deconvolution(m).attribute(x, target=t).abs().amax(1)
    sq = lambda m, cm, x, t: captum_attr.NoiseTunnel(captum_attr.LayerGradCam(m, m.layer4)).attribute(
        x, nt_type="smoothgrad_sq", nt_samples=8, stdevs=0.1, target=t, relu_attributions=True
    )[:, 0]
    pg = lambda cls: lambda m, cm, x, t: _pgc(cls, m, x, t)
    return {
        "deep_lift": (lambda m, cm, x, t: A.attribute("deep_lift", m, x, t), dl, dl, 1e-8),
        "deep_lift_shap (4 refs)": (
            lambda m, cm, x, t: A.attribute("deep_lift_shap", m, x, t, baselines=r(x)),
            dls,
            dls,
            1e-8,
        ),
        "gradient_shap (5 samples)": (
            lambda m, cm, x, t: A.attribute("gradient_shap", m, x, t, baselines=r(x), seed=0),
            gs,
            gs,
            1e-8,
        ),
        "deconvolution": (lambda m, cm, x, t: A.attribute("deconvolution", m, x, t), deconv, deconv, 1e-8),
        "smooth_grad_sq (grad_cam@layer4, 8)": (
            lambda m, cm, x, t: smooth_grad_sq(m, x, t, "grad_cam", "layer4", 8, 0.1, 0),
            _seeded(sq),
            _seeded(sq),
            1e-8,
        ),
        "grad_cam_elementwise": (
            lambda m, cm, x, t: A.attribute("grad_cam_elementwise", m, x, t),
            pg(pgc.GradCAMElementWise),
            _raw(pgc.GradCAMElementWise),
            1e-8,
        ),
        "eigen_grad_cam": (
            lambda m, cm, x, t: A.attribute("eigen_grad_cam", m, x, t),
            pg(pgc.EigenGradCAM),
            _raw(pgc.EigenGradCAM),
            1e-4,
        ),
        "full_grad": (
            lambda m, cm, x, t: A.attribute("full_grad", m, x, t),
            pg(pgc.FullGrad),
            _raw(pgc.FullGrad),
            1e-4,
        ),
        "ablation_cam": (
            lambda m, cm, x, t: A.attribute("ablation_cam", m, x, t, batch_size=args.ablation_batch),
            pg(pgc.AblationCAM),
            _raw(pgc.AblationCAM),
            1e-3,
        ),
    }


def check(table, model, captum_model, x, t) -> None:
    """Each pair agrees in float64 on two images (one for Ablation-CAM), Captum's DeepLift fixed as above."""
    m, cm = copy.deepcopy(model).double(), copy.deepcopy(captum_model).double()
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # Captum's noise std in float64, as ours
    try:
        for name, (ours, _, ref, tol) in table.items():
            xs, ts = (x[:1, :, :32, :32], t[:1]) if name == "ablation_cam" else (x[:2], t[:2])
            xs = xs.double()
            with captum_deep_lift_mended(cm):
                b = ref(m, cm, xs, ts).double()
            a = ours(m, cm, xs, ts)
            err = ((a.double() - b).abs().max() / b.abs().max()).item()
            assert err <= tol, f"{name}: ours and the reference disagree (relative error {err:.2e})"
            print(f"checked {name}: relative error {err:.1e}", file=sys.stderr)
    finally:
        torch.set_default_dtype(dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--ablation-images", type=int, default=1)
    parser.add_argument("--ablation-size", type=int, default=32)
    parser.add_argument("--ablation-batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = getattr(torchvision.models, args.model)(num_classes=20).eval()
    captum_model = dedup_relu(model)
    x = torch.rand(args.batch, 3, args.size, args.size)
    x[:, 0, 0, 0], x[:, 0, 0, 1] = 0.0, 1.0  # every image spans [0, 1]: SmoothGrad²'s σ = Captum's one stdevs
    t = torch.randint(0, 20, (args.batch,))
    refs = torch.rand(4, 3, args.size, args.size)
    table = cases(refs, args)
    check(table, model, captum_model, x, t)
    xa, ta = x[: args.ablation_images, :, : args.ablation_size, : args.ablation_size], t[: args.ablation_images]
    times = {name: ([], []) for name in table}
    for r in range(args.repeats + 1):  # the first round warms up and is dropped
        for name, (ours, ref, _, _) in table.items():
            xs, ts = (xa, ta) if name == "ablation_cam" else (x, t)
            fns = (
                functools.partial(ours, model, captum_model, xs, ts),
                functools.partial(ref, model, captum_model, xs, ts),
            )
            for i in (0, 1) if r % 2 else (1, 0):
                times[name][i].append(timed(fns[i], torch.device("cpu")))
    print(f"{args.model}, {args.size} px, batch {args.batch} (ablation_cam: {args.ablation_images} image(s) at")
    print(f"{args.ablation_size} px), CPU, {torch.get_num_threads()} threads, float32, median of {args.repeats}\n")
    print("| method | salience s | reference | reference s | reference / salience |")
    print("|---|---|---|---|---|")
    for name, (ours, ref) in times.items():
        o, r = statistics.median(ours[1:]), statistics.median(ref[1:])
        lib = "pytorch-grad-cam" if "cam" in name and "smooth" not in name or name == "full_grad" else "Captum"
        print(f"| {name} | {o:.3f} | {lib} | {r:.3f} | {r / o:.2f}x |")


if __name__ == "__main__":
    main()
