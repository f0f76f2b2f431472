"""Checkpoints: one `torch.save`d dict, written atomically (temporary name, then `os.replace`).

Keys: `model`, `optimizer`, `scheduler` (state dicts), `epoch` (epochs completed), `config`
(the validated config as a dict), `metrics` (that epoch's log record), `pareto`, `rng`
(seed and epoch from which every random stream of the next epoch is derived), `multi_label`,
`classes`, and `sha256`: a digest of everything else (names, dtypes, shapes and bytes of every
tensor; repr of every other value), checked on load, because `torch.load` returns silently altered
tensors from a file with flipped bits. `save_checkpoint(..., previous=p)` first keeps the file it
replaces at `p` (a hard link), so one damaged newest checkpoint never loses the run.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import torch


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used (unreadable, truncated, failed checksum); names the file."""


def digest(state) -> str:
    """sha256 (hex) of a nested state: dict keys in order, tensors by name, dtype, shape and bytes."""
    h = hashlib.sha256()

    def walk(x):
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(x, dict):
            h.update(f"D{len(x)}".encode())
            for k in sorted(x, key=repr):
                h.update(repr(k).encode())
                walk(x[k])
        elif isinstance(x, (list, tuple)):
            h.update(f"L{len(x)}".encode())
            for v in x:
                walk(v)
        else:
            h.update(repr(x).encode())

    walk({k: v for k, v in state.items() if k != "sha256"})
    return h.hexdigest()


def save_checkpoint(state: dict, path: Path, previous: Path | None = None) -> None:
    """Write `state` plus its `sha256` to `path` atomically (temporary file, fsync, rename). With
    `previous`, the checkpoint being replaced is first kept at that path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save({**state, "sha256": digest(state)}, f)
            f.flush()
            os.fsync(f.fileno())
        if previous is not None and path.exists():
            keep = Path(previous).with_name(Path(previous).name + f".tmp{os.getpid()}")
            try:
                os.link(path, keep)
            except OSError:
                shutil.copyfile(path, keep)
            os.replace(keep, previous)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: str | Path, map_location=None) -> dict:
    """Load and check a checkpoint: `FileNotFoundError`, or `CheckpointError` naming the file when it
    is unreadable, not a training checkpoint, or fails its checksum (files without one are accepted)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        first = (str(err).strip().splitlines() or [""])[0]
        raise CheckpointError(f"{path}: not a readable salience checkpoint ({type(err).__name__}: {first})") from err
    missing = [k for k in ("model", "config", "epoch") if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a salience training checkpoint (missing {', '.join(missing)})")
    if "sha256" in state and state["sha256"] != digest(state):
        raise CheckpointError(f"{path}: damaged checkpoint (checksum mismatch: the file changed after it was written)")
    return state


def load_run(checkpoint: str | Path, overrides: list[str] | None = None, device: str = "cpu"):
    """`(model in eval mode on device, validated config)` of a training checkpoint; `overrides` are
    `key=value` changes to its saved config, e.g. `data.root=/data/VOCdevkit`."""
    from salience.io.config import _set, parse_overrides, validate

    state = load_checkpoint(checkpoint, map_location="cpu")
    tree = state["config"]
    for key, value in parse_overrides(overrides or []):
        _set(tree, key, value)
    config = validate(tree, f"{checkpoint} (saved config)")
    model = config.model.build(len(state["classes"]))
    model.load_state_dict(state["model"])
    return model.to(device).eval(), config
