"""Pixel flipping, region perturbation, IROF, selectivity and sensitivity-n vs Quantus 0.6, for
`benchmarks/quantus.py`: `cases(c)` gives `{name: (theirs, ours, floor)}`, zero-argument callables, where `c` holds
the locals of its `main()` (model, x, y, maps, masks, explain, explain_func, q, n, s, args, device).

Both sides at Quantus' defaults (softmax probabilities, `black` / `mean` baselines, one value per step for pixel
flipping and sensitivity-n, 8 x 8 patches, SLIC superpixels). The floor is the model's forwards each definition
needs, in batches of the n images, nothing else. Quantus 0.6 needs two mends to run here: `np.trapz` (gone in
NumPy 2) for its areas, and IROF's mask broadcast to the image's channels (its [B, 1, H, W] mask fails an
assertion against [B, 3, H, W] images).

    python benchmarks/quantus_q1.py                      # smallcnn, 32 px, 16 images, CPU (this file alone)
"""

import argparse
import warnings
from types import SimpleNamespace

import numpy as np
import torch

from salience.attribution import upsample
from salience.measures.flipping import (
    irof,
    irof_segments,
    patch_ids,
    pixel_flipping,
    region_perturbation,
    selectivity,
    sensitivity_n,
)

if not hasattr(np, "trapz"):
    np.trapz = np.trapezoid  # type: ignore[attr-defined]  # Quantus 0.6 calls np.trapz, gone in NumPy 2


def _forwards(model, x, times):
    def run():
        with torch.no_grad():
            for _ in range(times):
                model(x)

    return run


def cases(c) -> dict:
    from quantus.functions.perturb_func import baseline_replacement_by_mask

    import quantus

    s = c.s
    an = upsample(c.maps, (s, s))[:, None].cpu().numpy()
    qa = dict(c.q, a_batch=an)
    off = dict(disable_warnings=True, return_aggregate=False)
    channels = c.x.shape[1]
    patches = int(patch_ids(s, s, 8).max()) + 1
    segments = int(irof_segments(c.x).flatten(1).amax(1).max()) + 1
    broadcast = lambda arr, mask, **kw: baseline_replacement_by_mask(arr, np.broadcast_to(mask, arr.shape), **kw)
    m, x, y, maps = c.model, c.x, c.y, c.maps
    return {
        "pixel_flipping": (
            lambda: quantus.PixelFlipping(**off)(**qa),
            lambda: pixel_flipping(m, x, y, maps),
            _forwards(m, x, channels * s * s),
        ),
        "region_perturbation": (
            lambda: quantus.RegionPerturbation(**off)(**qa),
            lambda: region_perturbation(m, x, y, maps),
            _forwards(m, x, 1 + min(100, patches)),
        ),
        "irof": (
            lambda: quantus.IROF(perturb_func=broadcast, **off)(**qa),
            lambda: irof(m, x, y, maps),
            _forwards(m, x, 1 + segments),
        ),
        "selectivity": (
            lambda: quantus.Selectivity(**off)(**qa),
            lambda: selectivity(m, x, y, maps),
            _forwards(m, x, patches),
        ),
        "sensitivity_n": (
            lambda: quantus.SensitivityN(**off)(**qa),
            lambda: sensitivity_n(m, x, y, maps),
            _forwards(m, x, 1 + int(0.8 * s * s)),
        ),
    }


def _context(args) -> SimpleNamespace:
    """The locals of `benchmarks/quantus.py`'s `main()` that `cases` reads, built the same way."""
    from salience.attribution import attribute
    from salience.models import build

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build(args.model, 10).to(device).eval()
    n, s = args.batch, args.size
    x = torch.rand(n, 3, s, s, device=device)
    y = torch.randint(0, 10, (n,), device=device)
    explain = lambda xx, t: attribute("input_x_gradient", model, xx, t)
    maps = explain(x, y).detach()
    q = dict(model=model, x_batch=x.cpu().numpy(), y_batch=y.cpu().numpy(), channel_first=True, device=str(device))
    return SimpleNamespace(model=model, x=x, y=y, maps=maps, masks=None, explain=explain, explain_func=None, q=q,
                           n=n, s=s, args=args, device=device)  # fmt: skip


def main() -> None:
    import sys

    here = sys.path.pop(0)  # run as a script: this folder holds quantus.py, which would shadow the library
    import quantus  # noqa: F401

    sys.path.insert(0, here)
    from common import timed

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smallcnn")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", nargs="*")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    c = _context(args)
    print(f"{args.model}, {c.s} px, {c.n} images, {args.device}, {torch.get_num_threads()} threads")
    print("\n| measure | Quantus s | salience s | speed-up | floor s | salience / floor |")
    print("|---|---|---|---|---|---|")
    for name, (theirs, ours, floor) in cases(c).items():
        if args.only and name not in args.only:
            continue
        ours()  # warm-up
        t_ours, t_theirs, t_floor = timed(ours, c.device), timed(theirs, c.device), timed(floor, c.device)
        print(f"| {name} | {t_theirs:.3f} | {t_ours:.3f} | {t_theirs / t_ours:.1f}x | {t_floor:.3f} | "
              f"{t_ours / t_floor:.2f}x |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
