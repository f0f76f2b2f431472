"""A study folder written directly (no training) for the `salience view` tests, in the formats the study
writer uses (`salience.measures.run`, `salience.study.pipeline.store_paths`): images in an image folder, one
map store per model and method, per_image.csv, stability.csv, summary.json, results.json and a report."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from salience.store import MapStore, StoreMeta
from salience.study.pipeline import store_paths


def blob(n_images: int, map_shape: tuple[int, int], gi: int, k: int, mi: int = 0) -> np.ndarray:
    """`[n_images, h, w]` maps of model `k` of group `gi` by method `mi`: a blob whose place depends on the
    image, the model and the method, peaking at `1 + gi` (method 0) or `(1 + gi) / (1 + mi)`."""
    h, w = map_shape
    yy, xx = np.mgrid[0:h, 0:w]
    cy = (np.arange(n_images) * 3 + gi * 2 + k + 3 * mi) % h
    cx = (np.arange(n_images) * 5 + gi + 2 * mi) % w
    maps = np.exp(-((yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2) / 4.0) * (1 + gi) / (1 + mi)
    return maps.astype(np.float32)


def make_study(
    root: Path,
    n_images: int = 12,
    groups: dict[str, int] | None = None,
    size: int = 32,
    map_shape: tuple[int, int] = (8, 8),
    n_oos: int = 5,
    methods: tuple[str, ...] = ("grad_cam@final",),
) -> Path:
    """Write a study of `n_images` images (two classes), `groups` (name -> models) and `methods` (specs,
    `NAME` or `NAME@LAYER`) into `root`; every model's map of image i by method j is `blob(...)`. Stores
    lie where the study writer puts them: `stores/<model>` for one method, `stores/<spec>/<model>` for
    several. Returns `root`."""
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
    names = {g: [f"{g}_s{k}" for k in range(count)] for g, count in groups.items()}
    paths = store_paths(root, [m for ms in names.values() for m in ms], list(methods))
    rows, stability, stores = [], [], {}
    for gi, g in enumerate(groups):
        for mi, spec in enumerate(methods):  # the writer's order: per group, each method's stores
            method, _, layer = spec.partition("@")
            for k, model in enumerate(names[g]):
                path = paths[(model, spec)]
                meta = StoreMeta(
                    model_hash=f"{gi}{k}",
                    method=method,
                    layer=layer or None,
                    target_policy="true",
                    resolution=(size, size),
                    data="imagefolder test",
                    split="test",
                    image_ids=tuple(ids),
                )
                store = MapStore.create(path, meta, map_shape, chunk_size=256)
                maps = torch.from_numpy(blob(n_images, map_shape, gi, k, mi))
                for c in range(store.n_chunks):
                    start, stop = store.chunk_range(c)
                    store.write_chunk(c, maps[start:stop], torch.tensor(labels[start:stop]))
                entropy = rng.random(n_images)
                epg = rng.random(n_images)
                rows += [
                    [g, model, spec, ids[i], labels[i], f"{entropy[i]:.6g}", "" if i % 4 == 3 else f"{epg[i]:.6g}"]
                    for i in range(n_images)
                ]
                oos_scores = (0.5 + 0.1 * gi + 0.01 * np.arange(n_oos)) % 1
                stores[str(path)] = {
                    "group": g,
                    "model": model,
                    "model_hash": meta.model_hash,
                    "method": method,
                    "layer": layer or None,
                    "spec": spec,
                    "split": "test",
                    "n": n_images,
                    "curves": {"out_of_set": {"scores_out": oos_scores.tolist()}},
                }
            stability += [
                [g, spec, ids[i], labels[i], f"{0.5 + 0.4 * np.sin(i + gi + 2 * mi):.6g}", "0.5", "0.5", "0.5"]
                for i in range(n_images)
            ]
    header = ["group", "model", "method", "image", "class", "entropy_histogram", "epg"]
    with open(root / "per_image.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    with open(root / "stability.csv", "w", newline="") as f:
        header = ["group", "method", "image", "class", "ssim", "pearson", "spearman", "topk_iou"]
        csv.writer(f).writerows([header, *stability])
    (root / "summary.json").write_text(json.dumps({"stores": stores}))
    results = {
        "groups": names,
        "data": {"classes": ["cat", "dog"]},
        "study": {
            "data": {"format": "imagefolder", "root": str(images), "split": "test"},
            "out_of_set": {"format": "imagefolder", "root": str(oos), "split": "test"},
        },
    }
    (root / "results.json").write_text(json.dumps(results))
    (root / "report.html").write_text("<html><body><h1>Report</h1></body></html>")
    return root
