"""Filling stores from a model and data set, and `salience measure` over stores (library and CLI)."""

import csv
import json
import re

import pytest
import torch
import torch.nn as nn
from typer.testing import CliRunner

from salience.attribution import input_x_gradient
from salience.cli import app
from salience.data.core import Record, SalienceDataset
from salience.measures import entropy, epg
from salience.measures.run import measure_stores
from salience.store import MapStore, StoreMeta, fill
from salience.store.explain import explain_dataset


class Tiny(nn.Module):
    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.conv(x).relu().mean((2, 3)))


def _dataset(n=7, side=16):
    g = torch.Generator().manual_seed(0)
    records = [
        Record(
            id=f"im{i}", image=torch.randint(0, 256, (3, side, side), generator=g, dtype=torch.uint8), labels=[i % 2]
        )
        for i in range(n)
    ]
    return SalienceDataset(records, ["a", "b"])


def test_explain_dataset_writes_the_maps_and_resumes(tmp_path):
    ds, model = _dataset(), Tiny()
    store = explain_dataset(
        model, ds, "input_x_gradient", tmp_path / "s", split="test", data="mem", chunk_size=3, batch_size=2
    )
    assert store.is_complete() and store.meta.image_ids == tuple(f"im{i}" for i in range(7))
    x = torch.stack([ds[i]["image"] for i in range(7)])
    t = torch.arange(7) % 2
    maps, targets = store.read(0, 7)
    torch.testing.assert_close(maps, input_x_gradient(model, x, t))
    assert torch.equal(targets, t)
    again = explain_dataset(model, ds, "input_x_gradient", tmp_path / "s", split="test", data="mem", chunk_size=3)
    assert again.pending() == []
    with pytest.raises(ValueError, match="model_hash"):
        explain_dataset(Tiny(seed=1), ds, "input_x_gradient", tmp_path / "s", split="test", data="mem", chunk_size=3)
    with pytest.raises(ValueError, match="none of the 1 images has a class"):
        explain_dataset(
            model,
            SalienceDataset([Record(id="x", image=torch.zeros(3, 16, 16, dtype=torch.uint8), labels=[])], ["a", "b"]),
            "gradient",
            tmp_path / "t",
        )


def test_explain_true_on_multi_label_data_stores_every_image_class_pair(tmp_path, caplog):
    """target "true": one item per (image, present class), image order then class order; a chunk that splits an
    image's pairs reads that image in both chunks; an image without a class gives no item (and a warning)."""
    g = torch.Generator().manual_seed(1)
    labels = [[1, 0], [1], [], [0, 1], [0]]
    records = [
        Record(id=f"im{i}", image=torch.randint(0, 256, (3, 16, 16), generator=g, dtype=torch.uint8), labels=c)
        for i, c in enumerate(labels)
    ]
    ds, model = SalienceDataset(records, ["a", "b"]), Tiny()
    with caplog.at_level("WARNING", logger="salience"):
        store = explain_dataset(model, ds, "input_x_gradient", tmp_path / "s", chunk_size=4, batch_size=2)
    assert "1 images have no class" in caplog.text and "im2" in caplog.text
    image = [0, 0, 1, 3, 3, 4]
    assert store.meta.image_ids == tuple(f"im{i}" for i in image)
    maps, targets = store.read(0, store.n)
    assert targets.tolist() == [0, 1, 1, 0, 1, 0]
    x = torch.stack([ds[i]["image"] for i in image])
    torch.testing.assert_close(maps, input_x_gradient(model, x, targets))
    predicted = explain_dataset(model, ds, "gradient", tmp_path / "p", target_policy="predicted", chunk_size=4)
    assert predicted.meta.image_ids == tuple(f"im{i}" for i in range(5))  # one item per image
    assert predicted.read(0, 5)[1].tolist() == model(torch.stack([ds[i]["image"] for i in range(5)])).argmax(1).tolist()


def _store(path, seed, ids=None, split="test", n=9):
    ids = ids or tuple(f"im{i}" for i in range(n))
    meta = StoreMeta(
        model_hash=f"m{seed}",
        method="gradient",
        target_policy="true",
        resolution=(16, 16),
        data="mem",
        split=split,
        image_ids=ids,
    )
    store = MapStore.create(path, meta, (8, 8), chunk_size=4)
    g = torch.Generator().manual_seed(seed)
    maps = torch.rand(len(ids), 8, 8, generator=g) ** 4
    fill(store, lambda a, b: (maps[a:b], torch.zeros(b - a, dtype=torch.long)))
    return store, maps


def test_measure_stores_outputs(tmp_path):
    (a1, m1), (a2, _) = _store(tmp_path / "a1", 0), _store(tmp_path / "a2", 0)  # identical maps
    (b1, n1), (b2, n2) = _store(tmp_path / "b1", 1), _store(tmp_path / "b2", 2)
    out = tmp_path / "out"
    summary = measure_stores({"ce": [a1.path, a2.path], "guided": [b1.path, b2.path]}, out, block=5, n_perm=200)
    with open(out / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 36
    got = torch.tensor([float(r["entropy_histogram"]) for r in rows if r["model"] == str(b1.path)])
    torch.testing.assert_close(got, entropy(n1, "histogram"), atol=1e-5, rtol=0)
    assert summary["stability"]["ce"]["pearson"]["mean"] == pytest.approx(1.0)
    assert torch.allclose(torch.tensor(summary["stability"]["ce"]["ssim_matrix"]), torch.ones(2, 2))
    pair = summary["stability"]["guided"]["ssim_matrix"][0][1]  # the two stores' mean SSIM over images
    assert pair == pytest.approx(summary["stability"]["guided"]["ssim"]["mean"])
    assert summary["stability"]["guided"]["pearson"]["mean"] < 0.5
    cmp = summary["comparisons"]["ce vs guided"]["entropy_spatial"]
    expected = (
        entropy(m1, "spatial").double().mean()
        - (entropy(n1, "spatial").double().mean() + entropy(n2, "spatial").double().mean()) / 2
    )
    assert cmp["diff"] == pytest.approx(expected.item(), abs=1e-6)
    assert json.loads((out / "summary.json").read_text())["comparisons"].keys() == {"ce vs guided"}
    with open(out / "stability.csv") as f:
        assert sum(1 for _ in f) == 1 + 18


def test_measure_refuses_misaligned_groups(tmp_path):
    a, _ = _store(tmp_path / "a", 0)
    b, _ = _store(tmp_path / "b", 1, split="val")
    c, _ = _store(tmp_path / "c", 2, ids=tuple(f"im{i}" for i in reversed(range(9))))
    with pytest.raises(ValueError, match="differ in split"):
        measure_stores({"g": [a.path, b.path]}, tmp_path / "o1")
    with pytest.raises(ValueError, match="different order"):
        measure_stores({"g": [a.path, c.path]}, tmp_path / "o2")


def test_measure_cli(tmp_path):
    a, _ = _store(tmp_path / "a", 0)
    b, _ = _store(tmp_path / "b", 1)
    res = CliRunner().invoke(
        app, ["measure", "--stores", str(a.path), "--stores", str(b.path), "--out", str(tmp_path / "o")]
    )
    assert res.exit_code == 0, res.output
    assert "2 models measured" in res.output
    assert (tmp_path / "o" / "stability.csv").is_file()
    bad = CliRunner().invoke(app, ["measure", "--group", "oops", "--out", str(tmp_path / "o")])
    assert bad.exit_code != 0


def _builtin_checkpoint(path, seed):
    """A smallcnn checkpoint on tiny built-in data (weights from `seed`, no training)."""
    from salience.models import build
    from salience.training import load_config, save_checkpoint

    cfg = load_config(
        None, ["data.size=32", "data.options={n_train: 8, n_val: 4, n_test: 12, n_out_of_set: 4, size: 32}"]
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


def test_measure_checkpoints_runs_every_measure_and_resumes(tmp_path):
    from salience.attribution import attribute
    from salience.data.core import collate
    from salience.io.checkpoint import load_run
    from salience.io.datasets import open_split
    from salience.measures import epg, pointing_game
    from salience.measures.degradation import deletion_insertion

    ckpts = [_builtin_checkpoint(tmp_path / f"m{i}.pt", i) for i in range(4)]
    args = [
        "measure",
        "--group",
        f"A={ckpts[0]},{ckpts[1]}",
        "--group",
        f"B={ckpts[2]},{ckpts[3]}",
        "--method",
        "grad_cam",
        "--layer",
        "final",
        "--n-probe",
        "5",
        "--samples",
        "2",
        "--out-of-set",
        "out_of_set",
        "--out",
        str(tmp_path / "o"),
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    with open(tmp_path / "o" / "per_image.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 * 12
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())

    # an independent computation for model B_1 (= m3): maps, EPG, pointing game and deletion AUC
    model, config = load_run(ckpts[3])
    batch = collate([open_split(config.data, "test")[i] for i in range(12)])
    target = batch["labels"].argmax(1)
    maps = attribute("grad_cam", model, batch["image"], target, layer="final")
    mine = [r for r in rows if r["model"] == "m3"]
    assert [r["image"] for r in mine] == batch["id"] and {r["group"] for r in mine} == {"B"}
    assert torch.allclose(torch.tensor([float(r["epg"]) for r in mine]), epg(maps, batch["mask"]).float(), atol=1e-5)
    assert [float(r["pointing_game"]) for r in mine] == pointing_game(maps, batch["mask"]).tolist()
    curves = deletion_insertion(model, batch["image"][:5], target[:5], maps[:5], steps=16)
    assert torch.allclose(torch.tensor([float(r["deletion_auc"]) for r in mine[:5]]), curves["deletion_auc"], atol=1e-5)
    assert all(r["deletion_auc"] == "" for r in mine[5:])  # probes ran on the first 5 images only
    store = summary["stores"][str(tmp_path / "o" / "stores" / "m3")]
    assert store["epg"]["n"] == 12 and store["deletion_auc"]["n"] == 5
    assert set(store["curves"]) >= {"noise", "transforms", "blur", "deletion_curve", "out_of_set"}
    assert set(summary["stability"]) == {"A", "B"}
    assert {"epg", "transform_ssim", "deletion_auc"} <= set(summary["comparisons"]["A vs B"])

    # a rerun resumes the finished stores (nothing rewritten) and gives the same numbers
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "o" / "stores").rglob("*") if p.is_file()}
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    with open(tmp_path / "o" / "per_image.csv", newline="") as f:
        assert list(csv.DictReader(f)) == rows
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_measure_refuses_a_mix_of_stores_and_checkpoints(tmp_path):
    a, _ = _store(tmp_path / "a", 0)
    ckpt = _builtin_checkpoint(tmp_path / "m.pt", 0)
    res = CliRunner().invoke(
        app, ["measure", "--group", f"g={a.path},{ckpt}", "--method", "gradient", "--out", str(tmp_path / "o")]
    )
    assert res.exit_code != 0 and "not a mix" in re.sub(r"[\s│]+", " ", res.output)
    res = CliRunner().invoke(app, ["measure", "--checkpoints", str(ckpt), "--out", str(tmp_path / "o")])
    assert res.exit_code != 0 and "--method" in re.sub(r"[\s│]+", " ", res.output)
    res = CliRunner().invoke(app, ["measure", "--stores", str(ckpt), "--out", str(tmp_path / "o")])
    assert res.exit_code != 0 and "--stores takes map store folders" in re.sub(r"[\s│]+", " ", res.output)
    res = CliRunner().invoke(
        app, ["measure", "--stores", str(a.path), "--method", "gradient", "--out", str(tmp_path / "o")]
    )
    assert res.exit_code != 0 and "a store carries its method" in re.sub(r"[\s│]+", " ", res.output)
    assert not (tmp_path / "o").exists()


def test_localisation_uses_the_boxes_of_the_explained_class(tmp_path):
    """Multi-label images with a class-0 box on the left and a class-1 box on the right, explained for
    class 1: EPG is measured against the right box only, not the union of the image's boxes."""
    from salience.measures.run import Source

    g = torch.Generator().manual_seed(0)
    records = [
        Record(
            id=f"im{i}",
            image=torch.randint(0, 256, (3, 16, 16), generator=g, dtype=torch.uint8),
            labels=[0, 1],
            boxes=torch.tensor([[0.0, 0.0, 6.0, 16.0], [10.0, 0.0, 16.0, 16.0]]),
            box_labels=torch.tensor([0, 1]),
        )
        for i in range(5)
    ]
    ds = SalienceDataset(records, ["a", "b"])
    model = Tiny().eval()
    store = explain_dataset(model, ds, "input_x_gradient", tmp_path / "s", target_policy="class:1", chunk_size=2)
    measure_stores({"g": [store.path]}, tmp_path / "o", sources={str(store.path): Source(model, ds, n_probe=0)})
    with open(tmp_path / "o" / "per_image.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    maps = input_x_gradient(model, torch.stack([ds[i]["image"] for i in range(5)]), torch.ones(5, dtype=torch.long))
    right = torch.zeros(5, 16, 16)
    right[:, :, 10:] = 1
    assert torch.allclose(torch.tensor([float(r["epg"]) for r in rows]), epg(maps, right).float(), atol=1e-5)
    union = torch.stack([ds[i]["mask"] for i in range(5)])
    assert not torch.allclose(epg(maps, right), epg(maps, union), atol=1e-3)
    assert "deletion_auc" not in rows[0]  # n_probe 0: no probes, no probe columns
    with pytest.raises(ValueError, match=r"lacks the store's images \['im3', 'im4'\]"):
        measure_stores({"g": [store.path]}, tmp_path / "o2", sources={str(store.path): Source(model, _dataset(3))})
    assert not (tmp_path / "o2").exists()
