"""`salience explain` and `salience measure` under torchrun (2 CPU processes, gloo): the processes share
the stores, write disjoint chunks and give what one process gives; several methods and models in one pass."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from salience.attribution import attribute
from salience.cli import app
from salience.io.checkpoint import load_run
from salience.store import MapStore
from salience.store.explain import explain_stores

SRC = Path(__file__).resolve().parents[1] / "src"
ENV = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}

# `python -m salience` with every chunk write logged as "rank store chunk"
ENTRY = """
import os, runpy, sys
from salience.store import zarr_store
real = zarr_store.MapStore.write_chunk
def logged(self, i, maps, targets):
    real(self, i, maps, targets)
    with open(os.environ["WRITE_LOG"], "a") as f:
        f.write(f"{os.environ.get('RANK', '0')} {self.path.name} {i} {os.getpid()}\\n")
zarr_store.MapStore.write_chunk = logged
sys.argv[0] = "salience"
runpy.run_module("salience", run_name="__main__")
"""


def _checkpoint(path: Path, seed: int = 0, n_test: int = 24) -> Path:
    """A smallcnn checkpoint on tiny built-in data (weights from `seed`, no training)."""
    from salience.models import build
    from salience.training import load_config, save_checkpoint

    cfg = load_config(
        None, ["data.size=32", f"data.options={{n_train: 8, n_val: 4, n_test: {n_test}, n_out_of_set: 4, size: 32}}"]
    )
    torch.manual_seed(seed)
    save_checkpoint(
        {
            "model": build("smallcnn", 2).state_dict(),
            "config": cfg.dump(),
            "epoch": 0,
            "classes": ["real", "synthetic"],
            "multi_label": False,
        },
        path,
    )
    return path


def _torchrun(tmp_path, *args, log="writes.log", wait=True):
    script = tmp_path / "entry.py"
    script.write_text(ENTRY)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script), *args]
    proc = subprocess.Popen(
        cmd, env={**ENV, "WRITE_LOG": str(tmp_path / log)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    if wait:
        out, err = proc.communicate(timeout=300)
        return proc.returncode, out, err
    return proc


def _writes(path: Path) -> list[tuple[int, str, int, int]]:
    return [(int(r), s, int(c), int(p)) for r, s, c, p in (line.split() for line in path.read_text().splitlines())]


def _arrays(path) -> tuple[torch.Tensor, torch.Tensor]:
    s = MapStore(path)
    return s.read(0, s.n)


METHODS = ["grad_cam@final", "input_x_gradient@mid2", "gradient"]


def test_two_processes_write_disjoint_chunks_and_the_store_of_one(tmp_path):
    ckpt = _checkpoint(tmp_path / "m.pt")
    args = ["explain", "--checkpoint", str(ckpt), "--chunk-size", "4", "--batch-size", "3"]
    for m in METHODS:
        args += ["--method", m]
    rc, out, err = _torchrun(tmp_path, *args, "--out", str(tmp_path / "two"))
    assert rc == 0, err[-3000:]
    assert out.count("complete=True") == len(METHODS)  # rank 0 alone reports

    writes = _writes(tmp_path / "writes.log")
    assert sorted((s, c) for _, s, c, _ in writes) == sorted((m, c) for m in METHODS for c in range(6))  # each once
    by_rank = {r: {c for q, _, c, _ in writes if q == r} for r in (0, 1)}
    assert by_rank[0] and by_rank[1] and not by_rank[0] & by_rank[1]  # both worked, never on the same chunk

    one = CliRunner().invoke(app, args + ["--out", str(tmp_path / "one")] + [])
    assert one.exit_code == 0, one.output
    model, config = load_run(ckpt)
    from salience.data.core import collate
    from salience.io.datasets import open_split

    batch = collate([open_split(config.data, "test")[i] for i in range(24)])
    for spec in METHODS:
        (maps, targets), (ref, ref_t) = _arrays(tmp_path / "two" / spec), _arrays(tmp_path / "one" / spec)
        assert MapStore(tmp_path / "two" / spec).meta == MapStore(tmp_path / "one" / spec).meta
        torch.testing.assert_close(maps, ref, rtol=0, atol=1e-5)
        assert torch.equal(targets, ref_t)
        name, _, layer = spec.partition("@")  # and the single-method result
        single = attribute(name, model, batch["image"], batch["labels"].argmax(1), layer=layer or None)
        torch.testing.assert_close(maps, single, rtol=0, atol=1e-5)
    assert MapStore(tmp_path / "two" / "grad_cam@final").meta.layer == "final"


def _ds(n=10):
    from salience.data.core import Record, SalienceDataset

    g = torch.Generator().manual_seed(0)
    return SalienceDataset(
        [
            Record(
                id=f"im{i}", image=torch.randint(0, 256, (3, 32, 32), generator=g, dtype=torch.uint8), labels=[i % 2]
            )
            for i in range(n)
        ],
        ["a", "b"],
    )


class _Counting(torch.utils.data.Dataset):
    def __init__(self, ds):
        self.ds, self.reads = ds, []
        self.records = ds.records

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        self.reads.append(i)
        return self.ds[i]


def test_several_models_over_one_read_and_resume_only_what_is_missing(tmp_path):
    from salience.models import build

    torch.manual_seed(0)
    models = [build("smallcnn", 2).eval() for _ in range(2)]
    data = _Counting(_ds(10))
    outs = [{m: tmp_path / f"m{k}" / m for m in METHODS} for k in range(2)]
    stores = explain_stores(models, data, METHODS, outs, chunk_size=4, batch_size=3)
    assert sorted(data.reads[1:]) == list(range(10))  # after the first image (map shapes): each image once
    x = torch.stack([data.ds[i]["image"] for i in range(10)])
    t = torch.arange(10) % 2
    for k, model in enumerate(models):
        for spec in METHODS:
            name, _, layer = spec.partition("@")
            maps, targets = stores[k][spec].read(0, 10)
            torch.testing.assert_close(maps, attribute(name, model, x, t, layer=layer or None), rtol=0, atol=1e-5)

    # a lost chunk of one store: the rerun computes that chunk for that store only, rewriting nothing else
    lost = MapStore(outs[1]["gradient"], mode="r+")
    lost._group["done"][1] = False
    files = {p: p.stat().st_mtime_ns for o in outs for s in o.values() for p in Path(s).rglob("c/*") if p.is_file()}
    data.reads.clear()
    explain_stores(models, data, METHODS, outs, chunk_size=4, batch_size=3)
    assert sorted(data.reads[1:]) == [4, 5, 6, 7]
    changed = {p for p, t in files.items() if p.stat().st_mtime_ns != t}
    assert changed and all("m1/gradient" in str(p) for p in changed)

    with pytest.raises(ValueError, match=r"chunk_size \(4 stored, 5 asked\)"):
        explain_stores(models, data, METHODS, outs, chunk_size=5)
    with pytest.raises(ValueError, match="'lrp' is unknown"):
        explain_stores(models, data, ["lrp"], [{"lrp": tmp_path / "x"}] * 2)
    with pytest.raises(ValueError, match="two stores at"):
        explain_stores(models, data, ["gradient"], [{"gradient": tmp_path / "x"}] * 2)


def test_explain_cli_bad_input_names_the_culprit(tmp_path):
    ckpt = _checkpoint(tmp_path / "m.pt", n_test=6)
    base = ["explain", "--checkpoint", str(ckpt), "--chunk-size", "4"]
    ok = CliRunner().invoke(app, base + ["--method", "gradient", "--method", "cam", "--out", str(tmp_path / "o")])
    assert ok.exit_code == 0, ok.output
    assert {p.name for p in (tmp_path / "o").iterdir()} == {"gradient", "cam"}
    for extra, text in [
        (["--method", "lrp", "--method", "cam"], "'lrp' is unknown"),
        (["--method", "grad_cam@layer9", "--method", "cam"], "'layer9'"),
        (["--method", "gradient", "--method", "cam", "--layer", "final"], "--layer 'final' applies to one method"),
        (["--method", "gradient", "--method", "cam", "--chunk-size", "5"], "chunk_size (4 stored, 5 asked)"),
    ]:
        res = CliRunner().invoke(app, base + extra + ["--out", str(tmp_path / "o")])
        assert res.exit_code == 2 and text in res.output, res.output
    res = CliRunner().invoke(
        app, base + ["--method", "gradient", "--method", "cam", "--out", str(tmp_path / "o" / "cam")]
    )
    assert res.exit_code == 2 and "is a map store; with several methods" in res.output


@pytest.mark.slow
def test_bad_input_under_torchrun_fails_on_every_rank_naming_it(tmp_path):
    ckpt = _checkpoint(tmp_path / "m.pt", n_test=6)
    base = ["explain", "--checkpoint", str(ckpt), "--method", "gradient", "--out", str(tmp_path / "s")]
    assert CliRunner().invoke(app, base + ["--chunk-size", "4"]).exit_code == 0
    rc, _, err = _torchrun(tmp_path, *base, "--chunk-size", "2")
    assert rc != 0 and "chunk_size (4 stored, 2 asked)" in err and "(reported by rank 0)" in err


@pytest.mark.slow
def test_a_killed_rank_is_recomputed_on_the_next_run(tmp_path):
    ckpt = _checkpoint(tmp_path / "m.pt", n_test=60)
    args = [
        "explain",
        "--checkpoint",
        str(ckpt),
        "--method",
        "gradient",
        "--method",
        "grad_cam@final",
        "--chunk-size",
        "2",
        "--batch-size",
        "2",
    ]
    assert CliRunner().invoke(app, args + ["--out", str(tmp_path / "ref")]).exit_code == 0
    proc = _torchrun(tmp_path, *args, "--out", str(tmp_path / "s"), wait=False)
    log = tmp_path / "writes.log"
    deadline = time.monotonic() + 120
    while not (log.exists() and any(r == 1 for r, *_ in _writes(log))):  # rank 1 has finished a chunk
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    rank1 = next(p for r, _, _, p in _writes(log) if r == 1)
    os.kill(rank1, signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0  # torchrun tore the job down
    stores = {m: MapStore(tmp_path / "s" / m) for m in ("gradient", "grad_cam@final")}
    finished = {m: np.flatnonzero(s.done()).tolist() for m, s in stores.items()}
    assert 0 < sum(map(len, finished.values())) < 2 * 30
    stamps = {p: p.stat().st_mtime_ns for m, s in stores.items() for i in finished[m] for p in s.chunk_files(i)}
    log.unlink()
    rc, _, err = _torchrun(tmp_path, *args, "--out", str(tmp_path / "s"))
    assert rc == 0, err[-3000:]
    redone = {(s, c) for _, s, c, _ in _writes(log)}
    assert redone == {(m, c) for m in stores for c in range(30) if c not in finished[m]}  # exactly the unfinished
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    for m in stores:
        (a, at), (b, bt) = _arrays(tmp_path / "s" / m), _arrays(tmp_path / "ref" / m)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
        assert torch.equal(at, bt)


@pytest.mark.slow
def test_measure_under_torchrun_equals_one_process(tmp_path):
    ckpts = [_checkpoint(tmp_path / f"m{i}.pt", seed=i, n_test=12) for i in range(4)]
    args = [
        "measure",
        "--group",
        f"A={ckpts[0]},{ckpts[1]}",
        "--group",
        f"B={ckpts[2]},{ckpts[3]}",
        "--method",
        "grad_cam@final",
        "--n-probe",
        "5",
        "--out-of-set",
        "out_of_set",
    ]
    rc, out, err = _torchrun(tmp_path, *args, "--out", str(tmp_path / "two"))
    assert rc == 0, err[-3000:]
    assert out.count("4 models measured") == 1
    one = CliRunner().invoke(app, args + ["--out", str(tmp_path / "one")])
    assert one.exit_code == 0, one.output

    def rows(d):
        return [
            {k: v for k, v in r.items() if k != "store"} for r in csv.DictReader(open(tmp_path / d / "per_image.csv"))
        ]

    a, b = rows("two"), rows("one")
    assert len(a) == len(b) == 48
    for ra, rb in zip(a, b, strict=True):
        assert ra.keys() == rb.keys()
        for k in ra:
            if ra[k] in ("", "nan") or k in ("group", "model", "image", "class", "method"):
                assert ra[k] == rb[k], k
            else:
                assert abs(float(ra[k]) - float(rb[k])) <= 1e-4, (k, ra[k], rb[k])
    sa, sb = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("two", "one"))
    for (_, va), (_, vb) in zip(sorted(sa["stores"].items()), sorted(sb["stores"].items()), strict=True):
        assert va["curves"]["transforms"].keys() == vb["curves"]["transforms"].keys()
        np.testing.assert_allclose(va["curves"]["deletion_curve"], vb["curves"]["deletion_curve"], atol=1e-5)
        np.testing.assert_allclose(
            va["curves"]["out_of_set"]["entropy_out"], vb["curves"]["out_of_set"]["entropy_out"], atol=1e-5
        )
