"""Load: peak memory and CPU use of `salience measure` and `salience explain` as the data grow.

    .venv/bin/python benchmarks/load.py [--maps 10000 50000] [--images 5000 20000] [--tmp /tmp]

For each size it runs the real command in a subprocess and samples the process's resident memory
(/proc/PID/status VmHWM, the high-water mark, read every 50 ms) and its CPU time (user + system,
from getrusage of the child).
CPU utilisation = CPU seconds / wall seconds (2.0 = both cores busy all the time). "Flat" memory
means the peak does not grow with the number of maps or images beyond what the data themselves need.

- measure: one store of N maps 14x14 (random), `salience measure --stores S --out O`.
- explain: a `smallcnn` checkpoint (untrained weights, seed 0) on the built-in benchmark generated in
  memory at 32 px with N test images, `salience explain --method gradient --chunk-size 1024
  --set data.workers=1` (one loader process). The generator's own peak is part of the process peak, so
  the RSS once the store exists (explaining) is reported too; the images themselves
  (N x 3 x 32 x 32 uint8) are 61 MB at N = 20,000. CPU time includes the loader process.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from salience.store import MapStore, StoreMeta, fill

SALIENCE = [sys.executable, "-c", "from salience.cli import app; app()"]


def _status_mb(pid: int, key: str) -> float:
    """A memory figure of the process from /proc/PID/status, MB: `VmHWM` (peak resident so far) or `VmRSS`
    (resident now). 0 once the process has exited (the sampler races its exit)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def profile(cmd: list[str], phase: Path | None = None) -> dict:
    """Run `cmd`; return wall seconds, CPU seconds, utilisation and peak RSS (MB, VmHWM); with `phase`, also
    the largest RSS sampled once that path exists (e.g. the store, created after the data are loaded)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    samples, phase_rss = [], [0.0]
    while proc.poll() is None:
        samples.append(_status_mb(proc.pid, "VmHWM"))
        if phase is not None and phase.exists():
            phase_rss.append(_status_mb(proc.pid, "VmRSS"))
        time.sleep(0.05)
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[3:])} failed:\n{err[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "wall": wall,
        "cpu": cpu,
        "util": cpu / wall,
        "peak_mb": max(samples, default=0.0),
        "phase_mb": max(phase_rss),
    }


def measure_load(n: int, tmp: Path) -> dict:
    ids = tuple(f"im{i}" for i in range(n))
    meta = StoreMeta(
        model_hash="load",
        method="grad_cam",
        layer="final",
        target_policy="true",
        resolution=(224, 224),
        data="synthetic",
        split="test",
        image_ids=ids,
    )
    store = MapStore.create(tmp / f"maps{n}", meta, (14, 14), chunk_size=1024)
    g = torch.Generator().manual_seed(0)
    fill(store, lambda a, b: (torch.rand(b - a, 14, 14, generator=g), torch.zeros(b - a, dtype=torch.long)))
    return profile([*SALIENCE, "measure", "--stores", str(store.path), "--out", str(tmp / f"measured{n}")])


def explain_load(n: int, tmp: Path) -> dict:
    from salience.models import build
    from salience.training import load_config, save_checkpoint

    cfg = load_config(
        None, ["data.size=32", f"data.options={{n_train: 0, n_val: 0, n_test: {n}, n_out_of_set: 0, size: 32}}"]
    )
    torch.manual_seed(0)
    ckpt = tmp / f"model{n}.pt"
    save_checkpoint(
        {
            "model": build("smallcnn", 2).state_dict(),
            "config": cfg.dump(),
            "epoch": 0,
            "classes": ["real", "fake"],
            "multi_label": False,
        },
        ckpt,
    )
    return profile(
        [
            *SALIENCE,
            "explain",
            "--checkpoint",
            str(ckpt),
            "--method",
            "gradient",
            "--out",
            str(tmp / f"store{n}"),
            "--chunk-size",
            "1024",
            "--batch-size",
            "256",
            "--set",
            "data.workers=1",
        ],
        phase=tmp / f"store{n}",
    )


def baseline() -> dict:
    return profile(
        [
            sys.executable,
            "-c",
            "import salience.cli, salience.measures.run, salience.store.explain, salience.training, salience.data",
        ]
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--maps", type=int, nargs="+", default=[10_000, 50_000])
    p.add_argument("--images", type=int, nargs="+", default=[5_000, 20_000])
    p.add_argument("--tmp", default=None)
    args = p.parse_args()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}\n")
    base = baseline()
    print(f"interpreter with salience imported: peak RSS {base['peak_mb']:.0f} MB\n")
    print("| command | size | wall (s) | CPU (s) | CPU / wall | peak RSS (MB) | RSS after the data are loaded (MB) |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        for n in args.maps:
            r = measure_load(n, Path(tmp))
            print(
                f"| salience measure | {n:,} maps 14x14 | {r['wall']:.1f} | {r['cpu']:.1f} | {r['util']:.2f} | "
                f"{r['peak_mb']:.0f} | (same) |",
                flush=True,
            )
        for n in args.images:
            r = explain_load(n, Path(tmp))
            print(
                f"| salience explain (gradient, smallcnn) | {n:,} images 32 px | {r['wall']:.1f} | {r['cpu']:.1f} | "
                f"{r['util']:.2f} | {r['peak_mb']:.0f} | {r['phase_mb']:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
