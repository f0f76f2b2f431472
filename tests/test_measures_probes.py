"""Probes that run a model: invariants (equivariant model, identical copies), references written as plain
per-image loops, scipy for the blur kernel."""

import functools

import numpy as np
import pytest
import scipy.ndimage
import torch
import torch.nn as nn

from salience.attribution import input_x_gradient
from salience.measures.degradation import (
    blur_degradation,
    blur_levels,
    deletion_insertion,
    gaussian_blur,
    level_sigma,
    spatially_varying_blur,
)
from salience.measures.probes import (
    TRANSFORMS,
    apply_transform,
    noise_response,
    out_of_set_response,
    predict,
    salt_and_pepper,
    seed_stability,
    transform_consistency,
)

pytestmark = pytest.mark.usefixtures("one_thread")


class PointwiseNet(nn.Module):
    """logits_k = sum_p sum_c W_kc x_cp^2: IxG is a per-pixel function, so maps are exactly equivariant
    to any rearrangement of pixels (flips, rotations, shifts on their valid region)."""

    def __init__(self, channels=3, classes=4, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(classes, channels, generator=g, dtype=torch.float64))

    def forward(self, x):
        return torch.einsum("kc,bchw->bk", self.w, x**2)


class PositionNet(nn.Module):
    """A linear model with one weight per pixel: its maps are not equivariant."""

    def __init__(self, channels=3, side=28, classes=4, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(classes, channels, side, side, generator=g, dtype=torch.float64))

    def forward(self, x):
        return torch.einsum("kchw,bchw->bk", self.w, x)


def _data(b=3, side=28, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, side, side, generator=g, dtype=torch.float64), torch.tensor([0, 1, 2, 3][:b])


def _ixg(model):
    return functools.partial(input_x_gradient, model)


# --- (c) transformation consistency --------------------------------------------------------------


def test_equivariant_model_is_perfectly_consistent():
    model = PointwiseNet()
    x, t = _data()
    out = transform_consistency(model, _ixg(model), x, t, batch_size=7)
    assert out["transforms"] == list(TRANSFORMS) and len(TRANSFORMS) == 12
    for name, sim in out["similarity"].items():
        assert sim.shape == (3, 12)
        torch.testing.assert_close(sim, torch.ones_like(sim), msg=name)
    assert out["agreement"][:, :4].all()  # flips and rotations permute pixels: same logits


def test_position_dependent_model_is_not_consistent():
    model = PositionNet()
    x, t = _data()
    out = transform_consistency(model, _ixg(model), x, t)
    assert (out["similarity"]["pearson"] < 0.9).all()


def test_shift_uses_replicate_padding_and_rotations_invert():
    x = torch.arange(28.0 * 28).view(1, 1, 28, 28)
    s = apply_transform("shift_+1_-1", x)  # content moves 2 px down and 2 px left
    assert torch.equal(s[0, 0, 2:, :-2], x[0, 0, :-2, 2:])
    assert torch.equal(s[0, 0, :2, :-2], x[0, 0, :1, 2:].expand(2, -1))  # top rows replicate row 0
    assert torch.equal(apply_transform("rot90_ccw", apply_transform("rot90_cw", x)), x)
    with pytest.raises(ValueError, match="unknown transform"):
        apply_transform("shear", x)


# --- (d) stability ---------------------------------------------------------------------------------


def test_copies_of_one_model_are_perfectly_stable_and_pairs_are_complete():
    x, t = _data()
    model = PointwiseNet(seed=3)
    maps = [_ixg(model)(x, t) for _ in range(4)]
    out = seed_stability(maps)
    assert out["pairs"] == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    for v in out["mean"].values():
        torch.testing.assert_close(v, torch.ones(3, dtype=v.dtype))


def test_stability_of_different_models_matches_pairwise_loop():
    from salience.measures import pearson

    x, t = _data()
    maps = torch.stack([_ixg(PositionNet(seed=s))(x, t) for s in range(3)])
    out = seed_stability(maps, similarities=("pearson",))
    ref = torch.stack([pearson(maps[i], maps[j]) for i, j in [(0, 1), (0, 2), (1, 2)]], 1)
    torch.testing.assert_close(out["similarity"]["pearson"], ref)
    assert (out["mean"]["pearson"] < 0.9).all()
    with pytest.raises(ValueError, match="N >= 2"):
        seed_stability(maps[:1])


# --- (b) out-of-set response -----------------------------------------------------------------------


def test_salt_and_pepper_amounts_and_seed():
    x = torch.full((4, 3, 32, 32), 0.5)
    noisy = salt_and_pepper(x, (0.0, 0.1, 0.5, 1.0), torch.Generator().manual_seed(1))
    changed = (noisy != 0.5).all(2).float().mean((1, 2, 3))  # all channels of a pixel change together
    assert torch.equal((noisy != 0.5).any(2), (noisy != 0.5).all(2))
    torch.testing.assert_close(changed, torch.tensor([0.0, 0.1, 0.5, 1.0]), atol=0.02, rtol=0)
    assert set(noisy[noisy != 0.5].unique().tolist()) == {0.0, 1.0}
    again = salt_and_pepper(x, (0.0, 0.1, 0.5, 1.0), torch.Generator().manual_seed(1))
    assert torch.equal(noisy, again)


def test_noise_response_clean_amount_is_identity():
    model = PositionNet()
    x, t = _data()
    out = noise_response(model, _ixg(model), x, t, seed=0, batch_size=5)
    assert out["score"].shape == (3, 8)
    for sim in out["similarity"].values():
        torch.testing.assert_close(sim[:, 0], torch.ones(3, dtype=sim.dtype))
        assert (sim[:, -1] < 0.99).all()
    assert torch.equal(out["score_change"][:, 0], torch.zeros(3, dtype=x.dtype))
    assert out["agreement"][:, 0].all()
    clean, _ = predict(model, x, t)
    torch.testing.assert_close(out["score"] - clean[:, None], out["score_change"])


def test_out_of_set_response_shift():
    model = PositionNet()
    x_in, t = _data(seed=0)
    x_out = torch.rand(5, 3, 28, 28, dtype=torch.float64) * 0.1
    out = out_of_set_response(model, _ixg(model), x_in, t, x_out)
    assert out["out"]["score"].shape == (5,)
    for k, shift in out["shift"].items():
        assert shift["diff"] == pytest.approx((out["out"][k].mean() - out["in"][k].mean()).item())
        assert 0 < shift["p_value"] <= 1


# --- (e) degradation --------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma", [0.5, 1.3, 4.0])
def test_gaussian_blur_matches_scipy(sigma):
    x = torch.rand(2, 3, 20, 17, dtype=torch.float64)
    ref = scipy.ndimage.gaussian_filter(x.numpy(), sigma=(0, 0, sigma, sigma), mode="mirror", truncate=3.0)
    np.testing.assert_allclose(gaussian_blur(x, sigma).numpy(), ref, atol=1e-12)


def test_spatially_varying_blur_matches_per_pixel_definition():
    x = torch.rand(2, 3, 10, 10, dtype=torch.float64)
    levels = torch.randint(0, 101, (2, 10, 10))
    got = spatially_varying_blur(x, levels)
    cache = {}
    for b, i, j in np.ndindex(2, 10, 10):
        lv = levels[b, i, j].item()
        if lv not in cache:
            cache[lv] = gaussian_blur(x, level_sigma(lv, 10 / 224))
        torch.testing.assert_close(got[b, :, i, j], cache[lv][b, :, i, j])


def test_blur_levels_modes():
    maps = torch.zeros(1, 56, 56)
    maps[0, 20:36, 20:36] = 1.0
    non, sal = blur_levels(maps, (56, 56), "nonsalient"), blur_levels(maps, (56, 56), "salient")
    assert non[0, 28, 28] == 100 and non[0, 0, 0] == 0  # salient centre kept sharp, corner blurred most
    assert torch.equal(sal, 100 - non)
    assert level_sigma(0) == 10 and level_sigma(100) == 0
    with pytest.raises(ValueError, match="blur mode"):
        blur_levels(maps, (56, 56), "both")


def test_blur_degradation_scores_follow_blurred_images():
    model = PositionNet()
    x, t = _data()
    explain = _ixg(model)
    out = blur_degradation(model, explain, x, t, batch_size=2)
    maps = explain(x, t)
    for mode in ("nonsalient", "salient"):
        blurred = spatially_varying_blur(x, blur_levels(maps, (28, 28), mode))
        score, _ = predict(model, blurred, t)
        torch.testing.assert_close(out[mode]["score"], score)
        torch.testing.assert_close(out[mode]["score_change"], score - out["clean"]["score"])
        assert set(out[mode]["similarity"]) == {"ssim", "pearson", "spearman", "topk_iou"}
    assert not torch.equal(out["salient"]["score"], out["nonsalient"]["score"])


def _reference_curves(model, x, t, maps, steps):
    """Plain per-image, per-step loop in numpy order (stable argsort of the negated map)."""
    up = torch.nn.functional.interpolate(maps[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    n = x.shape[-1] * x.shape[-2]
    blurred = gaussian_blur(x, 5 * min(x.shape[-2:]) / 224)
    dele, ins = np.zeros((len(x), steps + 1)), np.zeros((len(x), steps + 1))
    for b in range(len(x)):
        order = np.argsort(-up[b].flatten().numpy(), kind="stable")
        for s in range(steps + 1):
            k = s * n // steps
            pix = torch.from_numpy(order[:k].copy())
            d = x[b].clone().flatten(1)
            d[:, pix] = 0
            i = blurred[b].clone().flatten(1)
            i[:, pix] = x[b].flatten(1)[:, pix]
            with torch.no_grad():
                dele[b, s] = model(d.view(1, *x.shape[1:])).softmax(1)[0, t[b]].item()
                ins[b, s] = model(i.view(1, *x.shape[1:])).softmax(1)[0, t[b]].item()
    return dele, ins


def test_deletion_insertion_matches_reference_loop():
    model = PositionNet()
    x, t = _data()
    maps = torch.rand(3, 7, 7, dtype=torch.float64)  # coarse maps, upsampled inside
    maps[0] = 1.0  # constant map: ties broken by pixel index
    out = deletion_insertion(model, x, t, maps, steps=9, batch_size=4)
    dele, ins = _reference_curves(model, x, t, maps, 9)
    np.testing.assert_allclose(out["deletion"].numpy(), dele, atol=1e-12)
    np.testing.assert_allclose(out["insertion"].numpy(), ins, atol=1e-12)
    np.testing.assert_allclose(out["deletion_auc"].numpy(), np.trapezoid(dele, dx=1 / 9, axis=1), atol=1e-12)
    np.testing.assert_allclose(out["insertion_auc"].numpy(), np.trapezoid(ins, dx=1 / 9, axis=1), atol=1e-12)
    only = deletion_insertion(model, x, t, maps, steps=9, curves=("deletion",))
    assert set(only) == {"deletion", "deletion_auc"} and torch.equal(only["deletion"], out["deletion"])
    with pytest.raises(ValueError, match="curves"):
        deletion_insertion(model, x, t, maps, curves=("both",))


def test_probe_input_checks():
    model = PositionNet()
    x, t = _data()
    with pytest.raises(ValueError, match="target must be a long tensor"):
        transform_consistency(model, _ixg(model), x, t.float())
    with pytest.raises(ValueError, match="square"):
        transform_consistency(model, _ixg(model), x[..., :20], t)
    bad = lambda x, t: torch.full((len(x), 28, 28), float("nan"))
    with pytest.raises(ValueError, match="maps returned by explain contain NaN"):
        noise_response(model, bad, x, t)


def test_evaluate_gives_every_single_model_measure_per_image():
    from salience.attribution import grad_cam
    from salience.measures import MEASURES, entropy, epg, evaluate
    from salience.measures.degradation import deletion_insertion
    from salience.models import build

    torch.manual_seed(0)
    model = build("smallcnn", 2).eval()
    x = torch.rand(3, 3, 32, 32)
    target = torch.tensor([0, 1, 1])
    masks = torch.zeros(3, 32, 32, dtype=torch.bool)
    masks[:, 8:24, 8:24] = True
    families = ("explain_to_me", "localisation", "complexity")
    cheap = [n for n, m in MEASURES.items() if m.family in families and not m.on_mosaics]  # focus: mosaics
    cheap += ["deletion_auc", "insertion_auc"]
    values = evaluate(model, x, target, masks=masks, measures=cheap, deletion_steps=8)
    assert list(values) == [n for n in MEASURES if n in cheap]
    assert all(v.shape == (3,) for v in values.values())
    maps = grad_cam(model, x, target, layer="final")
    assert torch.allclose(values["entropy_histogram"], entropy(maps, "histogram"))
    assert torch.allclose(values["epg"], epg(maps, masks))
    curves = deletion_insertion(model, x, target, maps, steps=8)
    assert torch.allclose(values["deletion_auc"], curves["deletion_auc"])
    no_masks = [n for n in cheap if not MEASURES[n].needs_masks]
    unmasked = evaluate(model, x, target, method="gradient", layer=None, measures=no_masks, deletion_steps=8)
    assert list(unmasked) == [n for n in values if not MEASURES[n].needs_masks]
