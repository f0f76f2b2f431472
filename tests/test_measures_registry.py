"""The measure registry: invariants every entry must keep (parametrized over `MEASURES`), the maps-only
measures against Quantus 0.6 on generated maps, and a study over three methods driven by the registry."""

import csv
import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from salience.measures import MEASURES, evaluate, get_measure, select
from salience.measures.suite import map_values

pytestmark = pytest.mark.usefixtures("one_thread")
MAPS = [n for n, m in MEASURES.items() if m.kind == "maps"]


def _rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _maps_and_masks(b=5, h=32, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    maps = torch.randn(b, h, w, generator=g)
    maps = maps / maps.abs().flatten(1).amax(1)[:, None, None]  # max |A| = 1: Quantus' batch-wide max is per image
    masks = torch.zeros(b, h, w, dtype=torch.bool)
    for i in range(b):
        masks[i, 3 + i : 17 + 2 * i, 2 + i : 15 + i] = True
    return maps, masks


def test_registry_entries_are_complete_and_unknown_names_are_listed():
    for name, m in MEASURES.items():
        assert m.name == name and m.label and m.kind in ("maps", "probe", "group") and m.reference
        assert m.better in ("higher", "lower", None)
    with pytest.raises(ValueError, match="'nope' is unknown; accepted: mprt, random_logit, "):
        get_measure("nope")
    assert select(["auc", "sparseness"]) == ["sparseness", "auc"]  # registry order
    assert "epg" not in select(None, "maps", masks=False)


@pytest.mark.parametrize("name", MAPS)
def test_maps_measures_are_per_image_in_range_and_batch_independent(name):
    m = MEASURES[name]
    maps, masks = _maps_and_masks()
    maps = maps.clamp(min=0) if m.range[0] is not None and name == "relevance_mass_accuracy" else maps
    values = map_values(maps, masks, names=[name])[name]
    assert values.shape == (5,)
    lo, hi = m.range
    finite = values[~values.isnan()]
    assert len(finite) == 5
    assert lo is None or (finite >= lo - 1e-6).all()
    assert hi is None or (finite <= hi + 1e-6).all()
    alone = map_values(maps[2:3], masks[2:3], names=[name])[name]
    assert torch.allclose(alone, values[2:3], atol=1e-6)
    if m.needs_masks:
        empty = masks.clone()
        empty[1] = False
        assert map_values(maps, empty, names=[name])[name][1].isnan()


def _quantus(metric, maps, masks, **kwargs):
    quantus = pytest.importorskip("quantus")
    b = len(maps)
    x = np.random.default_rng(0).random((b, 3, *maps.shape[-2:])).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = getattr(quantus, metric)(disable_warnings=True, **kwargs)(
            model=None,
            x_batch=x,
            y_batch=np.zeros(b, dtype=int),
            a_batch=maps[:, None].numpy(),
            s_batch=masks[:, None].numpy().astype(np.float32),
            channel_first=True,
        )
    return torch.tensor(np.asarray(scores, dtype=np.float64))


QUANTUS_MAPS = [
    ("sparseness", "Sparseness", {}, {}, 1e-6),
    ("complexity", "Complexity", {}, {}, 1e-5),
    ("relevance_mass_accuracy", "RelevanceMassAccuracy", {}, {}, 1e-5),
    ("relevance_rank_accuracy", "RelevanceRankAccuracy", {}, {}, 1e-6),
    ("top_k_intersection", "TopKIntersection", {"k": 100}, {"k": 100}, 1e-6),
    ("auc", "AUC", {}, {}, 1e-6),
]


@pytest.mark.parametrize(("name", "metric", "ours", "theirs", "tol"), QUANTUS_MAPS)
@pytest.mark.parametrize("signed", [True, False])
def test_maps_measures_equal_quantus(name, metric, ours, theirs, tol, signed):
    """Quantus 0.6 with its defaults (normalise_by_max, its abs setting) on continuous random maps (no ties)."""
    maps, masks = _maps_and_masks()
    maps = maps if signed else maps.abs()
    fn = MEASURES[name].fn
    got = (fn(maps, masks, **ours) if ours else fn(maps, masks)).double()
    assert torch.allclose(got, _quantus(metric, maps, masks, **theirs), atol=tol, rtol=1e-5)


def test_rank_measures_share_ties_at_the_cut():
    from salience.measures import relevance_rank_accuracy, top_k_intersection

    maps = torch.zeros(1, 4, 4)
    maps[0, 0, :2] = 1.0  # two top pixels, then 14 tied zeros
    masks = torch.zeros(1, 4, 4, dtype=torch.bool)
    masks[0, 0, 0] = masks[0, 3, 3] = masks[0, 2, 2] = True
    # top-3: both ones (one in the mask) + one of 14 zeros, 2 of which are in the mask
    assert relevance_rank_accuracy(maps, masks).item() == pytest.approx((1 + 2 / 14) / 3)
    assert top_k_intersection(maps, masks, k=2).item() == pytest.approx(0.5)


def test_auc_with_ties_equals_scikit_learn():
    """Maps with many ties (ReLU zeros, 5 levels): each tie counts one half, as scikit-learn's trapezoidal ROC."""
    from sklearn.metrics import roc_auc_score

    from salience.measures import auc

    g = torch.Generator().manual_seed(4)
    maps = (torch.randn(6, 12, 12, generator=g).clamp(min=0) * 2).round()
    masks = torch.rand(6, 12, 12, generator=g) < 0.3
    got = auc(maps, masks)
    for i in range(6):
        expected = roc_auc_score(masks[i].flatten().numpy(), maps[i].flatten().numpy())
        assert got[i].item() == pytest.approx(expected, abs=1e-6)


def test_complexity_and_sparseness_of_degenerate_maps():
    from salience.measures import complexity, sparseness

    flat = torch.ones(1, 8, 8)
    spike = torch.zeros(1, 8, 8)
    spike[0, 3, 3] = 2.0
    assert sparseness(flat).item() == pytest.approx(0.0, abs=1e-6)
    assert sparseness(spike).item() == pytest.approx(63 / 64, abs=1e-5)
    assert complexity(flat).item() == pytest.approx(np.log(64), abs=1e-5)
    assert complexity(spike).item() == pytest.approx(0.0, abs=1e-6)
    assert complexity(torch.zeros(1, 8, 8)).isnan().item()


def test_evaluate_reads_the_registry_and_refuses_group_measures():
    from salience.models import build

    model = build("smallcnn", 2).eval()
    x = torch.rand(2, 3, 32, 32)
    target = torch.tensor([0, 1])
    _, masks = _maps_and_masks(2)
    out = evaluate(model, x, target, masks=masks, measures=["auc", "sparseness", "deletion_auc"], deletion_steps=4)
    assert list(out) == ["sparseness", "auc", "deletion_auc"]
    with pytest.raises(ValueError, match="compare the models of a group"):
        evaluate(model, x, target, measures=["stability_ssim"])
    with pytest.raises(ValueError, match=r"measures \['auc'\] need masks"):
        evaluate(model, x, target, measures=["auc"])
    with pytest.raises(ValueError, match="'bogus' is unknown"):
        evaluate(model, x, target, measures=["bogus"])


@pytest.fixture(scope="module")
def three_method_study(tmp_path_factory):
    from salience.models import build
    from salience.study import run

    root = tmp_path_factory.mktemp("methods")
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / "img" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / "img" / c / f"{i}.png")
    weights = []
    for i in range(4):
        torch.manual_seed(i)
        torch.save(build("smallcnn", 2).state_dict(), root / f"m{i}.pt")
        weights.append(str(root / f"m{i}.pt"))
    study = {
        "out": str(root / "out"),
        "data": {"format": "imagefolder", "root": str(root / "img")},
        "explain": {"methods": ["grad_cam@final", "grad_cam_pp@final", "input_x_gradient"], "target": "predicted"},
        "measures": {
            "n_probe": 2,
            "n_boot": 100,
            "n_perm": 100,
            "gallery": 2,
            "select": ["entropy_histogram", "sparseness", "complexity", "deletion_auc", "stability_ssim", "mprt"],
        },
        "groups": {"A": {"model": "smallcnn", "num_classes": 2, "weights": weights[:2]},
                   "B": {"model": "smallcnn", "num_classes": 2, "weights": weights[2:]}},
    }  # fmt: skip
    return root / "out", run(study, progress=False)


def test_a_study_over_three_methods(three_method_study):
    out, results = three_method_study
    specs = ["grad_cam@final", "grad_cam_pp@final", "input_x_gradient"]
    rows = _rows(out / "per_image.csv")
    assert list(rows[0]) == ["group", "model", "method", "image", "class", "mprt", "entropy_histogram",
                             "sparseness", "complexity", "deletion_auc"]  # fmt: skip
    assert sorted({r["method"] for r in rows}) == sorted(specs)
    assert len(rows) == 3 * 4 * 6
    stab = _rows(out / "stability.csv")
    assert list(stab[0]) == ["group", "method", "image", "class", "ssim"]
    assert {(r["group"], r["method"]) for r in stab} == {(g, s) for g in "AB" for s in specs}
    assert list(results["by_method"]) == specs
    assert set(results["by_method"]["input_x_gradient"]["within"]["A"]) >= {"sparseness", "deletion_auc"}
    # the per-method summary pools exactly that method's rows
    vals = [float(r["sparseness"]) for r in rows if r["group"] == "B" and r["method"] == "grad_cam_pp@final"]
    mean = results["by_method"]["grad_cam_pp@final"]["summary"]["sparseness"]["B"]["mean"]
    assert mean == pytest.approx(np.mean(vals), rel=1e-4)
    page = (out / "report.html").read_text()
    assert "Methods compared within each group" in page and "Groups compared, per method" in page
    assert "Sanity check: model parameter randomisation" in page
    assert page.index("MPRT") < page.index("Entropy, histogram")  # sanity checks first
    curve = results["models"]["m0"]["by_method"]["input_x_gradient"]["mprt"]
    assert curve["layers"][0] == "fc" and len(curve["similarity"]) == len(curve["layers"])
    assert json.loads((out / "results.json").read_text())["measures"]["sparseness"]["better"] == "higher"


def _quantus_explain(method, layer, size):
    from salience.attribution import attribute, upsample

    def explain(model, inputs, targets, **kwargs):
        x, t = torch.as_tensor(inputs).float(), torch.as_tensor(targets).long()
        return upsample(attribute(method, model, x, t, layer=layer).detach(), size)[:, None].numpy()

    return explain


@pytest.fixture(scope="module")
def ten_classes():
    from salience.models import build

    torch.manual_seed(0)
    return build("smallcnn", 10).eval(), torch.rand(4, 3, 32, 32), torch.tensor([0, 3, 5, 9])


@pytest.mark.parametrize(("method", "layer"), [("grad_cam", "final"), ("input_x_gradient", None)])
def test_mprt_equals_quantus_with_the_same_draws(ten_classes, method, layer):
    """Same draws: Quantus seeds torch with seed + 1 before each module's reset_parameters; so do we."""
    quantus = pytest.importorskip("quantus")
    from salience.measures.sanity import mprt

    model, x, y = ten_classes
    ours = mprt(model, x, y, method, layer, seed=42, max_steps=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = quantus.MPRT(disable_warnings=True)(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=None,
                                                     explain_func=_quantus_explain(method, layer, (32, 32)),
                                                     batch_size=4, channel_first=True)  # fmt: skip
    assert ours["layers"] == [k for k in theirs if k != "original"]
    q = torch.tensor(np.stack([theirs[k] for k in ours["layers"]], 1))
    defined = ~q.isnan()  # Quantus (scipy) gives NaN where a randomised map is constant; we give 0
    assert torch.allclose(ours["similarity"].double()[defined], q[defined], atol=1e-5)
    assert (ours["similarity"][~defined] == 0).all()
    assert torch.allclose(ours["summary"], ours["similarity"].mean(1))


def test_one_mprt_cascade_for_several_methods_equals_each_alone(ten_classes, tmp_path, monkeypatch):
    """`mprt_many` (one randomisation cascade, `attribute_many` at each step) gives each method's `mprt`; a
    measure run over one model's stores of three methods runs one cascade and writes each method's value."""
    import salience.measures.entries as entries
    import salience.measures.sanity as sanity
    from salience.attribution import parse_method
    from salience.data import builtin_dataset
    from salience.data.builtin import BuiltinBenchmark
    from salience.measures.run import Source, measure_stores
    from salience.store.explain import explain_stores

    model, x, y = ten_classes
    methods = [("grad_cam", "final"), ("input_x_gradient", None), ("gradient", None)]
    together = sanity.mprt_many(model, x, y, methods, seed=5, max_steps=6)
    for (method, layer), got in zip(methods, together, strict=True):
        alone = sanity.mprt(model, x, y, method, layer, seed=5, max_steps=6)
        assert got["layers"] == alone["layers"]
        torch.testing.assert_close(got["similarity"], alone["similarity"], rtol=1e-5, atol=1e-6)

    data = builtin_dataset("test", BuiltinBenchmark(n_train=0, n_val=0, n_test=6, n_out_of_set=0, size=32))
    model2 = model.__class__(2).eval()
    specs = ["grad_cam@final", "input_x_gradient", "gradient"]
    paths = [{spec: tmp_path / "stores" / spec / "m" for spec in specs}]
    explain_stores([model2], data, specs, paths, target_policy="true", progress=False)
    stores = [str(paths[0][spec]) for spec in specs]
    cascades = []
    real = sanity.mprt_many
    monkeypatch.setattr(sanity, "mprt_many", lambda *a, **k: cascades.append(a[3]) or real(*a, **k))
    monkeypatch.setattr(entries, "mprt", lambda *a, **k: pytest.fail("a store's MPRT ran its own cascade"))
    sources = {p: Source(model2, data, n_probe=3) for p in stores}
    summary = measure_stores({"A": stores}, tmp_path / "out", sources=sources, select=["mprt"], n_boot=10, n_perm=10)
    assert summary is not None and cascades == [[parse_method(spec) for spec in specs]]
    batch = torch.stack([data[i]["image"] for i in range(3)])
    target = torch.tensor([int(data[i]["labels"].argmax()) for i in range(3)])
    for spec, path in zip(specs, stores, strict=True):
        alone = sanity.mprt(model2, batch, target, *parse_method(spec), seed=0)
        assert summary["stores"][path]["mprt"]["mean"] == pytest.approx(
            alone["summary"].double().mean().item(), abs=1e-5
        )


def test_mprt_compares_at_most_max_steps_of_the_same_cascade(ten_classes):
    from salience.measures.sanity import mprt

    model, x, y = ten_classes
    full = mprt(model, x, y, "input_x_gradient", seed=3, max_steps=None)
    few = mprt(model, x, y, "input_x_gradient", seed=3, max_steps=4)
    assert len(few["layers"]) == 4 and few["layers"][0] == "fc" and few["layers"][-1] == full["layers"][-1]
    idx = [full["layers"].index(n) for n in few["layers"]]
    assert torch.allclose(few["similarity"], full["similarity"][:, idx], atol=1e-6)
    assert torch.equal(model(x), model(x))  # the model itself is untouched


def test_random_logit_equals_quantus_with_the_same_draws(ten_classes):
    """Same draws: NumPy's legacy generator seeded as Quantus seeds it, per batch (here batches of one image,
    since Quantus normalises by the batch's max)."""
    quantus = pytest.importorskip("quantus")
    from salience.attribution import attribute
    from salience.measures.sanity import random_logit

    model, x, y = ten_classes
    for method, layer in (("grad_cam", "final"), ("input_x_gradient", None)):
        explain = lambda xx, t, method=method, layer=layer: attribute(method, model, xx, t, layer=layer)
        ours = torch.cat([random_logit(model, explain, x[i : i + 1], y[i : i + 1], seed=42)["similarity"]
                          for i in range(4)])  # fmt: skip
        theirs = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for i in range(4):
                theirs += quantus.RandomLogit(num_classes=10, seed=42, disable_warnings=True)(
                    model=model, x_batch=x[i : i + 1].numpy(), y_batch=y[i : i + 1].numpy(), a_batch=None,
                    explain_func=_quantus_explain(method, layer, (32, 32)), channel_first=True)  # fmt: skip
        assert torch.allclose(ours.double(), torch.tensor(theirs, dtype=torch.float64), atol=1e-5)


def test_off_classes_are_never_the_target():
    from salience.measures.sanity import off_classes

    target = torch.arange(10).repeat(20)
    off = off_classes(target, 10, seed=1)
    assert (off != target).all() and off.min() >= 0 and off.max() <= 9


def test_a_method_whose_maps_survive_randomisation_is_named():
    from salience.report.methods import MPRT_FIGURE
    from salience.study.findings import sanity_findings

    curve = lambda v: {"mprt": {"layers": ["fc", "conv"], "similarity": [0.9, v]}}
    results = {
        "explain": {"method": "grad_cam", "methods": ["grad_cam@final", "gradient"]},
        "models": {
            "m": {"by_method": {"grad_cam@final": curve(0.1), "gradient": curve(0.8)}},
            "n": {"by_method": {"grad_cam@final": curve(0.0), "gradient": curve(0.7)}},
        },
    }
    found = sanity_findings(results)
    assert len(found) == 2 and found[0].startswith("gradient fails") and MPRT_FIGURE in found[0]
    assert "grad_cam@final (0.05)" in found[1]


def test_cli_measure_selects_measures_by_name(three_method_study, tmp_path):
    from typer.testing import CliRunner

    from salience.cli import app

    out, _ = three_method_study
    a = ",".join(str(out / "stores" / "input_x_gradient" / m) for m in ("m0", "m1"))
    b = ",".join(str(out / "stores" / "grad_cam@final" / m) for m in ("m2", "m3"))
    args = ["measure", "--group", f"A={a}", "--group", f"B={b}", "--out", str(tmp_path / "o")]
    ok = CliRunner().invoke(app, args + ["--measure", "complexity", "--measure", "sparseness"])
    assert ok.exit_code == 0, ok.output
    rows = _rows(tmp_path / "o" / "per_image.csv")
    assert list(rows[0])[2:] == ["method", "image", "class", "sparseness", "complexity"]
    assert {r["method"] for r in rows} == {"input_x_gradient", "grad_cam@final"}
    bad = CliRunner().invoke(app, args + ["--measure", "faithfulness"])
    assert bad.exit_code != 0 and "'faithfulness' is unknown" in bad.output


PROBES = [n for n, m in MEASURES.items() if m.kind == "probe"]


@pytest.fixture(scope="module")
def probe_inputs():
    from salience.attribution import attribute
    from salience.models import build

    torch.manual_seed(1)
    model = build("smallcnn", 3).eval()
    x = torch.rand(2, 3, 16, 16)  # small: ROAD solves 2 x 50 x 3 systems
    target = torch.tensor([0, 2])
    masks = torch.zeros(2, 16, 16, dtype=torch.bool)
    masks[:, 2:10, 3:11] = True
    explain = lambda xx, t: attribute("input_x_gradient", model, xx, t)
    return model, explain, x, target, explain(x, target), masks


@pytest.mark.parametrize("name", PROBES)
def test_probe_measures_are_per_image_in_range_and_seeded(probe_inputs, name):
    from salience.measures.registry import Probe

    model, explain, x, target, maps, masks = probe_inputs
    m = MEASURES[name]
    if m.on_mosaics:  # Focus reads mosaics: masks of two of the four quadrants of each image
        masks = torch.zeros_like(masks)
        masks[0, :8, :8] = masks[0, 8:, 8:] = masks[1, :8, 8:] = masks[1, 8:, :8] = True
    run = lambda: m.fn(Probe(model, explain, x, target, maps, masks, 0, 4, "input_x_gradient", None, samples=4))
    values = run()
    assert values.shape == (2,) and torch.isfinite(values).all()
    lo, hi = m.range
    assert (lo is None or (values >= lo - 1e-6).all()) and (hi is None or (values <= hi + 1e-6).all())
    assert torch.equal(run(), values)  # the same seed gives the same numbers


def _linear_gray(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 10)).eval()


def test_linear_imputation_equals_quantus_sparse_solve():
    pytest.importorskip("quantus")
    from quantus.functions.perturb_func import noisy_linear_imputation

    from salience.measures.faithfulness import linear_imputation

    x = torch.rand(3, 2, 12, 12, dtype=torch.float64)
    masks = torch.rand(3, 12, 12) < torch.tensor([0.1, 0.5, 0.99])[:, None, None]
    ours = linear_imputation(x, masks)
    for i in range(3):
        ref = noisy_linear_imputation(x[i].numpy(), masks[i].flatten().nonzero().flatten().numpy(), noise=0.0)
        assert np.abs(ref - ours[i].numpy()).max() < 1e-6


@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_road_equals_quantus_without_noise(order):
    """Quantus' ROAD orders the channel-broadcast map's entries, which only works for one channel: compared on
    grey images; its noise (NumPy, per system) is switched off here and checked statistically below."""
    quantus = pytest.importorskip("quantus")
    from salience.measures.faithfulness import road

    model = _linear_gray()
    x = torch.rand(6, 1, 16, 16)
    y = model(x).argmax(1)
    maps = torch.randn(6, 16, 16)
    ours = road(model, x, y, maps, order=order, noise=0.0)
    q = quantus.ROAD(noise=0.0, disable_warnings=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=(maps if order == "morf" else -maps)[:, None].numpy(),
          channel_first=True)  # fmt: skip
    theirs = torch.tensor(list(q.evaluation_scores.values()), dtype=torch.float64)
    assert torch.allclose(ours["correct"].double().mean(0), theirs)
    assert 0 < ours["score"].mean() < 1  # the model's predictions do change


def test_road_noise_is_gaussian_on_the_imputed_pixels_only():
    """Statistical check of the noise Quantus draws with NumPy: N(0, noise^2) on the imputed values only."""
    from salience.measures import faithfulness as fa

    x = torch.rand(2, 3, 40, 40, dtype=torch.float64)
    maps = torch.rand(2, 40, 40, dtype=torch.float64)
    seen = []

    def spy(t):
        seen.append(t.clone())
        return torch.zeros(len(t), 2, dtype=t.dtype)

    fa.road(spy, x, torch.zeros(2, dtype=torch.long), maps, percentages=(40,), noise=0.01, seed=3)
    k = int(40 * 40 * 40 / 100)
    mask = torch.zeros(2, 1600, dtype=torch.bool)
    mask.scatter_(1, maps.flatten(1).argsort(1, descending=True)[:, :k], True)
    mask = mask.view(2, 1, 40, 40).expand(-1, 3, -1, -1)
    noise = seen[0] - fa.linear_imputation(x, mask[:, 0])
    assert noise[~mask].abs().max() == 0
    assert abs(noise[mask].std().item() - 0.01) < 0.001 and abs(noise[mask].mean().item()) < 0.001


def _np_draw(fn):
    """Noise in Quantus' order: one `fn(size=(B, C*H*W))` NumPy draw per sample."""
    return lambda shape: (
        torch.from_numpy(np.stack([fn(size=(shape[1], int(np.prod(shape[2:])))) for _ in range(shape[0])]))
        .float()
        .view(shape)
    )


def test_sensitivities_and_local_lipschitz_equal_quantus_with_the_same_draws(ten_classes):
    quantus = pytest.importorskip("quantus")
    from salience.attribution import attribute
    from salience.measures.robustness import local_lipschitz, sensitivity

    model, x, y = ten_classes
    x, y = x[:2], y[:2]
    explain = lambda xx, t: attribute("input_x_gradient", model, xx, t)
    maps = explain(x, y)
    kw = dict(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=None, channel_first=True,
              explain_func=_quantus_explain("input_x_gradient", None, (32, 32)))  # fmt: skip
    uniform = lambda size: np.random.uniform(-0.2, 0.2, size=size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.random.seed(0)
        q_avg = quantus.AvgSensitivity(nr_samples=5, disable_warnings=True)(**kw)
        np.random.seed(0)
        q_max = quantus.MaxSensitivity(nr_samples=5, disable_warnings=True)(**kw)
        np.random.seed(0)
        s = sensitivity(explain, x, y, maps, samples=5, batch=4, draw=_np_draw(uniform))
        assert torch.allclose(s.mean(1).double(), torch.tensor(q_avg, dtype=torch.float64), rtol=1e-4)
        assert torch.allclose(s.amax(1).double(), torch.tensor(q_max, dtype=torch.float64), rtol=1e-4)
        for i in range(2):  # Quantus normalises by the batch's max: one image per call
            np.random.seed(0)
            q = quantus.LocalLipschitzEstimate(nr_samples=5, disable_warnings=True)(**(kw | {
                "x_batch": x[i : i + 1].numpy(), "y_batch": y[i : i + 1].numpy()}))  # fmt: skip
            np.random.seed(0)
            normal = lambda size: np.random.normal(0, 0.1, size=size)
            ours = local_lipschitz(explain, x[i : i + 1], y[i : i + 1], maps[i : i + 1], 5, draw=_np_draw(normal))
            assert ours.item() == pytest.approx(q[0], rel=1e-4)
    # the default draws (a seeded torch generator) agree in distribution: mean sensitivity within 5 %
    torch_draws = sensitivity(explain, x, y, maps, samples=60).mean(1)
    np.random.seed(1)
    numpy_draws = sensitivity(explain, x, y, maps, samples=60, draw=_np_draw(uniform)).mean(1)
    assert torch.allclose(torch_draws, numpy_draws, rtol=0.05)


def test_faithfulness_correlation_equals_quantus_with_the_same_draws(ten_classes):
    quantus = pytest.importorskip("quantus")
    from salience.attribution import attribute
    from salience.measures.faithfulness import faithfulness_correlation

    model, x, y = ten_classes
    x, y = x[:2], y[:2]
    maps = attribute("input_x_gradient", model, x, y).detach()

    def pick(b, r):  # per run: one choice per image, then the B uniform draws of Quantus' baseline dictionary
        runs = []
        for _ in range(r):
            runs.append(np.stack([np.random.choice(3 * 32 * 32, 100, replace=False) for _ in range(b)]))
            np.random.uniform(size=b)
        return torch.from_numpy(np.stack(runs, 1))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.random.seed(0)
        theirs = quantus.FaithfulnessCorrelation(nr_runs=30, subset_size=100, disable_warnings=True,
                                                 return_aggregate=False)(
            model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=maps[:, None].numpy(), channel_first=True)  # fmt: skip
    np.random.seed(0)
    ours = faithfulness_correlation(model, x, y, maps, runs=30, subset=100, chunk=7, draw=pick)
    assert torch.allclose(ours.double(), torch.tensor(theirs, dtype=torch.float64), atol=1e-5)
