"""Focus on 2x2 mosaics, SmoothMPRT and EfficientMPRT against Quantus 0.6 (same draws: its mosaics' Python
`random` draws, SmoothMPRT's NumPy noise fed to ours, the cascade's torch seeding), and the study's Focus stage."""

import warnings

import numpy as np
import pytest
import torch

from salience.measures import MEASURES
from salience.measures.focus import focus, focus_probe, mosaics, quadrants
from salience.measures.registry import Probe
from salience.measures.sanity import discrete_entropy, efficient_mprt, smooth_mprt

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def small():
    from salience.models import build

    torch.manual_seed(0)
    return build("smallcnn", 3).eval(), torch.rand(2, 3, 16, 16), torch.tensor([0, 2])


def _quantus_explain(method, size):
    from salience.attribution import attribute, upsample

    def explain(model, inputs, targets, **kwargs):
        x, t = torch.as_tensor(inputs).float(), torch.as_tensor(targets).long()
        return upsample(attribute(method, model, x, t).detach(), size)[:, None].double().numpy()

    return explain


def test_mosaics_are_quantus_mosaics_with_the_same_seed():
    quantus = pytest.importorskip("quantus")
    from quantus.functions.mosaic_func import mosaic_creation

    x, y = torch.rand(7, 3, 6, 8), torch.tensor([0, 1, 2, 0, 1, 0, 2])
    for per_class in (1, 3):
        ours = mosaics(x, y, seed=5, per_class=per_class)
        images, indices, classes, positions, targets = mosaic_creation(x.numpy(), y.numpy(), per_class, seed=5)
        assert np.array_equal(ours["x"].numpy(), images) and ours["x"].shape == (3 * per_class, 3, 12, 16)
        assert ours["indices"].tolist() == [list(t) for t in indices]
        assert ours["classes"].tolist() == [list(t) for t in classes]
        assert ours["positions"].tolist() == [list(t) for t in positions] and ours["target"].tolist() == targets
        assert torch.equal(quadrants(ours["masks"]), ours["positions"])
    assert quantus is not None
    with pytest.raises(ValueError, match="at least two classes"):
        mosaics(x, torch.zeros(7, dtype=torch.long))


def test_focus_equals_quantus_and_refuses_images_that_are_not_mosaics(small):
    quantus = pytest.importorskip("quantus")
    model, _, _ = small
    m = mosaics(torch.rand(6, 3, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2]), seed=3)
    maps = torch.randn(len(m["x"]), 16, 16, generator=torch.Generator().manual_seed(0)).double()
    maps = maps / maps.abs().flatten(1).amax(1)[:, None, None]  # max |A| = 1: Quantus' batch-wide max is per image
    theirs = quantus.Focus(disable_warnings=True)(model=model, x_batch=m["x"].numpy(), y_batch=m["target"].numpy(),
                                                  a_batch=maps[:, None].numpy(), channel_first=True,
                                                  custom_batch=[tuple(p) for p in m["positions"].tolist()])  # fmt: skip
    ours = focus(maps, m["positions"])
    assert torch.allclose(ours, torch.tensor(theirs, dtype=torch.float64), atol=1e-12)
    probe = Probe(model, lambda x, t: maps[:, ::2, ::2], m["x"], m["target"], maps, m["masks"])
    assert torch.allclose(focus_probe(probe), ours)
    boxes = torch.zeros(len(maps), 16, 16, dtype=torch.bool)
    boxes[:, 2:9, 3:11] = True
    with pytest.raises(ValueError, match=r"focus reads 2x2 mosaics: build them with salience.measures.focus.mosaics"):
        focus_probe(Probe(model, lambda x, t: maps, m["x"], m["target"], maps, boxes))
    with pytest.raises(ValueError, match="the probe has no masks"):
        focus_probe(Probe(model, lambda x, t: maps, m["x"], m["target"], maps, None))


def _quantus_noise(k, samples, shape):
    """Quantus' NumPy draws, in its order: the original model's maps twice (its a_batch, then its "original"
    layer), then each randomised model's; ours skips the second set (a similarity it reports, not its score)."""
    sets = np.stack([np.stack([np.random.randn(*shape) for _ in range(samples - 1)]) for _ in range(k + 1)])
    return torch.from_numpy(np.delete(sets, 1, axis=0)).float()


def test_smooth_mprt_equals_quantus_with_the_same_draws(small):
    """Quantus' SmoothMPRT explains the noisy images with `quantus.explain` (Captum) and its
    `explain_func_kwargs`, not with `explain_func`: Captum's InputXGradient is our input_x_gradient."""
    quantus = pytest.importorskip("quantus")
    model, x, y = small
    np.random.seed(0)
    noise = _quantus_noise(10, 3, tuple(x.shape))
    ours = smooth_mprt(model, x, y, "input_x_gradient", samples=3, max_steps=None, noise=noise)
    np.random.seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = quantus.SmoothMPRT(nr_samples=3, disable_warnings=True)(
            model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=None, channel_first=True,
            explain_func=_quantus_explain("input_x_gradient", (16, 16)),
            explain_func_kwargs={"method": "InputXGradient"})  # fmt: skip
    assert ours["layers"] == [k for k in theirs if k != "original"] and ours["layers"][0] == "block1.0"
    q = torch.tensor(np.stack([theirs[k] for k in ours["layers"]], 1))
    assert torch.allclose(ours["similarity"].double(), q, atol=1e-5)
    chunked = smooth_mprt(model, x, y, "input_x_gradient", samples=3, max_steps=None, noise=noise, batch_size=3)
    assert torch.allclose(chunked["similarity"], ours["similarity"], atol=1e-6)  # pairs split across chunks
    # the default draws: seeded, and fresh for each model
    a = smooth_mprt(model, x, y, "input_x_gradient", samples=3, max_steps=2)
    assert torch.equal(
        a["similarity"], smooth_mprt(model, x, y, "input_x_gradient", samples=3, max_steps=2)["similarity"]
    )
    assert a["layers"] == ["block1.0", "fc"]


def test_efficient_mprt_equals_quantus(small):
    quantus = pytest.importorskip("quantus")
    model, x, y = small
    ours = efficient_mprt(model, x, y, "input_x_gradient")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = quantus.EfficientMPRT(disable_warnings=True)(
            model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=None, channel_first=True,
            explain_func=_quantus_explain("input_x_gradient", (16, 16)))  # fmt: skip
    assert torch.allclose(ours["score"], torch.tensor(theirs, dtype=torch.float64), atol=1e-10)


def test_discrete_entropy_equals_numpy_histogram_and_scipy():
    from scipy.stats import entropy

    g = torch.Generator().manual_seed(0)
    a = torch.cat([torch.randn(3, 50, generator=g).double(), torch.full((1, 50), 2.0),
                   torch.arange(50.0)[None].double() / 7])  # fmt: skip
    expected = [entropy(np.histogram(r, bins=100)[0]) for r in a.numpy()]
    assert torch.allclose(discrete_entropy(a), torch.tensor(expected, dtype=torch.float64), atol=1e-12)
    assert discrete_entropy(a)[3] == 0


def test_entries_are_registered():
    assert MEASURES["focus"].kind == "probe" and MEASURES["focus"].needs_masks
    assert {MEASURES[n].family for n in ("smooth_mprt", "efficient_mprt")} == {"sanity"}


@pytest.fixture
def tiny_study(tmp_path):
    from PIL import Image

    from salience.study.config import load_study
    from salience.study.images import open_images

    rng = np.random.default_rng(0)
    for c in ("a", "b", "c"):
        (tmp_path / "img" / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "img" / c / f"{i}.png")
    cfg = load_study({"data": {"format": "imagefolder", "root": str(tmp_path / "img")},
                      "explain": {"methods": ["gradient", "input_x_gradient"]},
                      "measures": {"n_probe": 5, "n_boot": 100, "n_perm": 100, "seed": 3,
                                   "select": ["sparseness", "focus"]}})  # fmt: skip
    return cfg, open_images(cfg)[0]


def test_the_study_measures_focus_on_mosaics_of_its_images(tiny_study, small, tmp_path, monkeypatch):
    from salience.attribution import attribute, upsample
    from salience.data.core import collate
    from salience.study import measuring
    from salience.study.members import Member

    cfg, data = tiny_study
    model = small[0]
    members = [Member("G", "m", model, "test")]
    seen = {}
    monkeypatch.setattr(measuring, "measure_stores", lambda *a, **kw: seen.update(kw) or {"stores": {}})
    paths = {("m", spec): tmp_path / spec for spec in cfg.explain.specs}
    summary = measuring.measure_members(cfg, ["G"], members, data, None, paths, tmp_path, None, progress=False)
    assert seen["select"] == ["sparseness"]  # Focus reads mosaics: measured apart from the stores
    record = summary["focus"]
    assert record == __import__("json").loads((tmp_path / "focus.json").read_text())
    batch = collate([data[i] for i in range(5)])  # the first n_probe images: a/0, a/1, b/0, b/1, c/0
    built = mosaics(batch["image"], batch["labels"].argmax(1), seed=3)
    assert record["seed"] == 3 and record["per_class"] == 2 and len(record["mosaics"]) == 6
    first = record["mosaics"][0]
    assert first["images"] == [batch["id"][i] for i in built["indices"][0].tolist()]
    assert first["classes"] == [data.classes[c] for c in built["classes"][0].tolist()]
    assert first["target"] == data.classes[built["target"][0]]
    maps = upsample(attribute("input_x_gradient", model, built["x"], built["target"]), (32, 32))
    assert record["values"]["m"]["input_x_gradient"] == pytest.approx(focus(maps, built["positions"]).tolist())
    assert record["summary"]["m"]["gradient"]["n"] == 6 and set(record["groups"]["G"]) == set(cfg.explain.specs)
    assert not measuring.wants_focus(None) and measuring.wants_focus("all")
    with pytest.raises(ValueError, match=r"the first 2 images \(measures.n_probe\) with one class hold \[0\]"):
        measuring.study_mosaics(data, 2, 0)
