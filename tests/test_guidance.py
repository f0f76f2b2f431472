"""Guidance losses against their closed forms on hand-made maps and masks."""

import math

import pytest
import torch

from salience.guidance import (
    LOSSES,
    cyborg,
    energy,
    l1,
    minmax,
    objective,
    ppce,
    rrr,
    sample_classes,
    task_loss,
)
from salience.guidance.losses import cyborg_human_map

MAP = torch.tensor([[[1.0, 2.0], [3.0, -4.0]]])
CORNER = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
DIAGONAL = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])


def test_energy_closed_form():
    # A+ = 1, 2, 3, 0: 1 of 6 inside the corner
    assert energy(MAP, CORNER).item() == pytest.approx(1 - 1 / 6)
    assert energy(MAP, DIAGONAL).item() == pytest.approx(1 - 1 / 6)
    assert energy(MAP, torch.ones(1, 2, 2)).item() == pytest.approx(0.0)


def test_energy_of_a_map_without_positive_part_is_one_minus_inside():
    assert energy(-MAP.abs(), CORNER).item() == pytest.approx(1.0)
    tiny = torch.full((1, 2, 2), 1e-9)  # Σ A+ below EPS: 1 − Σ M·A+
    assert energy(tiny, CORNER).item() == pytest.approx(1 - 1e-9)


def test_energy_upsamples_the_map_to_the_mask():
    mask = torch.zeros(1, 4, 4)
    mask[0, :2, :] = 1  # half of the image
    assert energy(torch.ones(1, 1, 1), mask).item() == pytest.approx(0.5)
    # a 2x2 map with all energy in the top row stays in the top half after bilinear upsampling
    top = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    up = torch.nn.functional.interpolate(top[:, None], size=(4, 4), mode="bilinear")[:, 0]
    assert energy(top, mask).item() == pytest.approx(1 - up[0, :2].sum().item() / up.sum().item())


def test_l1_closed_form():
    # Â = 1/3, 2/3, 1, 0 against M = 1, 0, 0, 0
    assert l1(MAP, CORNER).item() == pytest.approx((2 / 3 + 2 / 3 + 1 + 0) / 4)
    assert l1(torch.zeros(1, 2, 2), CORNER).item() == pytest.approx(0.25)


def test_ppce_closed_form():
    # Â = 1/3 and 0 on the diagonal; BCELoss clamps log 0 at -100, as Rao et al.'s PPCE
    expected = -(math.log(1 / 3) - 100) / 2
    assert ppce(MAP, DIAGONAL).item() == pytest.approx(expected)
    assert ppce(MAP, torch.zeros(1, 2, 2)).item() == 0.0


def test_rrr_closed_form():
    # Â = .25, .5, .75, -1; outside the corner: .5² + .75² + 1²
    assert rrr(MAP, CORNER).item() == pytest.approx(0.25 + 0.5625 + 1.0)
    assert rrr(MAP, torch.ones(1, 2, 2)).item() == 0.0


def test_cyborg_closed_form_quantises_and_min_max_normalises_the_human_map():
    cam = torch.tensor([[[0.0, 2.0], [4.0, 4.0]]])
    human = torch.tensor([[[0.6, 0.1], [0.35, 0.6]]])  # 8-bit: 153, 26, 89, 153 -> min-max: 1, 0, 63/127, 1
    expected = ((torch.tensor([0.0, 0.5, 1.0, 1.0]) - torch.tensor([1.0, 0.0, 63 / 127, 1.0])) ** 2).mean()
    assert cyborg(cam, human).item() == pytest.approx(expected.item())


def test_cyborg_human_map_is_pils_antialiased_resize_not_point_sampling():
    human = torch.zeros(1, 16, 16)
    human[0, 3, 3] = 1.0  # one bright pixel: a 4x down-sampling averages it, point-sampling misses it
    small = cyborg_human_map(human, (4, 4))
    assert small[0, 0, 0] == 1.0 and small.sum() > 1.0
    naive = torch.nn.functional.interpolate(human[:, None], size=(4, 4), mode="bilinear")[0, 0]
    assert naive.sum() == 0.0


def test_minmax_of_a_constant_map_is_zero():
    assert torch.equal(minmax(torch.full((2, 3, 3), 5.0)), torch.zeros(2, 3, 3))


def test_losses_are_per_image_and_reject_bad_shapes():
    maps = torch.randn(5, 3, 3)
    masks = (torch.rand(5, 6, 6) > 0.5).float()
    for name, fn in LOSSES.items():
        out = fn(maps, masks)
        assert out.shape == (5,), name
        # per image: the loss of image 2 alone equals its entry in the batch
        assert fn(maps[2:3], masks[2:3]).item() == pytest.approx(out[2].item(), abs=1e-6), name
        with pytest.raises(ValueError, match=name):
            fn(maps, masks[:4])


def test_losses_have_finite_gradients_on_zero_maps():
    masks = torch.ones(2, 4, 4)
    masks[:, 0] = 0
    for name, fn in LOSSES.items():
        maps = torch.zeros(2, 4, 4, requires_grad=True)
        fn(maps, masks).sum().backward()
        assert torch.isfinite(maps.grad).all(), name


def test_lambda_relates_to_the_reference_sum_by_the_annotated_count():
    per_image = torch.rand(8)
    annotated = torch.tensor([True, True, False, True, False, False, True, True])
    lam_ref = 0.01
    task = torch.tensor(1.3)
    reference = task + lam_ref * per_image[annotated].sum()
    ours = objective(task, per_image[annotated].mean(), lam_ref * int(annotated.sum()))
    assert ours.item() == pytest.approx(reference.item())


def test_cyborg_objective_equals_alpha_weighted_form():
    # α·CE + (1−α)·MSE = α·(CE + λ·MSE) with λ = (1−α)/α
    alpha, ce, mse = 0.3, torch.tensor(0.9), torch.tensor(0.2)
    assert (alpha * objective(ce, mse, (1 - alpha) / alpha)).item() == pytest.approx(
        (alpha * ce + (1 - alpha) * mse).item()
    )


def test_task_loss_closed_forms():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    single = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    lse = torch.logsumexp(logits, dim=1)
    expected = ((lse[0] - 2.0) + (lse[1] - 0.0)) / 2
    assert task_loss(logits, single, multi_label=False).item() == pytest.approx(expected.item())
    multi = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    p = torch.sigmoid(logits)
    bce = -(multi * p.log() + (1 - multi) * (1 - p).log()).mean()
    assert task_loss(logits, multi, multi_label=True).item() == pytest.approx(bce.item(), rel=1e-6)


def test_sample_classes_is_uniform_among_true_classes_and_seeded():
    labels = torch.tensor([[1.0, 0, 1, 1, 0], [0, 1, 0, 0, 0], [0, 0, 0, 0, 0]]).repeat(2000, 1)
    drawn = sample_classes(labels, torch.Generator().manual_seed(3))
    again = sample_classes(labels, torch.Generator().manual_seed(3))
    assert torch.equal(drawn, again)
    first = drawn[0::3]
    assert set(first.tolist()) == {0, 2, 3}
    counts = torch.bincount(first, minlength=5).float() / first.numel()
    assert torch.allclose(counts[[0, 2, 3]], torch.full((3,), 1 / 3), atol=0.04)
    assert (drawn[1::3] == 1).all()
    assert (drawn[2::3] == -1).all()


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_losses_take_bool_masks_and_refuse_integer_ones(name):
    g = torch.Generator().manual_seed(3)
    maps = torch.randn(3, 4, 4, generator=g)
    masks = torch.rand(3, 8, 8, generator=g) > 0.6
    assert torch.equal(LOSSES[name](maps, masks), LOSSES[name](maps, masks.float()))
    with pytest.raises(TypeError, match=f"{name}: masks must be bool or floating point, got torch.uint8"):
        LOSSES[name](maps, masks.to(torch.uint8))
