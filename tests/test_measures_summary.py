"""Summaries and group comparisons against scipy and closed forms."""

import math

import numpy as np
import pytest
import scipy.stats
import torch

from salience.measures.summary import compare_groups, summarise


def test_summarise_mean_sd_and_bootstrap_ci():
    rng = np.random.default_rng(0)
    v = rng.normal(2.0, 1.5, size=200)
    s = summarise(np.append(v, np.nan), seed=3, n_boot=4000)
    assert s["n"] == 200 and s["n_nan"] == 1
    assert s["mean"] == pytest.approx(v.mean()) and s["sd"] == pytest.approx(v.std(ddof=1))
    ref = scipy.stats.bootstrap((v,), np.mean, method="percentile", n_resamples=4000, random_state=1)
    assert s["ci_low"] == pytest.approx(ref.confidence_interval.low, abs=0.05)
    assert s["ci_high"] == pytest.approx(ref.confidence_interval.high, abs=0.05)
    assert summarise(v, seed=3) == summarise(v, seed=3)  # seeded
    assert summarise(v, seed=3)["ci_low"] != summarise(v, seed=4)["ci_low"]
    assert math.isnan(summarise([np.nan])["mean"])
    with pytest.raises(ValueError, match="inf"):
        summarise([1.0, np.inf])


def test_compare_groups_effect_size_and_permutation_p():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0.6, 0.1, 10), rng.normal(0.5, 0.1, 10)
    out = compare_groups(torch.tensor(a), b, seed=0, n_perm=20000)
    pooled = math.sqrt((9 * a.var(ddof=1) + 9 * b.var(ddof=1)) / 18)
    assert out["cohens_d"] == pytest.approx((a.mean() - b.mean()) / pooled)
    ref = scipy.stats.permutation_test(
        (a, b), lambda x, y: x.mean() - y.mean(), n_resamples=20000, alternative="two-sided", random_state=0
    )
    assert out["p_value"] == pytest.approx(ref.pvalue, abs=0.01)
    same = compare_groups(a, a, seed=0, n_perm=500)
    assert same["diff"] == 0 and same["p_value"] == 1.0
    with pytest.raises(ValueError, match="at least 2"):
        compare_groups([1.0], [1.0, 2.0])
