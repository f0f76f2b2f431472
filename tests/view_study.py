"""A study folder written directly (no training) for the `salience view` tests: images in an image folder,
one map store per model, per_image.csv, stability.csv, summary.json, results.json and a report."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from salience.store import MapStore, StoreMeta


def make_study(
    root: Path,
    n_images: int = 12,
    groups: dict[str, int] | None = None,
    size: int = 32,
    map_shape: tuple[int, int] = (8, 8),
    n_oos: int = 5,
) -> Path:
    """Write a study of `n_images` images (two classes) and `groups` (name -> models) into `root`; every
    model's map of image i is a blob whose place depends on i and the model. Returns `root`."""
    groups = groups or {"CE": 2, "CYBORG": 2}
    rng = np.random.default_rng(0)
    images = root / "images"
    for c in ("cat", "dog"):
        (images / c).mkdir(parents=True)
    ids = []
    for i in range(n_images):
        rel = f"{('cat', 'dog')[i % 2]}/img_{i:05d}.png"
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(images / rel)
        ids.append(rel)
    ids.sort()  # the image folder reader's order
    oos = root / "oos"
    oos.mkdir()
    for i in range(n_oos):
        Image.fromarray(np.full((size, size, 3), 40 * i, dtype=np.uint8)).save(oos / f"o{i}.png")
    labels = [0 if i.startswith("cat") else 1 for i in ids]
    h, w = map_shape
    yy, xx = np.mgrid[0:h, 0:w]
    rows, stability, stores = [], [], {}
    for gi, (g, count) in enumerate(groups.items()):
        for k in range(count):
            model = f"{g}_s{k}"
            path = root / "stores" / model
            meta = StoreMeta(
                model_hash=f"{gi}{k}",
                method="grad_cam",
                layer="final",
                target_policy="true",
                resolution=(size, size),
                data="imagefolder test",
                split="test",
                image_ids=tuple(ids),
            )
            store = MapStore.create(path, meta, map_shape, chunk_size=256)
            cy = (np.arange(n_images) * 3 + gi * 2 + k) % h
            cx = (np.arange(n_images) * 5 + gi) % w
            maps = np.exp(-((yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2) / 4.0) * (1 + gi)
            maps = torch.from_numpy(maps.astype(np.float32))
            for c in range(store.n_chunks):
                start, stop = store.chunk_range(c)
                store.write_chunk(c, maps[start:stop], torch.tensor(labels[start:stop]))
            entropy = rng.random(n_images)
            epg = rng.random(n_images)
            rows += [
                [g, model, ids[i], labels[i], f"{entropy[i]:.6g}", "" if i % 4 == 3 else f"{epg[i]:.6g}"]
                for i in range(n_images)
            ]
            oos_scores = (0.5 + 0.1 * gi + 0.01 * np.arange(n_oos)) % 1
            stores[str(path)] = {
                "group": g,
                "model": model,
                "method": "grad_cam",
                "layer": "final",
                "split": "test",
                "curves": {"out_of_set": {"scores_out": oos_scores.tolist()}},
            }
        stability += [
            [g, ids[i], labels[i], f"{0.5 + 0.4 * np.sin(i + gi):.6g}", "0.5", "0.5", "0.5"] for i in range(n_images)
        ]
    with open(root / "per_image.csv", "w", newline="") as f:
        csv.writer(f).writerows([["group", "model", "image", "class", "entropy_histogram", "epg"], *rows])
    with open(root / "stability.csv", "w", newline="") as f:
        csv.writer(f).writerows([["group", "image", "class", "ssim", "pearson", "spearman", "topk_iou"], *stability])
    (root / "summary.json").write_text(json.dumps({"stores": stores}))
    results = {
        "groups": {g: [f"{g}_s{k}" for k in range(n)] for g, n in groups.items()},
        "data": {"classes": ["cat", "dog"]},
        "study": {
            "data": {"format": "imagefolder", "root": str(images), "split": "test"},
            "out_of_set": {"format": "imagefolder", "root": str(oos), "split": "test"},
        },
    }
    (root / "results.json").write_text(json.dumps(results))
    (root / "report.html").write_text("<html><body><h1>Report</h1></body></html>")
    return root
