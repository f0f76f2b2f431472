"""The study's explaining: every model's maps of the study's images, per method, in resumable map stores
(`out/stores/<model>/`, or `out/stores/<spec>/<model>/` for a study of several methods)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from salience.data.core import SalienceDataset
from salience.distributed import Context
from salience.store.explain import explain_stores
from salience.study.config import StudyConfig
from salience.study.members import Member

console = Console(stderr=True)


def store_paths(out: Path, models: list[str], specs: list[str]) -> dict[tuple[str, str], Path]:
    """(model, method spec) -> its map store: `stores/<model>` for a study of one method, else
    `stores/<spec>/<model>`."""
    if len(specs) == 1:
        return {(m, specs[0]): out / "stores" / m for m in models}
    return {(m, spec): out / "stores" / spec / m for m in models for spec in specs}


def explain_members(
    cfg: StudyConfig,
    members: list[Member],
    data: SalienceDataset,
    paths: dict[tuple[str, str], Path],
    progress: bool,
    ctx: Context | None,
) -> None:
    """Fill (or finish) the store `paths[(model, spec)]` of every member and method spec (under torchrun
    `ctx`, the processes share the work)."""
    specs = cfg.explain.specs
    if progress:
        console.rule(f"explaining {len(members)} models on {len(data)} images ({', '.join(specs)})")
    explain_stores(
        [m.model for m in members],
        data,
        specs,
        [{spec: paths[(m.name, spec)] for spec in specs} for m in members],
        target_policy=cfg.explain.target,
        options=cfg.explain.options,
        data=cfg.data.describe(),
        split=cfg.data.split,
        chunk_size=cfg.explain.chunk_size,
        batch_size=cfg.explain.batch_size,
        workers=cfg.data.workers,
        progress=progress,
        ctx=ctx,
    )
