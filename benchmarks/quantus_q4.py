"""Focus, SmoothMPRT and EfficientMPRT vs Quantus 0.6, for `benchmarks/quantus.py`: `cases(c)` gives
`{name: (theirs, ours, floor)}`, zero-argument callables, where `c` holds the locals of its `main()` (model, x, y,
maps, masks, explain, explain_func, q, n, s, args, device).

Focus is timed on given maps of mosaics (`mosaics` of the images, explained once beforehand): it reads the maps
alone, so it has no floor. SmoothMPRT runs `args.samples` noisy samples (Quantus' default is 50) over the whole
cascade (`max_steps=None`) on both sides; Quantus explains the noisy images with `quantus.explain` (Captum's
InputXGradient, equal to salience's `input_x_gradient`) whatever its `explain_func`. Its floor: the explanations
the definition needs, samples x (layers + 1) of the n images. EfficientMPRT's floor: one explanation of the n
images by the fully randomised model (the original maps are given).

    python benchmarks/quantus_q4.py                      # smallcnn, 32 px, 16 images, CPU (this file alone)
"""

import argparse
import warnings
from types import SimpleNamespace

import torch

from salience.attribution import upsample
from salience.measures.focus import focus, mosaics
from salience.measures.sanity import efficient_mprt, randomisable, smooth_mprt


def _explanations(explain, x, y, times):
    return lambda: [explain(x, y) for _ in range(times)]


def cases(c) -> dict:
    import quantus

    mosaic = mosaics(c.x, c.y, seed=1, per_class=max(1, c.n // len(set(c.y.tolist()))))
    mx, mt, positions = mosaic["x"], mosaic["target"], mosaic["positions"]
    mmaps = upsample(c.explain(mx, mt).detach(), (mx.shape[-2], mx.shape[-1]))
    batch = {"x_batch": mx.cpu().numpy(), "y_batch": mt.cpu().numpy(), "a_batch": mmaps[:, None].cpu().numpy()}
    custom = [tuple(p) for p in positions.tolist()]
    an = upsample(c.maps, (c.s, c.s))[:, None].cpu().numpy()
    samples, layers = c.args.samples, len(randomisable(c.model))
    smooth_kw = {"explain_func": c.explain_func, "explain_func_kwargs": {"method": "InputXGradient"}}
    return {
        "focus": (
            lambda: quantus.Focus(disable_warnings=True)(**(c.q | batch), custom_batch=custom),
            lambda: focus(mmaps, positions),
            None,
        ),
        "smooth_mprt": (
            lambda: quantus.SmoothMPRT(nr_samples=samples, disable_warnings=True)(
                **c.q, a_batch=None, batch_size=c.n, **smooth_kw
            ),
            lambda: smooth_mprt(c.model, c.x, c.y, "input_x_gradient", samples=samples, max_steps=None),
            _explanations(c.explain, c.x, c.y, samples * (layers + 1)),
        ),
        "efficient_mprt": (
            lambda: quantus.EfficientMPRT(disable_warnings=True)(
                **c.q, a_batch=an, explain_func=c.explain_func, batch_size=c.n
            ),
            lambda: efficient_mprt(c.model, c.x, c.y, "input_x_gradient", maps=c.maps),
            _explanations(c.explain, c.x, c.y, 1),
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

    def explain_func(model, inputs, targets, **kwargs):
        xx = torch.as_tensor(inputs, device=device).float()
        t = torch.as_tensor(targets, device=device).long()
        return upsample(attribute("input_x_gradient", model, xx, t).detach(), (s, s))[:, None].cpu().numpy()

    q = dict(model=model, x_batch=x.cpu().numpy(), y_batch=y.cpu().numpy(), channel_first=True, device=str(device))
    return SimpleNamespace(model=model, x=x, y=y, maps=maps, masks=None, explain=explain, explain_func=explain_func,
                           q=q, n=n, s=s, args=args, device=device)  # fmt: skip


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
    parser.add_argument("--samples", type=int, default=20, help="noisy samples of SmoothMPRT (Quantus: 50)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", nargs="*")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    c = _context(args)
    print(f"{args.model}, {c.s} px, {c.n} images, {args.device}, {torch.get_num_threads()} threads, "
          f"samples {args.samples}")  # fmt: skip
    print("\n| measure | Quantus s | salience s | speed-up | floor s | salience / floor |")
    print("|---|---|---|---|---|---|")
    for name, (theirs, ours, floor) in cases(c).items():
        if args.only and name not in args.only:
            continue
        ours()  # warm-up
        t_ours, t_theirs = timed(ours, c.device), timed(theirs, c.device)
        t_floor = timed(floor, c.device) if floor is not None else None
        tail = f"{t_floor:.3f} | {t_ours / t_floor:.2f}x |" if t_floor is not None else " | |"
        print(f"| {name} | {t_theirs:.3f} | {t_ours:.4f} | {t_theirs / t_ours:.1f}x | {tail}", flush=True)


if __name__ == "__main__":
    main()
