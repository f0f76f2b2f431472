"""`salience study` as a user meets it: the study file of docs/study.md, DenseNet-121 state dicts trained
elsewhere, a folder of face PNGs and a flat folder of non-faces; checked against an independent
computation (PIL, torchvision's DenseNet, Captum's GradCAM, scikit-image's entropy)."""

import csv
import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import yaml
from PIL import Image
from skimage.measure import shannon_entropy
from typer.testing import CliRunner

from salience.cli import app
from salience.store import MapStore

captum_attr = pytest.importorskip("captum.attr")
STUDY_DOC = Path(__file__).resolve().parents[1] / "docs" / "study.md"
SIZE = 96  # docs/study.md says 224; the test overrides it to stay fast
runner = CliRunner()


def readme_study() -> str:
    """The study file of docs/study.md (the yaml block that starts with `# study.yaml`)."""
    blocks = re.findall(r"```yaml\n(# study\.yaml.*?)```", STUDY_DOC.read_text(), re.S)
    assert len(blocks) == 1, "docs/study.md should hold one study.yaml example"
    return blocks[0]


def _png(path: Path, rng: np.random.Generator, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(path)


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    """The study file's files in a folder: faces/test/{real,synthetic}, non_faces/, four DenseNet-121 state dicts."""
    root = tmp_path_factory.mktemp("study")
    rng = np.random.default_rng(0)
    for cls, n in (("real", 3), ("synthetic", 3)):
        for i in range(n):
            _png(root / "faces" / "test" / cls / f"{i}.png", rng, "L" if i == 1 else "RGB")
    for i in range(3):
        _png(root / "non_faces" / f"n{i}.png", rng)
    for i, name in enumerate(("ce_1", "ce_2", "cyborg_1", "cyborg_2")):
        torch.manual_seed(i)
        model = torchvision.models.densenet121(num_classes=2)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.2, 0.2)
                    m.running_var.uniform_(0.5, 1.5)
        torch.save(model.state_dict(), root / f"{name}.pth")
    (root / "study.yaml").write_text(readme_study())
    return root


def run_readme_study(study_dir: Path):
    """`salience study study.yaml` in the folder (the study file's paths are relative to where it runs)."""
    cwd = os.getcwd()
    os.chdir(study_dir)
    try:
        return runner.invoke(
            app,
            [
                "study",
                "study.yaml",
                "--set",
                f"data.size={SIZE}",
                "--set",
                f"out_of_set.size={SIZE}",
                "--set",
                "measures.n_probe=2",
                "--set",
                "measures.samples=2",
                "--set",
                "measures.select=[mprt,random_logit,entropy_histogram,sparseness,stability_ssim]",  # deletion: test_store_measure_voc
                "--set",
                "measures.n_boot=200",
                "--set",
                "measures.n_perm=200",
            ],
        )
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="module")
def results(study_dir):
    res = run_readme_study(study_dir)
    assert res.exit_code == 0, res.output
    return json.loads((study_dir / "studies" / "faces" / "results.json").read_text())


def _reference_maps(weights: Path, files: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    """GradCAM at `features` of the predicted class, computed without salience."""
    model = torchvision.models.densenet121(num_classes=2)
    model.load_state_dict(torch.load(weights, weights_only=True))
    model.eval()
    x = torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1) for f in files])
    x = x.float() / 255
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    x = (x - mean[:, None, None]) / std[:, None, None]
    with torch.no_grad():
        target = model(x).argmax(1)
    maps = captum_attr.LayerGradCam(model, model.features).attribute(x, target=target, relu_attributions=True)
    return maps[:, 0].detach(), target


def _histogram_entropy(m: np.ndarray) -> float:
    span = m.max() - m.min()
    levels = np.floor(255 * (m - m.min()) / span).astype(np.uint8) if span > 0 else np.zeros(m.shape, np.uint8)
    return shannon_entropy(levels, base=2) / math.log2(min(m.size, 256))


def test_study_of_densenet_state_dicts_on_an_image_folder(study_dir, results):
    out = study_dir / "studies" / "faces"
    assert {p.name for p in out.iterdir()} >= {"results.json", "per_image.csv", "stability.csv", "report.html"}
    with open(out / "per_image.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:5] == ["group", "model", "method", "image", "class"]
    assert len(rows) == 3 * 4 * 6  # the study file's three methods
    assert {r["method"] for r in rows} == {"grad_cam@features", "grad_cam_pp@features", "input_x_gradient"}
    page = (out / "report.html").read_text()
    assert "Methods compared within each group" in page and "Sanity check: model parameter randomisation" in page
    rows = [r for r in rows if r["method"] == "grad_cam@features"]
    assert {(r["group"], r["model"]) for r in rows} == {
        ("CE", "ce_1"),
        ("CE", "ce_2"),
        ("CYBORG", "cyborg_1"),
        ("CYBORG", "cyborg_2"),
    }
    images = sorted({r["image"] for r in rows})
    assert images == [f"{c}/{i}.png" for c in ("real", "synthetic") for i in range(3)]
    for name in ("ce_2", "cyborg_1"):
        mine = [r for r in rows if r["model"] == name]
        maps, target = _reference_maps(
            study_dir / f"{name}.pth", [study_dir / "faces" / "test" / r["image"] for r in mine]
        )
        assert [int(r["class"]) for r in mine] == target.tolist()
        expected = [_histogram_entropy(m.numpy()) for m in maps]
        got = [float(r["entropy_histogram"]) for r in mine]
        assert got == pytest.approx(expected, abs=1e-5)
        assert any(0 < v < 1 for v in got)
    # what the images cannot support is left out: no boxes, so no localisation
    assert "epg" not in rows[0] and "epg" not in results["summary"]
    assert set(results["summary"]["accuracy"]) == {"CE", "CYBORG"}
    assert "out_of_set_called_real" in results["summary"]
    assert results["models"]["ce_1"]["source"].startswith("densenet121 weights ce_1.pth")
    assert set(results["stability"]) == {f"{g} · {m}" for g in ("CE", "CYBORG") for m in results["by_method"]}
    page = (out / "report.html").read_text()
    assert "faces/test" in page and "ce_1.pth" in page and "Left out" in page


def test_a_rerun_recomputes_nothing(study_dir, results):
    out = study_dir / "studies" / "faces"
    before = {p: p.stat().st_mtime_ns for p in (out / "stores").rglob("*") if p.is_file()}
    res = run_readme_study(study_dir)
    assert res.exit_code == 0, res.output
    assert {p: p.stat().st_mtime_ns for p in before} == before


@pytest.mark.parametrize(
    "case,message",
    [
        ("pickled", "holds pickled Python objects"),
        ("resnet", "do not match"),
        ("unknown_key", "groups.CE.weigths"),
        ("missing", "nope.pth: file not found"),
    ],
)
def test_bad_weights_and_study_files_are_named(study_dir, tmp_path, case, message):
    tree = yaml.safe_load(readme_study())
    tree["out"] = str(tmp_path / "o")
    tree["data"]["root"] = str(study_dir / "faces" / "test")
    tree["out_of_set"]["root"] = str(study_dir / "non_faces")
    bad = tmp_path / "bad.pth"
    if case == "pickled":
        torch.save(torchvision.models.densenet121(num_classes=2), bad)
    elif case == "resnet":
        torch.save(torchvision.models.resnet18(num_classes=2).state_dict(), bad)
    weights = {"pickled": [str(bad)], "resnet": [str(bad)], "missing": ["nope.pth"]}
    if case == "unknown_key":
        tree["groups"]["CE"]["weigths"] = tree["groups"]["CE"].pop("weights")
    else:
        tree["groups"]["CE"]["weights"] = weights[case]
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(tree))
    res = runner.invoke(app, ["study", str(tmp_path / "s.yaml")])
    assert res.exit_code == 2, res.output
    assert message in res.output
    if case in ("pickled", "resnet"):
        assert str(bad) in res.output
    assert not (tmp_path / "o" / "results.json").exists()


def test_bad_weights_fail_before_any_training(study_dir, tmp_path):
    tree = yaml.safe_load(readme_study())
    tree |= {
        "out": str(tmp_path / "o"),
        "data": {"format": "builtin", "options": {"n_test": 4}},
        "explain": {"method": "grad_cam", "layer": "final"},
    }
    del tree["out_of_set"]
    bad = tmp_path / "bad.pth"
    torch.save(torchvision.models.resnet18(num_classes=2).state_dict(), bad)
    tree["groups"] = {
        "CE": {"train": {"epochs": 1}, "seeds": [0]},
        "Elsewhere": {"model": "smallcnn", "num_classes": 2, "weights": [str(bad)]},
    }
    res = runner.invoke(app, ["study", _write(tmp_path, tree)])
    assert res.exit_code == 2 and str(bad) in res.output, res.output
    assert not (tmp_path / "o" / "runs").exists()  # nothing was trained


def _write(folder: Path, tree: dict) -> str:
    (folder / "s.yaml").write_text(yaml.safe_dump(tree))
    return str(folder / "s.yaml")


@pytest.mark.slow
def test_the_studys_models_compared_by_five_method_families(study_dir, tmp_path):
    """The study file's DenseNet-121 models explained by LRP, KernelSHAP, Partition SHAP, RISE and Grad-CAM
    (small sample counts, given as `explain.options`), measured, and compared in the report; each store keeps
    its options. Cheaper checks of each method through the stores: tests/test_methods_registry.py."""
    tree = yaml.safe_load(readme_study())
    tree["out"] = str(tmp_path / "o")
    tree["data"] |= {"root": str(study_dir / "faces" / "test"), "size": SIZE}
    tree["out_of_set"] |= {"root": str(study_dir / "non_faces"), "size": SIZE}
    tree["groups"] = {g: v | {"weights": [str(study_dir / w) for w in v["weights"]]} for g, v in tree["groups"].items()}
    methods = ["lrp_epsilon_plus_flat", "kernel_shap", "partition_shap", "rise", "grad_cam@features"]
    options = {"kernel_shap": {"n_samples": 32, "feature_mask": "grid:4"}, "partition_shap": {"max_evals": 64}}
    tree["explain"] = {"methods": methods, "options": options | {"rise": {"n_masks": 128}}, "target": "predicted"}
    tree["measures"] = {"n_probe": 2, "select": ["sparseness", "random_logit", "entropy_histogram"]}
    res = runner.invoke(app, ["study", _write(tmp_path, tree)])
    assert res.exit_code == 0, res.output
    out = tmp_path / "o"
    with open(out / "per_image.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["method"] for r in rows} == set(methods) and len(rows) == 5 * 4 * 6
    assert all(r["sparseness"] not in ("", "nan") for r in rows)
    assert MapStore(out / "stores" / "kernel_shap" / "ce_1").meta.options == options["kernel_shap"]
    page = (out / "report.html").read_text()
    assert "Methods compared within each group" in page and all(m in page for m in methods)


@pytest.mark.slow
def test_a_vision_transformer_explained_by_its_native_methods_and_gradcam(study_dir, tmp_path):
    """The issue's study: a timm ViT (state dict) explained with attention rollout, Chefer's LRP, AttnLRP and
    GradCAM on the token grid, measured (sanity checks included) and compared in the report. Cheaper checks of
    the methods through the stores: tests/test_methods_registry.py (`transformer=True`)."""
    kw = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 4}
    torch.manual_seed(0)
    timm = pytest.importorskip("timm")
    torch.save(timm.create_model("vit_tiny_patch16_224", num_classes=2, **kw).state_dict(), tmp_path / "vit.pth")
    methods = ["attention_rollout", "chefer_lrp", "attn_lrp", "grad_cam@final"]
    tree = {
        "out": str(tmp_path / "o"),
        "data": {"format": "imagefolder", "root": str(study_dir / "faces" / "test"), "size": 32},
        "explain": {"methods": methods, "target": "predicted"},
        "measures": {"n_probe": 2, "select": ["mprt", "random_logit", "sparseness", "deletion_auc"]},
        "groups": {"ViT": {"model": "timm:vit_tiny_patch16_224", "num_classes": 2, "kwargs": kw,
                           "weights": [str(tmp_path / "vit.pth")]}},
    }  # fmt: skip
    res = runner.invoke(app, ["study", _write(tmp_path, tree)])
    assert res.exit_code == 0, res.output
    with open(tmp_path / "o" / "per_image.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["method"] for r in rows} == set(methods) and len(rows) == 4 * 6
    probed = [r for r in rows if r["mprt"] not in ("", "nan")]
    assert len(probed) == 4 * 2
    page = (tmp_path / "o" / "report.html").read_text()
    assert "Methods compared within each group" in page and all(m in page for m in methods)


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs" / "studies").glob("*.yaml")), ids=str)
def test_shipped_study_files_validate(path):
    """configs/studies/*.yaml load (methods, measures and training groups checked on load)."""
    from salience.study.config import load_study

    cfg = load_study(path)
    assert cfg.groups and cfg.explain.specs
