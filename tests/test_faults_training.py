"""Faults in training: SIGKILL at random points and resume; damaged checkpoints and the resume fallback.

The kill test runs `salience train` (CPU, one thread, tiny guided config) in subprocesses, kills it with
SIGKILL at seeded random moments during training, restarts it with `--resume` (or fresh when no
checkpoint exists yet) and checks that the final weights equal those of an uninterrupted run, and that
every checkpoint file on disk is readable (and passes its checksum) after every kill.
"""

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from salience.training import ConfigError, load_checkpoint, load_config, save_checkpoint, train

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
SALIENCE = [sys.executable, "-c", "from salience.cli import app; app()"]


def _config(path: Path, out: Path, n_train: int = 192, epochs: int = 3) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "out": str(out),
                "seed": 3,
                "device": "cpu",
                "epochs": epochs,
                "batch_size": 16,
                "optim": {"lr": 0.003},
                "schedule": {"name": "cosine"},
                "data": {
                    "size": 32,
                    "options": {"n_train": n_train, "n_val": 16, "n_test": 4, "n_out_of_set": 0, "size": 32},
                },
                "guidance": {"loss": "energy", "method": "input_x_gradient", "annotated_fraction": 0.5},
            }
        )
    )
    return path


def _train(config: Path, resume: bool) -> subprocess.Popen:
    return subprocess.Popen(
        [*SALIENCE, "train", str(config), "--no-progress", *(["--resume"] if resume else [])],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _started(run: Path, since: float) -> bool:
    """The trainer rewrites config.yaml once data, model and resume state are loaded: training begins."""
    f = run / "config.yaml"
    return f.exists() and f.stat().st_mtime >= since


def _wait_started(proc, run: Path, since: float) -> float:
    while not _started(run, since):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.005)
    return time.monotonic()


def _checkpoints(run: Path) -> list[Path]:
    return sorted(p for p in (run / "checkpoints").glob("*.pt")) if (run / "checkpoints").exists() else []


def _weights(run: Path) -> dict:
    return load_checkpoint(run / "checkpoints" / "last.pt")["model"]


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_equals_uninterrupted(tmp_path):
    ref_run = tmp_path / "ref"
    ref = _train(_config(tmp_path / "ref.yaml", ref_run), resume=False)
    t0 = _wait_started(ref, ref_run, time.time() - 1)
    _, err = ref.communicate(timeout=600)
    assert ref.returncode == 0, err
    span = time.monotonic() - t0  # seconds of training (after start-up)

    run = tmp_path / "run"
    config = _config(tmp_path / "run.yaml", run)
    rng = random.Random(11)
    resumed_from = []
    for _ in range(3):
        resume = (run / "checkpoints" / "last.pt").exists()
        if resume:
            resumed_from.append(load_checkpoint(run / "checkpoints" / "last.pt")["epoch"])
        since = time.time() - 0.01
        proc = _train(config, resume)
        start = _wait_started(proc, run, since)
        delay = rng.uniform(0.05, 0.8) * span
        while time.monotonic() - start < delay and proc.poll() is None:
            time.sleep(0.005)
        if proc.poll() is not None:  # finished before the kill point
            break
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        assert proc.returncode == -signal.SIGKILL
        for ckpt in _checkpoints(run):  # no checkpoint is ever unreadable or fails its checksum
            assert load_checkpoint(ckpt)["epoch"] >= 1
    if proc.returncode != 0:
        resume = (run / "checkpoints" / "last.pt").exists()
        if resume:
            resumed_from.append(load_checkpoint(run / "checkpoints" / "last.pt")["epoch"])
        proc = _train(config, resume)
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    assert any(1 <= e < 3 for e in resumed_from), f"no kill landed between epochs 1 and 3 ({resumed_from})"
    a, b = _weights(ref_run), _weights(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3]
    front = json.loads((run / "checkpoints" / "pareto.json").read_text())["front"]
    assert front and all((run / "checkpoints" / e["file"]).exists() for e in front)


# --- damaged checkpoints, fallback, crash windows (in-process, fast) ------------------------------------

TINY = "data.options={n_train: 16, n_val: 8, n_test: 4, n_out_of_set: 0, size: 32}"


def _tiny(tmp_path, name, epochs):
    return load_config(
        None,
        [
            f"out={tmp_path / name}",
            f"epochs={epochs}",
            "batch_size=16",
            "optim.lr=0.003",
            "data.size=32",
            TINY,
            "device=cpu",
            "schedule.name=cosine",
            "guidance.loss=energy",
            "guidance.annotated_fraction=0.5",
        ],
    )


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The uninterrupted 3-epoch run the interrupted ones must reproduce."""
    return train(_tiny(tmp_path_factory.mktemp("straight"), "run", 3), progress=False)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _flip(path: Path, where: float) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * where)] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["truncate", "flip_tensor_byte", "empty"])
def test_damaged_checkpoint_is_detected_naming_the_file(tmp_path, damage):
    state = {"model": {"w": torch.arange(4096, dtype=torch.float32)}, "config": {}, "epoch": 1}
    path = tmp_path / "c.pt"
    save_checkpoint(state, path)
    assert torch.equal(load_checkpoint(path)["model"]["w"], state["model"]["w"])
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # torch.load alone would return the altered tensor without complaint
        _flip(path, 0.5)
    with pytest.raises(ValueError, match=str(path)):
        load_checkpoint(path)
    assert not list(tmp_path.glob("*.tmp*"))


def test_resume_falls_back_to_the_last_good_checkpoint_and_says_so(tmp_path, caplog, straight):
    run = train(_tiny(tmp_path, "run", 2), progress=False)
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])  # e.g. the disk filled up while it was copied elsewhere
    with caplog.at_level(logging.WARNING, logger="salience"):
        train(_tiny(tmp_path, "run", 3), resume=True, progress=False)
    assert str(last) in caplog.text and "falling back" in caplog.text and "epoch 1" in caplog.text
    assert _same(_weights(straight), _weights(run))
    log = [json.loads(line)["epoch"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert log == [1, 2, 3]
    front = json.loads((run / "checkpoints" / "pareto.json").read_text())["front"]
    assert all(load_checkpoint(run / "checkpoints" / e["file"])["epoch"] == e["epoch"] for e in front)


def test_resume_with_no_readable_checkpoint_names_every_file(tmp_path):
    run = train(_tiny(tmp_path, "run", 1), progress=False)
    for ckpt in _checkpoints(run):
        ckpt.write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="no readable checkpoint") as err:
        train(_tiny(tmp_path, "run", 2), resume=True, progress=False)
    assert all(str(p) in str(err.value) for p in _checkpoints(run))


def test_crash_between_checkpoint_and_log_loses_nothing(tmp_path, monkeypatch, straight):
    """Dying right after an epoch's checkpoint is written: the resumed run still logs every epoch once
    and its Pareto files exist."""
    from salience.training import loop

    real = loop.save_checkpoint

    def dies_after_epoch_2(state, path, *args, **kwargs):
        real(state, path, *args, **kwargs)
        if state["epoch"] == 2:
            raise KeyboardInterrupt  # stands in for SIGKILL at the worst moment

    monkeypatch.setattr(loop, "save_checkpoint", dies_after_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(_tiny(tmp_path, "run", 3), progress=False)
    monkeypatch.setattr(loop, "save_checkpoint", real)
    run = train(_tiny(tmp_path, "run", 3), resume=True, progress=False)
    assert _same(_weights(straight), _weights(run))
    assert [json.loads(x)["epoch"] for x in (run / "log.jsonl").read_text().splitlines()] == [1, 2, 3]
    front = json.loads((run / "checkpoints" / "pareto.json").read_text())["front"]
    assert all((run / "checkpoints" / e["file"]).exists() for e in front)


def test_unusable_out_folder_fails_before_any_data_is_read(tmp_path, monkeypatch):
    from salience.training import loop

    (tmp_path / "file").write_text("x")
    opened = []
    monkeypatch.setattr(loop, "open_split", lambda *a, **k: opened.append(a) or pytest.fail("data were read"))
    with pytest.raises(ConfigError, match=f"out: cannot create {tmp_path / 'file' / 'run'}"):
        train(load_config(None, [f"out={tmp_path / 'file' / 'run'}", "device=cpu"]), progress=False)
    assert not opened
