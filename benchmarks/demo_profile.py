"""Where `make demo`'s time goes: the demo study run once in a fresh folder, then its stages.

    python benchmarks/demo_profile.py [--out /tmp/demo-profile] [--set train_workers=3 ...]

Prints the study's `stage_seconds` (results.json: data, models, train, explain, measures, evaluate, report),
the training runs' seconds per epoch with their validation share (log.jsonl), the cost of generating the
built-in benchmark's splits and of reading one training item, and the total wall time.
"""

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

import torch

from salience.data.builtin import BuiltinBenchmark, _render
from salience.io.config import load_config
from salience.io.datasets import open_split
from salience.study import demo_study, load_study, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="/tmp/demo-profile", help="a fresh folder (deleted first)")
    parser.add_argument("--set", action="append", default=[], help="study overrides, key=value")
    args = parser.parse_args()
    cfg = load_study(str(demo_study(False)), args.set)
    bench = BuiltinBenchmark(**cfg.data.options)
    train = load_config(next(iter(cfg.groups.values())).train)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a training process
    for split in ("train", "val", "test", "test_shift", "test_unseen", "out_of_set"):
        t = time.perf_counter()
        _render(bench, split)
        print(f"benchmark split {split:<12} {bench.split_size(split):>5} images  {time.perf_counter() - t:6.2f} s")
    items = open_split(train.data, "train", train=True)
    t = time.perf_counter()
    for i in range(1000):
        items[i]
    print(f"one training item (read, flip, masks): {(time.perf_counter() - t):.3f} ms")
    torch.set_num_threads(threads)

    shutil.rmtree(args.out, ignore_errors=True)
    t = time.perf_counter()
    results = run(cfg, args.out, progress=False)
    wall = time.perf_counter() - t
    assert results is not None
    print(f"\nstudy: {wall:.1f} s wall, train_workers {cfg.train_workers}")
    for stage, seconds in results["stage_seconds"].items():
        print(f"  {stage:<9} {seconds:7.1f} s")
    epochs, val = [], []
    for log in sorted(Path(args.out, "runs").glob("*/log.jsonl")):
        for line in log.read_text().splitlines():
            record = json.loads(line)
            epochs.append(record["seconds"])
            val.append(record["validation_seconds"])
    print(
        f"training: {len(epochs)} epochs in {len(epochs) // train.epochs} runs, {statistics.median(epochs):.2f} s per "
        f"epoch (median, while the runs share the cores), of which validation {statistics.median(val):.2f} s"
    )


if __name__ == "__main__":
    main()
