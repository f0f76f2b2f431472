"""Pure map measures against independent references (scikit-image, scipy, Quantus) and closed forms."""

import math
import warnings

import numpy as np
import pytest
import scipy.stats
import torch
from skimage.measure import shannon_entropy
from skimage.metrics import structural_similarity

from salience.measures import entropy, epg, iou, pearson, pointing_game, spearman, ssim, topk_iou

quantus = pytest.importorskip("quantus")


pytestmark = pytest.mark.usefixtures("one_thread")


def _maps(b=6, h=12, w=10, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, h, w, generator=g, dtype=dtype)


def _masks(b=6, h=12, w=10, seed=1):
    g = torch.Generator().manual_seed(seed)
    m = torch.zeros(b, h, w)
    for i in range(b):
        y0, x0 = torch.randint(0, h // 2, (2,), generator=g).tolist()
        m[i, y0 : y0 + h // 2, x0 : x0 + w // 3] = 1
    return m


def _quantus(metric, a, s=None):
    a_np = a[:, None].numpy().astype(np.float64)
    x = np.zeros((a.shape[0], 1, *a.shape[-2:]))
    y = np.zeros(a.shape[0], dtype=int)
    s_np = None if s is None else s[:, None].numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(metric(model=None, x_batch=x, y_batch=y, a_batch=a_np, s_batch=s_np), dtype=float)


# --- entropy -------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5, 12, 10), (3, 32, 32), (2, 3, 4)])
def test_histogram_entropy_matches_skimage(shape):
    maps = _maps(*shape) ** 3  # skewed values, many empty bins
    got = entropy(maps, "histogram")
    for i, m in enumerate(maps.numpy()):
        q = np.floor((m - m.min()) / (m.max() - m.min()) * 255).astype(np.uint8)
        ref = shannon_entropy(q, base=2) / math.log2(min(m.size, 256))
        assert got[i].item() == pytest.approx(ref, abs=1e-12)


def test_spatial_entropy_matches_quantus_complexity():
    maps = _maps(5, 12, 10).abs()
    ref = _quantus(quantus.Complexity(normalise=False, abs=False, disable_warnings=True), maps.clone())
    got = entropy(maps, "spatial")
    np.testing.assert_allclose(got.numpy() * math.log(120), ref, atol=1e-8)


def test_entropy_constant_zero_and_range():
    const = torch.full((2, 7, 9), 3.5)
    zero = torch.zeros(2, 7, 9)
    assert torch.equal(entropy(const, "histogram"), torch.zeros(2))
    assert torch.equal(entropy(zero, "histogram"), torch.zeros(2))
    torch.testing.assert_close(entropy(const, "spatial"), torch.ones(2))
    torch.testing.assert_close(entropy(zero, "spatial"), torch.ones(2))
    # one hot map: a single non-zero pixel has zero spatial entropy and two-level histogram entropy
    one = torch.zeros(1, 16, 16)
    one[0, 3, 4] = 1
    assert entropy(one, "spatial").item() == pytest.approx(0.0, abs=1e-7)
    p = 1 / 256
    expected = -(p * math.log2(p) + (1 - p) * math.log2(1 - p)) / 8
    assert entropy(one, "histogram").item() == pytest.approx(expected, rel=1e-6)
    # 256 distinct equally frequent levels reach the maximum 1
    ramp = torch.arange(256.0).reshape(1, 16, 16)
    assert entropy(ramp, "histogram").item() == pytest.approx(1.0)


def test_entropy_is_batch_independent_and_dtype_preserving():
    maps = _maps(4, 9, 9, dtype=torch.float32)
    for kind in ("histogram", "spatial"):
        full = entropy(maps, kind)
        assert full.dtype == torch.float32 and full.shape == (4,)
        torch.testing.assert_close(torch.cat([entropy(maps[i : i + 1], kind) for i in range(4)]), full)


# --- similarity ----------------------------------------------------------------------------------


def test_ssim_matches_skimage():
    a, b = _maps(4, 16, 13, seed=2), _maps(4, 16, 13, seed=3)
    b = 0.6 * a + 0.4 * b  # correlated pair
    got = ssim(a, b, win_size=7)
    for i in range(4):
        x, y = a[i].numpy(), b[i].numpy()
        x = (x - x.min()) / (x.max() - x.min())
        y = (y - y.min()) / (y.max() - y.min())
        ref = structural_similarity(x, y, data_range=1.0, win_size=7)
        assert got[i].item() == pytest.approx(ref, abs=1e-10)
    torch.testing.assert_close(ssim(a, a), torch.ones(4, dtype=a.dtype))


def test_correlations_match_scipy_including_ties():
    a = torch.randint(0, 5, (5, 8, 6)).double()  # many ties
    b = a + torch.randint(0, 3, (5, 8, 6)).double()
    got_p, got_s = pearson(a, b), spearman(a, b)
    for i in range(5):
        x, y = a[i].flatten().numpy(), b[i].flatten().numpy()
        assert got_p[i].item() == pytest.approx(scipy.stats.pearsonr(x, y)[0], abs=1e-12)
        assert got_s[i].item() == pytest.approx(scipy.stats.spearmanr(x, y)[0], abs=1e-12)


def test_correlations_constant_maps_defined():
    c = torch.full((1, 5, 5), 2.0)
    z = torch.zeros(1, 5, 5)
    r = _maps(1, 5, 5)
    for f in (pearson, spearman):
        assert f(c, z).item() == 1.0
        assert f(c, r).item() == 0.0
        assert f(r, -r).item() == pytest.approx(-1.0)
    assert ssim(c, z, win_size=5).item() == pytest.approx(1.0)


def test_topk_iou_closed_form():
    a = torch.arange(100.0).reshape(1, 10, 10)
    b = torch.roll(a.flatten(), 5).reshape(1, 10, 10)  # top-10 of a: 90..99; of b: values 90..99 moved 5 on
    # b's top 10 sit at flat positions 95..99 and 0..4; a's top 10 at 90..99 -> overlap 5, union 15
    assert topk_iou(a, b, k=0.1).item() == pytest.approx(5 / 15)
    assert topk_iou(a, a, k=0.1).item() == 1.0
    assert topk_iou(a, -a, k=0.1).item() == 0.0
    assert topk_iou(torch.ones(1, 4, 4), torch.zeros(1, 4, 4), k=0.25).item() == 1.0


# --- localisation --------------------------------------------------------------------------------


def test_epg_matches_quantus_attribution_localisation():
    maps, masks = _maps(), _masks()
    ref = _quantus(
        quantus.AttributionLocalisation(normalise=False, abs=False, positive_attributions=True, disable_warnings=True),
        maps,
        masks,
    )
    np.testing.assert_allclose(epg(maps, masks).numpy(), ref, atol=1e-8)


def test_pointing_game_matches_quantus():
    maps, masks = _maps(20, 12, 10, seed=5), _masks(20, 12, 10, seed=6)
    maps[0] = 0.0  # constant map: every pixel is a maximum
    ref = _quantus(quantus.PointingGame(normalise=False, abs=False, disable_warnings=True), maps, masks)
    got = pointing_game(maps, masks)
    np.testing.assert_array_equal(got.numpy(), ref.astype(float))
    assert 0 < got.sum() < 20


def test_pointing_game_tolerance():
    maps = torch.zeros(1, 9, 9)
    maps[0, 4, 7] = 1
    masks = torch.zeros(1, 9, 9)
    masks[0, 4, 4] = 1  # three pixels away along a row; diagonal neighbours are further
    assert pointing_game(maps, masks, tolerance=2.9).item() == 0
    assert pointing_game(maps, masks, tolerance=3).item() == 1


def test_iou_closed_form_and_upsampling():
    maps = torch.zeros(1, 8, 8)
    maps[0, :4, :4] = 2.0
    maps[0, :4, 4:] = 0.8  # below half of the max: outside
    maps[0, 4:, :] = -5.0  # negative: clamped away
    masks = torch.zeros(1, 8, 8)
    masks[0, :2, :] = 1
    # selected 4x4 = 16 px; mask 16 px; overlap 2x4 = 8 -> IoU 8 / 24
    assert iou(maps, masks).item() == pytest.approx(8 / 24)
    assert iou(maps, masks, threshold=0.4).item() == pytest.approx(16 / 32)
    # the same map at 4x4, upsampled bilinearly to the mask, localises the same box
    small = torch.tensor([[[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0], [0.0] * 4, [0.0] * 4]])
    big_mask = torch.zeros(1, 8, 8)
    big_mask[0, :4, :4] = 1
    assert epg(small, big_mask).item() > 0.8
    assert iou(small, big_mask).item() > 0.5


def test_defined_results_for_degenerate_inputs():
    zero = torch.zeros(2, 6, 6)
    masks = torch.zeros(2, 6, 6)
    masks[0, :3] = 1
    assert epg(zero, masks)[0].item() == 0.0
    assert iou(zero, masks)[0].item() == 0.0
    assert torch.isnan(epg(zero, masks)[1]) and torch.isnan(iou(zero, masks)[1])
    assert torch.isnan(pointing_game(zero, masks)[1])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_and_inf_refused(bad):
    maps = _maps(3, 8, 8)
    maps[1, 2, 3] = bad
    masks = _masks(3, 8, 8)
    for call in (
        lambda: entropy(maps),
        lambda: entropy(maps, "spatial"),
        lambda: ssim(maps, maps),
        lambda: pearson(maps, _maps(3, 8, 8)),
        lambda: spearman(_maps(3, 8, 8), maps),
        lambda: topk_iou(maps, maps),
        lambda: epg(maps, masks),
        lambda: iou(maps, masks),
        lambda: pointing_game(maps, masks),
    ):
        with pytest.raises(ValueError, match=r"NaN or inf in images \[1\]"):
            call()


def test_bad_shapes_refused():
    with pytest.raises(ValueError, match=r"\[B, h, w\]"):
        entropy(torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match="same shape"):
        pearson(torch.zeros(2, 4, 4), torch.zeros(2, 4, 5))
    with pytest.raises(ValueError, match="batch size"):
        epg(torch.zeros(2, 4, 4), torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="kind"):
        entropy(torch.zeros(1, 4, 4), "bogus")
    with pytest.raises(ValueError, match="win_size must be odd"):
        ssim(torch.zeros(1, 8, 8), torch.zeros(1, 8, 8), win_size=4)
    with pytest.raises(ValueError, match="win_size must be odd"):
        ssim(torch.zeros(1, 8, 8), torch.zeros(1, 8, 8), win_size=1)


@pytest.mark.parametrize("shape, up", [((2, 2), (7, 7)), ((4, 6), (7, 11)), ((6, 3), (14, 7))])
def test_ssim_of_maps_under_7_px_upsamples_them_to_a_short_side_of_7(shape, up):
    """Maps with a side under 7 px are compared after bilinear upsampling (align_corners=False) to a short side
    of 7 (the long side rounded half up: 6 * 7 / 4 = 10.5 -> 11), then min-max normalised as usual."""
    from salience.measures._checks import minmax
    from salience.measures.similarity import small_map_size

    assert small_map_size(shape) == up and small_map_size((7, 9)) == (7, 9)
    g = torch.Generator().manual_seed(3)
    a = torch.rand(3, *shape, generator=g, dtype=torch.float64)
    b = 0.5 * a + 0.5 * torch.rand(3, *shape, generator=g, dtype=torch.float64)
    got = ssim(a, b)
    for i in range(3):
        x, y = (
            torch.nn.functional.interpolate(t[i][None, None], size=up, mode="bilinear", align_corners=False)[0]
            for t in (a, b)
        )
        ref = structural_similarity(minmax(x)[0].numpy(), minmax(y)[0].numpy(), data_range=1, win_size=7)
        assert got[i].item() == pytest.approx(ref, abs=1e-10)
    assert got.unique().numel() == 3 and (got < 1).all()  # not a degenerate constant
    assert torch.allclose(ssim(a, a), torch.ones(3, dtype=torch.float64))


def test_localisation_takes_bool_masks_and_refuses_integer_ones():
    from salience.measures import epg, iou, pointing_game

    g = torch.Generator().manual_seed(3)
    maps = torch.randn(3, 4, 4, generator=g)
    masks = torch.rand(3, 8, 8, generator=g) > 0.6
    for measure in (epg, iou, pointing_game):
        assert torch.equal(measure(maps, masks), measure(maps, masks.double()))
        with pytest.raises(TypeError, match="masks must be bool or floating point, got torch.int64"):
            measure(maps, masks.long())
