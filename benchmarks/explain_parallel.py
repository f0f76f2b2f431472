"""Explain throughput: N torchrun processes of one thread each against one process of one thread.

    .venv/bin/python benchmarks/explain_parallel.py [--model resnet18] [--size 64] [--images 384] [--tmp /tmp]
    .venv/bin/python benchmarks/explain_parallel.py --model resnet50 --size 224 --images 2048 --device cuda \\
        --nproc 1 --threads 0                       # GPU images/s of one process (no comparison)

A checkpoint of `--model` (untrained weights, seed 0) on the built-in benchmark generated in memory at
`--size` px with `--images` test images is explained with `--method` (default gradient) into a fresh store,
in chunks of `--chunk-size`, alternately (a) by one process and (b) by `--nproc` processes under
`torch.distributed.run --standalone` (gloo on CPU), `--repeats` times each. Two figures per run:
- explain: the time of `explain_stores` itself, from a barrier after every process has loaded the model and
  generated the data to the barrier after the last chunk (the throughput this issue is about);
- command: the wall time of the whole `python -m salience explain` / `torchrun -m salience explain` command,
  with interpreter start-up, imports, data generation and process-group set-up.
The stores of (a) and (b) are checked to be equal (maps within 1e-5) after the first round.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SRC = Path(__file__).resolve().parents[1] / "src"


def worker(args) -> None:
    """One process of a run (under torchrun or alone): time `explain_stores` between two barriers."""
    if args.threads:
        torch.set_num_threads(args.threads)
    from salience import distributed as dist
    from salience.io.checkpoint import load_run
    from salience.io.datasets import open_split
    from salience.store.explain import data_name, explain_stores

    ctx = dist.setup(args.device)
    model, config = load_run(args.checkpoint, device=ctx.device)
    data = open_split(config.data, "test")
    dist.barrier(ctx)
    t0 = time.perf_counter()
    explain_stores(
        [model],
        data,
        args.method,
        [{m: Path(args.out) / m for m in args.method}],
        data=data_name(config),
        split="test",
        chunk_size=args.chunk_size,
        batch_size=args.batch,
        ctx=ctx,
    )
    seconds = time.perf_counter() - t0
    if ctx.is_main:
        print(
            json.dumps(
                {"seconds": seconds, "images": len(data), "threads": torch.get_num_threads(), "device": str(ctx.device)}
            )
        )
    dist.teardown(ctx)


def _checkpoint(path: Path, model: str, size: int, images: int) -> Path:
    from salience.models import build
    from salience.training import load_config, save_checkpoint

    cfg = load_config(
        None,
        [
            f"data.size={size}",
            f"model.name={model}",
            f"data.options={{n_train: 8, n_val: 4, n_test: {images}, n_out_of_set: 4, size: {size}}}",
        ],
    )
    torch.manual_seed(0)
    save_checkpoint(
        {
            "model": build(model, 2).state_dict(),
            "config": cfg.dump(),
            "epoch": 0,
            "classes": ["real", "synthetic"],
            "multi_label": False,
        },
        path,
    )
    return path


def _run(cmd: list[str], env: dict) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0, proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--images", type=int, default=384)
    parser.add_argument("--method", action="append", help="repeatable; default gradient")
    parser.add_argument("--chunk-size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tmp", default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.method = args.method or ["gradient"]
    if args.worker:
        return worker(args)

    load = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="explain_parallel.", dir=args.tmp))
    ckpt = _checkpoint(tmp / "model.pt", args.model, args.size, args.images)
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if args.threads:
        env |= {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    common = [
        "--model",
        args.model,
        "--chunk-size",
        str(args.chunk_size),
        "--batch",
        str(args.batch),
        "--threads",
        str(args.threads),
        "--device",
        args.device,
        "--checkpoint",
        str(ckpt),
    ]
    for m in args.method:
        common += ["--method", m]
    cli = [
        "explain",
        "--checkpoint",
        str(ckpt),
        "--chunk-size",
        str(args.chunk_size),
        "--batch-size",
        str(args.batch),
        "--device",
        args.device,
    ] + [a for m in args.method for a in ("--method", m)]
    launch = {
        1: [sys.executable],
        args.nproc: [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(args.nproc),
        ],
    }
    runs = sorted(launch)
    explain = {n: [] for n in runs}
    command = {n: [] for n in runs}
    for r in range(args.repeats):
        for n in runs if r % 2 == 0 else runs[::-1]:  # alternate which goes first
            out = tmp / f"w{n}_{r}"
            _, stdout = _run(launch[n] + [__file__, "--worker", "--out", str(out)] + common, env)
            explain[n].append(json.loads(stdout.strip().splitlines()[-1])["seconds"])
            wall, _ = _run(launch[n] + ["-m", "salience"] + cli + ["--out", str(tmp / f"c{n}_{r}")], env)
            command[n].append(wall)
        if r == 0 and len(runs) > 1:
            from salience.store import MapStore

            for m in args.method:
                a, b = (MapStore(tmp / f"w{n}_0" / m) for n in runs)
                assert torch.allclose(a.read(0, a.n)[0], b.read(0, b.n)[0], rtol=0, atol=1e-5), m

    print(
        f"{args.model}, {args.size} px, {args.images} images, methods {', '.join(args.method)}, chunks of "
        f"{args.chunk_size}, batch {args.batch}, {args.device}, {args.threads or 'default'} thread(s) per process, "
        f"median of {args.repeats} (load average at start: {load:.1f})\n"
    )
    print("| processes | explain (s) | explain img/s | command wall (s) | command img/s |")
    print("|---|---|---|---|---|")
    med = {n: (statistics.median(explain[n]), statistics.median(command[n])) for n in runs}
    for n in runs:
        e, c = med[n]
        print(f"| {n} | {e:.2f} | {args.images / e:.1f} | {c:.2f} | {args.images / c:.1f} |")
    if len(runs) > 1:
        (e1, c1), (en, cn) = med[runs[0]], med[runs[-1]]
        print(f"\nspeed-up, {runs[-1]} processes vs 1: explain {e1 / en:.2f}x, whole command {c1 / cn:.2f}x")
    print(f"(runs in {tmp}; every store of (a) and (b) checked equal)")


if __name__ == "__main__":
    main()
