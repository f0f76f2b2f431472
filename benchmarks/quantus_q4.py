"""Focus, SmoothMPRT and EfficientMPRT vs Quantus 0.6, for `benchmarks/quantus.py`: `cases(c)` gives
`{name: (theirs, ours, floor)}`, zero-argument callables, where `c` holds the locals of its `main()` (model, x, y,
maps, masks, explain, explain_func, q, n, s, args, device).

Focus is timed on given maps of mosaics (`mosaics` of the images, explained once beforehand): it reads the maps
alone, so it has no floor. SmoothMPRT runs `args.samples` noisy samples (Quantus' default is 50) over the whole
cascade (`max_steps=None`) on both sides; Quantus explains the noisy images with `quantus.explain` (Captum's
InputXGradient, equal to salience's `input_x_gradient`) whatever its `explain_func`. Its floor: the explanations
the definition needs, samples x (layers + 1) of the n images. EfficientMPRT's floor: one explanation of the n
images by the fully randomised model (the original maps are given).

Run by `python benchmarks/quantus.py [--only NAME ...]`.
"""

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
