"""Property-based tests (hypothesis) of the measures over arbitrary finite maps and masks.

Every measure either returns finite values in its documented range (NaN only where documented: an empty
mask) or raises the documented error. Maps range over the whole finite float32 line, including subnormals,
huge magnitudes, constants and all-zero maps; masks over any size and any fill.
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from salience.measures import entropy, epg, iou, pearson, pointing_game, spearman, ssim, topk_iou
from salience.measures.summary import compare_groups, summarise

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

FINITE = st.floats(allow_nan=False, allow_infinity=False, width=32)
# a mix that makes ties, constants and zeros likely as well as extreme magnitudes
VALUES = st.one_of(FINITE, st.sampled_from([0.0, -0.0, 1.0, -1.0, 3.4e38, -3.4e38, 1e-45]), st.floats(-1, 1, width=32))


@st.composite
def map_batches(draw, min_side=1, max_side=9, same_as=None):
    if same_as is None:
        b = draw(st.integers(1, 3))
        h, w = draw(st.integers(min_side, max_side)), draw(st.integers(min_side, max_side))
    else:
        b, h, w = same_as
    a = draw(arrays(np.float32, (b, h, w), elements=VALUES))
    return torch.from_numpy(a)


@st.composite
def map_pairs(draw, min_side=1):
    a = draw(map_batches(min_side=min_side))
    kind = draw(st.sampled_from(["independent", "scaled", "same"]))
    if kind == "same":
        return a, a.clone()
    if kind == "scaled":  # a positive affine copy: every similarity must say "identical" up to rounding
        return a, a * 0.5 + 0.25
    return a, draw(map_batches(same_as=tuple(a.shape)))


@st.composite
def maps_and_masks(draw):
    maps = draw(map_batches())
    b = maps.shape[0]
    hh, ww = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    masks = draw(arrays(np.bool_, (b, hh, ww)))
    as_float = draw(st.booleans())
    m = torch.from_numpy(masks)
    return maps, (m.float() if as_float else m)


def _in_range(v: torch.Tensor, lo: float, hi: float, eps: float = 1e-5) -> bool:
    return bool(torch.isfinite(v).all() and (v >= lo - eps).all() and (v <= hi + eps).all())


@SETTINGS
@given(map_batches())
def test_entropy_finite_in_unit_interval(maps):
    for kind in ("histogram", "spatial"):
        v = entropy(maps, kind)
        assert v.shape == (maps.shape[0],)
        assert _in_range(v, 0, 1), (kind, v)
    constant = torch.zeros_like(maps)
    assert torch.equal(entropy(constant, "histogram"), torch.zeros(maps.shape[0]))


@SETTINGS
@given(map_pairs())
def test_correlations_finite_in_range_and_symmetric(pair):
    a, b = pair
    for fn in (pearson, spearman):
        v = fn(a, b)
        assert _in_range(v, -1, 1), (fn.__name__, v)
        assert torch.allclose(v, fn(b, a), atol=1e-5)
    iou_ = topk_iou(a, b)
    assert _in_range(iou_, 0, 1)
    assert torch.equal(topk_iou(a, a), torch.ones(a.shape[0]))  # a map always agrees with itself


@SETTINGS
@given(map_pairs())
def test_ssim_finite_in_range_at_every_size(pair):  # maps under 7 px are upsampled first
    a, b = pair
    v = ssim(a, b)
    assert _in_range(v, -1, 1), v
    assert torch.allclose(ssim(a, a), torch.ones(a.shape[0]), atol=1e-4)


@SETTINGS
@given(maps_and_masks())
def test_localisation_in_range_nan_exactly_for_empty_masks(pair):
    maps, masks = pair
    empty = ~(masks > 0.5).flatten(1).any(1)
    for fn, values in ((epg, None), (iou, None), (pointing_game, {0.0, 1.0})):
        v = fn(maps, masks)
        assert v.shape == (maps.shape[0],)
        assert torch.equal(torch.isnan(v), empty), (fn.__name__, v, empty)
        ok = v[~empty]
        assert _in_range(ok, 0, 1), (fn.__name__, ok)
        if values is not None:
            assert set(ok.tolist()) <= values


@SETTINGS
@given(map_batches(), st.integers(0, 2), st.sampled_from([float("nan"), float("inf"), -float("inf")]))
def test_non_finite_maps_raise_naming_the_image(maps, row, bad):
    assume(row < maps.shape[0])
    maps = maps.clone()
    maps[row, 0, 0] = bad
    masks = torch.ones(maps.shape, dtype=torch.bool)
    calls = [
        lambda: entropy(maps, "histogram"),
        lambda: entropy(maps, "spatial"),
        lambda: pearson(maps, maps),
        lambda: spearman(maps, maps),
        lambda: topk_iou(maps, maps),
        lambda: epg(maps, masks),
        lambda: iou(maps, masks),
        lambda: pointing_game(maps, masks),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=rf"NaN or inf in images \[{row}\]"):
            call()


@SETTINGS
@given(map_batches(), st.integers(1, 12), st.integers(1, 12), st.integers(1, 4))
def test_masks_of_another_batch_size_are_refused(maps, hh, ww, b):
    assume(b != maps.shape[0])
    masks = torch.ones(b, hh, ww)
    for fn in (epg, iou, pointing_game):
        with pytest.raises(ValueError, match="differ in batch size"):
            fn(maps, masks)
    with pytest.raises(ValueError, match=r"shape \[B, H, W\]"):
        epg(maps, torch.ones(hh, ww))


VALUES_1D = st.lists(st.one_of(st.floats(-1e6, 1e6), st.just(float("nan"))), min_size=0, max_size=40)


@SETTINGS
@given(VALUES_1D, st.integers(0, 2**31 - 1))
def test_summarise_bounds(values, seed):
    s = summarise(values, seed=seed, n_boot=200)
    finite = [v for v in values if not math.isnan(v)]
    assert s["n"] == len(finite) and s["n_nan"] == len(values) - len(finite)
    if not finite:
        assert math.isnan(s["mean"])
        return
    lo, hi = min(finite), max(finite)
    tol = 1e-9 * max(1.0, abs(lo), abs(hi))
    assert lo - tol <= s["ci_low"] <= s["ci_high"] + tol and s["ci_high"] <= hi + tol
    assert lo - tol <= s["mean"] <= hi + tol
    assert s == summarise(values, seed=seed, n_boot=200)  # seeded: reproducible


@SETTINGS
@given(VALUES_1D, VALUES_1D)
def test_compare_groups_p_value_in_range_or_documented_error(a, b):
    fa, fb = [v for v in a if not math.isnan(v)], [v for v in b if not math.isnan(v)]
    if len(fa) < 2 or len(fb) < 2:
        with pytest.raises(ValueError, match="at least 2 finite values"):
            compare_groups(a, b, n_perm=99)
        return
    out = compare_groups(a, b, n_perm=99)
    assert 1 / 100 <= out["p_value"] <= 1
    assert not math.isnan(out["cohens_d"])
