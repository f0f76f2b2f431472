"""`salience measure --checkpoints` on a VOC 2007-format folder with a ResNet-18 made by the VOC recipe at 64 px:
target "true" explains every (image, present class) pair; `--target predicted` measures 2x2 final-layer maps."""

import csv

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from salience.cli import app
from voc_files import write_voc_xml

# (id, [(class, (xmin, ymin, xmax, ymax) 1-based inclusive, difficult)]) of 64 x 48 (w x h) images
ENTRIES = [
    ("000001", [("dog", (11, 21, 40, 45), 0), ("person", (1, 1, 10, 10), 0), ("dog", (45, 5, 60, 20), 0)]),
    ("000002", [("cat", (5, 5, 20, 30), 0)]),
    ("000003", [("person", (30, 10, 60, 45), 0), ("car", (40, 30, 64, 48), 1), ("bird", (2, 2, 25, 25), 0)]),
]


def _voc(tmp_path):
    root = tmp_path / "VOCdevkit" / "VOC2007"
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    (root / "ImageSets" / "Main").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for img_id, objects in ENTRIES:
        write_voc_xml(root / "Annotations" / f"{img_id}.xml", objects, f"{img_id}.jpg")
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{img_id}.jpg")
    (root / "ImageSets" / "Main" / "test.txt").write_text("".join(f"{i}\n" for i, _ in ENTRIES))
    return tmp_path / "VOCdevkit"


def _checkpoint(path, root, seed):
    """A resnet18 checkpoint of the VOC recipe at 64 px (weights from `seed`, no training)."""
    from salience.data.formats import VOC_CLASSES
    from salience.io import load_config, save_checkpoint
    from salience.models import build

    cfg = load_config(
        "configs/voc2007_resnet50_ce.yaml",
        ["model.name=resnet18", "model.weights=null", f"data.root={root}", "data.size=64", "data.workers=0"],
    )
    assert cfg.data.format == "voc"
    torch.manual_seed(seed)
    save_checkpoint(
        {
            "model": build("resnet18", len(VOC_CLASSES)).state_dict(),
            "config": cfg.dump(),
            "epoch": 0,
            "classes": list(VOC_CLASSES),
            "multi_label": True,
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("voc")
    root = _voc(tmp)
    return tmp, [_checkpoint(tmp / f"r18_{i}.pt", root, i) for i in range(2)]


def test_measure_true_on_voc_measures_every_image_class_pair(voc):
    from salience.attribution import grad_cam
    from salience.data.core import box_masks, collate
    from salience.data.formats import VOC_CLASSES
    from salience.io import load_run, open_split
    from salience.measures import epg
    from salience.measures.degradation import deletion_insertion

    tmp, (ckpt, _) = voc
    out = tmp / "true"
    res = CliRunner().invoke(
        app,
        [
            "measure",
            "--checkpoints",
            str(ckpt),
            "--method",
            "grad_cam@final",
            "--data",
            "test",
            "--n-probe",
            "3",
            *("--measure", "epg", "--measure", "deletion_auc", "--measure", "noise_ssim_0.1"),  # what is checked
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    with open(out / "per_image.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    pairs = [
        (i, VOC_CLASSES.index(c))
        for i, objects in ENTRIES
        for c in sorted({o[0] for o in objects}, key=VOC_CLASSES.index)
    ]
    assert [(r["image"], int(r["class"])) for r in rows] == pairs  # image order, then class order, each class once

    # an independent computation: each pair's GradCAM map against the union of that class's boxes
    model, config = load_run(ckpt)
    batch = collate([open_split(config.data, "test")[i] for i in range(len(ENTRIES))])
    image = torch.tensor([[e[0] for e in ENTRIES].index(i) for i, _ in pairs])
    classes = torch.tensor([c for _, c in pairs])
    maps = grad_cam(model, batch["image"][image], classes, layer="final")
    assert maps.shape[-2:] == (2, 2)
    masks = torch.stack(
        [
            box_masks(batch["boxes"][i][batch["box_labels"][i] == c], (64, 64)).any(0)
            for i, c in zip(image.tolist(), classes.tolist(), strict=True)
        ]
    )
    expected = epg(maps, masks)
    assert torch.allclose(torch.tensor([float(r["epg"]) for r in rows]), expected.float(), atol=1e-5)
    assert ((expected > 0) & (expected < 1)).sum() >= 3  # not a degenerate 0 or 1 everywhere
    assert not torch.allclose(expected, epg(maps, batch["mask"][image]), atol=1e-3)  # not the union of all boxes

    # the probes ran on the first 3 pairs (two of them the same image), with their classes
    curves = deletion_insertion(model, batch["image"][image[:3]], classes[:3], maps[:3], steps=16)
    assert torch.allclose(torch.tensor([float(r["deletion_auc"]) for r in rows[:3]]), curves["deletion_auc"], atol=1e-5)
    assert all(r["deletion_auc"] == "" for r in rows[3:]) and all(r["noise_ssim_0.1"] for r in rows[:3])


def test_measure_predicted_on_voc_compares_2x2_maps(voc):
    tmp, ckpts = voc
    out = tmp / "predicted"
    res = CliRunner().invoke(
        app,
        [
            "measure",
            "--group",
            f"R18={ckpts[0]},{ckpts[1]}",
            "--method",
            "grad_cam@final",
            "--target",
            "predicted",
            "--n-probe",
            "2",
            *("--measure", "noise_ssim_0.1", "--measure", "transform_ssim", "--measure", "stability_ssim"),
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    with open(out / "per_image.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["image"] for r in rows] == [e[0] for e in ENTRIES] * 2  # one item per image and model
    for name in ("noise_ssim_0.1", "transform_ssim"):  # SSIM of 2x2 maps, compared at 7x7
        values = [float(r[name]) for r in rows if r[name]]
        assert len(values) == 4 and all(-1 <= v <= 1 for v in values)
    with open(out / "stability.csv", newline="") as f:
        stability = list(csv.DictReader(f))
    assert len(stability) == 3 and all(-1 <= float(r["ssim"]) <= 1 for r in stability)
