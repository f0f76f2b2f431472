"""The `imagefolder` format: one sub-folder per class (torchvision's ImageFolder layout) or a flat folder."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from salience.data import DataError, build_dataset, collate, inspect, joint_transforms


def _png(path, mode, size=(12, 10), seed=0):
    """A random PNG of `mode` (RGB, L or RGBA), `size` = (W, H); returns the path."""
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
    arr = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr[..., 0] if mode == "L" else arr, mode).save(path)
    return path


def _pil_rgb(path):
    with Image.open(path) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)


@pytest.fixture
def faces(tmp_path):
    root = tmp_path / "faces"
    _png(root / "real" / "b.png", "RGB", seed=1)
    _png(root / "real" / "a.png", "L", seed=2)  # grayscale
    _png(root / "real" / "sub" / "c.PNG", "RGBA", seed=3)  # nested, RGBA, upper-case extension
    _png(root / "stylegan" / "x.png", "RGB", seed=4)
    (root / "stylegan" / "notes.txt").write_text("not an image")
    (root / "real" / ".hidden.png").write_bytes(b"ignored")
    return root


def test_classes_ids_labels_and_pixels(faces):
    ds = build_dataset("imagefolder", faces, "test")
    assert ds.classes == ["real", "stylegan"]
    assert [r.id for r in ds.records] == ["real/a.png", "real/b.png", "real/sub/c.PNG", "stylegan/x.png"]
    assert [r.labels for r in ds.records] == [[0], [0], [0], [1]]
    assert ds.name == "imagefolder/test"
    for i, r in enumerate(ds.records):
        item = ds[i]
        assert item["image"].shape == (3, 10, 12)
        assert torch.equal(item["image"], _pil_rgb(faces / r.id).float() / 255.0)
        assert item["labels"].tolist() == ([1.0, 0.0] if r.labels == [0] else [0.0, 1.0])
        assert item["boxes"].shape == (0, 4) and not item["has_human_map"] and item["group"] == -1
        assert item["mask"].sum() == 0 and item["human_map"].sum() == 0
    gray = ds[0]["image"]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    batch = collate([ds[i] for i in range(len(ds))])
    assert batch["labels"].argmax(1).tolist() == [0, 0, 0, 1]
    assert batch["id"][2] == "real/sub/c.PNG"


def test_split_does_not_pick_a_sub_folder(faces):
    a, b = build_dataset("imagefolder", faces, "test"), build_dataset("imagefolder", faces, "anything")
    assert [r.id for r in a.records] == [r.id for r in b.records] and b.name == "imagefolder/anything"


def test_flat_folder_is_unlabelled(tmp_path):
    root = tmp_path / "nonfaces"
    for k in (2, 0, 1):
        _png(root / f"img{k}.png", "RGB", seed=k)
    ds = build_dataset("imagefolder", root, "out_of_set")
    assert ds.classes == []
    assert [r.id for r in ds.records] == ["img0.png", "img1.png", "img2.png"]
    assert all(r.labels == [] for r in ds.records)
    item = ds[1]
    assert item["labels"].shape == (0,)
    assert torch.equal(item["image"], _pil_rgb(root / "img1.png").float() / 255.0)
    assert collate([ds[0], ds[1]])["labels"].shape == (2, 0)


def test_resize_to_own_size_is_bit_identical_and_other_sizes_resize(faces):
    ds = build_dataset("imagefolder", faces, "test", transforms=joint_transforms((10, 12)))
    for i, r in enumerate(ds.records):
        assert torch.equal(ds[i]["image"], _pil_rgb(faces / r.id).float() / 255.0)
    square = faces.parent / "square"
    _png(square / "real" / "s.png", "RGB", size=(16, 16), seed=5)
    same = build_dataset("imagefolder", square, "test", transforms=joint_transforms(16))[0]["image"]
    assert torch.equal(same, _pil_rgb(square / "real" / "s.png").float() / 255.0)
    resized = build_dataset("imagefolder", faces, "test", transforms=joint_transforms(8))[0]["image"]
    expected = F.resize(_pil_rgb(faces / "real/a.png"), [8, 8], antialias=True)
    assert resized.shape == (3, 8, 8) and torch.equal(resized, expected.float() / 255.0)


def test_bad_folders_are_named(tmp_path):
    with pytest.raises(DataError, match="missing.*image folder not found"):
        build_dataset("imagefolder", tmp_path / "missing", "test")
    empty = tmp_path / "empty"
    (empty / ".cache").mkdir(parents=True)
    (empty / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="empty: no class folders and no images"):
        build_dataset("imagefolder", empty, "test")
    mixed = tmp_path / "mixed"
    _png(mixed / "real" / "a.png", "RGB")
    _png(mixed / "loose.png", "RGB")
    with pytest.raises(DataError, match=r"mixed: holds both images \(loose.png\) and class folders \(real\)"):
        build_dataset("imagefolder", mixed, "test")
    no_images = tmp_path / "noimg"
    _png(no_images / "real" / "a.png", "RGB")
    (no_images / "fake" / "deep").mkdir(parents=True)
    (no_images / "fake" / "deep" / "a.txt").write_text("x")
    with pytest.raises(DataError, match=r"noimg/fake: class folder 'fake' has no images"):
        build_dataset("imagefolder", no_images, "test")
    corrupt = tmp_path / "corrupt"
    (corrupt / "real").mkdir(parents=True)
    (corrupt / "real" / "bad.png").write_bytes(b"not a png")
    ds = build_dataset("imagefolder", corrupt, "test")
    with pytest.raises(DataError, match="bad.png: cannot decode image"):
        ds[0]


def test_inspect_reports_instead_of_raising(faces, tmp_path):
    report = inspect("imagefolder", faces, "test")
    assert report["images"] == 4 and report["classes"] == ["real", "stylegan"]
    assert report["images_per_class"] == {"real": 3, "stylegan": 1}
    assert report["errors"] == 0 and report["unannotated_images"] == 4
    (faces / "progan").mkdir()
    (faces / "real" / "broken.png").write_bytes(b"junk")
    report = inspect("imagefolder", faces, "test")
    messages = [p["message"] for p in report["problems"]]
    assert report["errors"] == 2, messages
    assert any("progan: class folder 'progan' has no images" in m for m in messages)
    assert any("broken.png: cannot decode image" in m for m in messages)
    assert inspect("imagefolder", tmp_path / "nowhere", "test")["errors"] == 1
