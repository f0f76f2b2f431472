"""The guidance paper's systems equal the authors' code (Rao et al., ICCV 2023; `sukrutrao/Model-Guidance`).

The B-cos networks are checked against the packaged `bcos` 0.1.3 (a test extra) where it builds the same
network (forward, first-order explanations), and against the transcription of the vendored B-cos v2 in
`model_guidance_reference.py` for what the package computes otherwise (the second-order gradients of
guidance). The X-DNN and the guided training step are checked against the transcription. All in float64.
"""

import pytest
import torch
from torch import nn

import model_guidance_reference as mg
from salience.attribution import attribute
from salience.guidance import sample_classes
from salience.guidance.step import Guide
from salience.models import UncentredBatchNorm2d, build, load_weights

SIZE, CLASSES = 64, 5


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp(min=1e-30)).item()


def _randomise_norms(model: nn.Module, seed: int = 0) -> None:
    """Random γ, and running variances of one train-mode pass (a fresh B-cos net's logits are all its bias)."""
    g = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d | UncentredBatchNorm2d)]
    for m in norms:
        m.weight.data.copy_(torch.rand(m.weight.shape, generator=g, dtype=m.weight.dtype) + 0.5)
        m.momentum = 1.0
    x = _images(4, 1)  # the images the tests explain: eval mode as well-scaled as train mode
    first = getattr(model.conv1, "linear", model.conv1)  # the authors' B-cos units hold their conv as .linear
    with torch.no_grad():
        model.train()(torch.cat([x, 1 - x], 1) if first.in_channels == 6 else x)
    for m in norms:
        m.momentum = 0.1


def _bcos_pair(depth: int, tmp_path):
    """The authors' B-cos ResNet (transcribed units on the packaged skeleton) and ours, loaded strictly through
    `load_weights` from a checkpoint saved as Model-Guidance saves it: `{"model": state_dict}` of its
    `BcosSequential` (keys under `0.`, units' `.linear.weight`)."""
    torch.manual_seed(depth)
    ref = mg.bcos_resnet(depth, CLASSES).double()
    _randomise_norms(ref)
    path = tmp_path / "mg_bcos.pt"
    torch.save({"model": {f"0.{k}": v for k, v in ref.state_dict().items()}}, path)
    return ref, _load(f"bcos_resnet{depth}", path)


def _load(name: str, path) -> nn.Module:
    """`build(name, CLASSES, weights=path)` in float64 (a float32 model would round the file's float64 weights)."""
    model = build(name, CLASSES).double()
    load_weights(model, path, name)
    return model


def _images(n=2, seed=1):
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_bcos_network_equals_the_packaged_bcos_where_it_builds_the_same_network():
    from bcos.models.resnet import resnet50
    from bcos.modules import norms

    torch.manual_seed(0)
    package = resnet50(
        num_classes=CLASSES, norm_layer=norms.NoBias(norms.BatchNormUncentered2d), logit_bias=mg.IMAGENET_LOGIT_BIAS
    ).double()
    _randomise_norms(package)
    ours = build("bcos_resnet50", CLASSES).double()
    ours.load_state_dict(ours.convert_state_dict(package.state_dict()))  # strict
    x = _images()
    e = torch.cat([x, 1 - x], 1)
    t = torch.tensor([1, 3])
    for train in (False, True):
        package.train(train), ours.train(train)
        logits = package(e)
        assert (logits - mg.IMAGENET_LOGIT_BIAS).abs().max() > 1e-2  # not all bias
        assert rel(ours(x), logits) < 1e-10
        with package.explanation_mode():  # the package detaches W(x) in the forward: first-order maps only
            e_ = e.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(package(e_)[torch.arange(2), t].sum(), e_)
        assert rel(attribute("bcos", ours, x, t), (e * g).sum(1)) < 1e-10


@pytest.mark.parametrize("depth,train", [(18, False), (18, True), (50, True)])
def test_bcos_logits_and_explanations_equal_the_authors_at_every_depth(depth, train, tmp_path):
    ref, ours = _bcos_pair(depth, tmp_path)
    ref.train(train), ours.train(train)
    x = _images()
    e = torch.cat([x, 1 - x], 1)
    t = torch.tensor([0, 4])
    assert rel(ours(x), ref(e)) < 1e-10
    feats: dict[str, torch.Tensor] = {}

    def keep(module, inputs, output):
        feats["f"] = output

    for layer in (None, "layer1", "layer2", "layer3", "layer4"):
        hook = None if layer is None else ref.get_submodule(layer).register_forward_hook(keep)
        e_ = e.clone().requires_grad_(True)
        logits = ref(e_)
        f = e_ if hook is None else feats["f"]
        with mg.explanation_mode(ref):
            (g,) = torch.autograd.grad(logits[torch.arange(2), t].sum(), f)
        if hook is not None:
            hook.remove()
        assert rel(attribute("bcos", ours, x, t, layer=layer), (f * g).sum(1)) < 1e-10, layer


FAMILIES = {
    # family: (our model, the authors' model, the methods the paper pairs with it)
    "vanilla": ("resnet18", None, ("input_x_gradient", "grad_cam")),
    "xdnn": ("xresnet18", lambda: mg.xfixup_resnet(18, CLASSES), ("input_x_gradient",)),
    "bcos": ("bcos_resnet18", lambda: mg.bcos_resnet(18, CLASSES), ("bcos",)),
}
DEPTHS = {"input": None, "mid2": "layer2", "final": "layer4"}
LOSSES = ("energy", "l1", "ppce", "rrr")
# every loss with every family's method at its first depth; the deeper depths with a loss rotated per family
CASES = [
    (family, method, depth, loss)
    for i, (family, (_, _, methods)) in enumerate(FAMILIES.items())
    for method in methods
    for j, depth in enumerate(("final",) if method == "grad_cam" else DEPTHS)
    for loss in (LOSSES if j == 0 else LOSSES[(i + j) % 4 : (i + j) % 4 + 1])
]
# `make test` runs each family's method once at each of its depths, the losses rotating so that every family
# meets three of them and every loss two families; the rest of CASES is marked slow
QUICK = {
    (family, method, depth, LOSSES[(i + j) % 4])
    for i, (family, (_, _, methods)) in enumerate(FAMILIES.items())
    for method in methods
    for j, depth in enumerate(("final",) if method == "grad_cam" else DEPTHS)
}


def _step_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(3, CLASSES, dtype=torch.float64)
    labels[0, [1, 3]] = labels[1, 2] = labels[2, [0, 2, 4]] = 1
    box_lists = []  # theirs: (class, xmin, ymin, xmax, ymax) per box
    for row in labels:
        box_lists.append([])
        for c in row.nonzero()[:, 0].tolist():
            x0, y0 = torch.randint(0, SIZE // 2, (2,), generator=g).tolist()
            w, h = torch.randint(4, SIZE // 2, (2,), generator=g).tolist()
            box_lists[-1].append((c, x0, y0, x0 + w, y0 + h))
    batch = {
        "image": _images(3, seed),
        "labels": labels,
        "annotated": torch.ones(3, dtype=torch.bool),
        "mask": torch.zeros(3, SIZE, SIZE),
        "boxes": [torch.tensor([b[1:] for b in bl], dtype=torch.float32) for bl in box_lists],
        "box_labels": [torch.tensor([b[0] for b in bl]) for bl in box_lists],
    }
    return batch, box_lists


def _pair(family: str, tmp_path):
    ours_name, theirs, _ = FAMILIES[family]
    if family == "bcos":
        return _bcos_pair(18, tmp_path)
    torch.manual_seed(0)
    ref = build(ours_name, CLASSES).double() if theirs is None else theirs().double()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # Fixup zeroes each branch's last conv: give every layer a say
    _randomise_norms(ref)
    path = tmp_path / "ref.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, path)  # their ImageNet format
    return ref, _load(ours_name, path)


def _grads(model: nn.Module, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    loss.backward()
    return {k: p.grad for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    "family,method,depth,loss",
    [pytest.param(*case, marks=() if case in QUICK else pytest.mark.slow) for case in sorted(set(CASES) | QUICK)],
)
def test_one_guided_step_equals_model_guidance_train_py(family, method, depth, loss, tmp_path):
    """Batch loss and every parameter gradient of one guided step (train mode, λ = 0.7, `reduction: sum`)."""
    ref, ours = _pair(family, tmp_path)
    ref.train(), ours.train()
    batch, box_lists = _step_batch()
    classes = sample_classes(batch["labels"], torch.Generator().manual_seed(5))  # the step draws these
    x = batch["image"] if family != "bcos" else torch.cat([batch["image"], 1 - batch["image"]], 1)
    # salience runs the network's own forward; their activator pools before bn1 (see the departure test)
    args = (x, batch["labels"], box_lists, classes, method, loss, DEPTHS[depth], 0.7, family == "bcos")
    theirs = mg.guided_loss(ref, *args, registration_order=False)
    out = Guide(loss, method, depth, lam=0.7, reduction="sum")(ours, batch, torch.Generator().manual_seed(5), True)
    assert out["guided"] == 3
    assert abs(out["total"].item() - theirs.item()) <= 1e-10 * abs(theirs.item())
    convert = getattr(ours, "convert_state_dict", lambda state: state)  # the authors' names -> ours
    mine, reference = _grads(ours, out["total"]), convert(_grads(ref, theirs))
    assert mine.keys() == reference.keys()
    worst = max(rel(mine[k], reference[k]) for k in reference if reference[k].norm() > 0)
    assert worst < 1e-8
    assert all(mine[k].norm() == 0 for k in reference if reference[k].norm() == 0)


def test_departure_the_authors_activator_pools_before_the_first_norm(tmp_path):
    """Model-Guidance's activator runs a B-cos net's children in registration order (conv1, pool, bn1) when it
    guides at a layer; the network's forward runs conv1, bn1, pool. salience follows the forward. The two agree
    in eval mode (a fixed per-channel scale commutes with the average pool) and not in train mode (batch
    statistics of pooled vs unpooled activations)."""
    ref, _ = _bcos_pair(18, tmp_path)
    x = _images()
    e = torch.cat([x, 1 - x], 1)
    for train, close in ((False, True), (True, False)):
        ref.train(train)
        registered, _ = mg.activate(ref, e, "layer2", bcos=True, registration_order=True)
        forward, _ = mg.activate(ref, e, "layer2", bcos=True, registration_order=False)
        assert rel(forward, ref(e)) < 1e-12
        assert (rel(registered, forward) < 1e-10) is close


def test_xdnn_imagenet_checkpoint_loads_with_a_fresh_head(tmp_path):
    """`fixup_resnet.py`'s ImageNet checkpoint (`{"state_dict": module.*}`, bias-free 1000-class fc) is what
    `train.py` starts from; it loads into a 5-class X-ResNet with the backbone kept and the head fresh."""
    ref = mg.xfixup_resnet(18, 1000)
    ref.fc = nn.Linear(512, 1000, bias=False)
    path = tmp_path / "xfixup_resnet18_model_best.pth.tar"
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, path)
    ours = build("xresnet18", CLASSES)
    load_weights(ours, path, "xresnet18")
    assert torch.equal(ours.layer3[1].conv2.weight, ref.layer3[1].conv2.weight)
    assert torch.equal(ours.layer2[0].downsample[0].weight, ref.layer2[0].downsample.weight)
    assert ours.fc.weight.shape == (CLASSES, 512) and ours.fc.bias is not None


@pytest.mark.parametrize("train", [False, True])
def test_xdnn_ixg_equals_captums_integrated_gradients_in_both_modes(train, tmp_path):
    """No norm layer, so the X-DNN is homogeneous in train mode too (where guidance happens)."""
    from captum.attr import IntegratedGradients

    ref, ours = _pair("xdnn", tmp_path)
    ours.train(train)
    x, t = _images(), torch.tensor([2, 4])
    ig = IntegratedGradients(ours).attribute(x, target=t, method="gausslegendre", n_steps=4).sum(1)
    assert rel(attribute("input_x_gradient", ours, x, t), ig) < 1e-8


def test_a_bcos_guided_step_updates_batch_norm_once(tmp_path):
    """The map comes from the forward that gives the logits: one batch-norm update per step."""
    _, ours = _bcos_pair(18, tmp_path)
    norms = [m for m in ours.modules() if isinstance(m, UncentredBatchNorm2d)]
    before = [(m.num_batches_tracked.item(), m.running_var.clone()) for m in norms]
    batch, _ = _step_batch()
    Guide("energy", "bcos", "mid2", lam=1.0)(ours.train(), batch, torch.Generator().manual_seed(5), True)
    images = batch["image"].double()
    for m, (n, _) in zip(norms, before, strict=True):
        assert m.num_batches_tracked.item() == n + 1
    first = norms[0]  # bn1 sees conv1's output: its new running variance is one momentum step from the old
    with torch.no_grad():
        v = ours.conv1(torch.cat([images, 1 - images], 1)).var(dim=(0, 2, 3), unbiased=False)
    assert torch.allclose(first.running_var, 0.9 * before[0][1] + 0.1 * v, rtol=1e-10)
