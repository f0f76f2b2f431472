"""`salience explain IMAGES --model ...`: a folder or image files explained with a model built by name into
stores that `salience view` opens, the overlay pictures of `--png`, its errors, and `salience methods` in a
narrow terminal."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from salience.attribution import METHODS, attribute
from salience.cli import app
from salience.models import build
from salience.store import MapStore

METHOD_SPECS = ["grad_cam", "input_x_gradient"]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """`faces/{cat,dog}/{0,1}.png` and `flat/{a,b}.jpg` (32 px, random) and `m.pth`, a 3-class smallcnn's state
    dict."""
    root = tmp_path_factory.mktemp("explain_images")
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / "faces" / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "faces" / c / f"{i}.png")
    (root / "flat").mkdir()
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "flat" / f"{name}.png")
    torch.manual_seed(0)
    torch.save(build("smallcnn", 3).state_dict(), root / "m.pth")
    return root


def _run(*args: str):
    result = CliRunner().invoke(app, ["explain", *args])
    return result, result.output + (result.stderr if result.stderr_bytes is not None else "")


def _model(world: Path) -> torch.nn.Module:
    return build("smallcnn", 3, weights=world / "m.pth").eval()


def _pixels(paths: list[Path]) -> torch.Tensor:
    """The images as the model sees them, read here with PIL: `[B, 3, H, W]` in [0, 1]."""
    return (
        torch.stack([torch.from_numpy(np.asarray(Image.open(p).convert("RGB")).copy()) for p in paths])
        .permute(0, 3, 1, 2)
        .float()
        / 255
    )


def test_folder_gives_stores_pictures_and_a_view(world):
    out = world / "d"
    result, text = _run(
        str(world / "faces"), "--model", "smallcnn", "--num-classes", "3", "--weights", str(world / "m.pth"),
        "--method", "grad_cam", "--method", "input_x_gradient", "--png", "--out", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, text
    ids = ["cat/0.png", "cat/1.png", "dog/0.png", "dog/1.png"]
    model = _model(world)
    x = _pixels([world / "faces" / i for i in ids])
    with torch.no_grad():
        predicted = model(x).argmax(1)
    for spec in METHOD_SPECS:
        store = MapStore(out / "stores" / spec / "m")
        assert list(store.meta.image_ids) == ids and store.meta.target_policy == "predicted"
        maps, targets = store.read(0, store.n)
        assert torch.equal(targets, predicted)
        expected = attribute(spec, model, x, predicted)
        torch.testing.assert_close(maps, expected.detach().float(), rtol=1e-4, atol=1e-6)
        for i in ids:  # one picture per image and method, not blank
            with Image.open(out / "png" / spec / i) as im:
                assert im.width > 32 and im.height > 32
                colours = np.unique(np.asarray(im.convert("RGB")).reshape(-1, 3), axis=0)
                assert len(colours) > 50  # the image, the map and the colour bar: not one colour
    from salience.view import Study

    study = Study(out)  # what `salience view DIR` serves
    assert study.methods == METHOD_SPECS
    study.warm()
    assert study.ready.wait(30)
    item = study.item({"image": "dog/1.png"})
    assert [m["method"] for m in item["maps"]] == METHOD_SPECS and item["picture"] is not None
    assert study.picture({"image": "dog/1.png"}).startswith(b"\x89PNG")
    result, text = _run(  # again: the stores are resumed, the view files rewritten
        str(world / "faces"), "--model", "smallcnn", "--num-classes", "3", "--weights", str(world / "m.pth"),
        "--method", "gradient", "--out", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, text
    assert Study(out).methods == ["gradient"]


def test_files_and_a_class_index(world):
    out = world / "files"
    files = [world / "flat" / "b.png", world / "flat" / "a.png"]
    result, text = _run(
        *map(str, files), "--model", "smallcnn", "--num-classes", "3", "--weights", str(world / "m.pth"),
        "--method", "gradient", "--target", "2", "--png", "--out", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, text
    store = MapStore(out / "stores" / "gradient" / "m")
    assert list(store.meta.image_ids) == ["b", "a"] and store.meta.target_policy == "class:2"
    maps, targets = store.read(0, 2)
    assert targets.tolist() == [2, 2]
    target = torch.tensor([2, 2])
    torch.testing.assert_close(maps, attribute("gradient", _model(world), _pixels(files), target), rtol=1e-4, atol=1e-6)
    assert sorted(p.name for p in (out / "png" / "gradient").iterdir()) == ["a.png", "b.png"]
    from salience.view import Study

    assert Study(out).item({"image": "a"})["picture"]["width"] == 32


def test_method_options_reach_the_maps_and_the_store(world):
    """`--option occlusion.window=16`: the store holds the maps of those options and records them."""
    out = world / "options"
    files = [world / "flat" / "a.png", world / "flat" / "b.png"]
    result, text = _run(
        *map(str, files), "--model", "smallcnn", "--num-classes", "3", "--weights", str(world / "m.pth"),
        "--method", "occlusion", "--method", "grad_cam", "--option", "occlusion.window=16",
        "--option", "occlusion.stride=8", "--target", "1", "--out", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, text
    store = MapStore(out / "stores" / "occlusion" / "m")
    assert store.meta.options == {"window": 16, "stride": 8}
    expected = attribute("occlusion", _model(world), _pixels(files), torch.tensor([1, 1]), window=16, stride=8)
    torch.testing.assert_close(store.read(0, 2)[0], expected, rtol=1e-4, atol=1e-6)
    for option, message in [
        ("occlusion.size=3", "unknown option 'size'; it takes window, stride"),
        ("gradient.window=3", "'gradient' is not one of the methods"),
        ("window=3", "expected METHOD.KEY=VALUE"),
    ]:
        result, text = _run(
            *map(str, files), "--model", "smallcnn", "--num-classes", "3", "--method", "occlusion",
            "--option", option, "--out", str(world / "never"),
        )  # fmt: skip
        assert result.exit_code == 2 and message in " ".join(text.replace("│", " ").split()), (option, text)
    assert not (world / "never" / "stores").exists()


def test_target_true_is_the_class_folder(world):
    out = world / "true"
    result, text = _run(
        str(world / "faces"), "--model", "smallcnn", "--num-classes", "3", "--weights", str(world / "m.pth"),
        "--method", "gradient", "--target", "true", "--out", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, text
    assert MapStore(out / "stores" / "gradient" / "m").read(0, 4)[1].tolist() == [0, 0, 1, 1]


def test_classes_give_the_models_order(world):
    """`--classes dog,bird,cat`: the model's class 0 is the `dog` folder, class 2 the `cat` folder."""
    out = world / "ordered"
    result, text = _run(
        str(world / "faces"), "--model", "smallcnn", "--num-classes", "3", "--weights", str(world / "m.pth"),
        "--method", "gradient", "--target", "true", "--classes", "dog,bird,cat", "--out", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, text
    assert MapStore(out / "stores" / "gradient" / "m").read(0, 4)[1].tolist() == [2, 2, 0, 0]
    result, text = _run(
        str(world / "faces"), "--model", "smallcnn", "--num-classes", "3", "--method", "gradient",
        "--classes", "dog,bird", "--out", str(world / "unnamed"),
    )  # fmt: skip
    assert result.exit_code != 0 and "cat" in text


def test_bad_input_is_named(world):
    (world / "bad").mkdir()
    (world / "bad" / "broken.png").write_bytes(b"not a png")
    (world / "notes.txt").write_text("hello")
    (world / "sizes").mkdir()
    for i, size in enumerate((32, 40)):
        Image.new("RGB", (size, size), "red").save(world / "sizes" / f"{i}.png")
    model = ["--model", "smallcnn", "--num-classes", "3", "--method", "gradient"]
    cases = [
        ([str(world / "missing"), *model], f"{world / 'missing'}: not found"),
        ([str(world / "notes.txt"), *model], f"{world / 'notes.txt'}: not an image file"),
        ([str(world / "bad"), *model], f"{world / 'bad' / 'broken.png'}: cannot decode image"),
        ([str(world / "sizes"), *model], "--size"),
        ([str(world / "faces"), *model, "--checkpoint", str(world / "m.pth")], "--checkpoint or --model, not both"),
        ([str(world / "faces"), "--method", "gradient"], "--checkpoint CHECKPOINT, or IMAGES and --model"),
        (["--checkpoint", str(world / "m.pth"), "--method", "gradient", "--png"], "--png applies to the IMAGES"),
        ([str(world / "faces"), "--model", "smallcnn", "--method", "gradient"], "--num-classes"),
        ([str(world / "flat"), *model, "--target", "true"], "--target true"),
        ([str(world / "faces"), *model, "--target", "best"], "--target must be"),
        ([str(world / "faces"), *model, "--weights", str(world / "nope.pth")], "nope.pth: file not found"),
    ]
    for args, message in cases:
        result, text = _run(*args, "--out", str(world / "never"))
        assert result.exit_code == 2, (args, text)
        assert message in " ".join(text.replace("│", " ").split()), (args, text)
    assert not (world / "never" / "stores").exists()


@pytest.mark.parametrize("columns", ["40", "80", "200"])
def test_methods_never_cuts_a_name(columns):
    result = CliRunner().invoke(app, ["methods"], env={"COLUMNS": columns})
    assert result.exit_code == 0, result.output
    words = set(re.findall(r"\w+", result.output))
    assert all(name in words for name in METHODS), (columns, result.output)
    assert "…" not in result.output
    assert max(len(line) for line in result.output.splitlines()) <= max(int(columns), 100)
