"""CAM methods side by side: salience vs pytorch-grad-cam vs TorchCAM, in one run.

    python benchmarks/cams.py                       # ResNet-50, 224 px, batch 16, CPU, 2 threads
    python benchmarks/cams.py --repeats 5 --threads 0

Every arm returns what the peers return: maps upsampled to the input (bilinear) and min-max normalised per
map. pytorch-grad-cam does that itself (numpy, cv2.resize); TorchCAM normalises at the layer's resolution
(`normalized=True`) and its maps are then upsampled with `F.interpolate` (as its `overlay_mask` would resize
them); salience's raw maps go through `attribution.upsample` and a min-max. Each arm builds its CAM object
inside the timed call and releases its hooks, so no library's hooks slow another's forward.

Rows:
- each CAM method at `layer4` (grad_cam, grad_cam_pp, xgrad_cam, layer_cam, hires_cam, eigen_cam);
  TorchCAM has no HiResCAM or EigenCAM;
- five gradient CAMs: one `attribute_many` call vs five pytorch-grad-cam calls;
- ScoreCAM in a smaller setting (`--score-model`, `--score-size`, `--score-batch`; default ResNet-18, 64 px,
  1 image, `layer4` = 512 channels at 2 x 2, 512 forwards per image), both chunked 64 masked inputs per forward.

Each repeat runs every arm once, rotating which goes first (after one warm-up forward of the model); the table
of medians so far is printed after every repeat, with the largest |difference| of each arm's first maps to
salience's (grad_cam_pp differs by pytorch-grad-cam's eps and TorchCAM's undivided α; eigen_cam by SVD sign).
"""

import argparse
import statistics

import numpy as np
import pytorch_grad_cam as pgc
import torch
import torch.nn.functional as F
import torchcam.methods as tcm
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from common import timed
from salience import attribution as A
from salience.models import build

CAMS = {  # salience name: (pytorch-grad-cam class, TorchCAM class or None)
    "grad_cam": ("GradCAM", "GradCAM"),
    "grad_cam_pp": ("GradCAMPlusPlus", "GradCAMpp"),
    "xgrad_cam": ("XGradCAM", "XGradCAM"),
    "layer_cam": ("LayerCAM", "LayerCAM"),
    "hires_cam": ("HiResCAM", None),
    "eigen_cam": ("EigenCAM", None),
}
FIVE = ["grad_cam", "grad_cam_pp", "xgrad_cam", "layer_cam", "hires_cam"]


def minmax(maps: torch.Tensor) -> torch.Tensor:
    lo = maps.flatten(1).amin(1)[:, None, None]
    hi = maps.flatten(1).amax(1)[:, None, None]
    return (maps - lo) / (hi - lo + 1e-7)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--score-model", default="resnet18")
    parser.add_argument("--score-size", type=int, default=64)
    parser.add_argument("--score-batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (0: leave torch's default)")
    parser.add_argument("--skip-score", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    torch.manual_seed(0)
    model = build(args.model, 20).eval()
    x = torch.rand(args.batch, 3, args.size, args.size)
    t = torch.randint(0, 20, (args.batch,))
    size = (args.size, args.size)
    targets = [ClassifierOutputTarget(int(c)) for c in t]

    def ours(method):
        return lambda: minmax(A.upsample(A.attribute(method, model, x, t, layer="layer4"), size))

    def grad_cam_lib(cls, m=model, inputs=x, tgts=targets, **attrs):
        def run():
            with getattr(pgc, cls)(m, [m.layer4]) as cam:
                for key, value in attrs.items():
                    setattr(cam, key, value)
                return torch.from_numpy(cam(inputs, tgts))

        return run

    def torchcam(cls):
        def run():
            with getattr(tcm, cls)(model, "layer4", input_shape=(3, *size)) as ext:
                maps = ext(t.tolist(), model(x))[0]
            return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]

        return run

    def many():
        maps = A.attribute_many(model, x, t, [f"{m}@layer4" for m in FIVE])
        return {m: minmax(A.upsample(v, size)) for m, v in maps.items()}

    def five_grad_cam():
        return [grad_cam_lib(CAMS[m][0])() for m in FIVE]

    cases = {}
    for m, (pgc_cls, tcm_cls) in CAMS.items():
        cases[(m, "salience")] = ours(m)
        cases[(m, "pytorch-grad-cam")] = grad_cam_lib(pgc_cls)
        if tcm_cls:
            cases[(m, "TorchCAM")] = torchcam(tcm_cls)
    cases[("five gradient CAMs", "salience")] = many
    cases[("five gradient CAMs", "pytorch-grad-cam")] = five_grad_cam

    if not args.skip_score:
        torch.manual_seed(0)
        small = build(args.score_model, 20).eval()
        xs = torch.rand(args.score_batch, 3, args.score_size, args.score_size)
        ts = torch.randint(0, 20, (args.score_batch,))
        score_name = f"score_cam ({args.score_model}, {args.score_size} px, batch {args.score_batch}, layer4)"
        cases[(score_name, "salience")] = lambda: minmax(
            A.upsample(A.attribute("score_cam", small, xs, ts, layer="layer4", batch_size=64), xs.shape[-2:])
        )
        cases[(score_name, "pytorch-grad-cam")] = grad_cam_lib(
            "ScoreCAM", small, xs, [ClassifierOutputTarget(int(c)) for c in ts], batch_size=64
        )

    def report(done):
        med = {key: statistics.median(v) for key, v in times.items()}

        def diff(key):
            ref, got = outputs[(key[0], "salience")], outputs[key]
            if isinstance(ref, dict):
                return max((ref[f"{m}@layer4"] - g).abs().max().item() for m, g in zip(FIVE, got, strict=True))
            return (ref - torch.as_tensor(np.asarray(got))).abs().max().item()

        print(
            f"\n{args.model}, {args.size} px, batch {args.batch}, cpu, {torch.get_num_threads()} threads, "
            f"median of {done}; maps upsampled to the input and min-max normalised\n"
        )
        print(
            "| method | salience ms | pytorch-grad-cam ms | TorchCAM ms | vs pytorch-grad-cam | vs TorchCAM | max |Δ| pgc, TorchCAM |"
        )
        print("|---|---|---|---|---|---|---|")
        for name in dict.fromkeys(k[0] for k in keys):
            ms = {lib: med.get((name, lib)) for lib in ("salience", "pytorch-grad-cam", "TorchCAM")}
            ratio = {lib: (f"{ms[lib] / ms['salience']:.2f}x" if ms[lib] else "—") for lib in ms}
            fmt = {lib: (f"{1000 * ms[lib]:.0f}" if ms[lib] else "—") for lib in ms}
            diffs = ", ".join(f"{diff((name, lib)):.1e}" for lib in ("pytorch-grad-cam", "TorchCAM") if ms[lib])
            print(
                f"| {name} | {fmt['salience']} | {fmt['pytorch-grad-cam']} | {fmt['TorchCAM']} | "
                f"{ratio['pytorch-grad-cam']} | {ratio['TorchCAM']} | {diffs} |"
            )

    with torch.no_grad():  # warm-up
        model(x)
    times = {key: [] for key in cases}
    outputs = {}
    keys = list(cases)
    for r in range(args.repeats):
        shift = (r * 7) % len(keys)
        for key in keys[shift:] + keys[:shift]:  # rotate who goes first
            holder = {}
            times[key].append(timed(lambda holder=holder, key=key: holder.setdefault("out", cases[key]()), device))
            outputs.setdefault(key, holder["out"])
        print(f"repeat {r + 1}/{args.repeats} done", flush=True)
        report(r + 1)


if __name__ == "__main__":
    main()
