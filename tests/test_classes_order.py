"""`classes:` gives the class order of a pretrained model whose outputs are not in the sorted order of the folder
names (MTCNN's ONet: (non-face, face); folders `{face, nonface}` sort the other way), and `target: true`, as
YAML's boolean, is the true class. The model here is built by hand: a `smallcnn` whose output 0 is the dark
score and output 1 the bright score, on a folder `{bright, dark}` (sorted: bright = 0)."""

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from salience.data import DataError, build_dataset
from salience.io.config import ConfigError, DataConfig, load_config
from salience.io.datasets import open_split
from salience.models import SmallCNN
from salience.store import MapStore
from salience.study import load_study, run

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = 32


def _write_folder(root, n: int = 3) -> None:
    """`root/{bright,dark}/<i>.png`: light and dark noise (the two clearly apart)."""
    rng = np.random.default_rng(0)
    for name, lo, hi in (("bright", 180, 256), ("dark", 0, 70)):
        (root / name).mkdir(parents=True)
        for i in range(n):
            pixels = rng.integers(lo, hi, (SIZE, SIZE, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")


def _dark_bright_model() -> SmallCNN:
    """A smallcnn scoring `[dark, bright]`: positive conv weights and identity batch norms make its pooled
    features grow with the brightness; `fc` splits them half-way between a dark and a bright image."""
    model = SmallCNN(2, width=4).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.fill_(1.0 / (m.in_channels * 9))
        features = torch.nn.Sequential(model.block1, model.block2, model.block3, model.block4, model.pool)
        dark, bright = features(torch.stack([torch.full((3, SIZE, SIZE), v) for v in (0.15, 0.85)])).flatten(1)
        mid = (dark.mean() + bright.mean()) / 2
        n = model.fc.in_features
        model.fc.weight.copy_(torch.stack([-torch.ones(n), torch.ones(n)]) / n)
        model.fc.bias.copy_(torch.stack([mid, -mid]))
    return model


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("classes")
    _write_folder(root / "images")
    torch.save(_dark_bright_model().state_dict(), root / "dark_bright.pth")
    return root


def _study(folder, out: str, **data) -> dict:
    return {
        "out": str(folder / out),
        "data": {"format": "imagefolder", "root": str(folder / "images"), "size": SIZE} | data,
        "explain": {"method": "grad_cam", "layer": "final", "target": True, "batch_size": 8},
        "measures": {"select": ["sparseness"], "n_probe": 0, "n_boot": 100, "n_perm": 100, "gallery": 0},
        "groups": {
            "M": {
                "model": "smallcnn",
                "num_classes": 2,
                "kwargs": {"width": 4},
                "weights": [str(folder / "dark_bright.pth")],
            }
        },
    }


def test_the_hand_built_model_scores_dark_then_bright(folder):
    model = _dark_bright_model()
    ds = build_dataset("imagefolder", folder / "images", "test")
    x = torch.stack([ds[i]["image"] for i in range(len(ds))])
    assert ds.classes == ["bright", "dark"]  # the sorted folder names: the opposite of the model's order
    folder_class = torch.tensor([r.labels[0] for r in ds.records])
    assert torch.equal(model(x).argmax(1), 1 - folder_class)


def test_a_study_with_the_models_class_order_scores_and_explains_the_right_class(folder):
    results = run(_study(folder, "ordered", classes=["dark", "bright"]), progress=False)
    assert results["models"]["dark_bright"]["accuracy"]["accuracy"] == 1.0
    assert results["data"]["classes"] == ["dark", "bright"]
    _, targets = MapStore(folder / "ordered" / "stores" / "dark_bright").read(0, 6)
    ds = open_split(DataConfig(format="imagefolder", root=str(folder / "images"), classes=["dark", "bright"]), "t")
    assert [r.id.split("/")[0] for r in ds.records] == ["bright"] * 3 + ["dark"] * 3
    assert targets.tolist() == [1, 1, 1, 0, 0, 0]  # bright images explain output 1 (bright), as the model scores

    unordered = run(_study(folder, "sorted"), progress=False)
    assert unordered["models"]["dark_bright"]["accuracy"]["accuracy"] == 0.0  # the sorted names: every answer "wrong"
    _, targets = MapStore(folder / "sorted" / "stores" / "dark_bright").read(0, 6)
    assert targets.tolist() == [0, 0, 0, 1, 1, 1]


def test_classes_may_name_more_classes_than_folders_and_must_name_every_folder(folder):
    names = ["cat", "dark", "dog", "bright", "owl"]
    ds = build_dataset("imagefolder", folder / "images", "test", classes=names)
    assert ds.classes == names and ds[0]["labels"].shape == (5,)
    assert sorted({r.labels[0] for r in ds.records}) == [1, 3]
    with pytest.raises(DataError, match=r"images: class folder\(s\) \[dark\] not in classes \[bright, cat\]"):
        build_dataset("imagefolder", folder / "images", "test", classes=["bright", "cat"])
    cfg = load_study(_study(folder, "bad", classes=["bright", "cat"]))
    with pytest.raises(DataError, match=r"class folder\(s\) \[dark\] not in classes"):
        run(cfg, progress=False)


def test_the_folder_format_reads_the_order_from_classes(tmp_path):
    _write_folder(tmp_path)
    (tmp_path / "test.csv").write_text("image,label\nbright/0.png,bright\ndark/0.png,dark\n")
    (tmp_path / "classes.txt").write_text("bright\ndark\n")
    assert build_dataset("folder", tmp_path, "test").classes == ["bright", "dark"]  # classes.txt
    ds = build_dataset("folder", tmp_path, "test", classes=["dark", "bright"])
    assert ds.classes == ["dark", "bright"] and [r.labels for r in ds.records] == [[1], [0]]
    with pytest.raises(DataError, match=r"test.csv:3: unknown label\(s\) \['dark'\]"):
        build_dataset("folder", tmp_path, "test", classes=["bright"])


@pytest.mark.parametrize(
    "classes,message",
    [
        (["a", "a"], r"data.classes: .*'a' is given twice"),
        ("a", r"data.classes: .*valid list"),
    ],
)
def test_bad_classes_lists_are_refused_naming_the_key(classes, message):
    with pytest.raises(ConfigError, match=message):
        load_config({"data": {"format": "imagefolder", "root": "x", "classes": classes}})


def test_classes_is_refused_for_formats_with_a_fixed_order(tmp_path):
    with pytest.raises(ConfigError, match=r"^config: data.classes: .*applies to the folder formats .*'voc'"):
        load_config({"data": {"format": "voc", "root": "x", "classes": ["a"]}})
    file = tmp_path / "study.yaml"
    file.write_text(yaml.safe_dump({"data": {"format": "builtin", "classes": ["a", "b"]}}))
    with pytest.raises(ConfigError, match=rf"^{file}: data.classes: .*folder formats .*'builtin'"):
        load_study(file)
    with pytest.raises(ValueError, match="applies to the folder formats"):
        build_dataset("coco", tmp_path, "val", classes=["a"])


def test_target_true_is_the_yaml_boolean_or_the_word_and_false_is_refused(tmp_path):
    file = tmp_path / "study.yaml"
    for written in ("true", "'true'", "True"):
        file.write_text(f"data: {{}}\nexplain: {{target: {written}}}\n")
        assert load_study(file).explain.target == "true"
    file.write_text("data: {}\nexplain: {target: false}\n")
    with pytest.raises(ConfigError, match=rf"^{file}: explain.target: .*false is not a target; give true .*predicted"):
        load_study(file)
    assert load_config({"guidance": {"target": True}}).guidance.target == "true"
    with pytest.raises(ConfigError, match=r"guidance.target: .*false is not a target; give auto, true"):
        load_config({"guidance": {"target": False}})


@pytest.mark.filterwarnings("ignore:No positive samples in targets")  # AUROC of `grey`, a class without images
def test_training_keeps_the_class_order_in_the_checkpoint_and_explain_reads_it(folder, tmp_path):
    from salience.io.checkpoint import load_checkpoint, load_run
    from salience.store.explain import explain_checkpoint
    from salience.training import train

    names = ["dark", "bright", "grey"]  # a class without images: the model still gets three outputs
    images = str(folder / "images")
    cfg = load_config(
        {
            "out": str(tmp_path / "run"),
            "batch_size": 6,
            "model": {"kwargs": {"width": 4}},
            "data": {"format": "imagefolder", "root": images, "size": SIZE, "augment": False, "classes": names},
        }
    )
    train(cfg, progress=False)
    checkpoint = tmp_path / "run" / "checkpoints" / "last.pt"
    state = load_checkpoint(checkpoint)
    assert state["classes"] == names and state["config"]["data"]["classes"] == names
    model, saved = load_run(checkpoint)
    assert saved.data.classes == names and model(torch.rand(1, 3, SIZE, SIZE)).shape == (1, 3)
    store = explain_checkpoint(checkpoint, "val", "gradient", tmp_path / "maps")["gradient"]
    assert store.read(0, 6)[1].tolist() == [1, 1, 1, 0, 0, 0]  # bright (index 1) first: ids sort by folder
