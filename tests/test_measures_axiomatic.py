"""Completeness, non-sensitivity and input invariance against Quantus 0.6 (one batch per model call on both sides),
and the properties they test on models built to have them."""

import warnings

import numpy as np
import pytest
import torch

from salience.attribution import attribute
from salience.measures import axiomatic as ax

pytestmark = pytest.mark.usefixtures("one_thread")
quantus = pytest.importorskip("quantus")
B, S = 3, 6


def _net(padding=1, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=padding), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(4 * (S + 2 * padding - 2) ** 2, 5),
    ).eval()  # fmt: skip


@pytest.fixture(scope="module")
def case():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(B, 3, S, S, generator=g)
    maps = torch.randn(B, S, S, generator=g)
    return x, torch.tensor([0, 1, 2]), maps / maps.flatten(1).abs().amax(1)[:, None, None]  # max |A| = 1 per map


def _quantus(metric, model, x, y, maps, **kwargs):
    call = {k: kwargs.pop(k) for k in ("explain_func", "a_batch") if k in kwargs}
    a = call.pop("a_batch", maps[:, None].numpy())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = getattr(quantus, metric)(disable_warnings=True, **kwargs)(
            model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a, channel_first=True, **call
        )
    return torch.tensor(np.asarray(scores, dtype=np.float64))


def test_completeness_equals_quantus_and_holds_for_a_complete_map(case):
    """Quantus' default divides the map by its max (never complete here); without it, a map whose sum is the
    logit drop passes on both sides and one off by 1e-3 fails. Quantus is given the map on channel 0 of an
    x-shaped array: with a one-channel map it fills only the first H * W input values (channel 0) with the
    baseline. Input x gradient of a bias-free linear model is complete for a zero baseline, within float rounding
    (Quantus' `==` would depend on the rounding)."""
    x, y, maps = case
    model = _net()
    assert ax.completeness(model, x, y, maps).tolist() == _quantus("Completeness", model, x, y, maps).tolist()
    with torch.no_grad():
        low = x.flatten(1).amin(1)[:, None, None, None].expand_as(x)
        drop = (model(x) - model(low)).gather(1, y[:, None])[:, 0]
    exact = torch.zeros(B, S, S)
    exact[:, 2, 3] = drop
    exact[1, 0, 0] = 1e-3
    on_channel_0 = torch.cat([exact[:, None], torch.zeros(B, 2, S, S)], 1).numpy()
    theirs = _quantus("Completeness", model, x, y, exact, normalise=False, a_batch=on_channel_0)
    assert ax.completeness(model, x, y, exact, normalise=False).tolist() == theirs.tolist() == [1.0, 0.0, 1.0]
    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * S * S, 5, bias=False)).eval()
    ixg = attribute("input_x_gradient", linear, x, y)
    assert ax.completeness(linear, x, y, ixg, baseline=0.0, normalise=False).tolist() == [1.0] * B
    assert ax.completeness(linear, x, y, ixg, normalise=False).tolist() == [0.0] * B  # the black baseline: x.min


def test_non_sensitivity_equals_quantus(case):
    x, y, maps = case
    model = _net()
    sparse = maps * (maps.abs() > 0.5)  # zero salience on about half the pixels
    for a in (maps, sparse):
        ours = ax.non_sensitivity(model, x, y, a, batch_size=B)
        assert torch.equal(ours.double(), _quantus("NonSensitivity", model, x, y, a))
    assert (ours > 0).all()
    half = ax.non_sensitivity(model, x, y, sparse, features_in_step=2, batch_size=B)
    assert half.shape == (B,) and (half <= 3 * S * S).all()


def test_shifted_model_is_the_model_on_shifted_inputs(case):
    """Exactly, also at a zero-padded border (where Quantus' bias change is off), with or without a bias; without
    padding it equals Quantus' shifted copy. The hook goes on leaving the block."""
    x, _, _ = case
    for padding in (0, 1):
        model = _net(padding)
        with torch.no_grad(), ax.shifted(model, -1.0, tuple(x.shape[1:])) as moved:
            assert torch.allclose(_net(padding)(x), moved(x - 1.0), atol=1e-5)
        assert not model[0]._forward_hooks and torch.equal(model(x), _net(padding)(x))
    quantus_model = quantus.helpers.model.pytorch_model.PyTorchModel(_net(0), channel_first=True)
    quantus_model = quantus_model.add_mean_shift_to_first_layer(-1, (1, 3, S, S))
    with ax.shifted(_net(0), -1.0, (3, S, S)) as moved:
        assert torch.allclose(quantus_model(x - 1.0), moved(x - 1.0), atol=1e-5)
    bias_free = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * S * S, 2, bias=False)).eval()
    expected = bias_free(x)
    with ax.shifted(bias_free, 0.5, (3, S, S)) as moved:
        assert torch.allclose(moved(x + 0.5), expected, atol=1e-5)
    with (
        pytest.raises(ValueError, match="no convolution or linear layer"),
        ax.shifted(torch.nn.ReLU(), -1.0, (3, S, S)),
    ):
        pass


@pytest.mark.parametrize("method", ["gradient", "input_x_gradient"])
def test_input_invariance_equals_quantus(case, method):
    """Where Quantus' shifted model is exact (no padding) and its unshifted first input value does not count
    (the first layer ignores channel 0), both agree: the gradient is invariant, input x gradient moves with the
    input. With padding ours stays exact, and Quantus' unshifted value changes the gradient of one image."""
    x, y, _ = case
    explain = lambda m, xx, t: attribute(method, m, xx, t)

    def explain_func(model, inputs, targets, **kwargs):
        return explain(model, torch.as_tensor(inputs), torch.as_tensor(targets).long())[:, None].detach().numpy()

    model = _net(0)
    with torch.no_grad():
        model[0].weight[:, 0] = 0
    maps = explain(model, x, y).detach()
    ours = ax.input_invariance(model, x, y, maps, explain)
    assert ours.tolist() == _quantus("InputInvariance", model, x, y, maps, explain_func=explain_func).tolist()
    assert ours.tolist() == [float(method == "gradient")] * B
    if method == "gradient":
        for model in (_net(0), _net(1)):
            maps = explain(model, x, y).detach()
            assert ax.input_invariance(model, x, y, maps, explain).tolist() == [1.0] * B
        assert _quantus("InputInvariance", _net(0), x, y, explain(_net(0), x, y).detach(),
                        explain_func=explain_func).tolist() == [1.0, 1.0, 0.0]  # fmt: skip
