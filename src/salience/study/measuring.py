"""The study's measuring: every store measured (`salience.measures.run.measure_stores`), written as
`per_image.csv`, `stability.csv` and `summary.json` in the study's folder."""

from __future__ import annotations

from pathlib import Path

import torch

from salience.data.core import SalienceDataset
from salience.distributed import Context
from salience.measures.run import Source, measure_stores
from salience.study.config import StudyConfig
from salience.study.members import Member

OWN_FILES = ("runs", "stores", "models", "results.json", "report.html", "gallery.pt")
"""What a study writes besides the files of `salience measure`."""


def measure_members(
    cfg: StudyConfig,
    groups: list[str],
    members: list[Member],
    data: SalienceDataset,
    out_of_set: torch.Tensor | None,
    paths: dict[tuple[str, str], Path],
    out: Path,
    ctx: Context | None,
) -> dict | None:
    """Measure the store `paths[(model, spec)]` of every member and method (probes run the member's model on
    `data`, with the `out_of_set` images `[N, 3, H, W]`), pooled per group of `groups`; return the summary of
    `measure_stores` (on rank 0; None on the other processes under torchrun `ctx`)."""
    specs = cfg.explain.specs
    m = cfg.measures
    return measure_stores(
        {g: [paths[(x.name, spec)] for spec in specs for x in members if x.group == g] for g in groups},
        out,
        seed=m.seed,
        n_boot=m.n_boot,
        n_perm=m.n_perm,
        sources={
            str(paths[(x.name, spec)]): Source(
                x.model, data, m.n_probe, out_of_set, m.deletion_steps, samples=m.samples
            )
            for x in members
            for spec in specs
        },
        ctx=ctx,
        names={str(paths[(x.name, spec)]): x.name for x in members for spec in specs},
        own=OWN_FILES,
        select=m.select,
    )
