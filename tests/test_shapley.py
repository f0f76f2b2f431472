"""Kernel SHAP, LIME, feature ablation and Shapley value sampling on feature masks: equal to Captum 0.9 with the
same masks, samples and seed; exact Shapley values on a linear model and by enumeration; the masks."""

import math
import warnings

import pytest
import torch
from captum._utils.models.linear_model import SkLearnLasso
from captum.attr import FeatureAblation, KernelShap, Lime, ShapleyValueSampling
from sklearn.linear_model import LinearRegression
from torch import nn

from salience import attribution as A
from salience.attribution import shapley as S
from salience.attribution.features import feature_masks, grid_mask
from salience.models import build

pytestmark = pytest.mark.usefixtures("one_thread")


class Scaled(nn.Module):
    """smallcnn's logits ×100, so random-init scores move by more than LIME's Lasso penalty (α = 0.01)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = build("smallcnn", 4).double().eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 100 * self.net(x)


MODEL = Scaled().eval()
G = torch.Generator().manual_seed(1)
X = nn.functional.interpolate(torch.rand(2, 3, 6, 6, generator=G, dtype=torch.float64), size=32, mode="bilinear")
T = torch.tensor([0, 3])
USER = torch.stack([grid_mask(4, 32, 32, X.device) * 7 - 5, grid_mask(3, 32, 32, X.device).flip(1)])


def captum_reference(name: str, x: torch.Tensor, t: torch.Tensor, masks: torch.Tensor, seed: int, **kw) -> torch.Tensor:
    """Captum's maps `[P, H, W]`, one image after another after `torch.manual_seed(seed)` (its batched call also
    loops over images), with our renumbered masks; LIME's Lasso run to a tight tolerance."""
    explainer = {
        "kernel_shap": lambda: KernelShap(MODEL),
        "lime": lambda: Lime(MODEL, interpretable_model=SkLearnLasso(alpha=0.01, tol=1e-12, max_iter=100000)),
        "feature_ablation": lambda: FeatureAblation(MODEL),
        "shapley_sampling": lambda: ShapleyValueSampling(MODEL),
    }[name]()
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        maps = [
            explainer.attribute(x[b : b + 1], target=int(t[b]), feature_mask=masks[b][None, None], **kw)[0, 0]
            for b in range(x.shape[0])
        ]
    return torch.stack(maps).double()


# Captum fits KernelShap's regression in float32: its error is about cond(design) · 1.2e-7 (~3e3 here)
TOLERANCE = {"kernel_shap": 2e-3, "lime": 2e-5, "feature_ablation": 1e-12, "shapley_sampling": 1e-6}
SAMPLES = {"kernel_shap": {"n_samples": 60}, "lime": {"n_samples": 40}, "shapley_sampling": {"n_samples": 2}}


@pytest.mark.parametrize("mask", ["user", "slic", "grid:4"])
@pytest.mark.parametrize("name", list(TOLERANCE))
def test_equal_to_captum(name, mask):
    """Same maps as Captum (float64 model and inputs) with the same masks and seed, batched in chunks of 7 rows;
    the caller's global random state is left alone."""
    feature_mask = USER if mask == "user" else mask
    kw = SAMPLES.get(name, {})
    seed = {"kernel_shap": {}, "feature_ablation": {}}.get(name, {"seed": 5})
    state = torch.get_rng_state()
    ours = A.attribute(name, MODEL, X, T, feature_mask=feature_mask, batch_size=7, **kw, **seed)
    assert torch.equal(torch.get_rng_state(), state)
    masks, _ = feature_masks(X, feature_mask)
    ref = captum_reference(name, X, T, masks, seed.get("seed", 0), **kw)
    scale = ref.abs().max().item()
    assert scale > 0
    torch.testing.assert_close(ours, ref, rtol=0, atol=TOLERANCE[name] * scale)


def test_lime_with_captums_default_lasso_tolerance():
    """With Captum's default `SkLearnLasso(alpha=0.01)` (scikit-learn's tol 1e-4) the maps differ by its
    stopping error only."""
    mask = feature_masks(X[:1], USER[:1])[0][:, None]  # Captum keeps gaps between ids as absent features
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = Lime(MODEL).attribute(X[:1], target=0, feature_mask=mask, n_samples=40)[0, 0].double()[None]
    ours = A.attribute("lime", MODEL, X[:1], T[:1], feature_mask=USER[:1], n_samples=40)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-4 * ref.abs().max().item())


def test_kernel_shap_fit_is_sklearns_in_float64():
    """The batched weighted least squares equals scikit-learn's LinearRegression with sample weights in
    float64, also with fewer samples than features (minimum norm)."""
    prob = S.problem(X, T, "slic", 0.0)
    for n in (60, 12):
        z = S.seeded(0, lambda n=n: S.kernel_shap_samples(prob.counts, n))
        y, zf = S._sampled_scores(MODEL, prob, z, 64)
        size = zf.sum(2)
        w = torch.where((size == 0) | (size == prob.counts[:, None]), S.INF_WEIGHT, 1.0).double()
        ours = S.weighted_least_squares(zf, y, w)
        for p in range(2):
            ref = LinearRegression().fit(zf[p].numpy(), y[p].numpy(), sample_weight=w[p].numpy()).coef_
            torch.testing.assert_close(ours[p], torch.from_numpy(ref), rtol=0, atol=1e-9 * abs(ref).max())


class Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.fc = nn.Linear(3 * 12 * 12, 3).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def exact_shapley(model: nn.Module, x: torch.Tensor, base: torch.Tensor, mask: torch.Tensor, cls: int) -> torch.Tensor:
    """Shapley values `[F]` of the F <= 10 features of one image `[C, H, W]` by enumerating all 2^F coalitions:
    `φ_j = Σ_{S ∌ j} |S|! (F − |S| − 1)! / F! · (v(S ∪ {j}) − v(S))`, coalition c's bit j = feature j on."""
    f = int(mask.max()) + 1
    code = torch.arange(2**f)
    bits = (code[:, None] >> torch.arange(f)) & 1  # [2^F, F]
    with torch.no_grad():
        v = model(torch.where(bits.bool()[:, mask][:, None], x, base))[:, cls]
    size = bits.sum(1)
    weight = torch.tensor(
        [math.factorial(k) * math.factorial(f - k - 1) / math.factorial(f) for k in range(f)], dtype=torch.float64
    )
    phi = torch.zeros(f, dtype=torch.float64)
    for j in range(f):
        out = code[bits[:, j] == 0]
        phi[j] = (weight[size[out]] * (v[out | (1 << j)] - v[out])).sum()
    return phi


def test_linear_model_exact_shapley_values():
    """For y = w·x + b every method but LIME gives the exact Shapley values `Σ_{pixels of f} w·(x − baseline)`,
    and so does the enumeration used below."""
    model = Linear()
    x = torch.rand(2, 3, 12, 12, dtype=torch.float64, generator=G)
    base = torch.rand(1, 3, 1, 1, dtype=torch.float64, generator=G)
    t = torch.tensor([2, 0])
    mask = grid_mask(3, 12, 12, x.device)
    contrib = model.fc.weight.view(3, 3, 12, 12)[t] * (x - base)  # [P, C, H, W]
    exact = torch.zeros(2, 9, dtype=torch.float64).index_add_(1, mask.flatten(), contrib.sum(1).flatten(1))
    truth = exact.gather(1, mask.flatten()[None].expand(2, -1)).view(2, 12, 12)
    for name, kw in [
        ("feature_ablation", {}),
        ("shapley_sampling", {"n_samples": 1}),
        ("kernel_shap", {"n_samples": 40}),
    ]:
        maps = A.attribute(name, model, x, t, feature_mask="grid:3", baseline=base, **kw)
        torch.testing.assert_close(maps, truth, rtol=0, atol=1e-10, msg=name)
    torch.testing.assert_close(exact_shapley(model, x[0], base, mask, 2), exact[0], rtol=0, atol=1e-12)


def test_sampled_values_converge_to_exact_shapley_values():
    """On a small nonlinear model (flatten, Linear, tanh, Linear) with 9 grid features, Shapley value sampling and
    Kernel SHAP approach the enumerated Shapley values as samples grow; their values sum to y(x) − y(baseline)
    (efficiency; Kernel SHAP only nearly: its all-on / all-off samples weigh 10⁶, not ∞)."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 12 * 12, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    x, mask = 2 * torch.rand(1, 3, 12, 12, dtype=torch.float64, generator=G), grid_mask(3, 12, 12, X.device)
    exact = exact_shapley(model, x[0], torch.zeros_like(x[0]), mask, 1)
    first = torch.stack([(mask.flatten() == f).nonzero()[0, 0] for f in range(9)])
    err = {}
    for name, n in [("shapley_sampling", 8), ("shapley_sampling", 2000), ("kernel_shap", 40), ("kernel_shap", 4000)]:
        maps = A.attribute(
            name, model, x, torch.tensor([1]), feature_mask="grid:3", n_samples=n, seed=3, batch_size=4096
        )
        values = maps[0].flatten()[first]
        rtol = 1e-3 if name == "kernel_shap" else 1e-9
        torch.testing.assert_close(values.sum(), exact.sum(), rtol=rtol, atol=0)
        err[name, n] = (values - exact).norm().item() / exact.norm().item()
    assert err["shapley_sampling", 2000] < 0.05 and err["shapley_sampling", 2000] < err["shapley_sampling", 8] / 5, err
    assert err["kernel_shap", 4000] < 0.05 and err["kernel_shap", 4000] < err["kernel_shap", 40] / 5, err


@pytest.mark.parametrize("name", list(TOLERANCE))
def test_batched_is_per_image(name):
    """Feature ablation: a batch gives each image's own map, for any batch_size and for multi-hot pairs. Sampled
    methods draw image after image: the batch's first image gets the map it gets alone."""
    kw = {**SAMPLES.get(name, {}), "feature_mask": USER}
    maps = A.attribute(name, MODEL, X, T, batch_size=64, **kw)
    torch.testing.assert_close(A.attribute(name, MODEL, X, T, batch_size=5, **kw), maps, rtol=0, atol=1e-12)
    alone = A.attribute(name, MODEL, X[:1], T[:1], **SAMPLES.get(name, {}), feature_mask=USER[:1])
    torch.testing.assert_close(alone[0], maps[0], rtol=0, atol=1e-12)
    if name == "feature_ablation":
        for b in range(2):
            one = A.attribute(name, MODEL, X[b : b + 1], T[b : b + 1], feature_mask=USER[b])
            torch.testing.assert_close(one[0], maps[b], rtol=0, atol=1e-12)
        multi = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0]])
        pairs = A.attribute(name, MODEL, X, multi, feature_mask=USER)
        single = A.attribute(name, MODEL, X[[0, 0, 1]], torch.tensor([0, 2, 1]), feature_mask=USER[[0, 0, 1]])
        torch.testing.assert_close(pairs, single, rtol=0, atol=1e-12)


def test_feature_masks():
    """Grid cells, renumbering of any integer ids, SLIC on each image min-max scaled (so x and 2x + 3 segment
    alike), quickshift, and a baseline tensor broadcast to x."""
    masks, counts = feature_masks(X, "grid:4")
    assert masks.shape == (2, 32, 32) and counts.tolist() == [16] * 2
    assert masks[0, 0, :9].tolist() == [0] * 8 + [1] and masks[0, 8, 0] == 4
    masks, counts = feature_masks(X, USER)
    assert counts.tolist() == [16, 9] and all(
        masks[b].unique().tolist() == list(range(c)) for b, c in enumerate(counts)
    )
    assert torch.equal(masks[0], grid_mask(4, 32, 32, X.device))
    slic, counts = feature_masks(X, "slic")
    assert torch.equal(feature_masks(2 * X + 3, "slic")[0], slic) and counts.min() > 9
    assert feature_masks(X[:, :1], "slic:10")[1].max() <= 20
    assert feature_masks(X, "quickshift")[0].shape == (2, 32, 32)
    base = torch.rand(3, 1, 1, dtype=torch.float64, generator=G)
    maps = A.attribute("feature_ablation", MODEL, X, T, feature_mask="grid:2", baseline=base)
    full = A.attribute("feature_ablation", MODEL, X, T, feature_mask="grid:2", baseline=base.expand(2, 3, 32, 32))
    torch.testing.assert_close(maps, full, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"feature_mask": torch.zeros(2, 16, 16, dtype=torch.long)}, r"feature_mask has shape \(2, 16, 16\)"),
        ({"feature_mask": torch.zeros(32, 32)}, "feature_mask must be an integer tensor; got torch.float32"),
        ({"feature_mask": "felzenszwalb"}, "feature_mask 'felzenszwalb' is unknown; accepted"),
        ({"feature_mask": "grid:0"}, "feature_mask 'grid:0': N must be an integer >= 1"),
        ({"feature_mask": "grid:x"}, "feature_mask 'grid:x': N must be"),
        ({"feature_mask": "grid:40"}, "feature_mask 'grid:40': N = 40 is more cells"),
        ({"baseline": torch.zeros(3, 3, 32, 32)}, r"baseline of shape \(3, 3, 32, 32\) does not broadcast to x"),
        ({"n_samples": 0}, "n_samples must be an integer >= 1"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
    ],
)
def test_bad_options_fail_naming_them(options, message):
    with pytest.raises(ValueError, match=message):
        A.attribute("shapley_sampling", MODEL, X, T, **{"feature_mask": "grid:2", **options})
