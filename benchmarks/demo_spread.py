"""The spread of the demo's numbers over CPU kernels: a demo group's runs trained again under other kernels.

The demo trains each run in its own process with one thread, so on one machine a run is bit-for-bit the
same every time. Another CPU runs other kernels: ATen's vectorised ops dispatch on the CPU's capability
(AVX-512 or AVX2) and oneDNN's convolutions on its ISA, and their float sums round differently. Guided
training amplifies last-bit differences over a few hundred steps. This script retrains a group of
`src/salience/study/demo.yaml` (default: Energy, seeds 0-2) in fresh processes (one thread) per kernel
variant and evaluates each run on test, test_shift and test_unseen (accuracy, and EPG with the run's eval
attribution, GradCAM at the final block):

    PYTHONPATH=src python benchmarks/demo_spread.py --out benchmarks/out/spread [--group Energy] [--variants default avx2]

Variants: `default` (this CPU's own kernels), `avx2` (ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2: what
a CPU without AVX-512 runs), `default_again` (the default once more: shows the run is deterministic).
Prints per run and per variant the group means; the spread is the range of the group means over variants.
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

VARIANTS = {
    "default": {},
    "default_again": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
}
SPLITS = ("test", "test_shift", "test_unseen")


def one(tree_json: str, out: str) -> None:
    """Train one run (one thread) and write its metrics on SPLITS to `out/metrics.json`."""
    import torch

    torch.set_num_threads(1)
    from salience.io.config import validate
    from salience.training import evaluate_checkpoint, train

    tree = json.loads(tree_json)
    run = train(validate(tree, "spread run"), progress=False)
    metrics = {s: evaluate_checkpoint(run / "checkpoints" / "last.pt", s, device="cpu") for s in SPLITS}
    (Path(out) / "metrics.json").write_text(json.dumps(metrics, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--group", default="Energy")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=["default", "avx2"], choices=list(VARIANTS))
    args = parser.parse_args()
    from salience.io.config import load_config
    from salience.study.config import load_study

    study = load_study(Path(__file__).parents[1] / "src/salience/study/demo.yaml")
    group = study.groups[args.group]
    rows = {}
    for variant in args.variants:
        for seed in args.seeds:
            out = Path(args.out) / variant / f"{args.group}_s{seed}"
            if not (out / "metrics.json").exists():
                tree = load_config(group.train, group.set).dump() | {"out": str(out), "seed": seed, "device": "cpu"}
                env = os.environ | VARIANTS[variant]
                code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import demo_spread as d; d.one(sys.argv[1], sys.argv[2])"
                subprocess.run([sys.executable, "-c", code, json.dumps(tree), str(out)], env=env, check=True)
            m = json.loads((out / "metrics.json").read_text())
            rows[(variant, seed)] = {
                "test": m["test"]["accuracy"],
                "test_shift": m["test_shift"]["accuracy"],
                "test_unseen": m["test_unseen"]["accuracy"],
                "epg_test": m["test"]["epg"],
            }
            print(variant, seed, json.dumps(rows[(variant, seed)]), flush=True)
    keys = ("test", "test_shift", "test_unseen", "epg_test")
    means = {v: {k: sum(rows[(v, s)][k] for s in args.seeds) / len(args.seeds) for k in keys} for v in args.variants}
    for v, m in means.items():
        print(f"{args.group} mean over seeds {args.seeds}, {v}: " + ", ".join(f"{k} {m[k]:.3f}" for k in keys))
    spread = {k: max(m[k] for m in means.values()) - min(m[k] for m in means.values()) for k in keys}
    print("range of the group means over variants: " + ", ".join(f"{k} {spread[k]:.3f}" for k in keys))
    Path(args.out, "spread.json").write_text(
        json.dumps({"rows": {f"{v}/{s}": r for (v, s), r in rows.items()}, "means": means, "range": spread}, indent=1)
    )


if __name__ == "__main__":
    main()
