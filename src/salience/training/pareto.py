"""The Pareto front of validation (task metrics, EPG, IoU), all maximised, kept as checkpoints.

Task metrics: accuracy (single-label), or F1 and mAP (multi-label)."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

from salience.distributed import atomic_write_text


def _value(x) -> float:
    return -math.inf if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def dominates(a, b) -> bool:
    """a >= b everywhere and a > b somewhere (NaN counts as the worst value)."""
    a, b = [_value(x) for x in a], [_value(x) for x in b]
    return all(x >= y for x, y in zip(a, b, strict=True)) and any(x > y for x, y in zip(a, b, strict=True))


class ParetoFront:
    """Epochs whose objectives no other kept epoch dominates; files `epoch_NNN.pt` in `folder`."""

    def __init__(self, folder: Path, names: tuple[str, ...] = ("task", "epg", "iou")):
        self.folder = Path(folder)
        self.names = list(names)
        self.entries: list[dict] = []  # {"epoch", "objectives", "file"}
        self._drop: list[str] = []

    @staticmethod
    def file_name(epoch: int) -> str:
        return f"epoch_{epoch:03d}.pt"

    def consider(self, epoch: int, objectives) -> bool:
        """Add `epoch` unless dominated (or equal to a kept one); drop the entries it dominates."""
        objectives = [_value(x) if _value(x) != -math.inf else None for x in objectives]
        if any(dominates(e["objectives"], objectives) or e["objectives"] == objectives for e in self.entries):
            return False
        self._drop = [e["file"] for e in self.entries if dominates(objectives, e["objectives"])]
        self.entries = [e for e in self.entries if e["file"] not in self._drop]
        self.entries.append({"epoch": epoch, "objectives": objectives, "file": self.file_name(epoch)})
        return True

    def commit(self, epoch: int, keep: bool, checkpoint: Path) -> None:
        """Materialise the last `consider`: copy `checkpoint` for a kept epoch, delete dropped files."""
        if keep:
            target = self.folder / self.file_name(epoch)
            tmp = target.with_name(target.name + f".tmp{os.getpid()}")
            try:
                os.link(checkpoint, tmp)
            except OSError:
                shutil.copyfile(checkpoint, tmp)
            os.replace(tmp, target)
            for name in self._drop:
                (self.folder / name).unlink(missing_ok=True)
        self._drop = []
        atomic_write_text(
            self.folder / "pareto.json",
            json.dumps({"objectives": self.names, "front": self.entries}, indent=2) + "\n",
        )

    def state_dict(self) -> dict:
        return {"entries": [dict(e) for e in self.entries]}

    def load_state_dict(self, state: dict) -> None:
        self.entries = [dict(e) for e in state["entries"]]
