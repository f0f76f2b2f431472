"""Map store: round trip, resume without recomputation, refusal of mismatched metadata, streaming."""

import pytest
import torch

from salience.store import MapStore, StoreMeta, check_aligned, fill, model_hash


def _meta(n=10, **kw):
    base = dict(
        model_hash="abc",
        method="grad_cam",
        layer="final",
        target_policy="true",
        resolution=(32, 32),
        data="builtin",
        split="test",
        image_ids=tuple(f"img{i}" for i in range(n)),
    )
    base.update(kw)
    return StoreMeta(**base)


def _maps(start, stop):
    g = torch.Generator().manual_seed(start)
    return torch.rand(stop - start, 4, 5, generator=g), torch.arange(start, stop) % 3


def test_round_trip_and_streaming(tmp_path):
    store = MapStore.create(tmp_path / "s", _meta(), (4, 5), chunk_size=4)
    assert store.n_chunks == 3 and store.pending() == [0, 1, 2]
    assert fill(store, _maps) == 3
    reopened = MapStore(tmp_path / "s")
    assert reopened.meta == _meta() and reopened.is_complete()
    expected_maps = torch.cat([_maps(0, 4)[0], _maps(4, 8)[0], _maps(8, 10)[0]])
    starts, blocks = [], []
    for start, maps, targets in reopened.iter_chunks(size=3):
        starts.append(start)
        blocks.append(maps)
        assert torch.equal(targets, torch.arange(start, start + len(maps)) % 3)
    assert starts == [0, 3, 6, 9]
    assert torch.equal(torch.cat(blocks), expected_maps)
    assert not list(tmp_path.glob(".s.*"))  # no temporary directory left behind


def test_resume_never_recomputes_finished_chunks(tmp_path):
    calls = []

    def flaky(start, stop):
        calls.append(start)
        if start == 8 and len(calls) < 4:
            raise KeyboardInterrupt  # interrupted while computing the last chunk
        return _maps(start, stop)

    store = MapStore.resume(tmp_path / "s", _meta(), (4, 5), chunk_size=4)
    with pytest.raises(KeyboardInterrupt):
        fill(store, flaky)
    assert calls == [0, 4, 8]
    with pytest.raises(ValueError, match="unfinished"):
        next(MapStore(tmp_path / "s").iter_chunks())
    store = MapStore.resume(tmp_path / "s", _meta(), (4, 5), chunk_size=4)
    assert store.pending() == [2]
    assert fill(store, flaky) == 1
    assert calls == [0, 4, 8, 8]
    assert fill(MapStore.resume(tmp_path / "s", _meta(), (4, 5), chunk_size=4), flaky) == 0
    assert calls == [0, 4, 8, 8]


def test_chunk_written_but_not_marked_is_recomputed(tmp_path):
    store = MapStore.create(tmp_path / "s", _meta(), (4, 5), chunk_size=4)
    store._group["maps"][0:4] = _maps(0, 4)[0].numpy()  # data landed, process died before marking done
    assert store.pending() == [0, 1, 2]


@pytest.mark.parametrize(
    "change, field",
    [
        (dict(model_hash="other"), "model_hash"),
        (dict(method="gradient"), "method"),
        (dict(layer=None), "layer"),
        (dict(target_policy="predicted"), "target_policy"),
        (dict(resolution=(64, 64)), "resolution"),
        (dict(split="train"), "split"),
        (dict(image_ids=tuple(f"img{i}" for i in reversed(range(10)))), "image_ids"),
    ],
)
def test_resume_refuses_different_metadata(tmp_path, change, field):
    MapStore.create(tmp_path / "s", _meta(), (4, 5), chunk_size=4)
    with pytest.raises(ValueError, match=f"differs in {field}"):
        MapStore.resume(tmp_path / "s", _meta(**change), (4, 5), chunk_size=4)
    with pytest.raises(ValueError, match="chunk_size"):
        MapStore.resume(tmp_path / "s", _meta(), (4, 5), chunk_size=5)
    with pytest.raises(ValueError, match="map_shape"):
        MapStore.resume(tmp_path / "s", _meta(), (7, 7), chunk_size=4)


def test_bad_writes_and_inputs_refused(tmp_path):
    store = MapStore.create(tmp_path / "s", _meta(), (4, 5), chunk_size=4)
    with pytest.raises(ValueError, match="chunk 2 needs maps"):
        store.write_chunk(2, torch.zeros(4, 4, 5), torch.zeros(4, dtype=torch.long))
    bad = torch.zeros(4, 4, 5)
    bad[1, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        store.write_chunk(0, bad, torch.zeros(4, dtype=torch.long))
    assert store.pending() == [0, 1, 2]
    with pytest.raises(FileExistsError):
        MapStore.create(tmp_path / "s", _meta(), (4, 5))
    with pytest.raises(FileNotFoundError, match="not a map store"):
        MapStore(tmp_path)
    with pytest.raises(ValueError, match="target_policy"):
        _meta(target_policy="best")


def test_check_aligned_refuses_other_split_or_order(tmp_path):
    a = MapStore.create(tmp_path / "a", _meta(model_hash="m1"), (4, 5))
    b = MapStore.create(tmp_path / "b", _meta(model_hash="m2"), (4, 5))
    check_aligned([a, b])
    c = MapStore.create(tmp_path / "c", _meta(split="val"), (4, 5))
    with pytest.raises(ValueError, match="differ in split"):
        check_aligned([a, c])
    d = MapStore.create(tmp_path / "d", _meta(image_ids=tuple(f"img{i}" for i in reversed(range(10)))), (4, 5))
    with pytest.raises(ValueError, match="different order"):
        check_aligned([a, d])


def test_model_hash_tracks_weights():
    m = torch.nn.Linear(3, 2)
    h = model_hash(m)
    assert h == model_hash(m) and len(h) == 16
    with torch.no_grad():
        m.weight[0, 0] += 1e-6
    assert model_hash(m) != h
