"""salience: explain and guide image classifiers with salience maps, at scale.

`salience.show(images, maps)` draws images with their maps (`salience.report.show`); the subpackages
(`salience.attribution`, `salience.measures`, `salience.models`, `salience.study`, ...) are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from salience.report.show import show

__all__ = ["__version__", "show"]


def __getattr__(name: str) -> Any:
    """`salience.show` and the subpackages, imported when first used (so `import salience` stays light)."""
    if name == "show":
        from salience.report.show import show

        return show
    if name in {"attribution", "measures", "guidance", "models", "study", "data", "store", "training", "report"}:
        return importlib.import_module(f"salience.{name}")
    raise AttributeError(f"module 'salience' has no attribute {name!r}")
