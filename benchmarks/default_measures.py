"""The cost of a study's default measures (issue 31): 4 ResNet-18 with random weights (two per group, two
groups) on 50 built-in images at 64 px, `n_probe: 16`, no `measures.select`. Prints the stage times, measuring
vs explain + evaluate, and the printed estimate of the probes vs their measured time.

    .venv/bin/python benchmarks/default_measures.py [--select all]
"""

import argparse
import io
import shutil
import tempfile
from pathlib import Path

import torch
from rich.console import Console

from salience.models import build
from salience.study import measuring
from salience.study.pipeline import run

HERE = Path(__file__).parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--select", default=None, help="measures.select (e.g. all); default: none given")
    args = parser.parse_args()
    torch.manual_seed(0)
    models = {g: [build("resnet18", 2) for _ in range(2)] for g in ("A", "B")}
    captured = io.StringIO()
    measuring.console = Console(file=captured, width=200)  # keep the estimate lines to read the total back
    out = Path(tempfile.mkdtemp(prefix="salience-default-measures-"))
    overrides = [f"measures.select={args.select}"] if args.select else []
    try:
        results = run(HERE / "default_measures_study.yaml", out=out, overrides=overrides, models=models)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    assert results is not None
    print(captured.getvalue())
    stages = results["stage_seconds"]
    estimate = float(captured.getvalue().split("estimated measuring time ~")[1].split(" s")[0])
    other = stages["explain"] + stages["evaluate"]
    print(f"threads {torch.get_num_threads()}; stages (s): {stages}")
    print(
        f"measuring {stages['measures']:.1f} s vs explain + evaluate {other:.1f} s: {stages['measures'] / other:.1f}x"
    )
    print(f"estimate {estimate:.1f} s vs measuring {stages['measures']:.1f} s: {stages['measures'] / estimate:.2f}x")


if __name__ == "__main__":
    main()
