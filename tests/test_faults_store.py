"""Faults in map stores: SIGKILL mid-store and rerun; damaged, truncated or missing chunk files.

The kill tests run `explain_dataset` (and `salience explain`) in a subprocess and kill it with SIGKILL
(no cleanup code runs) at seeded random points, then rerun. The rerun must finish the store, equal
bit for bit to an uninterrupted store, without recomputing any chunk that was finished before the kill.
"""

import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from salience.cli import app
from salience.measures.run import measure_stores
from salience.store import DamagedStoreError, MapStore, StoreMeta, fill

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}

WORKER = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    from salience.data.core import Record, SalienceDataset
    from salience.models import build
    import salience.store.explain as ex

    out, log = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    model = build("smallcnn", 2)
    g = torch.Generator().manual_seed(0)
    ds = SalienceDataset([Record(id=f"im{i}", labels=[i % 2],
                                 image=torch.randint(0, 256, (3, 64, 64), generator=g, dtype=torch.uint8))
                          for i in range(46)], ["a", "b"])
    real_fill = ex.fill

    def counting_fill(stores, compute, progress=False, **kw):  # log every chunk whose computation starts
        def logged(start, stop):
            with open(log, "a") as f:
                f.write(f"{start // 4}\\n")
            return compute(start, stop)
        return real_fill(stores, logged, progress, **kw)

    ex.fill = counting_fill
    ex.explain_dataset(model, ds, "gradient", out, chunk_size=4, batch_size=2, split="test", data="mem")
""")


def _start(*args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *map(str, args)], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _kill_when(proc: subprocess.Popen, ready, delay: float) -> None:
    """SIGKILL `proc` `delay` seconds after `ready()` first holds; fail if it exits first."""
    deadline = time.monotonic() + 120
    while not ready():
        assert proc.poll() is None, f"worker ended before the kill point: {proc.communicate()}"
        assert time.monotonic() < deadline
        time.sleep(0.002)
    time.sleep(delay)
    proc.kill()
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the worker finished before it could be killed"


def _computed(log: Path) -> list[int]:
    return [int(x) for x in log.read_text().split()] if log.exists() else []


def _store_arrays(path) -> tuple[torch.Tensor, torch.Tensor]:
    s = MapStore(path)
    return s.read(0, s.n)


@pytest.mark.slow  # 20 s; a killed process recomputed on the next run: test_explain_distributed (killed rank)
def test_sigkill_mid_store_then_rerun_finishes_without_recomputing(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    ref = _start(script, tmp_path / "ref", tmp_path / "ref.log")
    out, err = ref.communicate(timeout=300)
    assert ref.returncode == 0, err
    n_chunks = 12  # 46 images in chunks of 4
    assert sorted(_computed(tmp_path / "ref.log")) == list(range(n_chunks))

    rng = random.Random(7)
    store, log = tmp_path / "s", tmp_path / "s.log"
    finished_before: set[int] = set()
    for new_chunks in (0, rng.randint(1, 3)):  # 0: killed while creating the store; then mid-store
        seen = len(_computed(log))
        proc = _start(script, store, log)
        started = lambda: store.exists() or any(tmp_path.glob(".s.*"))
        _kill_when(
            proc,
            lambda seen=seen, new_chunks=new_chunks, started=started: (
                len(_computed(log)) >= seen + new_chunks and (new_chunks or started())
            ),
            delay=rng.uniform(0, 0.05),
        )
        assert not finished_before & set(_computed(log)[seen:])  # no finished chunk was computed again
        if store.exists():
            finished_before = set(np.flatnonzero(MapStore(store).done()).tolist())
    assert 0 < len(finished_before) < n_chunks, "the kills should land mid-store"
    seen = len(_computed(log))
    last = _start(script, store, log)
    _, err = last.communicate(timeout=300)
    assert last.returncode == 0, err
    rerun = _computed(log)[seen:]
    assert sorted(rerun) == sorted(set(range(n_chunks)) - finished_before)  # exactly the unfinished chunks
    assert MapStore(store).is_complete() and MapStore(store).verify() == {}
    (maps, targets), (ref_maps, ref_targets) = _store_arrays(store), _store_arrays(tmp_path / "ref")
    assert torch.equal(maps, ref_maps) and torch.equal(targets, ref_targets)
    assert not list(tmp_path.glob(".s.*")) or MapStore(store).is_complete()  # a leftover temp dir is harmless


def _checkpoint(path: Path) -> Path:
    """A smallcnn checkpoint on tiny built-in data, written without training (weights from seed 0)."""
    from salience.models import build
    from salience.training import load_config, save_checkpoint

    cfg = load_config(
        None, ["data.size=32", "data.options={n_train: 8, n_val: 4, n_test: 40, n_out_of_set: 4, size: 32}"]
    )
    torch.manual_seed(0)
    model = build("smallcnn", 2)
    save_checkpoint(
        {"model": model.state_dict(), "config": cfg.dump(), "epoch": 0, "classes": ["a", "b"], "multi_label": False},
        path,
    )
    return path


def _explain_cli(ckpt, out):
    return _start(
        "-c",
        "from salience.cli import app; app()",
        "explain",
        "--checkpoint",
        ckpt,
        "--method",
        "gradient",
        "--out",
        out,
        "--chunk-size",
        "2",
        "--batch-size",
        "2",
    )


def _chunk_identity(store: Path, chunks) -> dict:
    s = MapStore(store)
    return {str(f): (f.stat().st_ino, f.stat().st_mtime_ns) for i in chunks for f in s.chunk_files(i)}


@pytest.mark.slow
def test_salience_explain_cli_killed_and_rerun(tmp_path):
    ckpt = _checkpoint(tmp_path / "m.pt")
    ref = _explain_cli(ckpt, tmp_path / "ref")
    _, err = ref.communicate(timeout=300)
    assert ref.returncode == 0, err
    store = tmp_path / "s"
    proc = _explain_cli(ckpt, store)
    done_files = lambda: len(list((store / "done" / "c").glob("*"))) if store.exists() else 0
    _kill_when(proc, lambda: done_files() >= 5, delay=0.01)
    finished = np.flatnonzero(MapStore(store).done()).tolist()
    assert 5 <= len(finished) < 20
    before = _chunk_identity(store, finished)
    again = _explain_cli(ckpt, store)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert _chunk_identity(store, finished) == before  # finished chunk files were not rewritten
    (maps, targets), (ref_maps, ref_targets) = _store_arrays(store), _store_arrays(tmp_path / "ref")
    assert torch.equal(maps, ref_maps) and torch.equal(targets, ref_targets)


# --- damaged state --------------------------------------------------------------------------------


def _meta(n=10):
    return StoreMeta(
        model_hash="abc",
        method="gradient",
        target_policy="true",
        resolution=(8, 8),
        data="mem",
        split="test",
        image_ids=tuple(f"img{i}" for i in range(n)),
    )


def _maps(start, stop):
    g = torch.Generator().manual_seed(start)
    return torch.rand(stop - start, 4, 5, generator=g), torch.arange(start, stop) % 3


def _full_store(path) -> MapStore:
    store = MapStore.create(path, _meta(), (4, 5), chunk_size=4)
    fill(store, _maps)
    return store


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:5])


@pytest.mark.parametrize(
    "array,damage",
    [
        ("maps", _flip_byte),
        ("maps", _truncate),
        ("maps", Path.unlink),
        ("targets", _flip_byte),
        ("targets", Path.unlink),
    ],
)
def test_damaged_chunk_is_reported_by_file_and_recomputed_on_resume(tmp_path, caplog, array, damage):
    store = _full_store(tmp_path / "s")
    expected = store.read(0, store.n)
    file = store.chunk_files(1)[0 if array == "maps" else 1]
    damage(file)
    reader = MapStore(tmp_path / "s")
    assert reader.read(0, 4)[0].shape == (4, 4, 5)  # intact chunks still read
    with pytest.raises(DamagedStoreError, match=str(file)):
        reader.read(0, reader.n)
    with pytest.raises(DamagedStoreError, match=str(file)):
        list(reader.iter_chunks())
    assert list(reader.verify()) == [1] and str(file) in reader.verify()[1]
    with caplog.at_level(logging.WARNING, logger="salience"):
        resumed = MapStore.resume(tmp_path / "s", _meta(), (4, 5), chunk_size=4)
    assert str(file) in caplog.text and "recomputed" in caplog.text
    assert resumed.pending() == [1]
    computed = []
    assert fill(resumed, lambda a, b: computed.append(a) or _maps(a, b)) == 1 and computed == [4]
    again = MapStore(tmp_path / "s").read(0, 10)
    assert all(torch.equal(x, y) for x, y in zip(again, expected, strict=True))


def test_damaged_done_flag_counts_as_unfinished(tmp_path, caplog):
    store = _full_store(tmp_path / "s")
    flag = tmp_path / "s" / "done" / "c" / "2"
    _flip_byte(flag)
    with caplog.at_level(logging.WARNING, logger="salience"):
        assert MapStore(tmp_path / "s").pending() == [2]
    assert str(flag) in caplog.text
    assert fill(MapStore.resume(tmp_path / "s", _meta(), (4, 5), chunk_size=4), _maps) == 1
    assert MapStore(tmp_path / "s").verify() == {} and MapStore(tmp_path / "s").is_complete()
    del store


def test_all_zero_chunks_are_written_and_verified(tmp_path):
    store = MapStore.create(tmp_path / "s", _meta(), (4, 5), chunk_size=4)
    fill(store, lambda a, b: (torch.zeros(b - a, 4, 5), torch.zeros(b - a, dtype=torch.long)))
    assert all(f.is_file() for i in range(3) for f in store.chunk_files(i))
    assert MapStore(tmp_path / "s").verify() == {}


def test_damaged_metadata_names_the_file(tmp_path):
    _full_store(tmp_path / "s")
    meta = tmp_path / "s" / "zarr.json"
    meta.write_text(meta.read_text()[:40])
    with pytest.raises(DamagedStoreError, match=str(meta)):
        MapStore(tmp_path / "s")


def test_measure_on_a_damaged_store_names_the_file_and_writes_nothing(tmp_path):
    _full_store(tmp_path / "s")
    file = MapStore(tmp_path / "s").chunk_files(2)[0]
    _flip_byte(file)
    with pytest.raises(DamagedStoreError, match=str(file)):
        measure_stores({"all": [tmp_path / "s"]}, tmp_path / "out")
    assert not (tmp_path / "out" / "per_image.csv").exists() and not list((tmp_path / "out").glob(".*tmp*"))
    result = CliRunner().invoke(app, ["measure", "--stores", str(tmp_path / "s"), "--out", str(tmp_path / "out2")])
    assert result.exit_code != 0 and str(file) in result.output


def test_explain_with_a_loader_worker_writes_the_same_maps(tmp_path):
    from salience.data.core import Record, SalienceDataset
    from salience.models import build
    from salience.store.explain import explain_dataset

    g = torch.Generator().manual_seed(0)
    ds = SalienceDataset(
        [
            Record(
                id=f"im{i}", labels=[i % 2], image=torch.randint(0, 256, (3, 16, 16), generator=g, dtype=torch.uint8)
            )
            for i in range(12)
        ],
        ["a", "b"],
    )
    torch.manual_seed(0)
    model = build("smallcnn", 2)
    a = explain_dataset(model, ds, "gradient", tmp_path / "a", chunk_size=8, batch_size=4)
    b = explain_dataset(model, ds, "gradient", tmp_path / "b", chunk_size=8, batch_size=4, workers=1)
    (ma, ta), (mb, tb) = a.read(0, 12), b.read(0, 12)
    assert torch.equal(ta, tb) and torch.allclose(ma, mb, rtol=0, atol=1e-6)
