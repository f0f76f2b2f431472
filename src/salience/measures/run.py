"""`salience measure` over map stores: per-image CSV, per-model JSON summaries, stability within groups and
comparisons between groups. Stores are streamed block by block, so memory does not grow with the data set
(only one float per image and measure is kept, for the summaries)."""

from __future__ import annotations

import collections
import csv
import itertools
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from salience.measures.entropy import entropy
from salience.measures.probes import seed_stability
from salience.measures.summary import compare_groups, summarise
from salience.store import MapStore, check_aligned

MAP_MEASURES = ("entropy_histogram", "entropy_spatial")


def _stage(path: Path, staged: list[tuple[Path, Path]]):
    """Open a temporary file next to `path`; `measure_stores` renames all of them into place at the end."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    staged.append((tmp, path))
    return open(tmp, "w", newline="")


def _other_run(out: Path, groups: dict[str, list[str | Path]]) -> str | None:
    """Why `out` holds results of other stores (None when it is empty or holds these stores' results)."""
    old = out / "summary.json"
    if not old.exists():
        found = sorted(p.name for p in out.iterdir() if ".tmp" not in p.name) if out.is_dir() else []
        return f"{out} holds other files {found[:5]} and no summary.json of `salience measure`" if found else None
    try:
        stores = json.loads(old.read_text())["stores"]
        before = sorted((v["group"], k) for k, v in stores.items())
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        return f"{old} exists and is not a summary of `salience measure` ({type(err).__name__}: {err})"
    now = sorted((g, str(Path(p))) for g, paths in groups.items() for p in paths)
    return None if before == now else f"{old} holds results of other stores or groups"


def measure_stores(groups: dict[str, list[str | Path]], out: str | Path, seed: int = 0, block: int = 1024,
                   n_boot: int = 2000, n_perm: int = 10000) -> dict:
    """Measure every store of every group (name -> store paths) and write into `out`:

    - `per_image.csv`: group, store, index, image_id, target, entropy_histogram, entropy_spatial
    - `stability.csv`: group, index, image_id and the mean pairwise similarity per similarity function,
      for groups of two or more aligned stores (same split, images and order; else refused)
    - `summary.json`: per store, summarise() of each measure; per group, stability summaries; for each
      pair of groups, compare_groups() of the per-store means (effect size, permutation p-value).
    Returns the summary dict. Nothing in `out` changes unless every file is written: they are staged under
    temporary names and renamed at the end. An `out` holding results of other stores is refused.
    """
    out = Path(out)
    reason = _other_run(out, groups)
    if reason:
        raise FileExistsError(f"{reason}; choose another out or delete it")
    opened = {g: [MapStore(p) for p in paths] for g, paths in groups.items()}
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(f"{out}: cannot create the output folder ({err.strerror}: {err.filename})") from None
    staged: list[tuple[Path, Path]] = []
    try:
        summary = _measure(opened, out, staged, seed, block, n_boot, n_perm)
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, path in staged:
        os.replace(tmp, path)
    return summary


def _entropies(blocks, workers: int = 2):
    """`(start, maps, targets, [histogram, spatial])` per block, in order; up to `workers` blocks are measured
    at once in threads (torch releases the GIL), each with one intra-op thread: per-block tensors are small,
    and OpenMP's waits made two intra-op threads 4x slower than one on a busy 2-core machine."""
    def work(item):
        torch.set_num_threads(1)
        start, maps, targets = item
        return start, maps, targets, [entropy(maps, "histogram"), entropy(maps, "spatial")]

    threads = torch.get_num_threads()
    try:
        with ThreadPoolExecutor(workers) as pool:
            pending: collections.deque = collections.deque()
            for item in blocks:  # read in this thread; at most `workers` + 1 blocks in memory
                pending.append(pool.submit(work, item))
                if len(pending) >= workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
    finally:
        torch.set_num_threads(threads)  # the workers' setting would otherwise become the default of new threads


def _measure(opened: dict[str, list[MapStore]], out: Path, staged: list, seed: int, block: int, n_boot: int,
             n_perm: int) -> dict:
    summary: dict = {"seed": seed, "stores": {}, "stability": {}, "comparisons": {}}
    per_store_means: dict[str, dict[str, list[float]]] = {g: {m: [] for m in MAP_MEASURES} for g in opened}

    with _stage(out / "per_image.csv", staged) as f:
        w = csv.writer(f)
        w.writerow(["group", "store", "index", "image_id", "target", *MAP_MEASURES])
        for g, stores in opened.items():
            for s in stores:
                values = {m: [] for m in MAP_MEASURES}
                for start, maps, targets, cols in _entropies(s.iter_chunks(block)):
                    for m, v in zip(MAP_MEASURES, cols):
                        values[m].extend(v.tolist())
                    rows = zip(range(start, start + len(maps)), targets.tolist(), *(c.tolist() for c in cols))
                    w.writerows([g, str(s.path), i, s.meta.image_ids[i], t, *(f"{v:.6g}" for v in vs)]
                                for i, t, *vs in rows)
                stats = {m: summarise(v, seed=seed, n_boot=n_boot) for m, v in values.items()}
                summary["stores"][str(s.path)] = {"group": g, "model_hash": s.meta.model_hash, "method": s.meta.method,
                                                  "layer": s.meta.layer, "split": s.meta.split, "n": s.n, **stats}
                for m in MAP_MEASURES:
                    per_store_means[g][m].append(stats[m]["mean"])

    stable_groups = {g: s for g, s in opened.items() if len(s) >= 2}
    if stable_groups:
        with _stage(out / "stability.csv", staged) as f:
            w = csv.writer(f)
            header_written = False
            for g, stores in stable_groups.items():
                check_aligned(stores)
                sims = ("ssim", "pearson", "spearman", "topk_iou") if min(stores[0].map_shape) >= 7 else (
                    "pearson", "spearman", "topk_iou")
                if not header_written:
                    w.writerow(["group", "index", "image_id", *("ssim", "pearson", "spearman", "topk_iou")])
                    header_written = True
                values = {k: [] for k in sims}
                for start in range(0, stores[0].n, block):
                    stop = min(start + block, stores[0].n)
                    maps = torch.stack([s.read(start, stop)[0] for s in stores])
                    mean = seed_stability(maps, sims)["mean"]
                    for k in sims:
                        values[k].extend(mean[k].tolist())
                    cols = [mean[k].tolist() if k in mean else [None] * (stop - start)
                            for k in ("ssim", "pearson", "spearman", "topk_iou")]
                    w.writerows([g, i, stores[0].meta.image_ids[i], *("" if v is None else f"{v:.6g}" for v in vs)]
                                for i, *vs in zip(range(start, stop), *cols))
                summary["stability"][g] = {k: summarise(v, seed=seed, n_boot=n_boot) for k, v in values.items()}

    for a, b in itertools.combinations(opened, 2):
        if len(opened[a]) >= 2 and len(opened[b]) >= 2:
            summary["comparisons"][f"{a} vs {b}"] = {
                m: compare_groups(per_store_means[a][m], per_store_means[b][m], seed=seed, n_perm=n_perm)
                for m in MAP_MEASURES
            }
    with _stage(out / "summary.json", staged) as f:
        json.dump(summary, f, indent=2)
    return summary
