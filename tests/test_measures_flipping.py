"""Pixel flipping, region perturbation, IROF, selectivity and sensitivity-n against Quantus 0.6 on the same model,
images and maps (float32, as Quantus casts inputs), and the entries' curves and options."""

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from salience.measures import MEASURES
from salience.measures.flipping import (
    irof,
    irof_segments,
    patch_ids,
    pixel_flipping,
    region_perturbation,
    selectivity,
    sensitivity_n,
)
from salience.measures.registry import Probe

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(channels: int, seed: int = 0) -> nn.Module:
    """A small CNN whose softmax reacts to removing input values (weights scaled up from PyTorch's init)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                          nn.Linear(128, 3))  # fmt: skip
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4)
    return model.eval()


def _inputs(channels: int = 3, size: int = 16, b: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, channels, size, size, generator=g)
    maps = torch.randn(b, size, size, generator=g)
    return _model(channels, seed), x, torch.tensor([0, 2, 1, 0][:b]), maps


def _quantus(metric: str, model, x, y, maps, **kwargs):
    """Quantus' per-image result, `return_aggregate=False`. NumPy 2 dropped `np.trapz`, which Quantus 0.6 calls for
    areas: it is put back as `np.trapezoid` (the same rule) while Quantus runs."""
    quantus = pytest.importorskip("quantus")
    call = {k: kwargs.pop(k) for k in ("batch_size",) if k in kwargs}
    with warnings.catch_warnings(), pytest.MonkeyPatch.context() as mp:
        warnings.simplefilter("ignore")
        mp.setattr(np, "trapz", np.trapezoid, raising=False)
        out = getattr(quantus, metric)(disable_warnings=True, return_aggregate=False, **kwargs)(
            model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=maps[:, None].numpy(), channel_first=True,
            **call)  # fmt: skip
    return np.asarray(out, dtype=np.float64)


def _numpy_order(x, maps):
    """NumPy's `argsort(-a)` of the channel-broadcast map, as Quantus orders features: its order among a pixel's
    three tied channels is its own, so the tests hand it to our functions."""
    a = np.broadcast_to(maps[:, None].numpy(), x.shape).reshape(len(x), -1)
    return torch.from_numpy(np.argsort(-a, axis=1))


def test_pixel_flipping_equals_quantus():
    model, x, y, maps = _inputs(size=8)
    order = _numpy_order(x, maps)
    ours = pixel_flipping(model, x, y, maps, order=order)
    theirs = _quantus("PixelFlipping", model, x, y, maps)
    assert ours["curve"].shape == (3, 3 * 64) and np.abs(ours["curve"].numpy() - theirs).max() < 1e-6
    assert np.allclose(ours["auc"].numpy(), np.trapezoid(theirs, axis=1), rtol=1e-5)
    assert theirs[:, 0].max() - theirs[:, -1].min() > 0.1  # the curves do fall
    auc16 = pixel_flipping(model, x, y, maps, features_in_step=16, order=order)["auc"]
    theirs16 = _quantus("PixelFlipping", model, x, y, maps, features_in_step=16, return_auc_per_sample=True)
    assert np.allclose(auc16.numpy(), theirs16, rtol=1e-5)
    # one channel: no ties, our own order is Quantus'
    model1, x1, y1, maps1 = _inputs(channels=1, size=8)
    got = pixel_flipping(model1, x1, y1, maps1)["curve"].numpy()
    assert np.abs(got - _quantus("PixelFlipping", model1, x1, y1, maps1)).max() < 1e-6


@pytest.mark.parametrize(("patch_size", "order"), [(8, "morf"), (5, "morf"), (5, "lerf")])
def test_region_perturbation_and_selectivity_equal_quantus(patch_size, order):
    """Patch 5 on 16 px: Quantus pads to 20 (2 before, 2 after); patches of the padding count only their pixels."""
    model, x, y, maps = _inputs()
    ours = region_perturbation(model, x, y, maps, patch_size=patch_size, order=order)
    theirs = _quantus("RegionPerturbation", model, x, y, maps, patch_size=patch_size, order=order)
    assert ours["curve"].shape == theirs.shape and np.abs(ours["curve"].numpy() - theirs).max() < 1e-6
    assert np.allclose(ours["auc"].numpy(), np.trapezoid(theirs, axis=1), atol=1e-6)
    if order == "morf":
        sel = selectivity(model, x, y, maps, patch_size=patch_size)
        theirs = _quantus("Selectivity", model, x, y, maps, patch_size=patch_size)
        assert np.abs(sel["curve"].numpy() - theirs).max() < 1e-6
        assert np.allclose(sel["auc"].numpy(), np.trapezoid(theirs, axis=1), rtol=1e-5)
    few = region_perturbation(model, x, y, maps, patch_size=patch_size, order=order, regions_evaluation=3)
    assert torch.equal(few["curve"], ours["curve"][:, :3])
    ids = patch_ids(16, 16, 5)
    assert ids[0, 2] == 0 and ids[0, 3] == 1 and ids[3, 0] == 4 and ids.max() == 15


def test_region_perturbation_random_order_is_seeded():
    model, x, y, maps = _inputs()
    a = region_perturbation(model, x, y, maps, patch_size=4, order="random", seed=1)["curve"]
    assert torch.equal(a, region_perturbation(model, x, y, maps, patch_size=4, order="random", seed=1)["curve"])
    assert not torch.equal(a, region_perturbation(model, x, y, maps, patch_size=4, order="random", seed=2)["curve"])
    with pytest.raises(ValueError, match="order must be 'morf', 'lerf' or 'random'"):
        region_perturbation(model, x, y, maps, order="most")


def test_irof_equals_quantus_image_by_image():
    """Quantus fills with the mean of the whole perturbed batch and pads the curves to the batch's most segments:
    per image, ours equals it one image per call. Its 3-channel call fails (a [B, 1, H, W] mask against [B, 3, H, W]
    images): the mask is broadcast there; on one channel Quantus runs as it is."""
    from quantus.functions.perturb_func import baseline_replacement_by_mask

    broadcast = lambda arr, mask, **kw: baseline_replacement_by_mask(arr, np.broadcast_to(mask, arr.shape), **kw)
    for channels, kwargs in ((3, {"perturb_func": broadcast}), (1, {})):
        model, x, y, maps = _inputs(channels=channels)
        ours = irof(model, x, y, maps)
        theirs = _quantus("IROF", model, x, y, maps, batch_size=1, **kwargs)
        assert np.allclose(ours["aoc"].numpy(), theirs, atol=2e-5)
        assert (ours["aoc"] - 1).abs().max() > 0.2  # removing segments does change the output
        assert (ours["counts"] > 10).all()
    skimage = pytest.importorskip("skimage.segmentation")
    labels = skimage.slic(x[0].permute(1, 2, 0).double().numpy(), start_label=0)
    assert np.array_equal(irof_segments(x)[0].numpy(), labels)
    # images with different segment counts: each image's value is its own (the curve is 0 past its segments)
    from salience.attribution.features import grid_mask

    seg = torch.stack([grid_mask(n, 16, 16, x.device) for n in (4, 2, 3)])
    both = irof(model, x, y, maps, segments=seg)
    assert both["counts"].tolist() == [16, 4, 9] and both["curve"].shape == (3, 16)
    for i in range(3):
        alone = irof(model, x[i : i + 1], y[i : i + 1], maps[i : i + 1], segments=seg[i : i + 1])
        assert torch.allclose(alone["aoc"], both["aoc"][i : i + 1], atol=1e-6)


def test_sensitivity_n_equals_quantus_and_is_one_for_a_linear_model():
    model, x, y, maps = _inputs(size=8)
    ours = sensitivity_n(model, x, y, maps, order=_numpy_order(x, maps))
    theirs = _quantus("SensitivityN", model, x, y, maps)
    assert ours["correlation"].shape == theirs.shape == (51,)  # int(0.8 * 64): steps of the pixels, not values
    assert np.abs(ours["correlation"].double().numpy() - theirs).max() < 1e-4
    # logits of a linear model: removing features changes the logit by the sum of w (x - min) over them, so the
    # map w (x - min) correlates perfectly with the drops
    torch.manual_seed(0)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).double().eval()
    x1 = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    y1 = torch.tensor([1, 2])
    w = linear[1].weight[y1].detach().view(2, 8, 8)
    exact = w * (x1[:, 0] - x1.flatten(1).amin(1)[:, None, None])
    got = sensitivity_n(linear, x1, y1, exact, softmax=False, features_in_step=2)
    assert torch.allclose(got["att_sums"].cumsum(1), got["pred_deltas"], atol=1e-12)
    assert torch.allclose(got["score"], torch.ones(2, dtype=torch.float64))
    assert sensitivity_n(linear, x1, y1, torch.randn(2, 8, 8, dtype=torch.float64), softmax=False)["score"].max() < 0.99


def test_entries_store_curves_and_take_options():
    model, x, y, maps = _inputs(b=2)
    probe = Probe(model, lambda xx, t: maps, x, y, maps, None, 0)
    auc = MEASURES["pixel_flipping"].fn(probe, features_in_step=8)
    curve = probe.curves["pixel_flipping"]
    assert curve["steps"][:2] == [8, 16] and len(curve["per_image"]) == 2 and len(curve["per_image"][0]) == 96
    assert torch.allclose(auc, pixel_flipping(model, x, y, maps, features_in_step=8)["auc"])
    for name in ("region_perturbation", "selectivity", "irof", "sensitivity_n"):
        values = MEASURES[name].fn(probe)
        assert values.shape == (2,) and torch.isfinite(values).all()
        assert len(probe.curves[name]["per_image"]) == 2
    assert len(probe.curves["irof"]["per_image"][0]) == int(irof(model, x, y, maps)["counts"][0])
    assert MEASURES["pixel_flipping"].passes == 3 * 224 * 224 / 2
    with pytest.raises(ValueError, match="features_in_step must be in"):
        pixel_flipping(model, x, y, maps, features_in_step=0)
