"""Stability measures after Quantus 0.6 and Captum 0.9 (continuity, consistency, relative input / output /
representation stability, sensitivity_max), effective complexity and epg's AttributionLocalisation options:
each equals its reference on the same inputs and, where the reference draws noise, the same draws."""

import warnings

import numpy as np
import pytest
import torch

from salience.attribution import attribute, upsample
from salience.measures import MEASURES, epg
from salience.measures.stability import (
    consistency,
    continuity,
    relative_stability,
    sensitivity_max,
    translate,
    translation_shifts,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def net():
    from salience.models import build

    torch.manual_seed(0)
    model = build("smallcnn", 10).eval()
    x = torch.rand(3, 3, 16, 16)
    y = model(x).argmax(1)
    explain = lambda xx, t: attribute("input_x_gradient", model, xx, t)
    return model, explain, x, y, explain(x, y).detach()


def _quantus_explain(explain, size):
    def fn(model, inputs, targets, **kwargs):
        x, t = torch.as_tensor(inputs).float(), torch.as_tensor(targets).long()
        return upsample(explain(x, t).detach(), size)[:, None].numpy()

    return fn


def _run(metric, model, x, y, a=None, explain=None, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = metric(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=None if a is None else a[:, None].numpy(),
                        explain_func=None if explain is None else _quantus_explain(explain, x.shape[-2:]),
                        channel_first=True, **kwargs)  # fmt: skip
    return torch.tensor(np.asarray(scores, dtype=np.float64))


def test_translation_is_quantus_batched_translation():
    batched_translation = pytest.importorskip("quantus.functions.perturb_func").batched_translation
    x = torch.rand(2, 3, 5, 7)
    for d in (-7, -3, 0, 2, 6):
        ours = translate(x, torch.full((2,), d), x.flatten(1).amin(1))
        assert np.array_equal(ours.numpy(), batched_translation(x.numpy(), "black", d, direction="x"))
    assert translation_shifts(16, 28) == list(range(-15, 13))


def test_continuity_equals_quantus(net):
    """Quantus normalises by the batch's max: one image per call. Its zero shift, explained again, scores 0."""
    quantus = pytest.importorskip("quantus")
    model, explain, x, y, maps = net
    ours = continuity(explain, x, y, maps, batch_size=20)
    for i in range(2):
        theirs = _run(quantus.Continuity(disable_warnings=True), model, x[i : i + 1], y[i : i + 1], maps[i : i + 1],
                      explain)  # fmt: skip
        assert ours[i].item() == pytest.approx(theirs.item(), rel=1e-5)
    assert torch.equal(ours, continuity(explain, x, y, maps, batch_size=7))  # chunking does not change it


def test_consistency_equals_quantus_within_its_batches():
    quantus = pytest.importorskip("quantus")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 3)).eval()
    x = torch.randn(11, 3, 4, 4)
    maps = torch.rand(11, 4, 4) + 0.1
    maps[::2, 0, 0] = 0.0  # two discretised maps: the first pixel zero or not
    maps[::3, 0, 1] = 0.0
    pred = model(x).argmax(1)
    assert len(set(pred.tolist())) > 1
    for b in (64, 4):
        theirs = _run(quantus.Consistency(disable_warnings=True), model, x, pred, maps, batch_size=b)
        ours = consistency(model, x, maps, batch_size=b)
        assert torch.allclose(ours.double(), theirs, atol=1e-6)
    assert 0 < ours.mean() < 1


def _np_uniform(low, high):
    """Quantus' noise order: one `uniform(size=(B, C*H*W))` NumPy draw per sample."""
    return lambda shape: torch.from_numpy(
        np.stack([np.random.uniform(low, high, size=(shape[1], int(np.prod(shape[2:])))) for _ in range(shape[0])])
    ).float().view(shape)  # fmt: skip


@pytest.mark.parametrize(("nan", "lower", "upper"), [(False, 0.02, 0.2), (True, -7.0, 7.0)])
def test_relative_stabilities_equal_quantus_with_the_same_draws(net, nan, lower, upper):
    quantus = pytest.importorskip("quantus")
    model, explain, x, y, maps = net
    kw = dict(nr_samples=5, disable_warnings=True, return_nan_when_prediction_changes=nan,
              perturb_func_kwargs={"lower_bound": lower, "upper_bound": upper})  # fmt: skip
    theirs = {}
    for name, metric, extra in (("input", "RelativeInputStability", {}), ("output", "RelativeOutputStability", {}),
                                ("representation", "RelativeRepresentationStability", {"layer_names": ["block4.3"]})):  # fmt: skip
        np.random.seed(0)
        theirs[name] = _run(getattr(quantus, metric)(**kw, **extra), model, x, y, maps, explain)
    np.random.seed(0)
    ours = relative_stability(model, explain, x, y, maps, 5, lower, upper, layer="final", batch_size=6,
                              return_nan_when_prediction_changes=nan, draw=_np_uniform(lower, upper))  # fmt: skip
    for name, values in ours.items():
        assert torch.allclose(values.double(), theirs[name], rtol=1e-4, equal_nan=True), name
    assert ours["input"].isnan().any() == nan  # the large noise changes the predictions of two images: NaN
    assert not ours["input"].isnan().all()


def test_relative_representation_of_every_layer_equals_quantus_default():
    """Quantus' default representation: every module but the model and its `Sequential`s (no in-place ops here:
    Quantus' CPU hooks keep views that an in-place op changes later)."""
    quantus = pytest.importorskip("quantus")

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.act = torch.nn.Conv2d(3, 4, 3), torch.nn.Tanh()
            self.head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 5))

        def forward(self, x):
            return self.head(self.act(self.conv(x)))

    torch.manual_seed(2)
    model = Net().eval()
    x = torch.rand(2, 3, 8, 8)
    y = model(x).argmax(1)
    explain = lambda xx, t: attribute("gradient", model, xx, t)
    maps = explain(x, y).detach()
    np.random.seed(1)
    metric = quantus.RelativeRepresentationStability(nr_samples=3, disable_warnings=True,
                                                     return_nan_when_prediction_changes=False)  # fmt: skip
    theirs = _run(metric, model, x, y, maps, explain)
    np.random.seed(1)
    ours = relative_stability(model, explain, x, y, maps, 3, layer="all", return_nan_when_prediction_changes=False,
                              draw=_np_uniform(0.02, 0.2))["representation"]  # fmt: skip
    assert torch.allclose(ours.double(), theirs, rtol=1e-4)


def test_sensitivity_max_equals_captum_with_the_same_draws(net):
    captum = pytest.importorskip("captum.metrics")
    _, explain, x, y, maps = net

    def captum_form(fn):  # Captum passes the clean inputs as a tuple (and wants a tuple), the noisy ones as a tensor
        return lambda i, target: (fn(i[0], target),) if isinstance(i, tuple) else fn(i, target)

    def explanation_func(inputs, target):
        with torch.enable_grad():
            return upsample(explain(inputs, target), inputs.shape[-2:])

    torch.manual_seed(5)
    theirs = captum.sensitivity_max(captum_form(explanation_func), x, target=y)
    ours = sensitivity_max(explain, x, y, maps, seed=5, batch_size=7)  # chunks of 7 rows: the same draws
    assert torch.allclose(ours, theirs, rtol=1e-5)
    ones = lambda xx, t: torch.ones(len(xx), 16, 16)
    assert (sensitivity_max(ones, x, y, torch.zeros_like(maps)) == 16).all()  # a zero map's norm reads as 1


def test_effective_complexity_equals_quantus():
    quantus = pytest.importorskip("quantus")
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(4, 12, 12, generator=g) ** 3
    maps = maps / maps.abs().flatten(1).amax(1)[:, None, None]  # max |A| = 1: Quantus' batch-wide max is per image
    maps[maps.abs() < 1e-3] = 0.0
    theirs = _run(quantus.EffectiveComplexity(disable_warnings=True), None, torch.rand(4, 3, 12, 12),
                  torch.zeros(4, dtype=torch.long), maps)  # fmt: skip
    ours = MEASURES["effective_complexity"].fn(maps)
    assert torch.equal(ours.double(), theirs) and (ours < 144).all()
    assert MEASURES["effective_complexity"].fn(torch.zeros(1, 3, 3), eps=0.1).item() == 0


def test_epg_weighted_and_max_size_equal_quantus_attribution_localisation():
    """Quantus weights by the mask's pixels over the size of `x_batch[2:]`: the image's pixels for a batch of three
    one-channel images, where the two agree. `max_size` only warns in Quantus: here those images are NaN."""
    quantus = pytest.importorskip("quantus")
    g = torch.Generator().manual_seed(1)
    maps = torch.randn(3, 10, 10, generator=g)
    masks = torch.zeros(3, 10, 10, dtype=torch.bool)
    masks[0, :3, :4], masks[1, 2:9, 1:9], masks[2, 5:, :] = True, True, True
    x, y = torch.rand(3, 1, 10, 10), torch.zeros(3, dtype=torch.long)
    q = lambda **kw: quantus.AttributionLocalisation(abs=False, normalise=False, positive_attributions=True,
                                                     disable_warnings=True, **kw)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = q(weighted=True)(model=None, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=maps[:, None].numpy(),
                                  s_batch=masks[:, None].float().numpy(), channel_first=True)  # fmt: skip
    assert torch.allclose(epg(maps, masks, weighted=True).double(), torch.tensor(theirs, dtype=torch.float64))
    assert torch.equal(epg(maps, masks, max_size=1.0), epg(maps, masks))
    capped = epg(maps, masks, max_size=0.5)  # masks cover 12 %, 56 % and 50 %
    assert capped[1].isnan() and torch.equal(capped[[0, 2]], epg(maps, masks)[[0, 2]])
    with pytest.raises(ValueError, match="max_size"):
        epg(maps, masks, max_size=0)


def test_entries_share_one_set_of_samples_and_take_their_options(net):
    from salience.measures.registry import Probe

    model, explain, x, y, maps = net
    p = Probe(model, explain, x, y, maps, seed=3, samples=3)
    ris, ros = MEASURES["relative_input_stability"].fn(p), MEASURES["relative_output_stability"].fn(p)
    assert len([k for k in p._memo if k.startswith("relative_stability")]) == 1  # one computation serves both
    alone = relative_stability(model, explain, x, y, maps, 3, seed=3)
    assert torch.equal(ris, alone["input"]) and torch.equal(ros, alone["output"])
    rrs = MEASURES["relative_representation_stability"].fn(p, layer="mid2")
    assert torch.equal(rrs, relative_stability(model, explain, x, y, maps, 3, seed=3, layer="block2")["representation"])
    assert torch.equal(MEASURES["continuity"].fn(p, nr_steps=3), continuity(explain, x, y, maps, nr_steps=3))
    with pytest.raises(ValueError, match="layer must name modules"):
        MEASURES["relative_representation_stability"].fn(p, layer="input")
