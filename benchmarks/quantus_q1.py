"""Pixel flipping, region perturbation, IROF, selectivity and sensitivity-n vs Quantus 0.6, for
`benchmarks/quantus.py`: `cases(c)` gives `{name: (theirs, ours, floor)}`, zero-argument callables, where `c` holds
the locals of its `main()` (model, x, y, maps, masks, explain, explain_func, q, n, s, args, device).

Both sides at Quantus' defaults (softmax probabilities, `black` / `mean` baselines, one value per step for pixel
flipping and sensitivity-n, 8 x 8 patches, SLIC superpixels). The floor is the model's forwards each definition
needs, in batches of the n images, nothing else. Quantus 0.6 needs two mends to run here: `np.trapz` (gone in
NumPy 2) for its areas, and IROF's mask broadcast to the image's channels (its [B, 1, H, W] mask fails an
assertion against [B, 3, H, W] images).

Run by `python benchmarks/quantus.py [--only NAME ...]`.
"""

import numpy as np

from common import forwards
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
            forwards(m, x, channels * s * s),
        ),
        "region_perturbation": (
            lambda: quantus.RegionPerturbation(**off)(**qa),
            lambda: region_perturbation(m, x, y, maps),
            forwards(m, x, 1 + min(100, patches)),
        ),
        "irof": (
            lambda: quantus.IROF(perturb_func=broadcast, **off)(**qa),
            lambda: irof(m, x, y, maps),
            forwards(m, x, 1 + segments),
        ),
        "selectivity": (
            lambda: quantus.Selectivity(**off)(**qa),
            lambda: selectivity(m, x, y, maps),
            forwards(m, x, patches),
        ),
        "sensitivity_n": (
            lambda: quantus.SensitivityN(**off)(**qa),
            lambda: sensitivity_n(m, x, y, maps),
            forwards(m, x, 1 + int(0.8 * s * s)),
        ),
    }
