"""The study behind `salience demo`: train model groups on the built-in benchmark, measure their
salience with the five measures and the localisation metrics, and write the results.

`run_study(StudyConfig(...), out)` writes into `out`:
- `runs/<group>_s<seed>/`: the training runs (log, checkpoints, Pareto front);
- `results.json`: every number the report shows (summaries, comparisons, curves, findings);
- `per_image_test.csv`: one row per (model, test image) with its per-image measures;
- `stability.csv`: one row per (group, test image) with its mean pairwise map similarity;
- `gallery.pt`: the few images and maps the report draws.
`salience.report.render(out)` turns them into `report.html`.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import os
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.progress import Progress
from torchmetrics.functional.classification import binary_auroc

from salience import attribution as A
from salience.data import BuiltinBenchmark, builtin_dataset, collate
from salience.measures.probes import seed_stability
from salience.measures.suite import ENTROPIES, LOCALISATION, PROBES, map_values, probe_suite
from salience.measures.summary import compare_groups, summarise
from salience.models import build
from salience.training import load_checkpoint, train
from salience.training.config import validate

console = Console(stderr=True)

GROUPS = {
    "CE": {"loss": None},
    "Energy": {"loss": "energy", "method": "grad_cam", "depth": "final", "lambda": 1.0},
    "CYBORG": {"loss": "cyborg", "method": "cam", "depth": "final", "lambda": 1.0},
}
"""Model groups: the guidance section of each group's training config."""


class StudyConfig(BaseModel):
    """What the demo trains and measures. `quick()` is the 1-seed, tiny version used by tests."""

    model_config = ConfigDict(extra="forbid")
    seeds: int = Field(3, ge=1)
    benchmark: dict = Field(default_factory=lambda: {"n_train": 2000, "n_val": 300, "n_test": 500, "n_out_of_set": 200})
    model: str = "smallcnn"
    epochs: int = Field(5, ge=1)
    batch_size: int = 64
    lr: float = 2e-3
    method: str = "grad_cam"
    """Attribution explained and measured for every model (one method, so groups are comparable)."""
    layer: str | None = "final"
    n_probe: int = Field(96, ge=2)
    """Test images used by the costlier probes (noise, transforms, blur, deletion/insertion)."""
    deletion_steps: int = Field(16, ge=1)
    gallery: int = Field(6, ge=1)
    workers: int = Field(min(2, os.cpu_count() or 1), ge=1)
    """Training processes side by side on CPU (one torch thread each)."""

    @classmethod
    def quick(cls, seeds: int = 1) -> StudyConfig:
        return cls(seeds=seeds, benchmark={"n_train": 300, "n_val": 64, "n_test": 96, "n_out_of_set": 32},
                   epochs=2, n_probe=24, deletion_steps=8, gallery=3)


def _stack(ds) -> dict:
    return collate([ds[i] for i in range(len(ds))])


def _train_group(cfg: StudyConfig, group: str, seed: int, out: Path, threads: int | None = None) -> Path:
    """Train (or reuse) one run; `threads` caps torch's threads in a worker process."""
    if threads:
        torch.set_num_threads(threads)
    run = out / "runs" / f"{group}_s{seed}"
    tree = {"out": str(run), "seed": seed, "device": "cpu" if not torch.cuda.is_available() else "auto",
            "epochs": cfg.epochs, "batch_size": cfg.batch_size, "model": {"name": cfg.model},
            "data": {"format": "builtin", "options": cfg.benchmark},
            "optim": {"name": "adam", "lr": cfg.lr}, "schedule": {"name": "cosine"},
            "guidance": GROUPS[group], "eval": {"method": cfg.method, "depth": cfg.layer or "input"}}
    config = validate(tree, f"demo group {group}")
    if (run / "log.jsonl").exists() and len((run / "log.jsonl").read_text().splitlines()) >= cfg.epochs:
        console.print(f"[dim]{run.name}: already trained, reusing it[/dim]")
        return run
    return train(config, resume=(run / "checkpoints" / "last.pt").exists(), progress=threads is None)


def _train_all(cfg: StudyConfig, out: Path) -> dict:
    """Every (group, seed) run. On CPU, `cfg.workers` processes of one thread each train side by side
    (small nets use two single-thread processes better than one two-thread process); a progress bar
    counts finished runs. With one worker (or CUDA) runs go one after another with per-epoch bars."""
    todo = [(g, s) for g in GROUPS for s in range(cfg.seeds)]
    if cfg.workers <= 1 or torch.cuda.is_available():
        runs = {}
        for group, seed in todo:
            console.rule(f"training {group}, seed {seed}")
            runs[f"{group}_s{seed}"] = (group, seed, _train_group(cfg, group, seed, out))
        return runs
    runs = {}
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(cfg.workers, mp_context=spawn) as pool, Progress(console=console) as bar:
        task = bar.add_task(f"training {len(todo)} runs in {cfg.workers} processes", total=len(todo))
        futures = {pool.submit(_train_group, cfg, g, s, out, 1): (g, s) for g, s in todo}
        for future in as_completed(futures):
            group, seed = futures[future]
            run = future.result()
            last = json.loads((run / "log.jsonl").read_text().splitlines()[-1])["val"]
            bar.console.print(f"trained {run.name}: val accuracy {last['accuracy']:.3f}, EPG {last['epg']:.3f}")
            runs[f"{group}_s{seed}"] = (group, seed, run)
            bar.advance(task)
    return {f"{g}_s{s}": runs[f"{g}_s{s}"] for g, s in todo}


def _load(run: Path, cfg: StudyConfig, num_classes: int) -> torch.nn.Module:
    state = load_checkpoint(run / "checkpoints" / "last.pt", map_location="cpu")
    model = build(cfg.model, num_classes)
    model.load_state_dict(state["model"])
    return model.eval()


def _accuracy(model, x, labels) -> tuple[float, float, torch.Tensor, torch.Tensor]:
    """(accuracy, ROC AUC of the 'synthetic' score, predictions [N], probabilities [N, C])."""
    with torch.no_grad():
        prob = torch.cat([model(x[i:i + 256]).softmax(1) for i in range(0, len(x), 256)])
    pred = prob.argmax(1)
    acc = (pred == labels).double().mean().item()
    auc = binary_auroc(prob[:, 1], labels).item() if labels.unique().numel() == 2 else math.nan
    return acc, auc, pred, prob


def run_study(cfg: StudyConfig, out: str | Path) -> dict:
    """Train every group over `cfg.seeds` seeds, measure, write results (see module docstring)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    bench = BuiltinBenchmark(**cfg.benchmark)
    runs = _train_all(cfg, out)
    console.rule("measuring")
    splits = {s: _stack(builtin_dataset(s, bench)) for s in ("test", "test_shift", "out_of_set")}
    classes = builtin_dataset("val", bench).classes
    test = splits["test"]
    x, labels, masks = test["image"], test["labels"].argmax(1), test["mask"]
    probe = slice(0, min(cfg.n_probe, len(x)))
    xp, tp = x[probe], labels[probe]

    models, rows, maps_by_group, gallery_maps = {}, [], {g: [] for g in GROUPS}, {}
    for name, (group, seed, run) in runs.items():
        console.print(f"measuring {name}")
        model = _load(run, cfg, len(classes))
        explain = functools.partial(A.attribute, cfg.method, model, layer=cfg.layer)
        maps = torch.cat([explain(x[i:i + 128], labels[i:i + 128]) for i in range(0, len(x), 128)])
        maps_by_group[group].append(maps)
        if seed == 0:
            gallery_maps[group] = A.upsample(maps[:cfg.gallery], tuple(x.shape[-2:]))
        acc = {}
        for split in ("test", "test_shift"):
            s = splits[split]
            acc[split], auc, pred, _ = _accuracy(model, s["image"], s["labels"].argmax(1))
            acc[f"{split}_auc"] = auc
            if split == "test":
                test_pred = pred
            else:
                groups_ = s["group"]
                acc["test_shift_worst_group"] = min(
                    (pred[groups_ == gi] == s["labels"].argmax(1)[groups_ == gi]).double().mean().item()
                    for gi in groups_.unique().tolist())
        _, _, oos_pred, _ = _accuracy(model, splits["out_of_set"]["image"],
                                      torch.zeros(len(splits["out_of_set"]["image"]), dtype=torch.long))
        acc["out_of_set_real_rate"] = (oos_pred == 0).double().mean().item()
        per_image = map_values(maps, masks)
        probes = probe_suite(model, explain, xp, tp, maps[probe], out_of_set=splits["out_of_set"]["image"][:cfg.n_probe],
                             seed=seed, deletion_steps=cfg.deletion_steps)
        probe_values = probes["values"]
        for i in range(len(x)):
            row = {"model": name, "group": group, "seed": seed, "image": test["id"][i], "label": labels[i].item(),
                   "pred": test_pred[i].item()}
            row |= {k: round(v[i].item(), 6) for k, v in per_image.items()}
            row |= {k: (round(v[i].item(), 6) if i < len(xp) else "") for k, v in probe_values.items()}
            rows.append(row)
        models[name] = {
            "group": group, "seed": seed, "run": str(run.relative_to(out)), "accuracy": acc,
            "measures": {k: summarise(v, seed=seed) for k, v in (per_image | probe_values).items()},
            **probes["curves"],
            "pareto": _pareto(run),
        }
    results = {"config": cfg.model_dump(), "benchmark": bench.model_dump(mode="json"), "classes": list(classes),
               "models": models, "groups": {g: [n for n, m in models.items() if m["group"] == g] for g in GROUPS}}
    results["stability"] = _stability(maps_by_group, out, test["id"])
    results["summary"], results["comparisons"] = _group_tables(models, rows)
    results["findings"] = findings(results)
    results["seconds"] = round(time.perf_counter() - t0, 1)
    _write_csv(out / "per_image_test.csv", rows)
    torch.save({"images": x[:cfg.gallery], "masks": masks[:cfg.gallery], "human_maps": test["human_map"][:cfg.gallery],
                "labels": labels[:cfg.gallery], "boxes": test["boxes"][:cfg.gallery], "maps": gallery_maps,
                "classes": list(classes)}, out / "gallery.pt")
    _write_json(out / "results.json", results)
    return results


def _pareto(run: Path) -> list[dict]:
    """Validation (accuracy, EPG, IoU) per epoch and whether the epoch is on the kept Pareto front."""
    kept_file = run / "checkpoints" / "pareto.json"
    kept_epochs = {e["epoch"] for e in json.loads(kept_file.read_text())["front"]} if kept_file.exists() else set()
    out = []
    for line in (run / "log.jsonl").read_text().splitlines():
        rec = json.loads(line)
        val = rec["val"]
        out.append({"epoch": rec["epoch"], "accuracy": val.get("accuracy"), "epg": val.get("epg"),
                    "iou": val.get("iou"), "pareto": rec["epoch"] in kept_epochs})
    return out


def _stability(maps_by_group: dict, out: Path, ids: list[str]) -> dict:
    result, rows = {}, []
    for group, maps in maps_by_group.items():
        if len(maps) < 2:
            continue
        st = seed_stability(maps, similarities=("ssim", "pearson"))
        n = len(maps)
        matrix = torch.eye(n, dtype=torch.float64).tolist()
        for p, (i, j) in enumerate(st["pairs"]):
            v = st["similarity"]["ssim"][:, p].double().mean().item()
            matrix[i][j] = matrix[j][i] = v
        result[group] = {"ssim_matrix": matrix, "ssim": summarise(st["mean"]["ssim"]),
                         "pearson": summarise(st["mean"]["pearson"])}
        rows += [{"group": group, "image": ids[i], "ssim": round(st["mean"]["ssim"][i].item(), 6),
                  "pearson": round(st["mean"]["pearson"][i].item(), 6)} for i in range(len(ids))]
    if rows:
        _write_csv(out / "stability.csv", rows)
    return result


MEASURES = LOCALISATION + ENTROPIES + PROBES
MODEL_LEVEL = ("test", "test_shift", "test_shift_worst_group", "out_of_set_real_rate")


N_PERM = 2000
"""Permutations per comparison: p-values resolve to 1/2001; with n seeds per group the exact test of
per-model values cannot go below 1 / C(2n, n) (0.1 for 3 vs 3)."""


def _group_tables(models: dict, rows: list[dict]) -> tuple[dict, dict]:
    """Per group: summaries of per-image measures (pooled over seeds) and of per-model accuracies;
    comparisons of each guided group with CE (per-image values for measures, per-model values for
    accuracies; the latter need >= 2 seeds)."""
    summary, comparisons = {}, {}
    for measure in MEASURES:
        values = {g: [r[measure] for r in rows if r["group"] == g and r[measure] != ""] for g in GROUPS}
        values = {g: torch.tensor(v, dtype=torch.float64) for g, v in values.items()}
        summary[measure] = {g: summarise(v) for g, v in values.items()}
        comparisons[measure] = {f"{g} vs CE": compare_groups(values[g], values["CE"], n_perm=N_PERM)
                                for g in GROUPS if g != "CE"}
    for key in MODEL_LEVEL:
        values = {g: torch.tensor([m["accuracy"][key] for m in models.values() if m["group"] == g],
                                  dtype=torch.float64) for g in GROUPS}
        summary[key] = {g: summarise(v) for g, v in values.items()}
        comparisons[key] = {f"{g} vs CE": compare_groups(values[g], values["CE"]) for g in GROUPS
                            if g != "CE" and len(values[g]) >= 2 and len(values["CE"]) >= 2}
    return summary, comparisons


def findings(results: dict) -> list[str]:
    """Plain sentences generated from the numbers: do guided models beat CE on EPG and on test_shift?"""
    s, c = results["summary"], results["comparisons"]
    out = []
    for g in GROUPS:
        if g == "CE":
            continue
        for key, what in (("epg", "EPG on test (salience inside the face box)"),
                          ("test_shift", "accuracy on test_shift (spurious cue reversed)"),
                          ("test", "accuracy on test")):
            a, b = s[key][g]["mean"], s[key]["CE"]["mean"]
            verdict = "beat" if a > b else "did not beat"
            sentence = f"{g} models {verdict} CE on {what}: {a:.3f} vs {b:.3f}"
            cmp = c[key].get(f"{g} vs CE")
            if cmp:
                sentence += f" (difference {cmp['diff']:+.3f}, Cohen's d {cmp['cohens_d']:.2f}, permutation p = {cmp['p_value']:.3g})"
            elif key != "epg":
                sentence += " (one seed per group: no test of the difference)"
            out.append(sentence + ".")
        gap = s["test"][g]["mean"] - s["test_shift"][g]["mean"]
        if gap > 0.2:
            out.append(f"{g} models still follow the spurious cue: test_shift accuracy is {gap:.2f} below test "
                       f"accuracy.")
    ce_gap = s["test"]["CE"]["mean"] - s["test_shift"]["CE"]["mean"]
    if s["test"]["CE"]["mean"] < 0.75:
        out.append(f"CE models barely learned the task (test accuracy {s['test']['CE']['mean']:.2f}): too little "
                   f"training for the comparisons above to mean much (a --quick run?).")
    elif ce_gap <= 0.2:
        out.append(f"CE models did not fall for the spurious cue (test_shift only {ce_gap:.2f} below test): "
                   f"the benchmark gave guidance nothing to fix.")
    n_seeds = results["config"]["seeds"]
    if n_seeds >= 2:
        floor = 2 / math.comb(2 * n_seeds, n_seeds)  # two-sided
        out.append(f"Accuracies are compared per model ({n_seeds} seeds per group): the smallest p-value a "
                   f"permutation test can give is {floor:.2g}.")
    ent = s["entropy_histogram"]
    lowest = min(GROUPS, key=lambda g: ent[g]["mean"])
    out.append(f"Lowest histogram entropy (most concentrated salience): {lowest} ({ent[lowest]['mean']:.3f}).")
    if results["stability"]:
        most = max(results["stability"], key=lambda g: results["stability"][g]["ssim"]["mean"])
        out.append(f"Most stable across seeds (mean pairwise SSIM): {most} "
                   f"({results['stability'][most]['ssim']['mean']:.3f}).")
    tr = s["transform_ssim"]
    best = max(GROUPS, key=lambda g: tr[g]["mean"])
    out.append(f"Most consistent under flips, rotations and shifts (mean SSIM): {best} ({tr[best]['mean']:.3f}).")
    return out


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, allow_nan=True))
    os.replace(tmp, path)


def _write_csv(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
