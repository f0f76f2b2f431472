"""`salience view DIR`: a read-only explorer of a study folder in the browser (see docs/view.md)."""

from salience.view.server import make_server
from salience.view.study import Study

__all__ = ["Study", "make_server"]
