"""salience.data: built-in benchmark structure, real-format readers on fixtures, transforms, collate."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from typer.testing import CliRunner

from salience.cli import app
from salience.data import (
    VOC_CLASSES,
    BuiltinBenchmark,
    DataError,
    annotated_fraction,
    box_dilation,
    build_dataset,
    builtin_dataset,
    class_masks,
    collate,
    inspect,
    joint_transforms,
    make_builtin,
)
from salience.data.builtin import _identities
from voc_files import write_voc_xml

TINY = BuiltinBenchmark(n_train=40, n_val=8, n_test=40, n_out_of_set=8)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_train():
    return builtin_dataset("train", TINY)


def _save(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _img(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------- built-in benchmark
def test_builtin_deterministic_and_seeded():
    a, b = builtin_dataset("val", TINY), builtin_dataset("val", TINY)
    c = builtin_dataset("val", TINY.model_copy(update={"seed": 1}))
    assert all(torch.equal(a[i]["image"], b[i]["image"]) for i in range(len(a)))
    assert not torch.equal(a[0]["image"], c[0]["image"])


def test_builtin_identities_disjoint():
    ids = _identities(TINY)
    train, val, test = (set(ids[s].tolist()) for s in ("train", "val", "test"))
    assert len(train) == 60 and len(val) == 20 and len(test) == 20 and len(train | val | test) == 100
    for split, allowed in (("train", train), ("val", val), ("test", test), ("test_shift", test)):
        used = builtin_dataset(split, TINY).identity
        assert set(used[used >= 0].tolist()) <= allowed


def test_builtin_item_structure(tiny_train):
    ds = tiny_train
    labels = torch.stack([ds[i]["labels"] for i in range(len(ds))])
    assert torch.equal(labels.sum(1), torch.ones(len(ds)))
    assert labels[:, 1].sum() == len(ds) // 2  # balanced classes
    y = labels.argmax(1)
    assert torch.equal(ds.groups, 2 * y + ds.cue)
    for i in range(len(ds)):
        s = ds[i]
        x0, y0, x1, y1 = s["boxes"][0].long().tolist()
        assert s["box_labels"].tolist() == [int(y[i])]
        inside = torch.zeros(64, 64, dtype=torch.bool)
        inside[y0:y1, x0:x1] = True
        assert torch.equal(s["mask"].bool(), inside)  # mask = the face box
        assert s["human_map"][~inside].abs().max() == 0 and s["human_map"].max() == 1.0
        assert s["has_human_map"] and s["annotated"] and s["image"].min() >= 0 and s["image"].max() <= 1
        # the cue square (pure red or blue) lies outside the face box
        img = (s["image"] * 255).round()
        red = (img[0] == 255) & (img[1] == 51) & (img[2] == 38)
        blue = (img[0] == 38) & (img[1] == 64) & (img[2] == 255)
        cue = red if ds.cue[i] == 1 else blue
        assert cue.sum() == 8 * 8 and not (cue & inside).any()


def test_builtin_cue_agreement_flips_in_test_shift():
    cfg = TINY.model_copy(update={"n_test": 400})
    for split, lo, hi in (("test", 0.92, 0.98), ("test_shift", 0.02, 0.08)):
        ds = builtin_dataset(split, cfg)
        y = torch.tensor([r.labels[0] for r in ds.records])
        agree = (ds.cue == y).float().mean().item()
        assert lo <= agree <= hi, (split, agree)  # binomial(400, .95) lies within +-3 sd


def test_builtin_out_of_set():
    ds = builtin_dataset("out_of_set", TINY)
    s = ds[0]
    assert s["labels"].sum() == 0 and len(s["boxes"]) == 0 and not s["has_human_map"] and s["group"] == -1
    assert s["mask"].sum() == 0 and s["human_map"].sum() == 0


def test_builtin_multilabel_boxes_per_class():
    ds = builtin_dataset("train", TINY.model_copy(update={"max_faces": 3, "face_scale": (0.3, 0.5)}))
    counts = [len(r.boxes) for r in ds.records]
    assert set(counts) == {1, 2, 3}
    assert any(len(r.labels) == 2 for r in ds.records)
    for i, r in enumerate(ds.records[:20]):
        assert r.labels == sorted(set(r.box_labels.tolist()))
        inter = box_dilation(r.boxes, 0.0, (64, 64))
        for a in range(len(inter)):  # faces do not overlap
            for b in range(a + 1, len(inter)):
                ov = torch.minimum(inter[a, 2:], inter[b, 2:]) - torch.maximum(inter[a, :2], inter[b, :2])
                assert (ov <= 0).any()
        s = ds[i]
        per_class = class_masks([s["boxes"]] * 2, [s["box_labels"]] * 2, torch.tensor([0, 1]), (64, 64))
        assert torch.equal(torch.maximum(per_class[0], per_class[1]), s["mask"])
    assert (ds.groups == -1).all()


def test_builtin_written_to_disk_reads_back_identically(tmp_path):
    cfg = BuiltinBenchmark(n_train=6, n_val=2, n_test=2, n_out_of_set=2)
    root = make_builtin(tmp_path / "bm", cfg)
    with pytest.raises(FileExistsError):
        make_builtin(root, cfg)
    mem, disk = builtin_dataset("train", cfg), build_dataset("builtin", root, "train")
    assert disk.classes == mem.classes and len(disk) == len(mem)
    for i in range(len(mem)):
        a, b = mem[i], disk[i]
        for k in ("image", "labels", "boxes", "box_labels", "mask", "human_map", "group"):
            assert torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])), k
    report = inspect("builtin", root, "out_of_set")
    assert report["images"] == 2 and report["errors"] == 0 and report["unannotated_images"] == 2
    assert json.loads((root / "benchmark.json").read_text())["n_train"] == 6


# ---------------------------------------------------------------- helpers
def test_class_masks_closed_form():
    boxes = [torch.tensor([[0.0, 0.0, 2.0, 3.0], [3.0, 1.0, 5.0, 2.0]]), torch.tensor([[1.5, 0.5, 3.5, 2.5]])]
    labels = [torch.tensor([0, 1]), torch.tensor([1])]
    m = class_masks(boxes, labels, torch.tensor([0, 1]), (4, 6))
    want0 = torch.zeros(4, 6)
    want0[0:3, 0:2] = 1
    want1 = torch.zeros(4, 6)
    want1[0:2, 1:3] = 1  # pixel centres 1.5, 2.5 in x; 0.5, 1.5 in y lie in [1.5, 3.5) x [0.5, 2.5)
    assert torch.equal(m[0], want0) and torch.equal(m[1], want1)
    assert class_masks(boxes, labels, torch.tensor([1, 0]), (4, 6))[1].sum() == 0


def test_box_dilation_closed_form():
    b = torch.tensor([[10.0, 20.0, 30.0, 60.0], [0.0, 0.0, 10.0, 10.0]])
    d = box_dilation(b, 0.1, (100, 32))
    assert torch.allclose(d, torch.tensor([[8.0, 16.0, 32.0, 64.0], [0.0, 0.0, 11.0, 11.0]]))
    assert torch.equal(box_dilation(b, 0.0, (100, 100)), b)
    with pytest.raises(ValueError):
        box_dilation(b, -0.1, (10, 10))


def test_annotated_fraction():
    a = annotated_fraction(1000, 0.1, seed=3)
    assert a.dtype == torch.bool and a.sum() == 100
    assert torch.equal(a, annotated_fraction(1000, 0.1, seed=3))
    assert not torch.equal(a, annotated_fraction(1000, 0.1, seed=4))
    assert annotated_fraction(7, 1.0, 0).all() and not annotated_fraction(7, 0.0, 0).any()
    ds = build_dataset("builtin", None, "val", annotated=0.25, seed=1, config=TINY)
    assert torch.equal(ds.annotated, annotated_fraction(len(ds), 0.25, 1))
    flags = [ds[i]["annotated"] for i in range(len(ds))]
    assert flags == ds.annotated.tolist() and len(ds[0]["boxes"]) == 1  # boxes kept for evaluation
    with pytest.raises(ValueError):
        annotated_fraction(5, 1.5, 0)


# ---------------------------------------------------------------- joint transforms
def _square_folder(tmp_path):
    """Folder data: one 40x60 image with a white box [10, 5, 30, 25) and its human map = box."""
    img = np.zeros((40, 60, 3), np.uint8)
    img[5:25, 10:30] = 255
    hm = np.zeros((40, 60), np.uint8)
    hm[5:25, 10:30] = 255
    _save(tmp_path / "img" / "a.png", img)
    _save(tmp_path / "map" / "a.png", hm)
    (tmp_path / "train.csv").write_text("image,label,human_map,boxes\nimg/a.png,cat,map/a.png,10 5 30 25 cat\n")
    return tmp_path


def test_transforms_move_boxes_masks_maps_exactly(tmp_path):
    root = _square_folder(tmp_path)
    s = build_dataset("folder", root, "train", transforms=joint_transforms((80, 120)))[0]
    assert torch.equal(s["boxes"], torch.tensor([[20.0, 10.0, 60.0, 50.0]]))  # x2 resize
    flip = joint_transforms((80, 120), train=True)
    torch.manual_seed(0)
    outs = [build_dataset("folder", root, "train", transforms=flip)[0] for _ in range(8)]
    flipped = [o for o in outs if o["boxes"][0, 0] != 20.0]
    assert flipped and len(flipped) < 8  # a coin flip
    for o in outs:
        x0, y0, x1, y1 = o["boxes"][0].long().tolist()
        assert [x0, y0, x1, y1] in ([20, 10, 60, 50], [120 - 60, 10, 120 - 20, 50])
        for key in ("mask", "human_map"):  # mask and map moved with the box
            want = torch.zeros(80, 120)
            want[y0:y1, x0:x1] = 1
            assert torch.equal((o[key] > 0.5).float(), want), key
        white = o["image"].mean(0) > 0.5  # so did the pixels
        assert torch.equal(white.float(), o["mask"])


def _v2_pipeline(size, train, crop_padding):
    """torchvision's own pipeline for what `JointTransforms` promises to equal."""
    from torchvision.transforms import v2

    steps: list = [v2.Resize(size, antialias=True)] if size is not None else []
    if train:
        steps += [v2.RandomCrop(size, padding=crop_padding, fill=0)] if crop_padding else []
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose([*steps, v2.SanitizeBoundingBoxes(min_size=1.0, labels_getter=lambda s: s["box_labels"])])


@pytest.mark.parametrize(
    "size,train,crop_padding",
    [
        (None, False, 0),
        (None, True, 0),
        ((30, 44), False, 0),
        ((30, 44), True, 0),
        ((30, 44), True, 6),
        ((24, 36), True, 0),
    ],
)
def test_joint_transforms_equal_torchvision_v2(size, train, crop_padding):
    """Same pixels, boxes, labels, masks and random draws as v2.Compose on tv_tensors, over random samples
    (boxes partly outside after a crop, thin boxes that sanitizing drops, an image already at the size)."""
    import pickle

    from torchvision import tv_tensors

    ours = pickle.loads(pickle.dumps(joint_transforms(size, train, crop_padding)))  # spawn workers pickle it
    theirs = _v2_pipeline(size, train, crop_padding)
    g = torch.Generator().manual_seed(3)
    for i in range(24):
        h, w = (24, 36) if i % 3 == 0 else (20 + i, 40 - i)
        xy = torch.rand(5, 2, generator=g) * torch.tensor([w, h])
        wh = torch.rand(5, 2, generator=g) * torch.tensor([w, h]) / 2
        wh[0] = 0.5  # a box thinner than 1 px: dropped
        boxes = torch.cat([xy, (xy + wh).minimum(torch.tensor([w, h]))], 1)
        sample = {
            "image": torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g),
            "human_map": torch.rand(1, h, w, generator=g),
            "boxes": boxes,
            "box_labels": torch.arange(5),
            "mask": (torch.rand(h, w, generator=g) > 0.5).to(torch.uint8),
            "id": f"s{i}",
        }
        wrapped = sample | {
            "image": tv_tensors.Image(sample["image"]),
            "human_map": tv_tensors.Image(sample["human_map"]),
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w)),
            "mask": tv_tensors.Mask(sample["mask"]),
        }
        torch.manual_seed(i)
        a = ours(sample)
        after_ours = torch.rand(1)  # the same number of draws, too
        torch.manual_seed(i)
        b = theirs(wrapped)
        assert torch.equal(after_ours, torch.rand(1)), i
        for key in ("image", "human_map", "boxes", "box_labels", "mask"):
            assert torch.equal(a[key], b[key].as_subclass(torch.Tensor)), (i, key)
        assert a["id"] == b["id"]


def test_other_transforms_get_tv_tensors(tmp_path):
    """A callable other than `joint_transforms` gets torchvision tv_tensors, so a user's v2 pipeline moves boxes."""
    from torchvision.transforms import v2

    root = _square_folder(tmp_path)
    flip = v2.Compose([v2.RandomHorizontalFlip(p=1.0)])
    s = build_dataset("folder", root, "train", transforms=flip)[0]
    assert s["boxes"].tolist() == [[30.0, 5.0, 50.0, 25.0]] and type(s["boxes"]) is torch.Tensor
    assert torch.equal((s["image"].mean(0) > 0.5).float(), s["mask"])


def test_random_crop_drops_or_clips_boxes(tmp_path):
    root = _square_folder(tmp_path)
    t = joint_transforms(40, train=True, crop_padding=30)
    ds = build_dataset("folder", root, "train", transforms=t)
    for _ in range(10):
        s = ds[0]
        b = s["boxes"]
        assert s["image"].shape == (3, 40, 40) and len(b) == len(s["box_labels"])
        if len(b):
            assert (b >= 0).all() and (b[:, 2] <= 40).all() and (b[:, 3] <= 40).all()


# ---------------------------------------------------------------- collate / DataLoader
def test_collate_contract(tiny_train):
    loader = DataLoader(tiny_train, batch_size=5, collate_fn=collate)
    b = next(iter(loader))
    assert b["image"].shape == (5, 3, 64, 64) and b["image"].dtype == torch.float32
    assert b["labels"].shape == (5, 2) and b["labels"].dtype == torch.float32
    assert len(b["boxes"]) == 5 and b["boxes"][0].shape == (1, 4) and b["boxes"][0].dtype == torch.float32
    assert b["box_labels"][0].dtype == torch.long
    assert b["mask"].shape == b["human_map"].shape == (5, 64, 64) and b["mask"].dtype == torch.float32
    for k in ("has_human_map", "annotated"):
        assert b[k].shape == (5,) and b[k].dtype == torch.bool
    assert b["group"].dtype == b["index"].dtype == torch.long and b["index"].tolist() == [0, 1, 2, 3, 4]
    assert b["id"] == [f"train_{i:05d}" for i in range(5)]


def test_collate_rejects_mixed_sizes(tmp_path):
    _save(tmp_path / "a.png", _img(10, 10))
    _save(tmp_path / "b.png", _img(12, 10))
    (tmp_path / "train.csv").write_text("image,label\na.png,x\nb.png,y\n")
    ds = build_dataset("folder", tmp_path, "train")
    with pytest.raises(DataError, match="different sizes"):
        collate([ds[0], ds[1]])


# ---------------------------------------------------------------- PASCAL VOC 2007
def _voc(tmp_path, extra=()):
    root = tmp_path / "VOCdevkit" / "VOC2007"
    entries = [
        ("000001", [("dog", (11, 21, 40, 50), 0), ("person", (1, 1, 10, 10), 1)]),
        ("000002", [("cat", (5, 5, 20, 30), 0), ("cat", (21, 1, 60, 40), 0)]),
        *extra,
    ]
    for img_id, objs in entries:
        write_voc_xml(root / "Annotations" / f"{img_id}.xml", objs, f"{img_id}.jpg")
        _save(root / "JPEGImages" / f"{img_id}.jpg", _img(50, 64))
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "train.txt").write_text("".join(f"{i}\n" for i, _ in entries))
    return tmp_path / "VOCdevkit"


def test_voc_reads_boxes_labels_difficult(tmp_path):
    ds = build_dataset("voc", _voc(tmp_path), "train")
    assert len(ds) == 2 and ds.classes == VOC_CLASSES
    s = ds[0]
    assert s["image"].shape == (3, 50, 64)
    assert torch.equal(s["boxes"], torch.tensor([[10.0, 20.0, 40.0, 50.0], [0.0, 0.0, 10.0, 10.0]]))
    assert s["box_labels"].tolist() == [VOC_CLASSES.index("dog"), VOC_CLASSES.index("person")]
    assert torch.nonzero(s["labels"]).flatten().tolist() == sorted(s["box_labels"].tolist())
    assert ds.records[0].difficult.tolist() == [False, True]
    assert ds[1]["labels"].sum() == 1 and len(ds[1]["boxes"]) == 2
    r = inspect("voc", tmp_path / "VOCdevkit", "train")
    assert r["boxes_per_class"] == {"cat": 2, "dog": 1, "person": 1} and r["difficult_boxes"] == 1


def test_voc_bad_input(tmp_path):
    root = _voc(tmp_path, extra=[("000003", [("unicorn", (1, 1, 5, 5), 0)]), ("000004", [])])
    with pytest.raises(DataError, match=r"000003\.xml.*unknown class 'unicorn'"):
        build_dataset("voc", root, "train")
    r = inspect("voc", root, "train")
    assert r["images"] == 2 and r["errors"] == 1 and r["skips"] == 1
    assert "000004.xml: no objects" in r["problems"][1]["message"]
    with pytest.raises(DataError, match="val.txt: split file not found"):
        build_dataset("voc", root, "val")


def test_missing_and_corrupt_images_name_the_file(tmp_path):
    root = _voc(tmp_path)
    jpg = root / "VOC2007" / "JPEGImages"
    (jpg / "000001.jpg").unlink()
    with pytest.raises(DataError, match=r"000001\.jpg \(image\)"):
        build_dataset("voc", root, "train")
    (jpg / "000001.jpg").write_bytes(b"not a jpeg at all")
    ds = build_dataset("voc", root, "train")
    with pytest.raises(DataError, match=r"000001\.jpg: cannot decode image"):
        ds[0]
    # the file name survives a DataLoader worker
    with pytest.raises(Exception, match=r"000001\.jpg"):
        next(iter(DataLoader(ds, batch_size=2, num_workers=1, collate_fn=collate)))
    r = inspect("voc", root, "train")
    assert r["errors"] == 1 and "000001.jpg" in r["problems"][0]["message"]


# ---------------------------------------------------------------- MS COCO 2014
def _coco(tmp_path, drop=None):
    data = {
        "images": [
            {"id": 7, "file_name": "a.jpg", "width": 64, "height": 48},
            {"id": 3, "file_name": "b.jpg", "width": 64, "height": 48},
            {"id": 9, "file_name": "c.jpg", "width": 64, "height": 48},
        ],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 18, "bbox": [4, 5, 10, 20], "iscrowd": 0, "area": 200},
            {"id": 2, "image_id": 7, "category_id": 1, "bbox": [30.5, 0, 20, 10], "iscrowd": 0, "area": 200},
            {"id": 3, "image_id": 3, "category_id": 18, "bbox": [0, 0, 64, 48], "iscrowd": 1, "area": 3072},
        ],
        "categories": [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}],
    }
    if drop:
        where, key = drop
        data[where][0].pop(key) if where != "top" else data.pop(key)
    (tmp_path / "annotations").mkdir(exist_ok=True)
    (tmp_path / "annotations" / "instances_val2014.json").write_text(json.dumps(data))
    for name in ("a", "b", "c"):
        _save(tmp_path / "val2014" / f"{name}.jpg", _img(48, 64))
    return tmp_path


def test_coco_reads_xywh_and_contiguous_classes(tmp_path):
    ds = build_dataset("coco", _coco(tmp_path), "val")
    assert ds.classes == ["person", "dog"]  # sorted ids 1, 18 -> 0, 1
    assert [r.id for r in ds.records] == ["3", "7"]  # image 9 has no annotations: skipped
    s = ds[1]
    assert torch.equal(s["boxes"], torch.tensor([[4.0, 5.0, 14.0, 25.0], [30.5, 0.0, 50.5, 10.0]]))
    assert s["box_labels"].tolist() == [1, 0] and s["labels"].tolist() == [1.0, 1.0]
    keep = build_dataset("coco", tmp_path, "val", empty="keep")
    assert len(keep) == 3 and keep[2]["labels"].sum() == 0 and keep[2]["mask"].sum() == 0
    r = inspect("coco", tmp_path, "val")
    assert r["skips"] == 1 and r["images"] == 2 and r["boxes_per_class"] == {"person": 1, "dog": 2}


@pytest.mark.parametrize(
    "drop,key",
    [(("annotations", "bbox"), "bbox"), (("images", "file_name"), "file_name"), (("top", "categories"), "categories")],
)
def test_coco_missing_key(tmp_path, drop, key):
    root = _coco(tmp_path, drop=drop)
    with pytest.raises(DataError, match=rf"instances_val2014\.json: .* has no key '{key}'"):
        build_dataset("coco", root, "val")
    assert inspect("coco", root, "val")["errors"] == 1


# ---------------------------------------------------------------- Waterbirds
def test_waterbirds_groups_splits_and_segmentation(tmp_path):
    rows = ["img_id,img_filename,y,split,place,place_filename"]
    for i, (y, split, place) in enumerate([(0, 0, 0), (1, 0, 0), (1, 0, 1), (0, 1, 1), (1, 2, 0)]):
        name = f"{i:03d}.Bird/bird_{i}.jpg"
        rows.append(f"{i},{name},{y},{split},{place},x")
        _save(tmp_path / name, _img(30, 40, i))
    seg = np.zeros((30, 40), np.uint8)
    seg[3:13, 5:25] = 255
    _save(tmp_path / "segmentations" / "001.Bird" / "bird_1.png", seg)
    (tmp_path / "metadata.csv").write_text("\n".join(rows) + "\n")
    ds = build_dataset("waterbirds", tmp_path, "train")
    assert ds.classes == ["landbird", "waterbird"] and len(ds) == 3
    assert ds.groups.tolist() == [0, 2, 3]
    s = ds[1]
    assert torch.equal(s["boxes"], torch.tensor([[5.0, 3.0, 25.0, 13.0]])) and s["box_labels"].tolist() == [1]
    assert s["mask"].sum() == 200 and len(ds[0]["boxes"]) == 0
    assert len(build_dataset("waterbirds", tmp_path, "test")) == 1
    (tmp_path / "metadata.csv").write_text("img_filename,y,split\na.jpg,0,0\n")
    with pytest.raises(DataError, match=r"metadata\.csv: missing column\(s\) \['place'\]"):
        build_dataset("waterbirds", tmp_path, "train")


# ---------------------------------------------------------------- salience folder
def test_folder_human_maps_and_bad_input(tmp_path):
    _save(tmp_path / "img" / "a.png", _img(20, 30))
    _save(tmp_path / "img" / "b.png", _img(20, 30, 1))
    _save(tmp_path / "map" / "a.png", np.full((20, 30), 128, np.uint8))
    _save(tmp_path / "map" / "b.png", np.zeros((10, 30), np.uint8))
    (tmp_path / "classes.txt").write_text("real\nfake\n")
    (tmp_path / "train.csv").write_text("image,label,human_map\nimg/a.png,fake,map/a.png\nimg/b.png,real,map/b.png\n")
    ds = build_dataset("folder", tmp_path, "train")
    s = ds[0]
    assert ds.classes == ["real", "fake"] and s["labels"].tolist() == [0.0, 1.0]
    assert s["has_human_map"] and torch.allclose(s["human_map"], torch.full((20, 30), 128 / 255))
    with pytest.raises(DataError, match=r"map/b\.png: human map is \(10, 30\) but its image .*b\.png is \(20, 30\)"):
        ds[1]
    r = inspect("folder", tmp_path, "train")
    assert r["errors"] == 1 and "map/b.png" in r["problems"][0]["message"] and r["human_maps"] == 2
    (tmp_path / "val.csv").write_text("image,label\nimg/a.png,dog\n")
    with pytest.raises(DataError, match=r"val\.csv:2: unknown label"):
        build_dataset("folder", tmp_path, "val")
    (tmp_path / "test.csv").write_text("path,label\nimg/a.png,real\n")
    with pytest.raises(DataError, match=r"test\.csv: missing column\(s\) \['image'\]"):
        build_dataset("folder", tmp_path, "test")


# ---------------------------------------------------------------- CLI
def test_cli_make_benchmark_and_inspect(tmp_path):
    runner = CliRunner()
    out = tmp_path / "bm"
    res = runner.invoke(
        app,
        ["data", "make-benchmark", str(out), "--n-train", "4", "--n-val", "2", "--n-test", "2", "--n-out-of-set", "2"],
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["data", "inspect", "--format", "builtin", str(out), "--split", "test"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["images"] == 2 and report["classes"] == ["real", "synthetic"] and report["errors"] == 0
    (out / "val.csv").write_text("image,label\nimages/val/missing.png,real\n")
    res = runner.invoke(app, ["data", "inspect", "--format", "builtin", str(out), "--split", "val"])
    assert res.exit_code == 1 and "missing.png: image file not found" in res.output
    res = runner.invoke(app, ["data", "make-benchmark", str(tmp_path / "x"), "--cue-agreement", "2"])
    assert res.exit_code != 0


def test_voc_degenerate_box_is_an_error_naming_the_file(tmp_path):
    root = _voc(tmp_path, extra=[("000003", [("dog", (30, 5, 10, 20), 0)])])  # xmax < xmin
    with pytest.raises(DataError, match=r"000003\.xml: object 0 \(dog\): degenerate bndbox"):
        build_dataset("voc", root, "train")
    one_pixel = _voc(tmp_path / "b", extra=[("000003", [("dog", (10, 5, 10, 20), 0)])])  # 1-based, inclusive
    assert build_dataset("voc", one_pixel, "train").records[2].boxes.tolist() == [[9.0, 4.0, 10.0, 20.0]]


@pytest.mark.parametrize(
    "bbox,message",
    [
        ([4, 5, float("nan"), 20], "is not finite"),
        ([4, 5, 10], r"is not \[x, y, width, height\]"),
        (["a", 5, 10, 20], r"is not \[x, y, width, height\]"),
    ],
)
def test_coco_malformed_bbox_is_an_error_naming_the_file(tmp_path, bbox, message):
    root = _coco(tmp_path)
    ann = root / "annotations" / "instances_val2014.json"
    data = json.loads(ann.read_text())
    data["annotations"][0]["bbox"] = bbox
    ann.write_text(json.dumps(data))
    with pytest.raises(DataError, match=rf"instances_val2014\.json: annotation 1 of image 7: bbox .*{message}"):
        build_dataset("coco", root, "val")
