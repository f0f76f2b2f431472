"""The study's stages one at a time, on tiny inputs: the members of a weights group and of models from Python,
results assembled from a fake measurement, findings from a results dict, and the report's group colours."""

import csv

import pytest
import torch
from torch import nn

from salience.io.config import ConfigError
from salience.models import build
from salience.report.render import PALETTE, _color
from salience.study.config import WeightsGroup, load_study
from salience.study.explaining import store_paths
from salience.study.findings import findings
from salience.study.members import Member, given_members, weights_members
from salience.study.results import assemble_results


def _study(**more):
    return load_study({"data": {}, "measures": {"n_boot": 100, "n_perm": 100}} | more)


def test_a_weights_group_names_its_models_by_stem_unless_stems_repeat(tmp_path):
    files = [tmp_path / "a" / "m.pt", tmp_path / "b" / "m.pt", tmp_path / "c.pt"]
    for seed, f in enumerate(files):
        torch.manual_seed(seed)
        f.parent.mkdir(exist_ok=True)
        torch.save(build("smallcnn", 2).state_dict(), f)
    stems = [f.stem for f in files]
    twins = weights_members(
        "G", WeightsGroup(model="smallcnn", num_classes=2, weights=[str(f) for f in files[:2]]), stems
    )
    single = weights_members("H", WeightsGroup(model="smallcnn", num_classes=2, weights=[str(files[2])]), stems)
    assert [(m.group, m.name) for m in twins + single] == [("G", "G_0"), ("G", "G_1"), ("H", "c")]
    saved = torch.load(files[1])
    assert all(torch.equal(t, saved[k]) for k, t in twins[1].model.state_dict().items())
    with pytest.raises(ConfigError, match="groups.G.weights: .*nope.pt: file not found"):
        weights_members("G", WeightsGroup(model="smallcnn", num_classes=2, weights=[str(tmp_path / "nope.pt")]), [])


def test_models_from_python_are_copied_checked_and_named_by_place():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))
    members = given_members(_study(), {"P": [model, model]}, torch.rand(1, 3, 8, 8))
    assert [(m.group, m.name, m.source) for m in members] == [
        ("P", "P_0", "Sequential from Python"),
        ("P", "P_1", "Sequential from Python"),
    ]
    assert members[0].model is not model and members[0].model is not members[1].model
    with pytest.raises(ConfigError, match=r"models\['P'\]: x is a str"):
        given_members(_study(), {"P": {"x": "resnet"}}, torch.rand(1, 3, 8, 8))


def test_store_paths_nest_by_method_only_for_several_methods(tmp_path):
    assert store_paths(tmp_path, ["m"], ["gradient"]) == {("m", "gradient"): tmp_path / "stores" / "m"}
    assert store_paths(tmp_path, ["m"], ["gradient", "grad_cam@final"])[("m", "grad_cam@final")] == (
        tmp_path / "stores" / "grad_cam@final" / "m"
    )


class _Images(list):
    classes = ["cat", "dog"]


def test_results_are_assembled_from_the_per_image_values_and_the_accuracies(tmp_path):
    epg = {"a1": [0.1, 0.2], "a2": [0.3, ""], "b1": [0.6, 0.7], "b2": [0.8, "nan"]}
    with open(tmp_path / "per_image.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["group", "model", "method", "image", "class", "epg"])
        for name, values in epg.items():
            for i, v in enumerate(values):
                w.writerow([name[0].upper(), name, "grad_cam@final", f"i{i}", 0, v])
    members = [Member(n[0].upper(), n, nn.Identity(), f"{n} source") for n in epg]
    summary = {
        "stores": {f"s/{n}": {"model": n, "model_hash": f"h{n}", "epg": 0.5, "curves": {"noise": [1]}} for n in epg},
        "stability": {"A": {"ssim": {"mean": 0.9}}},
    }
    accuracy = {n: {"accuracy": a} for n, a in zip(epg, (0.9, 0.8, 0.7, 0.6), strict=True)}
    results = assemble_results(
        _study(reference="B"), ["A", "B"], members, summary, accuracy, tmp_path, _Images([0] * 5)
    )
    assert list(results) == [
        "study", "data", "explain", "reference", "models", "groups", "summary", "comparisons", "accuracy_keys",
        "stability", "measures",
    ]  # fmt: skip
    assert results["groups"] == {"A": ["a1", "a2"], "B": ["b1", "b2"]} and results["reference"] == "B"
    assert results["summary"]["epg"]["A"]["mean"] == pytest.approx(0.2)  # the blank cell left out
    assert results["summary"]["epg"]["B"]["n"] == 3  # and the NaN
    assert results["summary"]["accuracy"]["A"]["mean"] == pytest.approx(0.85)
    assert list(results["comparisons"]["epg"]) == ["A vs B"] and results["accuracy_keys"] == ["accuracy"]
    assert results["models"]["a2"] == {
        "group": "A",
        "seed": None,
        "source": "a2 source",
        "model_hash": "ha2",
        "accuracy": {"accuracy": 0.8},
        "measures": {"epg": 0.5},
        "noise": [1],
    }
    assert results["data"]["images"] == 5 and results["data"]["classes"] == ["cat", "dog"]
    assert results["explain"]["methods"] == ["grad_cam@final"] and results["measures"]["epg"]["better"] == "higher"


def _summary(**means):
    return {g: {"mean": m} for g, m in means.items()}


def test_findings_are_sentences_of_the_numbers():
    results = {
        "explain": {"method": "grad_cam", "methods": ["grad_cam@final"]},
        "models": {n: {} for n in ("c1", "c2", "x1", "x2")},
        "groups": {"CE": ["c1", "c2"], "X": ["x1", "x2"]},
        "reference": "CE",
        "data": {"evaluate": {"shift": "builtin test_shift"}},
        "summary": {
            "epg": _summary(CE=0.2, X=0.5),
            "accuracy": _summary(CE=0.9, X=0.95),
            "shift_accuracy": _summary(CE=0.8, X=0.5),
            "entropy_histogram": _summary(CE=0.4, X=0.3),
        },
        "comparisons": {"epg": {"X vs CE": {"diff": 0.3, "cohens_d": 1.234, "p_value": 0.01}}},
        "accuracy_keys": ["accuracy", "shift_accuracy"],
        "stability": {"CE": {"ssim": {"mean": 0.7}}, "X": {"ssim": {"mean": 0.6}}},
    }
    assert findings(results) == [
        "X models beat CE on EPG (share of positive salience inside the objects' boxes): 0.500 vs 0.200 "
        "(difference +0.300, Cohen's d 1.23, permutation p = 0.01).",
        "X models beat CE on accuracy: 0.950 vs 0.900 (one model per group: no test of the difference).",
        "X models did not beat CE on accuracy on shift: 0.500 vs 0.800 (one model per group: no test of the "
        "difference).",
        "X models lose 0.45 accuracy on shift: they follow something that shift changes.",
        "Accuracies are compared per model (2 per group): the smallest p-value a permutation test can give is 0.33.",
        "Lowest histogram entropy (most concentrated salience): X (0.300).",
        "Most stable across models of a group (mean pairwise SSIM): CE (0.700).",
    ]


def test_groups_are_coloured_by_their_place_in_the_study():
    demo = {"groups": {"CE": [], "Energy": [], "CYBORG": []}}
    assert [_color(demo, g) for g in demo["groups"]] == ["#7f7f7f", "#1f77b4", "#d62728"]
    other = {"groups": {g: [] for g in ("b", "CYBORG", "a", "c")}}
    colours = [_color(other, g) for g in other["groups"]]
    assert colours == PALETTE[:4] and len(set(PALETTE)) == len(PALETTE)
