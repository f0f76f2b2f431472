"""Every registered attribution method through the same checks; a new registry entry is tested here
without editing this file. Reference comparisons live in test_references.py and test_architectures.py."""

import functools
import inspect
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from salience import attribution as A
from salience.attribution import METHODS
from salience.guidance.step import Guide
from salience.models import build
from salience.study.config import ExplainConfig

pytestmark = pytest.mark.usefixtures("one_thread")
DOCS = (Path(__file__).parents[1] / "docs" / "definitions.md").read_text()
# cheap options for the methods whose defaults run many passes (one line per method)
FAST = {
    "integrated_gradients": {"steps": 4},
    "smooth_grad": {"samples": 3},
    "var_grad": {"samples": 3},
    # propagation (lrp)
    # deeplift family, cams
    "smooth_grad_sq": {"samples": 3},
    # shapley family
    "kernel_shap": {"n_samples": 48},
    "lime": {"n_samples": 48, "alpha": 1e-5},  # smallcnn's random-init scores move by less than alpha = 0.01
    "shapley_sampling": {"n_samples": 2},
    # partition shap, rise
    "partition_shap": {"max_evals": 64},
    "rise": {"n_masks": 64},
    # vit (V1)
    "chefer_lrp": {"start_layer": 1},  # an option through every entry point (default 0: tests/test_chefer_lrp.py)
    "attn_lrp": {"at": "tokens"},  # an option through every entry point (default "pixels": tests/test_attn_lrp.py)
}


@functools.cache
def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = build(name, 4).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.bias.uniform_(-0.1, 0.1)
    return model


@functools.cache
def _vit() -> nn.Module:
    """A tiny timm ViT (2 blocks, 4 heads, 8-px patches): the model of the transformer-only methods."""
    torch.manual_seed(0)
    kw = dict(img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=4)
    return build("timm:vit_tiny_patch16_224", 4, kwargs=kw).eval()


def _model_for(name: str) -> nn.Module:
    if METHODS[name].transformer_only:
        return _vit()
    return _model("bcos_resnet18" if METHODS[name].bcos_only else "smallcnn")


def _maps(name, model, x, t, **kw):
    return A.attribute(name, model, x, t, **FAST.get(name, {}), **kw)


@pytest.mark.parametrize("name", list(METHODS))
def test_batched_maps_are_per_image_and_per_pair(name):
    """Shape, finiteness, sign, detachment; each image's map does not depend on the rest of the batch
    (eval mode); a multi-hot target gives the maps of its (image, class) pairs in row-major order."""
    model = _model_for(name)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(3, 3, 32, 32, generator=g)
    t = torch.tensor([0, 3, 1])
    maps = _maps(name, model, x, t)
    assert maps.dim() == 3 and maps.shape[0] == 3 and torch.isfinite(maps).all(), name
    assert not maps.requires_grad
    assert maps.abs().amax() > 0, f"{name}: all-zero maps"
    if not METHODS[name].signed:
        assert (maps >= 0).all(), f"{name} is registered as unsigned but gives negative values"
    if METHODS[name].random:  # the same seed, the same maps; another seed, others
        torch.testing.assert_close(_maps(name, model, x, t), maps, rtol=0, atol=0)
        assert not torch.equal(_maps(name, model, x, t, seed=1), maps)
        return
    alone = _maps(name, model, x[1:2], t[1:2])
    torch.testing.assert_close(alone[0], maps[1], rtol=1e-4, atol=1e-5 * maps[1].abs().max().item())
    multi = torch.zeros(2, 4, dtype=torch.long)
    multi[0, [0, 2]] = 1
    multi[1, 3] = 1
    pairs = _maps(name, model, x[:2], multi)
    single = _maps(name, model, x[[0, 0, 1]], torch.tensor([0, 2, 3]))
    torch.testing.assert_close(pairs, single, rtol=1e-4, atol=1e-5 * single.abs().max().item())


@pytest.mark.parametrize("name", list(METHODS))
def test_explainer_scored_gives_the_maps_and_the_models_scores(name):
    """`Explainer.scored`: the maps of `attribute` and the model's scores of each (image, class) pair's image,
    whether they come from the maps' own forward (shared methods) or from one more forward."""
    model = _model_for(name)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    multi = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 1]])
    explainer = A.Explainer(name, model, options=FAST.get(name, {}))
    scores, maps = explainer.scored(x, multi)
    torch.testing.assert_close(maps, _maps(name, model, x, multi))
    with torch.no_grad():
        torch.testing.assert_close(scores, model(x[[0, 0, 1]]), rtol=1e-5, atol=1e-6)
    assert not scores.requires_grad and torch.equal(explainer(x, multi), maps)


@pytest.mark.parametrize("name", list(METHODS))
def test_attribute_many_and_the_registry_agree(name):
    """`attribute_many` gives the same maps; a layer is accepted exactly when the entry says so; the
    method is documented, and a study file and guidance accept or refuse it by its capabilities."""
    entry = METHODS[name]
    model = _model_for(name)
    x, t = torch.rand(2, 3, 32, 32), torch.tensor([1, 2])
    options = {name: FAST[name]} if name in FAST else None
    torch.testing.assert_close(A.attribute_many(model, x, t, [name], options=options)[name], _maps(name, model, x, t))
    if entry.takes_layer:
        assert A.parse_method(f"{name}@mid2") == (name, "mid2")
    else:
        with pytest.raises(ValueError, match=f"{name} takes no layer"):
            A.parse_method(f"{name}@mid2")
    assert re.search(rf"^\| `{name}`", DOCS, re.M), f"docs/definitions.md has no row for {name}"
    assert entry.summary and (entry.run or entry.from_pass).__doc__
    if entry.run is not None:  # options are named, so an unknown one is refused by name
        kinds = {p.kind for p in inspect.signature(entry.run).parameters.values()}
        assert not kinds & {inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL}, name
    layer = (entry.layer or "input") if not entry.takes_layer else ("final" if entry.layer else None)
    assert ExplainConfig(method=name, layer=layer).method == name
    guide = Guide("energy", name, depth=entry.layer or "input")
    if entry.differentiable:
        guide.check(model)
    else:
        with pytest.raises(ValueError, match="guidance.method: .* is not differentiable"):
            guide.check(model)
        with pytest.raises(ValueError, match="not differentiable"):
            A.attribute(name, model, x, t, create_graph=True)


class _Smooth(nn.Module):
    """A smooth two-conv net, so finite differences of a map-based loss are well defined."""

    guidance_depths = {"input": None, "mid1": "conv1", "mid2": "conv1", "mid3": "conv2", "final": "conv2"}

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.Softplus()
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        return self.fc(self.act(self.conv2(self.act(self.conv1(x)))).mean((2, 3)))


DIFFERENTIABLE = [n for n, m in METHODS.items() if m.differentiable and not m.bcos_only]


@pytest.mark.parametrize("name", DIFFERENTIABLE)
def test_create_graph_parameter_gradients_match_finite_differences(name):
    """With `create_graph=True` a loss on the maps reaches the parameters with the right gradient.
    (B-cos: tests/test_guidance_step.py guides a B-cos network.)"""
    torch.manual_seed(0)
    model = _Smooth().double()
    x = torch.rand(2, 3, 6, 6, dtype=torch.float64)
    t = torch.tensor([0, 2])

    def loss():
        maps = _maps(name, model, x, t, create_graph=True)
        return ((maps - 0.1) ** 2).mean()

    params = [model.conv1.weight, model.conv2.bias, model.fc.weight]
    grads = torch.autograd.grad(loss(), params)
    eps = 1e-6
    for p, g in zip(params, grads, strict=True):
        for idx in [(0,) * p.dim(), tuple(s - 1 for s in p.shape)]:
            with torch.no_grad():
                p[idx] += eps
                up = loss().item()
                p[idx] -= 2 * eps
                down = loss().item()
                p[idx] += eps
            assert abs((up - down) / (2 * eps) - g[idx].item()) <= 1e-6 * max(1.0, abs(g[idx].item())), (name, idx)


def test_unknown_method_lists_the_registry():
    x, t = torch.rand(1, 3, 32, 32), torch.tensor([0])
    with pytest.raises(ValueError, match="method 'lrp' is unknown; accepted: " + ", ".join(METHODS)):
        A.attribute("lrp", _model("smallcnn"), x, t)
    with pytest.raises(ValueError, match="explain.method|unknown"):
        ExplainConfig(method="lrp")


@pytest.mark.parametrize("transformer", [False, True])
def test_explain_writes_every_method_to_its_store(tmp_path, transformer):
    """What `salience explain --method ...` and a study run: every registered method (B-cos needs a B-cos
    network; the transformer-only methods, and then GradCAM on the token grid, a ViT) in one pass over the
    images, each store equal to the method run directly."""
    from salience.data.core import Record, SalienceDataset
    from salience.store.explain import explain_stores

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (5, 3, 32, 32), generator=g, dtype=torch.uint8)
    data = SalienceDataset([Record(id=f"im{i}", image=images[i], labels=[i % 4]) for i in range(5)], list("abcd"))
    if transformer:
        specs = [n for n, m in METHODS.items() if m.transformer_only] + ["grad_cam@final"]
    else:
        specs = [
            n if not m.takes_layer else f"{n}@mid3"
            for n, m in METHODS.items()
            if not (m.bcos_only or m.transformer_only)
        ]
    noise = ("smooth_grad@mid3", "smooth_grad_sq@mid3", "var_grad@mid3")  # their base, gradient, takes no layer
    specs = [s.partition("@")[0] if s in noise else s for s in specs]
    model = _vit() if transformer else _model("smallcnn")
    options = {s: FAST[s.partition("@")[0]] for s in specs if s.partition("@")[0] in FAST}
    outs = [{s: tmp_path / s for s in specs}]
    (stores,) = explain_stores([model], data, specs, outs, options=options, chunk_size=3, batch_size=2)
    x = torch.stack([data[i]["image"] for i in range(5)])
    for spec in specs:
        name, _, layer = spec.partition("@")
        maps, targets = stores[spec].read(0, 5)
        assert targets.tolist() == [0, 1, 2, 3, 0]
        if METHODS[name].random:  # the noise depends on the batch: rows 0-1 were explained together
            expected = _maps(name, model, x[:2], targets[:2], layer=layer or None)
            torch.testing.assert_close(maps[:2], expected, rtol=1e-4, atol=1e-6)
            continue
        expected = _maps(name, model, x, targets, layer=layer or None)
        scale = expected.abs().max().item()
        torch.testing.assert_close(
            maps, expected, rtol=1e-3, atol=1e-4 * scale, msg=lambda m, spec=spec: f"{spec}: {m}"
        )
