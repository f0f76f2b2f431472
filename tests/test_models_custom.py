"""Models a user brings: a class from their own package by import path (`modelzoo.faces:TupleNet`, an
ONet-like net whose forward returns (boxes, landmarks, scores)), the part of the output holding the scores,
and modules passed from Python; bad paths, keys and kwargs fail before any work, naming the culprit."""

import pytest
import torch
import yaml
from torch import nn

from modelzoo.faces import TupleNet
from salience import attribution as A
from salience.data.core import collate
from salience.io.config import ConfigError, load_config
from salience.io.datasets import open_split
from salience.models import adapt, build
from salience.store import MapStore
from salience.study import load_study, run

pytestmark = pytest.mark.usefixtures("one_thread")
PATH = "modelzoo.faces:TupleNet"
HOLDS = r"a tuple of 3: \[0\] Tensor \[1, 4\], \[1\] Tensor \[1, 10\], \[2\] Tensor \[1, 2\]"


def _study(out, **group) -> dict:
    return {
        "out": str(out),
        "data": {"format": "builtin", "size": 32, "options": {"n_train": 2, "n_val": 2, "n_test": 4, "size": 32}},
        "explain": {"method": "grad_cam", "layer": "conv3", "target": "predicted", "batch_size": 4},
        "measures": {"n_probe": 2, "n_boot": 100, "n_perm": 100, "deletion_steps": 2, "gallery": 1},
        "groups": {"Custom": {"model": PATH, "kwargs": {"num_classes": 2}, "output": 2} | group},
    }


class Pick(nn.Module):
    """The reference way: a wrapper whose forward returns the scores (as one writes it by hand)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)[2]


def test_a_custom_class_by_import_path_through_a_study_file_and_models_from_python(tmp_path):
    for i, name in enumerate("ab"):
        torch.manual_seed(i)
        torch.save(TupleNet(2).state_dict(), tmp_path / f"{name}.pth")
    study = _study(tmp_path / "out", weights=[str(tmp_path / "a.pth"), str(tmp_path / "b.pth")])
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    torch.manual_seed(2)
    listed = adapt(TupleNet(2), output=2)
    named = adapt(TupleNet(2).train(), output=-1)
    results = run(tmp_path / "study.yaml", models={"Py": [listed], "Named": {"n_a": named}}, progress=False)

    assert results["groups"] == {"Custom": ["a", "b"], "Py": ["Py_0"], "Named": ["n_a"]}
    assert results["models"]["a"]["source"] == f"{PATH} weights {tmp_path / 'a.pth'}"
    assert (tmp_path / "out" / "report.html").is_file()
    for m in results["models"].values():
        assert all(v == v for v in m["measures"].values())  # every measure finite or absent, none NaN
    # the modules passed from Python are left as they were: their own selection hook only, their mode
    assert len(named._forward_hooks) == 1 and not named._forward_pre_hooks and named.training

    x = collate([open_split(load_study(study).data.data_config(), "test")[i] for i in range(4)])["image"]
    by_hand = TupleNet(2).eval()
    by_hand.load_state_dict(torch.load(tmp_path / "a.pth"))
    for name, reference, layer in (("a", Pick(by_hand), "net.conv3"), ("Py_0", listed, "conv3")):
        maps, targets = MapStore(tmp_path / "out" / "stores" / name).read(0, 4)
        assert torch.equal(targets, reference(x).argmax(1))
        expected = A.grad_cam(reference, x, targets, layer=layer)
        assert maps.abs().max() > 0 and torch.allclose(maps, expected, atol=1e-6), name


@pytest.mark.parametrize(
    "group,message",
    [
        (
            {"model": "modelzoo.nothere:TupleNet"},
            r"^study: groups\.Custom: .*model 'modelzoo.nothere:TupleNet': cannot import 'modelzoo.nothere'",
        ),
        ({"model": "modelzoo.faces:Nope"}, r"model 'modelzoo.faces:Nope': 'modelzoo.faces' has no 'Nope'"),
        (
            {"kwargs": {"depth": 3}},
            r"kwargs \{'depth': 3\} do not fit TupleNet\(num_classes: int = 2, width: int = 4\)",
        ),
        (
            {"model": "modelzoo.faces:not_a_model"},
            r"'modelzoo.faces:not_a_model' returned a dict, not a torch nn.Module",
        ),
        ({"output": 5}, rf"groups.Custom: model Custom_0 .*output 5: the forward returns {HOLDS}; no tensor 5"),
        ({"output": "logits"}, rf"output 'logits': the forward returns {HOLDS}; no tensor 'logits'"),
        ({"output": None}, rf"the forward returns {HOLDS}; say where the class scores are with output"),
    ],
)
def test_bad_path_key_or_kwargs_fail_before_any_work(tmp_path, group, message):
    with pytest.raises(ConfigError, match=message):
        run(_study(tmp_path / "out", **group), progress=False)
    assert not (tmp_path / "out" / "stores").exists()


def test_models_from_python_must_be_modules_and_named_once(tmp_path):
    study = _study(tmp_path / "out", weights=[])
    with pytest.raises(ConfigError, match=r"models\['Py'\]: Py_0 is a str, not a torch nn.Module"):
        run(study, models={"Py": ["resnet18"]}, progress=False)
    with pytest.raises(
        ConfigError, match="'Custom' is both a group of the study file and a group of models from Python"
    ):
        run(study, models={"Custom": [TupleNet()]}, progress=False)
    with pytest.raises(ConfigError, match="groups: none given"):
        run(study | {"groups": {}}, progress=False)
    assert not (tmp_path / "out" / "stores").exists()


def test_build_and_adapt_in_python():
    x = torch.rand(2, 3, 16, 16)
    model = build(PATH, kwargs={"num_classes": 3}, output=2)
    assert model(x).shape == (2, 3) and isinstance(model, TupleNet)
    assert adapt(model, output=0)(x).shape == (2, 4)  # a selection replaces the one before
    logits = adapt(nn.Sequential(nn.Flatten(), _Dict()), output=None)
    assert logits(x).shape == (2, 5)  # a dict with `logits`: taken by default
    with pytest.raises(
        ValueError, match=r"output 'scores': the forward returns a dict with keys: logits \(Tensor \[2, 5\]\)"
    ):
        adapt(logits, output="scores")(x)


class _Dict(nn.Module):
    def forward(self, x):
        return {"logits": x[:, :5]}


def test_a_training_config_takes_an_import_path(tmp_path):
    from salience.io.checkpoint import load_run
    from salience.training import train

    with pytest.raises(ConfigError, match=r"model: .*kwargs \{'depth': 3\} do not fit TupleNet"):
        load_config(None, [f"model.name={PATH}", "model.kwargs={depth: 3}"])
    cfg = load_config(
        None,
        [
            f"model.name={PATH}",
            "model.kwargs={num_classes: 2}",
            "model.output=2",
            f"out={tmp_path / 'run'}",
            "data.size=32",
            "data.options={n_train: 4, n_val: 2, n_test: 2, n_out_of_set: 0, size: 32}",
            "batch_size=4",
        ],
    )
    run_dir = train(cfg, progress=False)
    model, config = load_run(run_dir / "checkpoints" / "last.pt")
    assert isinstance(model, TupleNet) and config.model.output == 2
    assert model(torch.rand(3, 3, 32, 32)).shape == (3, 2)
    with pytest.raises(ConfigError, match=rf"model: {PATH}: .*output 7: the forward returns"):
        train(
            cfg.model_copy(update={"out": str(tmp_path / "bad"), "model": cfg.model.model_copy(update={"output": 7})})
        )
