"""Checkpoints: one `torch.save`d dict, written atomically (temporary name, then `os.replace`).

Keys: `model`, `optimizer`, `scheduler` (state dicts), `epoch` (epochs completed), `config`
(the validated config as a dict), `metrics` (that epoch's log record), `pareto`, `rng`
(seed and epoch from which every random stream of the next epoch is derived), `multi_label`,
`classes`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch


def save_checkpoint(state: dict, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location=None) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise ValueError(f"{path}: not a readable salience checkpoint ({type(err).__name__}: {err})") from err
    missing = [k for k in ("model", "config", "epoch") if k not in state]
    if missing:
        raise ValueError(f"{path}: not a salience training checkpoint (missing {', '.join(missing)})")
    return state
