"""Report: the demo study (`run_study`) and its self-contained HTML report (`render`)."""

from salience.report.render import render
from salience.report.study import GROUPS, StudyConfig, findings, run_study

__all__ = ["GROUPS", "StudyConfig", "findings", "render", "run_study"]
