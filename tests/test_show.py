"""`salience.show`: the grid of images and maps the tutorials draw (rows, columns, colour scales, errors)."""

import pytest
import torch

import salience
from salience.report.overlays import colour_scale


def _maps(fig):
    """The colour limits of every map panel, row by row (panels holding two images: the picture and its map)."""
    return [ax.images[1].get_clim() for ax in fig.axes if len(ax.images) == 2]


def test_the_grid_has_a_row_per_image_and_model_and_a_column_per_method():
    x = torch.rand(3, 3, 16, 16)
    maps = {"grad_cam": torch.rand(3, 4, 4), "gradient": torch.randn(3, 16, 16)}
    fig = salience.show(x, maps)
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 3 * (1 + 2)  # the image and two methods per row
    assert [ax.get_title() for ax in panels[:3]] == ["", "grad_cam", "gradient"]
    assert fig.axes[1].images[1].get_array().shape == (16, 16)  # upsampled to the image
    fig = salience.show(x, {"CE": maps, "Energy": maps}, titles=["a", "b", "c"], image=False)
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 3 * 2 * 2
    assert panels[0].get_ylabel() == "a · CE" and panels[2].get_ylabel() == "a · Energy"
    assert salience.show(x[0], torch.rand(4, 4))._repr_png_().startswith(b"\x89PNG")  # one image, shown inline


def test_shared_column_and_own_scales_set_the_colour_limits():
    x = torch.rand(2, 3, 8, 8)
    small, large = torch.rand(2, 4, 4) * 0.1, torch.rand(2, 4, 4) * 10
    maps = {"small": small, "large": large}
    shared = _maps(salience.show(x, maps, scale="shared"))
    assert len(set(shared)) == 1 and shared[0] == pytest.approx((0, float(large.max())), abs=float(small.min()))
    column = _maps(salience.show(x, maps, scale="column"))
    assert column[0] == column[2] != column[1] == column[3]  # rows: (small, large) per image
    assert column[0] == pytest.approx((float(small.min()), float(small.max())))
    own = _maps(salience.show(x, maps, scale="own"))
    assert own[0] == pytest.approx((float(small[0].min()), float(small[0].max())))
    assert own[2] == pytest.approx((float(small[1].min()), float(small[1].max()))) and own[0] != own[2]
    signed = _maps(salience.show(x, {"s": torch.tensor([-1.0, 3.0]).repeat(2, 2, 1)}, scale="own"))
    assert signed[0] == (-3.0, 3.0) and colour_scale(-1.0, 3.0)[0] == "RdBu_r"  # centred on 0


@pytest.mark.parametrize(
    "images,maps,message",
    [
        (torch.rand(2, 3, 8, 8), torch.rand(3, 4, 4), r"maps of shape \(3, 4, 4\); expected \[N, h, w\] with N = 2"),
        (torch.rand(2, 3, 8, 8), {"grad_cam": torch.rand(2, 4)}, r"grad_cam: maps of shape \(2, 4\)"),
        (torch.rand(2, 8, 8), torch.rand(2, 4, 4), r"images of shape \(2, 8, 8\): expected \[N, C, H, W\]"),
        (torch.rand(2, 5, 8, 8), torch.rand(2, 4, 4), r"images of shape \(2, 5, 8, 8\)"),
        (torch.rand(1, 3, 8, 8), {"m": torch.full((1, 4, 4), float("nan"))}, r"m: maps of shape \(1, 4, 4\) hold NaN"),
        (torch.rand(1, 3, 8, 8), {"A": {"x": torch.rand(1, 4, 4)}, "B": {"y": torch.rand(1, 4, 4)}}, r"has no 'y'"),
        (torch.rand(1, 3, 8, 8), {}, r"maps: expected a tensor"),
    ],
)
def test_bad_input_names_the_shape(images, maps, message):
    with pytest.raises(ValueError, match=message):
        salience.show(images, maps)


def test_bad_scale_and_titles():
    with pytest.raises(ValueError, match="scale 'global'"):
        salience.show(torch.rand(1, 3, 8, 8), torch.rand(1, 4, 4), scale="global")
    with pytest.raises(ValueError, match="titles: 2 given for 1 images"):
        salience.show(torch.rand(1, 3, 8, 8), torch.rand(1, 4, 4), titles=["a", "b"])
