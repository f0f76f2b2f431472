"""Bad-input sweep across the CLI and the Python API.

Each row gives a bad input and the text the error must contain (the file, key, shape or value at
fault). For every row: the command exits non-zero (or the call raises), and no file that existed
before changes, appears or disappears (sha256 of every file under the test folder, before/after).
"""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from salience.cli import app
from salience.data import DataError, build_dataset, class_masks
from salience.measures import entropy, epg, iou, pearson, pointing_game
from salience.measures.summary import summarise
from salience.models import build
from salience.store import MapStore, StoreMeta, fill
from salience.training import ConfigError, load_config, save_checkpoint

SIDE = 16


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _folder(root: Path, rows: list[str] | None = None) -> Path:
    """A salience-folder data set (classes a, b) of 4 images with boxes and human maps."""
    rng = np.random.default_rng(0)
    for i in range(4):
        _png(root / f"img{i}.png", rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8))
        _png(root / f"map{i}.png", rng.integers(0, 256, (SIDE, SIDE), dtype=np.uint8))
    (root / "classes.txt").write_text("a\nb\n")
    rows = rows or [f"img{i}.png,{'ab'[i % 2]},map{i}.png,2 3 10 12 {'ab'[i % 2]},{i % 2}" for i in range(4)]
    (root / "test.csv").write_text("image,label,human_map,boxes,group\n" + "\n".join(rows) + "\n")
    return root


def _checkpoint(path: Path, data_root: Path) -> Path:
    cfg = load_config(
        None, ["data.format=folder", f"data.root={data_root}", "data.train_split=test", "data.val_split=test"]
    )
    torch.manual_seed(0)
    save_checkpoint(
        {
            "model": build("smallcnn", 2).state_dict(),
            "config": cfg.dump(),
            "epoch": 1,
            "classes": ["a", "b"],
            "multi_label": False,
        },
        path,
    )
    return path


def _store(path: Path, seed: int = 0, split: str = "test", complete: bool = True) -> Path:
    meta = StoreMeta(
        model_hash=f"m{seed}",
        method="gradient",
        target_policy="true",
        resolution=(SIDE, SIDE),
        data="mem",
        split=split,
        image_ids=tuple(f"img{i}" for i in range(4)),
    )
    store = MapStore.create(path, meta, (4, 4), chunk_size=2)
    g = torch.Generator().manual_seed(seed)
    fill(store, lambda a, b: (torch.rand(b - a, 4, 4, generator=g), torch.zeros(b - a, dtype=torch.long)))
    if not complete:
        store._group["done"][1] = False
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """Inputs shared by the rows: a good data folder, a checkpoint, stores, a finished measure output."""
    root = tmp_path_factory.mktemp("world")
    good = _folder(root / "data")
    _checkpoint(root / "model.pt", good)
    _store(root / "s0", 0)
    _store(root / "s1", 1)
    _store(root / "s2", 2)
    _store(root / "s3", 3)
    _store(root / "s_val", 4, split="val")
    _store(root / "s_part", 5, complete=False)
    result = CliRunner().invoke(app, ["measure", "--stores", str(root / "s0"), "--out", str(root / "measured")])
    assert result.exit_code == 0, result.output
    # a finished training run (only the files the trainer looks at)
    (root / "run" / "checkpoints").mkdir(parents=True)
    (root / "run" / "checkpoints" / "last.pt").write_bytes((root / "model.pt").read_bytes())
    (root / "run" / "log.jsonl").write_text(json.dumps({"epoch": 1}) + "\n")
    (root / "a_file").write_text("not a folder\n")
    (root / "garbage.pt").write_bytes(b"\x00not a checkpoint" * 10)
    # data folders with one fault each
    bad = _folder(root / "corrupt_image")
    (bad / "img2.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    _folder(root / "bad_label", ["img0.png,a,map0.png,,0", "img1.png,zebra,map1.png,,0"])
    _folder(root / "bad_box", ["img0.png,a,map0.png,2 3 10 face a,0", "img1.png,b,map1.png,,1"])
    _folder(root / "missing_image", ["img0.png,a,map0.png,,0", "img9.png,b,map1.png,,1"])
    sized = _folder(root / "small_map")
    _png(sized / "map1.png", np.zeros((SIDE // 2, SIDE // 2), dtype=np.uint8))
    _folder(root / "bad_group", ["img0.png,a,map0.png,,zero"])
    (root / "bad.yaml").write_text("epochs: 2\nepochz: 3\n")
    (root / "typo.yaml").write_text("epochs: two\n")
    (root / "good.yaml").write_text("epochs: 1\ndevice: cpu\n")
    (root / "notyaml.yaml").write_text("epochs: [1,\n")
    return root


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _new_outputs_removed(root: Path) -> dict[str, str]:
    """Snapshot of `root` without the fresh output paths of the rows (`new_*`), which are then deleted:
    a run that fails half-way may leave its own new output (e.g. a resumable store), nothing else."""
    snap = {k: v for k, v in _snapshot(root).items() if not k.startswith("new_")}
    for p in root.glob("new_*"):
        shutil.rmtree(p)
    return snap


R = "{root}"  # replaced by the shared folder in every argument

CLI = [
    # id, argv, text the error must contain
    ("train: missing config", ["train", f"{R}/nope.yaml"], f"{R}/nope.yaml: config file not found"),
    ("train: unknown key", ["train", f"{R}/bad.yaml"], "epochz"),
    ("train: wrong type in file", ["train", f"{R}/typo.yaml"], "epochs"),
    ("train: not YAML", ["train", f"{R}/notyaml.yaml"], "not valid YAML"),
    ("train: wrong type in --set", ["train", f"{R}/bad.yaml", "--set", "batch_size=[1]"], "batch_size"),
    ("train: unknown --set key", ["train", f"{R}/good.yaml", "--set", "optim.lrr=1"], "good.yaml: optim.lrr"),
    (
        "train: out holds another run",
        ["train", f"{R}/good.yaml", "--set", f"out={R}/run"],
        f"{R}/run already holds a run",
    ),
    (
        "train: out not writable",
        [
            "train",
            f"{R}/good.yaml",
            "--set",
            f"out={R}/a_file/run",
            "--set",
            "data.options={n_train: 4, n_val: 2, n_test: 2, n_out_of_set: 0, size: 32}",
        ],
        f"{R}/a_file/run",
    ),
    (
        "train: corrupt image",
        [
            "train",
            f"{R}/good.yaml",
            "--set",
            f"out={R}/new_run",
            "--set",
            "data.format=folder",
            "--set",
            f"data.root={R}/corrupt_image",
            "--set",
            "data.train_split=test",
            "--set",
            "data.val_split=test",
        ],
        f"unreadable files: {R}/corrupt_image/img2.png",
    ),  # found by the header check before training
    (
        "explain: missing checkpoint",
        ["explain", "--checkpoint", f"{R}/nope.pt", "--method", "gradient", "--out", f"{R}/new_store"],
        f"{R}/nope.pt: checkpoint not found",
    ),
    (
        "explain: corrupt checkpoint",
        ["explain", "--checkpoint", f"{R}/garbage.pt", "--method", "gradient", "--out", f"{R}/new_store"],
        f"{R}/garbage.pt: not a readable",
    ),
    (
        "explain: unknown method",
        ["explain", "--checkpoint", f"{R}/model.pt", "--method", "lrp", "--out", f"{R}/new_store"],
        "lrp",
    ),
    (
        "explain: unknown layer",
        [
            "explain",
            "--checkpoint",
            f"{R}/model.pt",
            "--method",
            "grad_cam",
            "--layer",
            "mid9",
            "--out",
            f"{R}/new_store",
        ],
        "mid9",
    ),
    (
        "explain: class out of range",
        [
            "explain",
            "--checkpoint",
            f"{R}/model.pt",
            "--method",
            "gradient",
            "--target",
            "class:7",
            "--out",
            f"{R}/new_store",
        ],
        "class:7",
    ),
    (
        "explain: bad target policy",
        [
            "explain",
            "--checkpoint",
            f"{R}/model.pt",
            "--method",
            "gradient",
            "--target",
            "best",
            "--out",
            f"{R}/new_store",
        ],
        "best",
    ),
    (
        "explain: unknown split",
        [
            "explain",
            "--checkpoint",
            f"{R}/model.pt",
            "--method",
            "gradient",
            "--data",
            "tset",
            "--out",
            f"{R}/new_store",
        ],
        "tset",
    ),
    (
        "explain: unknown --set key",
        [
            "explain",
            "--checkpoint",
            f"{R}/model.pt",
            "--method",
            "gradient",
            "--set",
            "data.sizee=3",
            "--out",
            f"{R}/new_store",
        ],
        "data.sizee",
    ),
    (
        "explain: out holds another store",
        ["explain", "--checkpoint", f"{R}/model.pt", "--method", "gradient", "--out", f"{R}/s0"],
        "differs in model_hash",
    ),
    (
        "explain: out is another folder",
        ["explain", "--checkpoint", f"{R}/model.pt", "--method", "gradient", "--out", f"{R}/measured"],
        f"{R}/measured: not a map store",
    ),
    (
        "explain: out not writable",
        ["explain", "--checkpoint", f"{R}/model.pt", "--method", "gradient", "--out", f"{R}/a_file/store"],
        f"{R}/a_file/store: cannot create a store there",
    ),
    (
        "explain: corrupt image",
        [
            "explain",
            "--checkpoint",
            f"{R}/model.pt",
            "--method",
            "gradient",
            "--set",
            f"data.root={R}/corrupt_image",
            "--out",
            f"{R}/new_store",
        ],
        f"{R}/corrupt_image/img2.png",
    ),
    (
        "explain: unknown label in CSV",
        [
            "explain",
            "--checkpoint",
            f"{R}/model.pt",
            "--method",
            "gradient",
            "--set",
            f"data.root={R}/bad_label",
            "--out",
            f"{R}/new_store",
        ],
        f"{R}/bad_label/test.csv:3: unknown label(s) ['zebra']",
    ),
    (
        "explain: bad box in CSV",
        [
            "explain",
            "--checkpoint",
            f"{R}/model.pt",
            "--method",
            "gradient",
            "--set",
            f"data.root={R}/bad_box",
            "--out",
            f"{R}/new_store",
        ],
        f"{R}/bad_box/test.csv:2: box",
    ),
    (
        "explain: missing image",
        [
            "explain",
            "--checkpoint",
            f"{R}/model.pt",
            "--method",
            "gradient",
            "--set",
            f"data.root={R}/missing_image",
            "--out",
            f"{R}/new_store",
        ],
        f"{R}/missing_image/img9.png",
    ),
    (
        "explain: human map of the wrong size",
        [
            "explain",
            "--checkpoint",
            f"{R}/model.pt",
            "--method",
            "gradient",
            "--set",
            f"data.root={R}/small_map",
            "--out",
            f"{R}/new_store",
        ],
        f"{R}/small_map/map1.png",
    ),
    (
        "explain: non-integer group",
        [
            "explain",
            "--checkpoint",
            f"{R}/model.pt",
            "--method",
            "gradient",
            "--set",
            f"data.root={R}/bad_group",
            "--out",
            f"{R}/new_store",
        ],
        f"{R}/bad_group/test.csv:2: column 'group'",
    ),
    (
        "measure: missing store",
        ["measure", "--stores", f"{R}/nope", "--out", f"{R}/new_out"],
        f"{R}/nope: not found (expected a map store folder or a checkpoint file)",
    ),
    (
        "measure: unfinished store",
        ["measure", "--stores", f"{R}/s_part", "--out", f"{R}/new_out"],
        f"{R}/s_part: 1 of 2 chunks unfinished",
    ),
    (
        "measure: misaligned group",
        ["measure", "--group", f"x={R}/s1,{R}/s_val", "--out", f"{R}/new_out"],
        "differ in split",
    ),
    ("measure: bad --group", ["measure", "--group", f"{R}/s1", "--out", f"{R}/new_out"], "NAME=PATH"),
    (
        "measure: out holds other results",
        ["measure", "--stores", f"{R}/s1", "--out", f"{R}/measured"],
        f"{R}/measured/summary.json holds results of other stores",
    ),
    ("measure: out holds a non-summary", ["measure", "--stores", f"{R}/s1", "--out", f"{R}/run"], None),
    (
        "measure: out not writable",
        ["measure", "--stores", f"{R}/s1", "--out", f"{R}/a_file/out"],
        f"{R}/a_file/out: cannot create the output folder",
    ),
]


@pytest.mark.parametrize("argv,expected", [c[1:] for c in CLI], ids=[c[0] for c in CLI])
def test_cli_bad_input(world, argv, expected):
    before = _snapshot(world)
    try:
        result = CliRunner().invoke(app, [a.replace(R, str(world)) for a in argv])
    finally:
        after = _new_outputs_removed(world)
    text = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert result.exit_code != 0, text
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), (
        f"unhandled {type(result.exception).__name__}: {result.exception}"
    )  # an error message, not a traceback
    if expected is not None:
        assert expected.replace(R, str(world)) in " ".join(text.split()), text
    assert after == before  # nothing that existed changed or vanished; nothing was added outside new_*


def _maps(b=2, side=4):
    return torch.rand(b, side, side, generator=torch.Generator().manual_seed(0))


def _nan_maps():
    m = _maps(3)
    m[2, 1, 1] = float("nan")
    return m


API = [
    ("entropy: NaN map", lambda w: entropy(_nan_maps()), ValueError, "NaN or inf in images [2]"),
    ("pearson: shapes differ", lambda w: pearson(_maps(2, 4), _maps(2, 5)), ValueError, "(2, 4, 4) and b (2, 5, 5)"),
    ("entropy: wrong rank", lambda w: entropy(torch.zeros(4, 4)), ValueError, "[B, h, w], got (4, 4)"),
    ("entropy: integer maps", lambda w: entropy(torch.zeros(1, 4, 4, dtype=torch.long)), TypeError, "torch.int64"),
    ("entropy: not a tensor", lambda w: entropy([[0.0]]), TypeError, "list"),
    ("epg: masks of another batch", lambda w: epg(_maps(2), torch.ones(3, 8, 8)), ValueError, "batch size"),
    ("iou: masks without batch dim", lambda w: iou(_maps(2), torch.ones(8, 8)), ValueError, "[B, H, W], got (8, 8)"),
    (
        "pointing game: negative tolerance",
        lambda w: pointing_game(_maps(), torch.ones(2, 4, 4), -1),
        ValueError,
        "tolerance",
    ),
    ("summarise: inf", lambda w: summarise([1.0, float("inf")]), ValueError, "contains inf"),
    (
        "class_masks: lengths differ",
        lambda w: class_masks([torch.zeros(1, 4)], [], torch.zeros(1), (4, 4)),
        ValueError,
        "1 box sets, 0 label sets",
    ),
    (
        "store: NaN maps refused",
        lambda w: MapStore(w / "s_part", mode="r+").write_chunk(
            1, torch.full((2, 4, 4), float("nan")), torch.zeros(2, dtype=torch.long)
        ),
        ValueError,
        "NaN or inf",
    ),
    (
        "store: wrong map shape",
        lambda w: MapStore(w / "s_part", mode="r+").write_chunk(
            1, torch.zeros(2, 5, 5), torch.zeros(2, dtype=torch.long)
        ),
        ValueError,
        "chunk 1 needs maps (2, 4, 4)",
    ),
    (
        "data: unknown label",
        lambda w: build_dataset("folder", w / "bad_label", "test"),
        DataError,
        "bad_label/test.csv:3: unknown label(s) ['zebra']",
    ),
    (
        "data: missing image",
        lambda w: build_dataset("folder", w / "missing_image", "test"),
        DataError,
        "missing_image/img9.png",
    ),
    (
        "data: corrupt image",
        lambda w: build_dataset("folder", w / "corrupt_image", "test")[2],
        DataError,
        "corrupt_image/img2.png: cannot decode image",
    ),
    (
        "data: human map of the wrong size",
        lambda w: build_dataset("folder", w / "small_map", "test")[1],
        DataError,
        "small_map/map1.png: human map is (8, 8) but its image",
    ),
    *[
        (
            f"data: degenerate box {box!r}",
            lambda w, box=box: _degenerate(w, box),
            DataError,
            "degenerate/test.csv:2: box",
        )
        for box in ("10 12 2 3 a", "5 5 5 5 a", "nan 0 4 4 a")
    ],
    ("config: unknown key", lambda w: load_config(w / "bad.yaml"), ConfigError, "bad.yaml: epochz"),
    ("config: wrong type", lambda w: load_config(None, ["data.size=big"]), ConfigError, "data.size"),
]


def _degenerate(world: Path, box: str):
    root = _folder(world / "new_degenerate" / "degenerate", [f"img0.png,a,map0.png,{box},0"])
    try:
        return build_dataset("folder", root, "test")
    finally:
        shutil.rmtree(world / "new_degenerate")


def _row(c):
    return (
        pytest.param(*c.values[1:], id=c.values[0], marks=c.marks)
        if hasattr(c, "values")
        else pytest.param(*c[1:], id=c[0])
    )


@pytest.mark.parametrize("call,error,expected", [_row(c) for c in API])
def test_api_bad_input(world, call, error, expected):
    before = _snapshot(world)
    with pytest.raises(error) as err:
        call(world)
    assert expected in str(err.value)
    assert _snapshot(world) == before
