"""Data layer speed: built-in benchmark generation, writing it to disk, and loading batches.

Run: .venv/bin/python benchmarks/data.py [--n 10000] [--threads 1 2]
Prints one JSON object per measurement. Generation is timed after a warm-up call (the scikit-image
sources are loaded once per process and cached).
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from salience.data import BuiltinBenchmark, build_dataset, builtin_dataset, collate, joint_transforms, make_builtin
from salience.data.builtin import _render


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000, help="images to generate")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--disk", type=int, default=2_000, help="images to write with make_builtin")
    args = ap.parse_args()
    _render(BuiltinBenchmark(n_val=16), "val")  # warm-up: load scikit-image sources
    for th in args.threads:
        torch.set_num_threads(th)
        cfg = BuiltinBenchmark(n_train=args.n)
        _, s = timed(lambda cfg=cfg: _render(cfg, "train"))
        print(
            json.dumps(
                {
                    "what": "generate in memory",
                    "images": args.n,
                    "size": 64,
                    "threads": th,
                    "seconds": round(s, 2),
                    "images_per_s": round(args.n / s),
                }
            )
        )
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = BuiltinBenchmark(n_train=args.disk, n_val=0, n_test=0, n_out_of_set=0)
        root, s = timed(lambda: make_builtin(Path(tmp) / "bm", cfg, splits=("train",)))
        print(
            json.dumps(
                {
                    "what": "make_builtin (PNG images + maps)",
                    "images": args.disk,
                    "threads": 1,
                    "seconds": round(s, 2),
                    "images_per_s": round(args.disk / s),
                }
            )
        )
        for name, ds in (
            ("in memory", builtin_dataset("train", cfg, transforms=joint_transforms(64, train=True, crop_padding=4))),
            (
                "from disk (PNG)",
                build_dataset("builtin", root, "train", transforms=joint_transforms(64, train=True, crop_padding=4)),
            ),
        ):
            for workers in (0, 1):
                loader = DataLoader(ds, batch_size=64, shuffle=True, collate_fn=collate, num_workers=workers)
                _, s = timed(lambda loader=loader: sum(len(b["id"]) for b in loader))
                print(
                    json.dumps(
                        {
                            "what": f"load + augment + collate, {name}",
                            "images": len(ds),
                            "workers": workers,
                            "seconds": round(s, 2),
                            "images_per_s": round(len(ds) / s),
                        }
                    )
                )
    # what loading competes with: one training step of the small net (batch 64, 64 px, CE)
    from salience.models import build

    model = build("smallcnn", 2)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x, y = torch.rand(64, 3, 64, 64), torch.randint(0, 2, (64,))

    def steps(k=20):
        for _ in range(k):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

    steps(2)
    _, s = timed(steps)
    print(
        json.dumps(
            {
                "what": "train step, smallcnn (reference)",
                "images": 20 * 64,
                "threads": 1,
                "seconds": round(s, 2),
                "images_per_s": round(20 * 64 / s),
            }
        )
    )


if __name__ == "__main__":
    main()
