"""`Registry`: named entries in registration order, and the one error that lists the accepted names.

The attribution methods (`salience.attribution.METHODS`) and the measures (`salience.measures.MEASURES`) are
registries; this module imports nothing of salience, so any layer may use it.
"""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


class Registry(dict[str, T]):
    """Name -> entry, in registration order (a plain dict to read); `kind` ("method", "measure") names an entry
    in errors."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def add(self, name: str, entry: T) -> T:
        """Register `entry` as `name`; a name registered twice raises `ValueError`."""
        if name in self:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self[name] = entry
        return entry

    def unknown(self, name: str) -> str:
        """The message for a name not registered: `'NAME' is unknown; accepted: A, B, ...`."""
        return f"{name!r} is unknown; accepted: {', '.join(self)}"

    def lookup(self, name: str) -> T:
        """The entry of `name`; an unknown name raises `ValueError` listing the accepted names."""
        if name not in self:
            raise ValueError(f"{self.kind} {self.unknown(name)}")
        return self[name]
