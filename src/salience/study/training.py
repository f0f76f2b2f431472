"""The study's training: every (train group, seed) run trained here, or reused or resumed on a rerun, in
`out/runs/<group>_s<seed>/`."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch
from rich.console import Console

from salience.io.config import ConfigError, load_config, validate
from salience.study.config import StudyConfig, TrainGroup

console = Console(stderr=True)


def train_all(cfg: StudyConfig, out: Path, progress: bool, distributed: bool) -> dict[tuple[str, int], Path]:
    """(group, seed) -> run folder, for every seed of every train group: reused when finished, else trained
    (or resumed): `train_workers` processes side by side on CPU, else one run after another (under torchrun
    each run is trained by all the processes together)."""
    todo = _run_trees(cfg, out)
    runs = {key: run_dir for key, _, run_dir, epochs in todo if _trained(run_dir, epochs)}  # reused
    todo = [item for item in todo if item[0] not in runs]
    if not todo:
        return runs
    if cfg.train_workers <= 1 or torch.cuda.is_available() or distributed:
        for key, tree, run_dir, _ in todo:
            if progress:
                console.rule(f"training {run_dir.name}")
            runs[key] = _train_one(tree, run_dir)
        return runs
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(cfg.train_workers, mp_context=spawn) as pool:
        futures = {pool.submit(_train_one, tree, run_dir, 1): key for key, tree, run_dir, _ in todo}
        for future in as_completed(futures):
            runs[futures[future]] = future.result()
            if progress:
                console.print(f"trained {runs[futures[future]].name}")
    return runs


def _run_trees(cfg: StudyConfig, out: Path) -> list[tuple[tuple[str, int], dict, Path, int]]:
    """Per (group, seed): its training config (as a mapping), run folder and epochs; a folder left by another
    config is refused."""
    todo = []
    for group, g in cfg.groups.items():
        if not isinstance(g, TrainGroup):
            continue
        for seed in g.seeds:
            base = load_config(g.train, g.set)
            tree = base.dump() | {"out": str(out / "runs" / f"{group}_s{seed}"), "seed": seed}
            if cfg.device == "cpu":
                tree["device"] = "cpu"
            check_same_config(Path(tree["out"]), tree)
            todo.append(((group, seed), tree, Path(tree["out"]), base.epochs))
    return todo


def _trained(run_dir: Path, epochs: int) -> bool:
    log = run_dir / "log.jsonl"
    return log.exists() and len(log.read_text().splitlines()) >= epochs


def check_same_config(run_dir: Path, tree: dict) -> None:
    """Refuse to reuse or resume `run_dir` when its saved `config.yaml` differs from `tree` (a run left by
    older code or another study file would otherwise give stale numbers); `epochs`, `device`, `out`,
    `data.workers` and `eval` may differ, as on resume."""
    import yaml

    from salience.training.loop import _same_run

    saved = run_dir / "config.yaml"
    if not saved.exists():
        return
    diffs = _same_run(yaml.safe_load(saved.read_text()), validate(tree, str(saved)).dump())
    if diffs:
        raise ConfigError(
            f"{run_dir}: trained with another config ({', '.join(diffs)} differ from the study file's); "
            "remove the folder or choose another --out"
        )


def _train_one(tree: dict, run_dir: Path, threads: int | None = None) -> Path:
    """Train (or resume) one run from its config mapping; `threads`: torch threads (in a worker process)."""
    from salience.training import train

    if threads:
        torch.set_num_threads(threads)
    return train(
        validate(tree, f"training run {run_dir.name}"),
        resume=(run_dir / "checkpoints" / "last.pt").exists(),
        progress=threads is None,
    )
