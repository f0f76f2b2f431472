"""Partition SHAP against shap 0.51.0's PartitionExplainer with its image masker, and RISE against the authors'
code (a transcription in tests/rise_reference.py), in float64 on a tiny random CNN."""

import functools
import sys
from unittest import mock

import numpy as np
import pytest
import torch
from torch import nn

from rise_reference import RISE
from salience import attribution as A
from salience.attribution.partition import ImageMasker, box_blur, halves
from salience.attribution.rise import RiseMasks

pytestmark = pytest.mark.usefixtures("one_thread")


def _net() -> nn.Module:
    torch.manual_seed(0)
    return (
        nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(6, 6, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(24, 5),
        )
        .double()
        .eval()
    )


MODEL = _net()


def _images(n, h, w, scale=1.0, seed=1):
    return torch.rand(n, 3, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) * scale


def _opencv():
    cv2 = pytest.importorskip("cv2")
    if not hasattr(cv2, "blur"):
        pytest.skip("cv2 is installed without its binary module (reinstall opencv-python-headless)")
    return cv2


@functools.cache
def _shap():
    """shap, imported with numba's JIT off unless already imported: its `@njit` helpers (the image tree, the
    credit spreading, the output averaging) then run as the same Python code, without ~20 s of compiling."""
    numba = pytest.importorskip("numba")
    if "shap" not in sys.modules:
        jit_off = numba.config.DISABLE_JIT
        numba.config.DISABLE_JIT = True
        try:
            pytest.importorskip("shap")
        finally:
            numba.config.DISABLE_JIT = jit_off
    return sys.modules["shap"]


def _image_masker(masker, shape):
    """`shap.maskers.Image(masker, shape)`; with the JIT off its tree builder's numba list must be a Python list."""
    shap = _shap()
    if hasattr(shap.maskers._image._jit_build_partition_tree, "py_func"):  # compiled
        return shap.maskers.Image(masker, shape)
    with mock.patch("numba.typed.List", list):
        return shap.maskers.Image(masker, shape)


def _shap_maps(x, target, masker, **kw):
    """shap's Partition SHAP values of `MODEL`'s logits, one image at a time, summed over channels."""
    shap = _shap()

    def f(images):
        with torch.no_grad():
            return MODEL(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)).numpy()

    maps = []
    for image, cls in zip(x, target.tolist(), strict=True):
        explainer = shap.PartitionExplainer(f, _image_masker(masker, tuple(image.permute(1, 2, 0).shape)))
        out = explainer(image.permute(1, 2, 0)[None].numpy(), outputs=[cls], silent=True, **kw)
        maps.append(torch.from_numpy(out.values[0, ..., 0]).sum(-1))
    return torch.stack(maps)


# masker, (H, W), pixel scale, shap's keyword arguments (max_evals, fixed_context, batch_size)
CASES = [
    ("blur(16,16)", (32, 32), 1.0, {"max_evals": 200}),
    ("blur(5,9)", (20, 27), 1.0, {"max_evals": 64}),
    ("blur(4,4)", (4, 4), 1.0, {"max_evals": 200, "batch_size": 6}),  # reaches single channels
    ("blur(16,16)", (32, 32), 1.0, {"max_evals": 150, "fixed_context": 0}),
    ("blur(16,16)", (24, 24), 1.0, {"max_evals": 150, "fixed_context": 1, "batch_size": 4}),
    ("inpaint_telea", (32, 32), 255.0, {"max_evals": 100}),
    ("inpaint_ns", (16, 16), 255.0, {"max_evals": 80}),
    (0.5, (12, 12), 1.0, {"max_evals": 100}),
]


@pytest.mark.parametrize(("masker", "size", "scale", "kw"), CASES, ids=[f"{c[0]}-{c[1][0]}-{c[3]}" for c in CASES])
def test_partition_shap_equals_shap(masker, size, scale, kw):
    if isinstance(masker, str):
        _opencv()  # shap's image masker needs it for blur and inpainting
    x, t = _images(2, *size, scale=scale), torch.tensor([1, 3])
    theirs = _shap_maps(x, t, masker, **kw)
    options = {"max_evals": kw["max_evals"], "fixed_context": kw.get("fixed_context")}
    ours = A.attribute("partition_shap", MODEL, x, t, masker=masker, round_size=kw.get("batch_size", 10), **options)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12 * theirs.abs().max().item())


def test_halves_build_shaps_image_tree():
    """Every node of shap's image tree (its clustering, read back as boxes) has our children, left and right."""
    shap = _shap()
    for h, w, c in [(4, 4, 3), (5, 7, 3), (6, 3, 1), (3, 9, 4)]:
        clustering = _image_masker(0.0, (h, w, c)).clustering
        rows = shap.utils.make_masks(clustering)
        n = h * w * c

        def box(node, rows=rows, shape=(h, w, c)):
            idx = np.unravel_index(rows[node].indices, shape)
            return tuple(int(v) for a in idx for v in (a.min(), a.max() + 1))

        for k in range(n - 1):
            assert halves(box(k + n)) == (box(int(clustering[k, 0])), box(int(clustering[k, 1]))), (h, w, c, k)


@pytest.mark.parametrize(("size", "kernel", "dtype"), [((32, 32), (16, 16), np.float64), ((20, 37), (5, 9), np.float32),
                                                       ((7, 6), (20, 3), np.float64)])  # fmt: skip
def test_box_blur_equals_opencv(size, kernel, dtype):
    cv2 = _opencv()
    image = np.random.default_rng(0).random((*size, 3)).astype(dtype)
    theirs = cv2.blur(image, kernel)
    ours = box_blur(torch.from_numpy(image).permute(2, 0, 1)[None], kernel[1], kernel[0])[0].permute(1, 2, 0)
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-6 if dtype == np.float32 else 1e-13)


def test_partition_shap_batches_across_images_and_calls():
    """Images in lock-step and any model-call size give each image's own map."""
    x, t = _images(3, 16, 16), torch.tensor([0, 4, 2])
    maps = A.attribute("partition_shap", MODEL, x, t, max_evals=120, batch_size=7)
    alone = torch.cat(
        [A.attribute("partition_shap", MODEL, x[i : i + 1], t[i : i + 1], max_evals=120) for i in range(3)]
    )
    torch.testing.assert_close(maps, alone, rtol=1e-12, atol=1e-15)


def test_partition_shap_errors(monkeypatch):
    x, t = _images(1, 8, 8), torch.tensor([0])
    with pytest.raises(ValueError, match="masker: 'blur'"):
        A.attribute("partition_shap", MODEL, x, t, masker="blur")
    with pytest.raises(ValueError, match="max_evals >= 2"):
        A.attribute("partition_shap", MODEL, x, t, max_evals=1)
    with pytest.raises(ValueError, match="target: class index 7"):
        A.attribute("partition_shap", MODEL, x, torch.tensor([7]), max_evals=8)
    monkeypatch.setitem(__import__("sys").modules, "cv2", None)
    with pytest.raises(ImportError, match="pip install opencv-python-headless"):
        ImageMasker("inpaint_telea", x)


def _authors_masks(size, n, cells, p, seed=0):
    """The authors' masks and the draws they came from (numpy's global generator, restored afterwards)."""
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        explainer = RISE(nn.Sequential(MODEL, nn.Softmax(dim=1)), size, gpu_batch=16)
        explainer.generate_masks(n, cells, p)
        np.random.seed(seed)
        grid = np.random.rand(n, cells, cells) < p
        cell = np.ceil(np.array(size) / cells)
        shifts = [(np.random.randint(0, int(cell[0])), np.random.randint(0, int(cell[1]))) for _ in range(n)]
    finally:
        np.random.set_state(state)
    return explainer, torch.from_numpy(grid), torch.tensor(shifts)


@pytest.mark.parametrize(("size", "cells"), [((32, 32), 7), ((30, 45), 5), ((17, 9), 2)])
def test_rise_masks_are_the_authors(size, cells):
    """Given the authors' grid and shifts, salience's upsampling and crop give their masks (after their float32
    cast); salience's own draws keep the shifts in range and the cells at probability p."""
    explainer, grid, shifts = _authors_masks(size, 60, cells, 0.5)
    ours = RiseMasks(size, 60, cells, 0.5, grid=grid, shifts=shifts)(torch.arange(60))
    assert torch.equal(ours.float(), explainer.masks[:, 0])
    drawn = RiseMasks(size, 4000, cells, 0.3, torch.Generator().manual_seed(0))
    cell = torch.tensor([-(-s // cells) for s in size])
    assert (drawn.shifts >= 0).all() and (drawn.shifts < cell).all() and len(drawn.shifts.unique(dim=0)) == cell.prod()
    assert abs(drawn.grid.mean().item() - 0.3) < 4 * (0.3 * 0.7 / drawn.grid.numel()) ** 0.5


def test_rise_equals_the_authors_code_on_their_masks():
    x, t = _images(3, 30, 45), torch.tensor([1, 4, 0])
    explainer, _, _ = _authors_masks((30, 45), 100, 5, 0.3)
    explainer.masks = explainer.masks.double()  # their float32 masks, held in float64 to match the model
    with torch.no_grad():
        theirs = torch.stack([explainer(x[i : i + 1])[c] for i, c in enumerate(t.tolist())])
    ours = A.attribute("rise", MODEL, x, t, masks=explainer.masks[:, 0], p=0.3, batch_size=16)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-15)


def test_rise_shares_its_masks_across_images_and_checks_options():
    x, t = _images(3, 16, 16), torch.tensor([0, 4, 2])
    maps = A.attribute("rise", MODEL, x, t, n_masks=50, batch_size=32)
    alone = torch.cat([A.attribute("rise", MODEL, x[i : i + 1], t[i : i + 1], n_masks=50) for i in range(3)])
    torch.testing.assert_close(maps, alone, rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match=r"masks must be \[N, H, W\]"):
        A.attribute("rise", MODEL, x, t, masks=torch.rand(4, 8, 8))
    with pytest.raises(ValueError, match="p .* must be in"):
        A.attribute("rise", MODEL, x, t, p=0.0)
