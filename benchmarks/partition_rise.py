"""Partition SHAP vs shap's PartitionExplainer, RISE vs the authors' RISE class, side by side in one run.

    python benchmarks/partition_rise.py                   # ResNet-18, 112 px, 8 images, max_evals 200, 100 masks
    python benchmarks/partition_rise.py --max-evals 500 --masks 250   # the issue's setting (~2.5x longer)

Partition SHAP: shap 0.51.0 explains one image at a time (`shap.maskers.Image("blur(16,16)")`, `max_evals`,
its default `batch_size` "auto" = rounds of 10 masked images); salience runs the 8 images' queues in lock-step
(80 masked images per model call). RISE: the authors' class (tests/rise_reference.py) explains one image at
a time (`gpu_batch` = the batch below); salience runs all images and masks in chunks of the same batch, on the
same masks. Mask generation is timed apart. Outputs are checked to agree in float64 (2 images) first, then
timed in float32; each repeat alternates who goes first; the table gives medians. The defaults keep the run under 3 minutes on 2 CPU
cores (shap's side dominates: one image at a time, 10 masked images per model call).
"""

import argparse
import copy
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common import timed
from salience import attribution as A
from salience.attribution.rise import RiseMasks
from salience.models import build

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from rise_reference import RISE


def shap_partition(model, x, t, max_evals):
    """shap's maps `[B, H, W]` (values summed over channels), one image at a time."""
    import shap

    def f(images):
        with torch.inference_mode():
            return model(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)).numpy()

    maps = []
    for image, cls in zip(x, t.tolist(), strict=True):
        hwc = image.permute(1, 2, 0)
        explainer = shap.PartitionExplainer(f, shap.maskers.Image("blur(16,16)", tuple(hwc.shape)))
        out = explainer(hwc[None].numpy(), max_evals=max_evals, outputs=[cls], silent=True)
        maps.append(torch.from_numpy(out.values[0, ..., 0]).sum(-1))
    return torch.stack(maps)


def authors_rise(explainer, x, t):
    with torch.no_grad():
        return torch.stack([explainer(x[i : i + 1])[c] for i, c in enumerate(t.tolist())])


def check_in_float64(model, x, t, max_evals, authors, masks):
    """Both methods agree with their references in float64 before anything is timed. (In float32 the logits of
    a masked image depend on the batch it runs in, so Partition SHAP's queue can order two nearly equal
    priorities differently from shap's and expand other nodes: the float32 maps below may then differ.)"""
    model64 = copy.deepcopy(model).double()
    x64 = x.double()
    ours = A.attribute("partition_shap", model64, x64, t, max_evals=max_evals)
    err = ((ours - shap_partition(model64, x64, t, max_evals)).abs().max() / ours.abs().max()).item()
    assert err < 1e-10, f"partition_shap: salience and shap disagree in float64 (relative error {err:.2e})"
    authors64 = RISE(nn.Sequential(model64, nn.Softmax(dim=1)), tuple(x.shape[-2:]))
    authors64.masks, authors64.N, authors64.p1 = authors.masks.double(), authors.N, authors.p1
    ours = A.attribute("rise", model64, x64, t, masks=masks)
    err_rise = ((ours - authors_rise(authors64, x64, t)).abs().max() / ours.abs().max()).item()
    assert err_rise < 1e-10, f"rise: salience and the authors' code disagree in float64 (relative error {err_rise:.2e})"
    print(
        f"float64, 2 images: partition_shap (max_evals {max_evals}) vs shap {err:.1e}, rise vs authors {err_rise:.1e}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--max-evals", type=int, default=200)
    parser.add_argument("--masks", type=int, default=100)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = build(args.model, 20).eval()
    n, size = args.images, (args.size, args.size)
    x = torch.rand(n, 3, *size)
    t = torch.randint(0, 20, (n,))
    np.random.seed(0)
    authors = RISE(nn.Sequential(model, nn.Softmax(dim=1)), size, gpu_batch=args.batch)
    authors.generate_masks(args.masks, 7, 0.5)
    given = authors.masks[:, 0]
    shap_partition(model, x[:1, :, :8, :8], t[:1], 10)  # shap's numba functions compile on first use
    check_in_float64(model, x[:2], t[:2], args.max_evals // 2, authors, given)
    with torch.no_grad():  # warm up: the batch shapes below, so that neither side pays for them first
        for rows in (10, 10 * n, args.batch):
            model(x[:1].expand(rows, -1, -1, -1).contiguous())

    cases = {
        f"partition_shap (max_evals {args.max_evals}, blur(16,16))": (
            lambda: A.attribute("partition_shap", model, x, t, max_evals=args.max_evals, batch_size=10 * n),
            lambda: shap_partition(model, x, t, args.max_evals),
        ),
        f"rise ({args.masks} masks, the same masks)": (
            lambda: A.attribute("rise", model, x, t, masks=given, batch_size=args.batch),
            lambda: authors_rise(authors, x, t),
        ),
        f"rise mask generation ({args.masks} masks)": (
            lambda: RiseMasks(size, args.masks, 7, 0.5, torch.Generator().manual_seed(0))(torch.arange(args.masks)),
            lambda: RISE(model, size).generate_masks(args.masks, 7, 0.5),
        ),
    }
    times = {name: ([], []) for name in cases}
    outputs = {}
    for r in range(args.repeats):
        for name, fns in cases.items():
            for i in (0, 1) if r % 2 == 0 else (1, 0):  # alternate who goes first
                result = []
                times[name][i].append(timed(lambda fn=fns[i], out=result: out.append(fn()), torch.device("cpu")))
                outputs.setdefault(name, [None, None])[i] = result[0]
    for name in list(cases)[:2]:
        ours, ref = outputs[name]
        err = ((ours - ref).abs().max() / ref.abs().max()).item()
        print(f"{name}, float32: max |salience - reference| / max |reference| = {err:.1e}")
    print(
        f"\n{args.model}, {args.size} px, {n} images, cpu, {torch.get_num_threads()} threads, median of {args.repeats}"
    )
    print("| method | salience s | reference s | reference / salience |")
    print("|---|---|---|---|")
    for name, (ours, ref) in times.items():
        o, r = statistics.median(ours), statistics.median(ref)
        print(f"| {name} | {o:.2f} | {r:.2f} | {r / o:.2f}x |")


if __name__ == "__main__":
    main()
