"""Studies: groups of models (trained elsewhere, or trained here) explained and measured on one set of
images, compared with a reference group, written as results files and a report.

    results = salience.study.run("study.yaml")          # or a StudyConfig, or a mapping
    results = salience.study.run(cfg, models={"CE": [m1, m2], "CYBORG": [m3, m4]})   # modules in memory

`demo_study(quick=False)` is the path of the study file behind `salience demo`.

The pipeline (`pipeline.run`), one module per stage: `images` (the split and out-of-set images), `members`
(each group's models, checked), `training` (the runs of `train` groups), `explaining` (map stores),
`measuring` (`per_image.csv`, `summary.json`), `evaluation` (accuracies), `summaries` and `results`
(`results.json`), `findings` (its sentences), `gallery` (`gallery.pt`); then `salience.report` renders.
`checkpoints`: `measure_checkpoints`, a study built from checkpoints.
"""

from pathlib import Path

from salience.study.checkpoints import measure_checkpoints
from salience.study.config import StudyConfig, TrainGroup, WeightsGroup, load_study
from salience.study.findings import findings
from salience.study.pipeline import run


def demo_study(quick: bool = False) -> Path:
    """The study file of `salience demo` (shipped in the package)."""
    return Path(__file__).with_name("demo_quick.yaml" if quick else "demo.yaml")


__all__ = [
    "StudyConfig",
    "TrainGroup",
    "WeightsGroup",
    "demo_study",
    "findings",
    "load_study",
    "measure_checkpoints",
    "run",
]
