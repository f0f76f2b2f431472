"""The trainer: config validation, resume, NaN stop, Pareto front, metrics, bad input."""

import json
from pathlib import Path

import pytest
import torch

from salience.data.core import Record, SalienceDataset
from salience.guidance import Guide
from salience.io.datasets import check_guidance_data
from salience.models import build
from salience.training import (
    ConfigError,
    TrainingError,
    evaluate_checkpoint,
    load_checkpoint,
    load_config,
    loop,
    metrics,
    train,
)
from salience.training.pareto import ParetoFront, dominates

TINY = "data.options={n_train: 32, n_val: 16, n_test: 16, n_out_of_set: 4, size: 32}"


def _config(tmp_path, *extra, name="run"):
    return load_config(
        None, [f"out={tmp_path / name}", "epochs=2", "batch_size=16", "optim.lr=0.003", "data.size=32", TINY, *extra]
    )


# --- config ---------------------------------------------------------------------------------


def test_config_file_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 3\nguidance:\n  loss: energy\n  lambda: 0.5\n  depth: final\n  method: grad_cam\n")
    cfg = load_config(path, ["guidance.lambda=2", "optim.name=sgd"])
    assert cfg.epochs == 3 and cfg.guidance.lam == 2.0 and cfg.optim.name == "sgd"
    assert cfg.dump()["guidance"]["lambda"] == 2.0
    assert load_config(None, []).guidance.loss is None


@pytest.mark.parametrize(
    "text,key",
    [
        ("epochs: 2\nepochz: 3\n", "epochz"),
        ("guidance:\n  loss: focal\n", "guidance.loss"),
        ("guidance:\n  method: lrp\n", "guidance.method"),
        ("guidance:\n  lambda: -0.1\n", "guidance.lambda"),
        ("guidance:\n  annotated_fraction: 1.5\n", "guidance.annotated_fraction"),
        ("optim:\n  name: rmsprop\n", "optim.name"),
        ("optim:\n  lr: 0\n", "optim.lr"),
        ("model:\n  nam: resnet18\n", "model.nam"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path, text, key):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and f"{key}:" in str(err.value)


def test_bad_overrides_and_files(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["epochs"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml")


# --- bad input at start ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra,key",
    [
        (["guidance.loss=energy", "guidance.method=bcos"], "guidance.method"),
        (["guidance.loss=energy", "guidance.depth=mid7"], "guidance.depth"),
        (["guidance.loss=energy", "guidance.method=cam", "guidance.depth=input"], "guidance.depth"),
        (["eval.method=grad_cam", "eval.depth=input"], "eval.depth"),
        (["guidance.loss=energy", "guidance.annotated_fraction=0"], "guidance.annotated_fraction"),
    ],
)
def test_bad_guidance_fails_at_start_naming_the_key(tmp_path, extra, key):
    with pytest.raises(ConfigError, match=key):
        train(_config(tmp_path, *extra), progress=False)
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()


def test_guided_config_on_data_without_boxes_or_human_maps():
    records = [Record(id=f"i{i}", image=torch.zeros(3, 8, 8, dtype=torch.uint8), labels=[i % 2]) for i in range(4)]
    ds = SalienceDataset(records, ["a", "b"], name="nobox")
    check_guidance_data(None, ds)
    with pytest.raises(ConfigError, match="guidance.loss: 'energy' needs object boxes .or segmentations. but nobox"):
        check_guidance_data("energy", ds)
    with pytest.raises(ConfigError, match="guidance.loss: 'cyborg' needs human salience maps"):
        check_guidance_data("cyborg", ds)


# --- the loop ---------------------------------------------------------------------------------


def _weights(run):
    return load_checkpoint(run / "checkpoints" / "last.pt")["model"]


def test_resume_gives_identical_weights(tmp_path):
    extra = [
        "guidance.loss=energy",
        "guidance.method=input_x_gradient",
        "guidance.annotated_fraction=0.5",
        "schedule.name=cosine",
    ]
    straight = train(_config(tmp_path, *extra, name="straight"), progress=False)
    half = train(
        load_config(
            None,
            [
                f"out={tmp_path / 'split'}",
                "epochs=1",
                "batch_size=16",
                "optim.lr=0.003",
                "data.size=32",
                TINY,
                *extra,
                "schedule.name=cosine",
            ],
        ),
        progress=False,
    )
    with pytest.raises(ConfigError, match="--resume"):
        train(_config(tmp_path, *extra, name="split"), progress=False)
    with pytest.raises(ConfigError, match="optim.lr"):
        train(_config(tmp_path, *extra, "optim.lr=0.1", name="split"), resume=True, progress=False)
    train(_config(tmp_path, *extra, name="split"), resume=True, progress=False)
    a, b = _weights(straight), _weights(half)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(line) for line in (half / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert log[1]["lr"] == pytest.approx(0.0)  # cosine over 2 epochs ends at 0
    assert log[0]["train"]["guided_fraction"] == pytest.approx(0.5)
    for key in ("accuracy", "auc", "worst_group_accuracy", "epg", "iou"):
        assert key in log[1]["val"]
    front = json.loads((half / "checkpoints" / "pareto.json").read_text())["front"]
    assert front and all((half / "checkpoints" / e["file"]).exists() for e in front)


def test_nan_loss_stops_naming_step_and_batch_with_last_checkpoint_intact(tmp_path, monkeypatch):
    seen = {}
    real = loop.collate

    def poisoned(samples):
        batch = real(samples)
        if "train_00007" in batch["id"]:
            seen["n"] = seen.get("n", 0) + 1
            if seen["n"] == 2:  # epoch 2
                batch["image"][0] = float("nan")
        return batch

    monkeypatch.setattr(loop, "collate", poisoned)
    with pytest.raises(TrainingError) as err:
        train(_config(tmp_path, "data.augment=false"), progress=False)
    message = str(err.value)
    assert "epoch 2" in message and "step" in message and "train_00007" in message
    assert "last.pt" in message
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["epoch"] == 1 and all(
        torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point()
    )
    assert len((tmp_path / "run" / "log.jsonl").read_text().splitlines()) == 1


def test_evaluate_checkpoint_on_a_split(tmp_path):
    run = train(
        load_config(
            None,
            [
                f"out={tmp_path / 'e'}",
                "epochs=1",
                "batch_size=16",
                "data.size=32",
                TINY,
                "guidance.loss=cyborg",
                "guidance.method=cam",
                "guidance.depth=final",
            ],
        ),
        progress=False,
    )
    out = evaluate_checkpoint(run / "checkpoints" / "last.pt", "test_shift", device="cpu")
    assert out["split"] == "test_shift" and out["images"] == 16 and 0 <= out["accuracy"] <= 1
    assert 0 <= out["epg"] <= 1


# --- pieces --------------------------------------------------------------------------------


def test_pareto_front_keeps_non_dominated_epochs(tmp_path):
    assert dominates((0.9, 0.5, 0.2), (0.8, 0.5, 0.2)) and not dominates((0.9, 0.4, 0.2), (0.8, 0.5, 0.2))
    assert dominates((0.5, 0.1, 0.1), (0.5, float("nan"), 0.1))
    front = ParetoFront(tmp_path)
    ckpt = tmp_path / "last.pt"
    for epoch, objectives in enumerate([(0.5, 0.5, 0.5), (0.6, 0.4, 0.5), (0.4, 0.4, 0.4), (0.6, 0.6, 0.6)], 1):
        ckpt.write_text(str(epoch))
        front.commit(epoch, front.consider(epoch, objectives), ckpt)
        if epoch == 2:
            assert sorted(p.name for p in tmp_path.glob("epoch_*")) == ["epoch_001.pt", "epoch_002.pt"]
    assert [e["epoch"] for e in front.entries] == [4]
    assert [p.name for p in tmp_path.glob("epoch_*")] == ["epoch_004.pt"]
    assert (tmp_path / "epoch_004.pt").read_text() == "4"


def test_metrics_closed_forms():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 3.0]])
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    group = torch.tensor([0, 2, 2, -1])
    out = metrics(logits, labels, group, torch.tensor([0.5, float("nan"), 1.0]), torch.tensor([0.25]), False)
    assert out["accuracy"] == 0.5
    # P(class 1): 0.12, 0.73, 0.27, 0.95 for targets 0, 1, 1, 0: pairs (pos > neg) = (.73>.12), (.27>.12) = 2 of 4
    assert out["auc"] == pytest.approx(0.5)
    assert out["group_accuracy"] == {"0": 1.0, "2": 0.5} and out["worst_group_accuracy"] == 0.5
    assert out["epg"] == pytest.approx(0.75) and out["iou"] == pytest.approx(0.25)
    multi = metrics(
        torch.tensor([[1.0, -1.0, 0.0], [-2.0, 2.0, -0.5]]),
        torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]]),
        torch.tensor([-1, -1]),
        torch.zeros(0),
        torch.zeros(0),
        True,
    )
    # predictions (logit >= 0): {0, 2}, {1}; tp 2, fp 1, fn 2 -> F1 = 4 / (4 + 3)
    assert multi["f1"] == pytest.approx(4 / 7) and multi["epg"] is None


CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_validate_and_fit_their_models(path):
    cfg = load_config(path)
    g = cfg.guidance
    model = build(cfg.model.name, 20)
    Guide(g.loss, g.method, g.depth, g.lam, g.ig_steps, g.box_dilation).check(model)
    Guide("energy", cfg.eval.method or g.method, cfg.eval.depth or g.depth).check(model)
