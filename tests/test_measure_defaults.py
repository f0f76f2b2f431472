"""The study's default measures (issue 31): without `measures.select` only the measures within the cost bound run,
`select: all` runs every one, every registry entry states its cost, and the study prints its estimate first."""

import io

import pytest
import torch
from rich.console import Console

import salience.measures.entries  # noqa: F401  (registers every measure)
from salience.measures.registry import DEFAULT_MAX_PASSES, MEASURES, Costing, default_measures, estimate, passes
from salience.models import build
from salience.study import measuring
from salience.study.config import load_study
from salience.study.images import open_images
from salience.study.members import Member

EXPENSIVE = ("max_sensitivity", "avg_sensitivity", "local_lipschitz", "road_morf", "road_lerf")
EXPENSIVE += ("faithfulness_correlation", "mprt", "deletion_auc", "insertion_auc")
CHEAP = (
    ("noise_ssim_0.1", "transform_ssim", "blur_nonsalient_score_change", "blur_salient_score_change")
    + ("random_logit", "entropy_histogram", "entropy_spatial", "complexity")
    + ("sparseness", "epg", "iou", "pointing_game", "stability_ssim")
)


def _study(**measures):
    return load_study(
        {
            "data": {"format": "builtin", "split": "test", "options": {"n_train": 8, "n_val": 4, "n_test": 8}},
            "measures": {"n_boot": 100, "n_perm": 100, **measures},
        }
    )


def test_every_entry_states_its_cost_and_only_probes_cost_passes():
    for name, m in MEASURES.items():
        cost = passes(name)
        assert cost >= 0, name
        assert (cost > 0) == (m.kind == "probe"), name


def test_the_default_selection_leaves_out_the_expensive_measures():
    chosen = default_measures()
    assert not set(EXPENSIVE) & set(chosen)
    assert set(CHEAP) <= set(chosen)
    assert all(passes(n) <= DEFAULT_MAX_PASSES for n in chosen)
    assert measuring.chosen_measures(None) == chosen
    assert _study().measures.select is None


def test_select_all_selects_every_measure_and_a_list_exactly_those():
    assert _study(select="all").measures.select == "all"
    assert measuring.chosen_measures("all") is None  # measure_stores: every measure the data support
    assert measuring.chosen_measures(["iou", "mprt"]) == ["iou", "mprt"]
    with pytest.raises(ValueError):
        _study(select="everything")


def test_shared_computations_are_counted_once_and_follow_the_settings():
    groups = {tuple(g): p for g, p in estimate(list(MEASURES), Costing(samples=10, deletion_steps=4))}
    assert groups[("max_sensitivity", "avg_sensitivity")] == 10
    assert groups[("deletion_auc", "insertion_auc")] == 5
    assert ("iou",) not in groups  # maps only


def test_the_study_prints_one_estimate_line_per_probe_before_measuring(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(measuring, "console", Console(file=out, width=200))
    cfg = _study(n_probe=4)
    data, _, _ = open_images(cfg)
    torch.manual_seed(0)
    members = [Member("G", "m", build("smallcnn", 2).eval(), "test")]
    total = measuring.announce(cfg, members, data, measuring.chosen_measures(None), [])
    text = out.getvalue()
    assert total > 0
    for line in ("noise_ssim_0.1: 9 passes/image", "transform_ssim: 13 passes/image", "random_logit: 1 passes/image"):
        assert line in text
    head = text.split("(the default")[0]
    assert "max_sensitivity" not in head and "avg_sensitivity" not in head and "  mprt:" not in text
    assert "estimated measuring time" in text
    out.truncate(0)
    measuring.announce(cfg, members, data, measuring.chosen_measures("all"), [])
    assert "deletion_auc, insertion_auc: 17 passes/image" in out.getvalue()
    assert "max_sensitivity, avg_sensitivity: 200 passes/image" in out.getvalue()
