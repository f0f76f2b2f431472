"""Report: renders a study's results folder (`results.json`, `gallery.pt`) into one self-contained
`report.html`. It reads results; it never trains, explains or measures (see `salience.study`)."""

from salience.report.render import render

__all__ = ["render"]
