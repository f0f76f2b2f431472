"""Measures side by side with Quantus on the same maps (CPU), and peak memory of `salience measure`.

    .venv/bin/python benchmarks/measures.py [--maps 256] [--side 64] [--stored 50000] [--threads 1]

Prints a markdown table: best-of-3 wall time of ours vs Quantus for spatial entropy (Quantus Complexity),
EPG (AttributionLocalisation), pointing game (PointingGame) and deletion curves (PixelFlipping), with the
largest absolute difference of the results; then the peak RSS of `salience measure` over two stores of
`--stored` maps each (entropy of every map, pairwise stability, summaries), run in a subprocess.
"""

from __future__ import annotations

import argparse
import math
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from salience.measures import entropy, epg, pointing_game
from salience.measures.degradation import deletion_insertion
from salience.models import build
from salience.store import MapStore, StoreMeta, fill


def best_of(fn, repeats=3):
    out, best = None, math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def quantus_call(metric, model, x, y, a, s=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(
            metric(model=model, x_batch=x, y_batch=y, a_batch=a, s_batch=s, batch_size=len(x), device="cpu"),
            dtype=float,
        )


def compare(args) -> list[tuple]:
    import quantus

    g = torch.Generator().manual_seed(0)
    b, side = args.maps, args.side
    maps = torch.rand(b, side, side, generator=g) ** 3
    masks = torch.zeros(b, side, side)
    for i in range(b):
        y0, x0 = torch.randint(0, side // 2, (2,), generator=g).tolist()
        masks[i, y0 : y0 + side // 3, x0 : x0 + side // 3] = 1
    a_np, s_np = maps[:, None].numpy(), masks[:, None].numpy()
    x_np = np.zeros((b, 1, side, side), dtype=np.float32)
    y_np = np.zeros(b, dtype=int)
    rows = []

    ours_t, ours = best_of(lambda: entropy(maps, "spatial") * math.log(side * side))
    q = quantus.Complexity(normalise=False, abs=False, disable_warnings=True)
    q_t, ref = best_of(lambda: quantus_call(q, None, x_np, y_np, a_np.copy()))
    rows.append(
        ("spatial entropy (Complexity)", f"{b} maps {side}x{side}", ours_t, q_t, np.abs(ours.numpy() - ref).max())
    )

    ours_t, ours = best_of(lambda: epg(maps, masks))
    q = quantus.AttributionLocalisation(normalise=False, abs=False, positive_attributions=True, disable_warnings=True)
    q_t, ref = best_of(lambda: quantus_call(q, None, x_np, y_np, a_np, s_np))
    rows.append(
        ("EPG (AttributionLocalisation)", f"{b} maps {side}x{side}", ours_t, q_t, np.abs(ours.numpy() - ref).max())
    )

    ours_t, ours = best_of(lambda: pointing_game(maps, masks))
    q = quantus.PointingGame(normalise=False, abs=False, disable_warnings=True)
    q_t, ref = best_of(lambda: quantus_call(q, None, x_np, y_np, a_np, s_np))
    rows.append(
        ("pointing game (PointingGame)", f"{b} maps {side}x{side}", ours_t, q_t, np.abs(ours.numpy() - ref).max())
    )

    # deletion curves: same model, images, maps, number of model calls and zero baseline. Quantus flips
    # 64 values (pixel-channels) per step and runs 3*32*32/64 = 48 steps; ours removes 1/48 of the pixels
    # (all channels) per step. Quantus records no step-0 point and skips softmax: compare timing only.
    n_img, img_side, steps = args.images, 32, 48
    x = torch.rand(n_img, 3, img_side, img_side, generator=g)
    t = torch.zeros(n_img, dtype=torch.long)
    dmaps = torch.rand(n_img, img_side, img_side, generator=g)
    a3 = dmaps[:, None].expand(-1, 3, -1, -1).numpy().copy()
    q = quantus.PixelFlipping(
        features_in_step=3 * img_side * img_side // steps,
        normalise=False,
        abs=False,
        perturb_baseline="black",
        disable_warnings=True,
    )
    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * img_side * img_side, 2)).eval()
    for label, model in (("smallcnn", build("smallcnn", 2).eval()), ("linear", linear)):
        ours_t, _ = best_of(
            lambda model=model: deletion_insertion(
                model, x, t, dmaps, steps=steps, batch_size=256, curves=("deletion",)
            )
        )
        q_t, _ = best_of(lambda model=model: quantus_call(q, model, x.numpy(), t.numpy(), a3))
        # the floor for any implementation of the curve: the model's forward passes alone, same batches
        every = x.repeat(steps + 1, 1, 1, 1)
        with torch.no_grad():
            floor_t, _ = best_of(
                lambda model=model, every=every: [model(every[i : i + 256]) for i in range(0, len(every), 256)]
            )
        rows.append(
            (
                f"deletion curve (PixelFlipping), {label} model",
                f"{n_img} images 3x{img_side}x{img_side}, {steps} steps",
                ours_t,
                q_t,
                None,
                floor_t,
            )
        )
    return rows


def stored_rss(args) -> tuple[float, float, float, int]:
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        paths = []
        for k in range(2):
            ids = tuple(f"im{i}" for i in range(args.stored))
            meta = StoreMeta(
                model_hash=f"bench{k}",
                method="grad_cam",
                layer="final",
                target_policy="true",
                resolution=(224, 224),
                data="synthetic",
                split="test",
                image_ids=ids,
            )
            store = MapStore.create(Path(tmp) / f"s{k}", meta, (14, 14), chunk_size=1024)
            g = torch.Generator().manual_seed(k)
            fill(
                store, lambda a, b, g=g: (torch.rand(b - a, 14, 14, generator=g), torch.zeros(b - a, dtype=torch.long))
            )
            paths.append(str(store.path))
        cmd = [
            sys.executable,
            "-c",
            "from salience.cli import app; app()",
            "measure",
            "--group",
            f"g={','.join(paths)}",
            "--out",
            str(Path(tmp) / "out"),
        ]
        # baseline: the same interpreter importing what `measure` imports (torch, torchvision, zarr, ...)
        subprocess.run([sys.executable, "-c", "import salience.cli, salience.measures.run"], check=True)
        base_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        wall = time.perf_counter() - t0
        rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        with open(Path(tmp) / "out" / "per_image.csv") as f:
            lines = sum(1 for _ in f) - 1
    return rss_mb, base_mb, wall, lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--maps", type=int, default=256)
    p.add_argument("--side", type=int, default=64)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--stored", type=int, default=50_000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tmp", default=None, help="folder for the temporary stores")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s)\n")
    print(
        "| measure (Quantus metric) | inputs | ours (ms) | Quantus (ms) | speed-up | max abs diff | "
        "model forwards alone (ms) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, size, ours, theirs, diff, *floor in compare(args):
        d = "n/a" if diff is None else f"{diff:.1e}"
        f = f"{floor[0] * 1e3:.1f}" if floor else ""
        print(f"| {name} | {size} | {ours * 1e3:.2f} | {theirs * 1e3:.1f} | {theirs / ours:.0f}x | {d} | {f} |")
    rss, base, wall, rows = stored_rss(args)
    print(
        f"\n`salience measure` over 2 stores x {args.stored} maps 14x14 ({rows} per-image rows, stability of the "
        f"pair): peak RSS {rss:.0f} MB (imports alone: {base:.0f} MB), {wall:.1f} s"
    )


if __name__ == "__main__":
    main()
