"""A 2-process torchrun run on CPU (gloo): DDP trains, rank 0 alone writes one set of checkpoints."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from salience.training import load_checkpoint

SRC = Path(__file__).resolve().parents[1] / "src"


def test_torchrun_two_processes_on_cpu(tmp_path):
    config = tmp_path / "c.yaml"
    out = tmp_path / "run"
    config.write_text(
        f"out: {out}\nepochs: 1\nbatch_size: 8\ndevice: cpu\n"
        "data: {size: 32, options: {n_train: 32, n_val: 12, n_test: 8, n_out_of_set: 4, size: 32}}\n"
        "guidance: {loss: energy, method: grad_cam, depth: final}\n"
    )
    script = tmp_path / "entry.py"
    script.write_text("import sys\nfrom salience.cli import app\nsys.argv[0] = 'salience'\napp()\n")
    env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(script),
            "train",
            str(config),
            "--no-progress",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert "last.pt" in files and "pareto.json" in files
    assert not [f for f in files if ".tmp" in f]  # no leftovers from a second writer
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1]  # one line: only rank 0 writes
    assert log[0]["val"]["images"] == 12  # both shards gathered, none repeated
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert not any(k.startswith("module.") for k in state["model"])  # the unwrapped model is saved
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
