"""Method options (`attribute(name, ..., **options)`) from Python, `attribute_many`, the study file, the map
stores and the measures that explain again (MPRT): one set of options, the same maps everywhere."""

import pytest
import torch

from salience import attribution as A
from salience.data.core import Record, SalienceDataset
from salience.measures.sanity import mprt
from salience.models import build
from salience.store.explain import explain_stores
from salience.study.config import ExplainConfig

pytestmark = pytest.mark.usefixtures("one_thread")
WINDOW = {"window": 16, "stride": 8}


def _setup():
    torch.manual_seed(0)
    model = build("smallcnn", 4).eval()
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return model, x, torch.tensor([0, 1, 3])


def test_attribute_many_passes_each_methods_options():
    model, x, t = _setup()
    found = A.attribute_many(model, x, t, ["occlusion", "grad_cam"], options={"occlusion": WINDOW})
    torch.testing.assert_close(found["occlusion"], A.attribute("occlusion", model, x, t, **WINDOW))
    assert not torch.allclose(found["occlusion"], A.attribute("occlusion", model, x, t))
    torch.testing.assert_close(found["grad_cam"], A.attribute("grad_cam", model, x, t))
    with pytest.raises(ValueError, match=r"method 'occlusion': unknown option 'windw'; it takes window, stride"):
        A.attribute("occlusion", model, x, t, windw=3)
    with pytest.raises(ValueError, match="method 'grad_cam': unknown option 'window'; it takes none"):
        A.attribute_many(model, x, t, ["grad_cam"], options={"grad_cam": WINDOW})
    with pytest.raises(ValueError, match=r"options: \['gradient'\] are not among the methods"):
        A.attribute_many(model, x, t, ["occlusion"], options={"gradient": {}})


def test_study_options_are_keyed_by_spec_and_checked():
    cfg = ExplainConfig(methods=["occlusion", "grad_cam@mid3"], options={"occlusion": WINDOW})
    assert cfg.options == {"occlusion": WINDOW}
    with pytest.raises(ValueError, match="options: 'smooth_grad' is not one of the methods"):
        ExplainConfig(methods=["occlusion"], options={"smooth_grad": {"samples": 2}})
    with pytest.raises(ValueError, match="unknown option 'size'"):
        ExplainConfig(method="occlusion", options={"occlusion": {"size": 2}})
    with pytest.raises(ValueError, match="'grad_cam': unknown option 'window'; it takes none"):
        ExplainConfig(methods=["grad_cam@mid3"], options={"grad_cam": WINDOW})


def test_stores_keep_the_options_and_mprt_explains_with_them(tmp_path):
    model, x, t = _setup()
    images = (x * 255).to(torch.uint8)
    data = SalienceDataset([Record(id=f"im{i}", image=images[i], labels=[int(t[i])]) for i in range(3)], list("abcd"))
    (stores,) = explain_stores(
        [model], data, ["occlusion"], [{"occlusion": tmp_path / "occ"}], options={"occlusion": WINDOW}
    )
    store = stores["occlusion"]
    assert store.meta.options == WINDOW
    maps, targets = store.read(0, 3)
    xs = torch.stack([data[i]["image"] for i in range(3)])
    torch.testing.assert_close(maps, A.attribute("occlusion", model, xs, targets, **WINDOW))
    with_options = mprt(model, xs, targets, "occlusion", options=WINDOW, max_steps=2)
    given_maps = mprt(model, xs, targets, "occlusion", maps=maps, options=WINDOW, max_steps=2)
    torch.testing.assert_close(with_options["similarity"], given_maps["similarity"])
    default = mprt(model, xs, targets, "occlusion", max_steps=2)
    assert not torch.allclose(default["similarity"], with_options["similarity"])


def test_the_probes_explain_again_with_the_maps_options():
    """`measures.evaluate(..., method_options=)`: MPRT's randomised models are explained with the same options as the maps."""
    from salience.measures import evaluate

    model, x, t = _setup()
    got = evaluate(model, x, t, method="occlusion", layer=None, measures=["mprt"], method_options=WINDOW)["mprt"]
    expected = mprt(model, x, t, "occlusion", seed=0, options=WINDOW)["summary"]
    torch.testing.assert_close(got, expected.detach().cpu())
    default = evaluate(model, x, t, method="occlusion", layer=None, measures=["mprt"])["mprt"]
    assert not torch.allclose(default, got)


def test_measure_options_reach_the_maps_measures_and_bad_ones_are_named():
    """`evaluate(..., options={measure: {...}})` passes Quantus' settings to the measure; a study file takes the
    same under `measures.options`; an unknown measure or option fails naming it and what is accepted."""
    from salience.measures import evaluate, top_k_intersection
    from salience.study.config import MeasuresConfig

    model, x, t = _setup()
    masks = torch.zeros(3, 32, 32, dtype=torch.bool)
    masks[:, 4:20, 8:24] = True
    got = evaluate(model, x, t, masks=masks, measures=["top_k_intersection"], options={"top_k_intersection": {"k": 7}})
    maps = A.upsample(A.attribute("grad_cam", model, x, t, layer="final"), (32, 32))
    torch.testing.assert_close(got["top_k_intersection"], top_k_intersection(maps, masks, k=7))
    with pytest.raises(ValueError, match="measure 'top_k_intersection': unknown option 'kk'; it takes k"):
        evaluate(model, x, t, masks=masks, measures=["top_k_intersection"], options={"top_k_intersection": {"kk": 7}})
    assert MeasuresConfig(options={"top_k_intersection": {"k": 7}}).options == {"top_k_intersection": {"k": 7}}
    with pytest.raises(ValueError, match="'nope' is unknown"):
        MeasuresConfig(options={"nope": {}})
