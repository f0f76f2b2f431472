"""Monotonicity (Arya), monotonicity correlation, faithfulness estimate, infidelity and sufficiency against Quantus
0.6 (same draws where Quantus draws: NumPy's global generator, fed to ours through the `noise` / `draws` test
paths) and infidelity against Captum's `infidelity` with the same perturbations. One batch of B images per model
call on both sides (`batch_size=B`), so the model sees the same inputs in the same calls."""

import warnings

import numpy as np
import pytest
import torch

from salience.measures import monotonicity as mo

pytestmark = pytest.mark.usefixtures("one_thread")
quantus = pytest.importorskip("quantus")
B, S = 3, 6  # 3 images of 3 x 6 x 6: 108 input values, H * W divisible by 3 and 12


@pytest.fixture(scope="module")
def case():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * S * S, 5)
    ).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(B, 3, S, S, generator=g)
    y = torch.tensor([0, 1, 2])
    x.requires_grad_(True)
    model(x).gather(1, y[:, None]).sum().backward()
    maps = (x.grad * x).sum(1).detach()  # input x gradient
    return model, x.detach(), y, maps


def _quantus(metric, model, x, y, maps, seed=None, **kwargs):
    if seed is not None:
        np.random.seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = getattr(quantus, metric)(disable_warnings=True, **kwargs)(
            model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=maps[:, None].numpy(), channel_first=True
        )
    return torch.tensor(np.asarray(scores, dtype=np.float64))


def _uniform_draws(count, seed=0):
    """Quantus' uniform baseline: B values per perturbation, in the order it perturbs."""
    np.random.seed(seed)
    return torch.from_numpy(np.stack([np.random.uniform(size=B) for _ in range(count)], 1))


@pytest.mark.parametrize("step", [1, 12])
def test_faithfulness_estimate_equals_quantus(case, step):
    model, x, y, maps = case
    ours = mo.faithfulness_estimate(model, x, y, maps, features_in_step=step, batch_size=B)
    theirs = _quantus("FaithfulnessEstimate", model, x, y, maps, features_in_step=step)
    assert torch.allclose(ours.double(), theirs, atol=1e-6)
    assert (ours > 0.05).all()  # the drops follow the map


def test_monotonicity_correlation_equals_quantus_with_the_same_draws(case):
    """Steps of 3 values: one pixel's three channels (ties of the broadcast map), whose order within a step
    does not matter; with single values NumPy's unstable sort orders tied channels its own way."""
    model, x, y, maps = case
    steps, samples = S * S, 3
    theirs = _quantus("MonotonicityCorrelation", model, x, y, maps, seed=0, nr_samples=samples, features_in_step=3)
    ours = mo.monotonicity_correlation(
        model, x, y, maps, samples, 3, batch_size=B, noise=_uniform_draws(steps * samples)
    )
    assert torch.allclose(ours.double(), theirs, atol=1e-6)
    assert (ours.abs() > 0.01).all()


def _two_class(x):
    """A linear softmax model whose class 0 gains with every input value above the image's minimum: inserting
    values raises p_0 and lowers p_1 whatever their order."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(x[0].numel(), 2)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([torch.rand(x[0].numel()), -torch.rand(x[0].numel())]) * 0.05)
        model[1].bias.zero_()
    return model


def test_monotonicity_as_the_paper_and_as_quantus_code(case):
    """The paper's insertion equals Quantus' loop with the image's values put back (a transcription of that
    one line as a perturb_func); `insert='baseline'` equals Quantus 0.6 as it is (with the same draws)."""
    _, x, _, maps = case
    model, y = _two_class(x), torch.tensor([0, 1, 0])
    flat = x.flatten(1).numpy()

    def put_back(arr, indices, **kwargs):
        out = arr.copy()
        rows = np.arange(len(arr))[:, None]
        out[rows, indices] = flat[rows, indices]
        return out

    theirs = _quantus("Monotonicity", model, x, y, maps, perturb_func=put_back, features_in_step=3)
    ours = mo.monotonicity(model, x, y, maps, features_in_step=3, batch_size=B)
    assert ours.tolist() == theirs.tolist() == [1.0, 0.0, 1.0]
    model, _, y, maps = case
    assert _quantus("Monotonicity", model, x, y, maps, features_in_step=12).tolist() == [1.0] * B  # never inserts
    assert mo.monotonicity(model, x, y, maps, insert="baseline").tolist() == [1.0] * B
    theirs = _quantus("Monotonicity", model, x, y, maps, seed=3, perturb_baseline="uniform", features_in_step=12)
    ours = mo.monotonicity(model, x, y, maps, 12, "uniform", "baseline", batch_size=B, noise=_uniform_draws(10, 3))
    assert torch.equal(ours.double(), theirs)  # the draws: one fills the image, then one per step (9)


@pytest.mark.parametrize(("sizes", "baseline"), [((2,), "black"), ((2, 3), "black"), ((3,), "uniform")])
def test_infidelity_equals_quantus(case, sizes, baseline):
    model, x, y, maps = case
    samples = 2
    count = samples * sum((S // p) ** 2 for p in sizes) if baseline == "uniform" else None
    draws = _uniform_draws(count) if count else None
    theirs = _quantus("Infidelity", model, x, y, maps, seed=0, perturb_patch_sizes=list(sizes),
                      n_perturb_samples=samples, perturb_baseline=baseline)  # fmt: skip
    ours = mo.infidelity(model, x, y, maps, sizes, samples, baseline, batch_size=B, draws=draws)
    assert torch.allclose(ours.double(), theirs, rtol=1e-5)


@pytest.mark.parametrize("normalise", [False, True])
def test_infidelity_equals_captum_with_the_same_perturbations(case, normalise):
    """Captum's `infidelity` given Quantus' perturbation (cumulative 4 x 4 patches at the minimum, one per sample)
    and given Gaussian noise (the perturbation of Captum's example, the same draws), with and without `normalize`."""
    captum = pytest.importorskip("captum.metrics")
    model, x, y, maps = case
    x, a = x.double(), maps.double()[:, None].expand(-1, 3, -1, -1).contiguous()
    model = model.double()
    blocks, n = mo.patch_blocks((S, S), 3)
    low = x.flatten(1).amin(1).view(-1, 1, 1, 1)

    def patches(inputs):  # rows image-major: row k of an image sets patches 0..k
        k = torch.arange(len(inputs)) % n
        perturbed = torch.where(blocks[None, None] <= k.view(-1, 1, 1, 1), low.repeat_interleave(n, 0), inputs)
        return inputs - perturbed, perturbed

    theirs = captum.infidelity(model, patches, x, a, target=y, n_perturb_samples=n, normalize=normalise)
    ours = mo.infidelity(model, x, y, maps.double(), (3,), normalise=normalise)
    assert torch.allclose(ours, theirs, rtol=1e-9)
    noise = torch.randn(B, 5, 3, S, S, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 0.1
    gaussian = lambda inputs: (noise.flatten(0, 1), inputs - noise.flatten(0, 1))
    theirs = captum.infidelity(model, gaussian, x, a, target=y, n_perturb_samples=5, normalize=normalise)
    ours = mo.infidelity(model, x, y, maps.double(), samples=5, perturbation="gaussian", normalise=normalise,
                         draws=noise)  # fmt: skip
    assert torch.allclose(ours, theirs, rtol=1e-9)
    drawn = mo.infidelity(model, x, y, maps.double(), samples=5, perturbation="gaussian", std=0.1, seed=4)
    assert torch.equal(drawn, mo.infidelity(model, x, y, maps.double(), samples=5, perturbation="gaussian", std=0.1,
                                            seed=4))  # fmt: skip


def test_sufficiency_equals_quantus_and_depends_on_the_batch():
    """Maps near two prototypes, so that some are close; Quantus' batch (`batch_size`) is our `group_size`."""
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3)).eval()
    x = torch.rand(7, 3, 8, 8)
    proto = torch.rand(2, 8, 8)
    maps = proto[torch.tensor([0, 0, 1, 1, 0, 1, 0])] + 0.3 * torch.rand(7, 8, 8)
    y = model(x).argmax(1)
    for group in (64, 4):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = quantus.Sufficiency(disable_warnings=True)(model=model, x_batch=x.numpy(), y_batch=y.numpy(),
                                                                a_batch=maps[:, None].numpy(), channel_first=True,
                                                                batch_size=group)  # fmt: skip
        ours = mo.sufficiency(model, x, maps, group_size=group)
        assert torch.allclose(ours.double(), torch.tensor(theirs, dtype=torch.float64), atol=1e-6)
        assert 0 < ours.sum() < 7
    assert not torch.equal(mo.sufficiency(model, x, maps, group_size=4), mo.sufficiency(model, x, maps))
    flat = maps.clone()
    flat[:, 0, 0] = 1.0  # a pixel of zero variance: SciPy's distances turn NaN (Quantus: all 0); left out here
    assert torch.equal(mo.sufficiency(model, x, flat), mo.sufficiency(model, x, maps))


def test_options_are_checked(case):
    model, x, y, maps = case
    with pytest.raises(ValueError, match="baseline must be"):
        mo.faithfulness_estimate(model, x, y, maps, baseline="grey")
    with pytest.raises(ValueError, match="insert must be"):
        mo.monotonicity(model, x, y, maps, insert="x")
    with pytest.raises(ValueError, match="perturbation must be"):
        mo.infidelity(model, x, y, maps, perturbation="blur")
    with pytest.raises(ValueError, match=r"maps must be \[B, h, w\] with B = 3"):
        mo.monotonicity(model, x, y, maps[:2])
