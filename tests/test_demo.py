"""`salience demo --quick` end to end (the study file shipped in the package): the files it writes,
what they say, and a rerun that recomputes nothing."""

import csv
import json
import math
import re

import pytest
from typer.testing import CliRunner

from salience.cli import app

GROUPS = ("CE", "Energy", "CYBORG")

runner = CliRunner()


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    result = runner.invoke(app, ["demo", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "report:" in result.output
    return out


def test_results_cover_every_group_and_measure(demo_dir):
    results = json.loads((demo_dir / "results.json").read_text())
    assert set(results["groups"]) == set(GROUPS)
    assert all(len(names) == 1 for names in results["groups"].values())
    for key in [
        "epg",
        "iou",
        "entropy_histogram",
        "transform_ssim",
        "deletion_auc",
        "accuracy",
        "test_shift_accuracy",
        "test_shift_worst_group_accuracy",
        "test_unseen_accuracy",
        "test_unseen_epg",
        "out_of_set_called_real",
    ]:
        assert set(results["summary"][key]) == set(GROUPS), key
    assert set(results["models"]) == {f"{g}_s0" for g in GROUPS}
    for model in results["models"].values():
        assert 0 <= model["accuracy"]["accuracy"] <= 1
        assert model["source"].startswith("trained here")
        assert len(model["noise"]["amounts"]) == 8 and model["noise"]["amounts"][0] == 0
        assert len(model["transforms"]) == 12
        assert model["pareto"] and any(p["pareto"] for p in model["pareto"])
    assert any("EPG" in f for f in results["findings"]) and any("test_shift" in f for f in results["findings"])
    stages = results["stage_seconds"]  # where the time went, every stage once, adding up to the study's time
    assert list(stages) == ["data", "models", "train", "explain", "measures", "evaluate", "report"]
    assert min(stages.values()) >= 0 and stages["train"] > 0
    assert results["seconds"] <= sum(stages.values()) + 0.5
    logs = sorted((demo_dir / "runs").glob("*/log.jsonl"))
    assert len(logs) == len(GROUPS)
    for log in logs:
        for record in map(json.loads, log.read_text().splitlines()):
            assert 0 < record["validation_seconds"] < record["seconds"]


def test_csv_agrees_with_the_summaries(demo_dir):
    results = json.loads((demo_dir / "results.json").read_text())
    with open(demo_dir / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
    n_test = results["data"]["images"]
    assert len(rows) == len(GROUPS) * n_test
    assert list(rows[0])[:5] == ["group", "model", "method", "image", "class"]
    for group in GROUPS:
        epg = [float(r["epg"]) for r in rows if r["group"] == group]
        assert all(0 <= v <= 1 for v in epg if not math.isnan(v))
        assert abs(sum(epg) / len(epg) - results["summary"]["epg"][group]["mean"]) < 1e-5
        s = results["summary"]["epg"][group]
        assert s["ci_low"] <= s["mean"] <= s["ci_high"]


def test_html_is_self_contained_and_names_the_findings(demo_dir):
    page = (demo_dir / "report.html").read_text()
    images = re.findall(r"<img [^>]*src='([^']*)'", page)
    assert len(images) >= 8  # gallery, accuracy, entropy, noise, transforms, blur, deletion, Pareto
    assert "Left out, for want of data" in page and "builtin test" in page
    assert all(src.startswith("data:image/png;base64,") and len(src) > 1000 for src in images)
    assert "http://" not in page and "https://" not in page
    results = json.loads((demo_dir / "results.json").read_text())
    for finding in results["findings"]:
        assert finding.replace("'", "&#x27;") in page


def test_report_rerenders_and_names_a_missing_folder(demo_dir, tmp_path):
    (demo_dir / "report.html").unlink()
    result = runner.invoke(app, ["report", str(demo_dir)])
    assert result.exit_code == 0, result.output
    assert (demo_dir / "report.html").is_file()
    result = runner.invoke(app, ["report", str(tmp_path)], env={"COLUMNS": "400"})  # the message on one line
    assert result.exit_code != 0
    assert "results.json" in result.output


def test_a_rerun_recomputes_nothing_finished(demo_dir):
    stores = demo_dir / "stores"
    before = {
        p: p.stat().st_mtime_ns
        for p in list(stores.rglob("*")) + list((demo_dir / "runs").rglob("*")) + list((demo_dir / "models").rglob("*"))
        if p.is_file()
    }
    rows = (demo_dir / "per_image.csv").read_text()
    result = runner.invoke(app, ["demo", "--quick", "--out", str(demo_dir)])
    assert result.exit_code == 0, result.output
    assert {p: p.stat().st_mtime_ns for p in before} == before  # no map, probe, accuracy or training redone
    assert (demo_dir / "per_image.csv").read_text() == rows
