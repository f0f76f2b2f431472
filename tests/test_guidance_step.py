"""The guided step: shared-forward maps equal the attribution methods; gradients reach the
parameters through the attribution (double backward); unannotated images add nothing."""

import pytest
import torch

from salience.attribution import attribute
from salience.data.core import object_masks
from salience.guidance import energy, sample_classes
from salience.guidance.step import Guide
from salience.models import build


def _batch(n=4, size=16, classes=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(n, classes)
    labels[torch.arange(n), torch.arange(n) % classes] = 1
    human = torch.zeros(n, size, size)
    human[:, 4:12, 4:12] = torch.rand(n, 8, 8, generator=g)
    return {
        "image": torch.rand(n, 3, size, size, generator=g),
        "labels": labels,
        "annotated": torch.tensor([True, False, True, True][:n]),
        "human_map": human,
        "mask": torch.zeros(n, size, size),
        "has_human_map": torch.ones(n, dtype=torch.bool),
        "boxes": [torch.tensor([[4.0, 4.0, 12.0, 12.0]])] * n,
        "box_labels": [labels[i].argmax()[None] for i in range(n)],
    }


@pytest.mark.parametrize(
    "method,depth",
    [("input_x_gradient", "input"), ("input_x_gradient", "mid2"), ("grad_cam", "final"), ("cam", "final")],
)
def test_shared_forward_maps_equal_the_attribution_methods(method, depth):
    model = build("smallcnn", 3).eval()
    x = torch.rand(5, 3, 16, 16)
    index = torch.tensor([0, 2, 3])
    classes = torch.tensor([1, 0, 2])
    logits, maps = Guide("energy", method, depth).forward_and_maps(model, x, index, classes)
    layer = None if depth == "input" else depth
    expected = attribute(method, model, x[index], classes, layer=None if method == "cam" else layer)
    assert torch.allclose(logits, model(x), atol=1e-6)
    assert torch.allclose(maps, expected, atol=1e-5)
    assert maps.requires_grad


def _guidance(model, batch, guide):
    return guide(model, batch, torch.Generator().manual_seed(0))["guidance"]


@pytest.mark.parametrize("method,depth", [("input_x_gradient", "input"), ("grad_cam", "mid3"), ("cam", "final")])
def test_guidance_gradient_reaches_parameters_through_the_attribution(method, depth):
    model = build("smallcnn", 2).double().eval()
    batch = _batch()
    batch["image"] = batch["image"].double()
    guide = Guide("cyborg", method, depth, lam=1.0)
    w = model.block1[0].weight  # first conv: reaches the guidance loss only through the attribution
    (grad,) = torch.autograd.grad(_guidance(model, batch, guide), w)
    assert grad.abs().sum() > 0
    for flat_index in (0, 7, 100):  # central finite differences
        values = []
        for delta in (1e-6, -2e-6, 1e-6):
            with torch.no_grad():
                w.view(-1)[flat_index] += delta
            values.append(_guidance(model, batch, guide).detach())
        plus, minus = values[:2]
        numeric = (plus - minus) / 2e-6
        assert grad.reshape(-1)[flat_index].item() == pytest.approx(numeric.item(), rel=1e-4, abs=1e-9)


def test_unannotated_images_do_not_change_the_loss_or_its_gradient():
    model = build("smallcnn", 2).train()
    batch = _batch()
    guide = Guide("cyborg", "input_x_gradient", "input", lam=2.0)

    def run(b):
        torch.manual_seed(0)
        model.zero_grad()
        out = guide(model, b, torch.Generator().manual_seed(1))
        out["total"].backward()
        return out, [p.grad.clone() for p in model.parameters()]

    first, grads = run(batch)
    changed = dict(batch, human_map=batch["human_map"].clone())
    changed["human_map"][1] = torch.rand(16, 16)  # image 1 is not annotated
    second, grads2 = run(changed)
    assert first["guided"] == 3
    assert second["total"].item() == first["total"].item()
    assert all(torch.equal(a, b) for a, b in zip(grads, grads2, strict=True))
    none = dict(batch, annotated=torch.zeros(4, dtype=torch.bool))
    out = guide(model.eval(), none)
    assert out["guidance"].item() == 0 and out["guided"] == 0
    assert out["total"].item() == pytest.approx(out["task"].item())


def test_total_is_task_plus_lambda_times_mean_guidance():
    model = build("smallcnn", 2).eval()
    batch = _batch()
    out = Guide("cyborg", "grad_cam", "final", lam=0.7)(model, batch, torch.Generator().manual_seed(0))
    assert out["total"].item() == pytest.approx(out["task"].item() + 0.7 * out["guidance"].item(), rel=1e-6)
    plain = Guide(None)(model, batch)
    assert plain["total"].item() == pytest.approx(out["task"].item(), rel=1e-6)


def test_box_losses_use_the_sampled_class_boxes_dilated():
    model = build("smallcnn", 3).eval()
    batch = _batch(n=3, classes=3)
    batch["labels"] = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 1.0]])
    batch["annotated"] = torch.ones(3, dtype=torch.bool)
    batch["boxes"] = [torch.tensor([[0.0, 0.0, 8.0, 8.0], [8.0, 8.0, 16.0, 16.0]])] * 3
    batch["box_labels"] = [torch.tensor([0, 1]), torch.tensor([2, 2]), torch.tensor([0, 2])]
    guide = Guide("energy", "input_x_gradient", "input", lam=1.0, dilation=0.25)
    out = guide(model, batch, torch.Generator().manual_seed(5))
    classes = sample_classes(batch["labels"], torch.Generator().manual_seed(5))
    index = torch.arange(3)
    _, maps = guide.forward_and_maps(model, batch["image"], index, classes)
    masks = torch.zeros(3, 16, 16)
    for i, c in enumerate(classes.tolist()):
        for box, label in zip(batch["boxes"][i], batch["box_labels"][i], strict=True):
            if label == c:  # box grown by 2 px per side (0.25 * 8), clipped to the image
                x0, y0, x1, y1 = (box + torch.tensor([-2.0, -2.0, 2.0, 2.0])).clamp(0, 16).int().tolist()
                masks[i, y0:y1, x0:x1] = 1
    assert out["guidance"].item() == pytest.approx(energy(maps, masks).mean().item(), rel=1e-5)


@pytest.mark.parametrize(
    "name,method,depth", [("bcos_resnet18", "bcos", "input"), ("xresnet18", "integrated_gradients", "input")]
)
def test_own_forward_methods_train(name, method, depth):
    model = build(name, 2).train()
    batch = _batch()
    guide = Guide("cyborg", method, depth, lam=1.0, ig_steps=2)
    guide.check(model)
    out = guide(model, batch, torch.Generator().manual_seed(0))
    out["total"].backward()
    assert out["guided"] == 3 and torch.isfinite(out["total"])
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize(
    "kwargs,key",
    [
        (dict(loss="focal"), "guidance.loss"),
        (dict(loss="energy", method="lrp"), "guidance.method"),
        (dict(loss="energy", depth="mid9"), "guidance.depth"),
        (dict(loss="energy", depth="nonexistent_module"), "guidance.depth"),
        (dict(loss="energy", lam=-1.0), "guidance.lambda"),
        (dict(loss="energy", method="bcos"), "guidance.method"),
        (dict(loss="energy", method="cam", depth="input"), "guidance.depth"),
        (dict(loss="energy", target="predicted"), "guidance.target"),
        (dict(loss="cyborg", target="best"), "guidance.target"),
        (dict(loss="energy", method="grad_cam", depth="input"), "guidance.depth"),
        (dict(loss="energy", method="integrated_gradients", depth="final"), "guidance.depth"),
    ],
)
def test_bad_guidance_settings_name_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key):
        Guide(**kwargs).check(build("smallcnn", 2))


def test_object_masks_fall_back_to_the_image_mask_without_boxes():
    batch = _batch(n=2)
    batch["boxes"] = [torch.tensor([[0.0, 0.0, 4.0, 2.0]]), torch.zeros(0, 4)]
    batch["box_labels"] = [torch.tensor([1]), torch.zeros(0, dtype=torch.long)]
    batch["mask"] = torch.zeros(2, 16, 16)
    batch["mask"][1, 5:9, 5:9] = 1  # a segmentation
    masks = object_masks(batch, torch.tensor([0, 1, 0]), torch.tensor([1, 0, 0]))
    assert masks[0].sum() == 8 and masks[0, :2, :4].sum() == 8
    assert torch.equal(masks[1], batch["mask"][1])
    assert masks[2].sum() == 0  # class 0 has no box in image 0


@pytest.mark.parametrize("method,depth", [("input_x_gradient", "input"), ("grad_cam", "final")])
def test_log_softmax_output_explains_the_log_probability(method, depth):
    model = build("smallcnn", 3).eval()
    x = torch.rand(4, 3, 16, 16)
    index = torch.tensor([0, 1, 3])
    classes = torch.tensor([2, 0, 1])
    _, maps = Guide("energy", method, depth, output="log_softmax").forward_and_maps(model, x, index, classes)
    log_prob_model = torch.nn.Sequential(model, torch.nn.LogSoftmax(1))  # its module "0.block4" is the final block
    expected = attribute(method, log_prob_model, x[index], classes, layer=None if depth == "input" else "0.block4")
    assert torch.allclose(maps, expected, atol=1e-5)
    _, logit_maps = Guide("energy", method, depth).forward_and_maps(model, x, index, classes)
    assert not torch.allclose(maps, logit_maps, atol=1e-4)


def test_log_softmax_cam_is_the_final_layer_ixg_of_the_log_probability():
    model = build("smallcnn", 3).eval()
    x = torch.rand(4, 3, 16, 16)
    index, classes = torch.tensor([0, 2, 3]), torch.tensor([1, 1, 0])
    _, maps = Guide("cyborg", "cam", "final", output="log_softmax").forward_and_maps(model, x, index, classes)
    log_prob_model = torch.nn.Sequential(model, torch.nn.LogSoftmax(1))
    ixg = attribute("input_x_gradient", log_prob_model, x[index], classes, layer="0.block4")
    assert torch.allclose(maps / (maps.shape[-1] * maps.shape[-2]), ixg, atol=1e-6)  # GAP head: d/dA = w / hw


def test_log_softmax_output_is_refused_where_it_cannot_apply():
    with pytest.raises(
        ValueError,
        match="guidance.output: 'log_softmax' needs method gradient, input_x_gradient, grad_cam, .*cam.*, not 'integrated_gradients'",
    ):
        Guide("energy", "integrated_gradients", "input", output="log_softmax").check(build("smallcnn", 2))


def test_pairs_with_an_empty_mask_get_no_guidance():
    """An annotated image whose sampled class has no box pixel is left out of the guidance mean (the energy
    loss would be a constant 1 there and dilute the others' gradient)."""
    model = build("smallcnn", 2).eval()
    batch = _batch()
    batch["annotated"] = torch.ones(4, dtype=torch.bool)
    batch["boxes"] = [torch.tensor([[4.0, 4.0, 12.0, 12.0]]), torch.zeros(0, 4)] * 2  # images 1, 3: no box
    batch["box_labels"] = [torch.tensor([0]), torch.zeros(0, dtype=torch.long)] * 2  # and an empty mask
    out = Guide("energy", "grad_cam", "final", lam=1.0)(model, batch, torch.Generator().manual_seed(0))
    assert out["guided"] == 2
    index = torch.tensor([0, 2])
    _, maps = Guide("energy", "grad_cam", "final").forward_and_maps(model, batch["image"], index, torch.tensor([0, 0]))
    masks = torch.zeros(2, 16, 16)
    masks[:, 4:12, 4:12] = 1
    assert out["guidance"].item() == pytest.approx(energy(maps, masks).mean().item(), rel=1e-5)
    batch["boxes"], batch["box_labels"] = [torch.zeros(0, 4)] * 4, [torch.zeros(0, dtype=torch.long)] * 4
    none = Guide("energy", "grad_cam", "final", lam=1.0)(model, batch, torch.Generator().manual_seed(0))
    assert none["guided"] == 0 and none["guidance"].item() == 0.0
