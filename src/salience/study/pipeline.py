"""A study: groups of models (weights trained elsewhere, or trained here) -> explain -> measure ->
compare -> results files and the report.

`run(study)` writes into the study's `out`:
- `runs/<group>_s<seed>/`: the training runs of `train` groups (reused or resumed on a rerun);
- `stores/<model>/`: each model's maps (resumable map stores; a rerun recomputes no finished chunk);
- `per_image.csv`: one row per (model, image): group, model (the weights file's stem, or `<group>_<i>`
  when stems repeat, or `<group>_s<seed>`), image (its id), class (the class explained) and every
  per-image measure;
- `stability.csv`: per (group, image), the mean pairwise map similarity between the group's models;
- `summary.json`: per model and group, the summaries of `salience measure`;
- `results.json`: every number the report shows, and where the models and images came from;
- `gallery.pt` and `report.html`.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from salience.distributed import Context
from salience.io.config import ConfigError
from salience.study.config import StudyConfig, load_study
from salience.study.evaluation import accuracies
from salience.study.explaining import explain_members, store_paths
from salience.study.findings import findings
from salience.study.gallery import write_gallery
from salience.study.images import open_images
from salience.study.measuring import measure_members
from salience.study.members import given_members, ready, trained_members
from salience.study.results import assemble_results, write_json
from salience.study.training import check_same_config, train_all

__all__ = ["check_same_config", "run", "store_paths"]  # store_paths and check_same_config: where tests import them


def run(
    study: StudyConfig | str | Path | dict,
    out: str | Path | None = None,
    overrides: list[str] | None = None,
    progress: bool = True,
    ctx: Context | None = None,
    models: dict[str, list[nn.Module] | dict[str, nn.Module]] | None = None,
) -> dict | None:
    """Run a study (a `StudyConfig`, a study file or a mapping; `overrides`: `key=value`) and return its
    results (also in `out/results.json`). Under torchrun (`ctx`) the processes share explaining and probes;
    rank 0 writes the results and returns them, the others return None.

    `models`: more groups, of `nn.Module`s in memory (`{"CE": [m1, m2]}`, models named `<group>_<i>`, or
    `{"CE": {"ce_a": m1, ...}}`), after the file's groups. Each must return scores `[B, C]` (see
    `salience.models.adapt`; a model not adapted gets the default: the tensor itself, or `.logits`). The study
    works on copies: the modules passed are left as they are."""
    cfg = study if isinstance(study, StudyConfig) else load_study(study, overrides)
    names = _group_names(cfg, models or {})
    out = _study_folder(Path(out or cfg.out))
    main = ctx is None or ctx.is_main
    show = progress and main
    t0, clock = time.perf_counter(), _Clock()
    data, out_of_set, first = open_images(cfg)
    clock("data")
    given = given_members(cfg, models or {}, first)
    clock("models")
    runs = train_all(cfg, out, show, distributed=ctx is not None and ctx.world_size > 1)
    clock("train")
    device = ctx.device if ctx is not None else torch.device(cfg.device)
    members = ready(cfg, given + trained_members(cfg, runs), device)
    clock("models")
    paths = store_paths(out, [m.name for m in members], cfg.explain.specs)
    explain_members(cfg, members, data, paths, show, ctx)
    clock("explain")
    summary = measure_members(cfg, names, members, data, out_of_set, paths, out, ctx, progress=show)
    clock("measures")
    if not main:
        return None
    assert summary is not None  # measure_stores returns it on rank 0
    accuracy = accuracies(cfg, members, out, data)
    clock("evaluate")
    results = assemble_results(cfg, names, members, summary, accuracy, out, data)
    if cfg.meta:  # MetaQuantus' meta-evaluation of the measures (salience.study.meta)
        from salience.study.meta import in_results, meta_members

        results["meta"] = in_results(meta_members(cfg, members, data, out, progress=show))
        clock("meta")
    results["findings"] = findings(results)
    write_gallery(cfg, members, data, paths, out)
    results["seconds"] = round(time.perf_counter() - t0, 1)
    _write_report(out, results)
    clock("report")
    results["stage_seconds"] = {k: round(v, 1) for k, v in clock.stages.items()}  # known once the report is written
    write_json(out / "results.json", results)
    return results


def _group_names(cfg: StudyConfig, models: dict) -> list[str]:
    """The study's groups in order: the file's, then those of `models` from Python."""
    try:
        return cfg.group_names(list(models))
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _study_folder(out: Path) -> Path:
    """`out`, created if need be."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(f"{out}: cannot create the study folder ({err.strerror})") from None
    return out


def _write_report(out: Path, results: dict) -> None:
    """Write `out/results.json` and render `out/report.html` from it."""
    from salience.report import render

    write_json(out / "results.json", results)
    render(out)


class _Clock:
    """`clock(stage)` adds the seconds since the previous call to `stages[stage]` (what `results.json` reports
    as `stage_seconds`: data, models, train, explain, measures, evaluate, report)."""

    def __init__(self) -> None:
        self.stages: dict[str, float] = {}
        self.last = time.perf_counter()

    def __call__(self, stage: str) -> None:
        now = time.perf_counter()
        self.stages[stage] = self.stages.get(stage, 0.0) + now - self.last
        self.last = now
