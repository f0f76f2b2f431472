"""Explain a folder or a list of image files with a model built by name (`salience explain IMAGES --model ...`):
the images as a data set, the model with its input normalisation and the map stores (the same stores as
`explain_stores` writes for a checkpoint)."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torchvision.datasets.folder import IMG_EXTENSIONS

from salience.attribution import parse_method
from salience.data import SalienceDataset, build_dataset, joint_transforms
from salience.data.core import DataError, image_size
from salience.store.explain import explain_stores, method_outs
from salience.store.zarr_store import MapStore

_WEIGHT_FILES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".pkl", ".tar")
SPLIT = "images"
"""How the stores and the view name the images' split."""
LISTING = "images.csv"
"""The file (in the output folder) that lists image files given one by one, in the `folder` data format."""


def image_target(text: str) -> str:
    """The store's target policy for `--target`: `predicted`, `true` (the class sub-folder) or a class index
    `N` (also `class:N`)."""
    text = text.strip()
    if text in ("predicted", "true"):
        return text
    k = text[6:] if text.startswith("class:") else text
    if not k.isdigit():
        raise ValueError(f"--target must be predicted, true or a class index N, got {text!r}")
    return f"class:{int(k)}"


def image_source(
    images: Sequence[str | Path], size: int | None, out: str | Path, classes: list[str] | None = None
) -> dict[str, Any]:
    """Where the images are, as a study's `data` section (`format`, `root`, `split`, `size`) that
    `open_images` and `salience view` read: one folder is read as `imagefolder` (class sub-folders, or a flat
    folder of images); image files are listed in `out/images.csv` (written here) and read as `folder`. Refuses
    a missing path, a folder among files, a file that is not an image and two files of one name. `classes`: the
    model's class order for a folder's class sub-folders (`data.classes`); image files have no class."""
    paths = [Path(p) for p in images]
    if not paths:
        raise ValueError("IMAGES: give a folder of images or one or more image files")
    for p in paths:
        if not p.exists():
            raise DataError(f"{p}: not found (IMAGES is a folder of images or image files)")
    if len(paths) == 1 and paths[0].is_dir():
        folder = {"format": "imagefolder", "root": str(paths[0].resolve()), "split": SPLIT, "size": size}
        return folder if classes is None else folder | {"classes": classes}
    if classes is not None:
        raise DataError("--classes orders the class sub-folders of a folder; image files have no class")
    for p in paths:
        if p.is_dir():
            raise DataError(f"{p}: a folder among image files; give one folder, or image files only")
        if not p.name.lower().endswith(IMG_EXTENSIONS):
            raise DataError(f"{p}: not an image file (extensions {', '.join(IMG_EXTENSIONS)})")
    stems: dict[str, Path] = {}
    for p in paths:
        if p.stem in stems:
            raise DataError(
                f"{stems[p.stem]} and {p}: two images named {p.stem!r}; the maps are named by the file name"
            )
        stems[p.stem] = p
    listing = Path(out) / LISTING
    listing.parent.mkdir(parents=True, exist_ok=True)
    staged = listing.with_name(f"{LISTING}.{os.getpid()}.tmp")  # renamed: processes under torchrun write it too
    with open(staged, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "label"])
        w.writerows([str(p.resolve()), ""] for p in paths)
    os.replace(staged, listing)
    return {"format": "folder", "root": str(listing.resolve()), "split": SPLIT, "size": size}


def open_images(source: dict[str, Any]) -> SalienceDataset:
    """The data set of `image_source`'s `source`, resized to its `size` (None: as stored; then every image
    must have one size). Every image header is read first: an undecodable file is refused by name."""
    ds = build_dataset(
        source["format"],
        source["root"],
        source["split"],
        transforms=joint_transforms(source["size"]),
        classes=source.get("classes"),
    )
    sizes = {r.id: image_size(r.image) for r in ds.records if not isinstance(r.image, torch.Tensor)}  # names a bad file
    if not sizes:
        raise DataError(f"{source['root']}: no images")
    if source["size"] is None and len(set(sizes.values())) > 1:
        (a, sa), *rest = sizes.items()
        b, sb = next((k, v) for k, v in rest if v != sa)
        raise DataError(f"images of different sizes ({a}: {sa}, {b}: {sb}, H x W); give --size N to resize them")
    return ds


def image_model(
    name: str,
    num_classes: int | None,
    weights: str | None = None,
    kwargs: dict | None = None,
    output: int | str | None = None,
    normalize: str = "none",
    device: torch.device | str = "cpu",
) -> torch.nn.Module:
    """`salience.models.build(name, num_classes, weights=, kwargs=, output=)` in eval mode on `device`, taking
    images in [0, 1]: with `normalize` "imagenet" it subtracts torchvision's ImageNet mean and divides by the
    std per channel first (a forward pre-hook; the maps stay in the image's pixels)."""
    from salience.models import build
    from salience.models.adapt import IMAGENET_MEAN_STD, normalise_input
    from salience.models.build import is_import_path

    if normalize not in ("none", "imagenet"):
        raise ValueError(f"--normalize must be none or imagenet, got {normalize!r}")
    if num_classes is None and not (is_import_path(name) or name.startswith("hf:")):
        raise ValueError(f"--model {name!r} needs --num-classes (only package.module:factory and hf: may omit it)")
    looks_like_file = weights is not None and ("/" in weights or Path(weights).suffix.lower() in _WEIGHT_FILES)
    if weights is not None and looks_like_file and not Path(weights).exists():
        raise FileNotFoundError(f"--weights {weights}: file not found")
    model = build(name, num_classes, weights=weights, kwargs=kwargs, output=output).to(device).eval()
    if normalize == "imagenet":
        normalise_input(model, *IMAGENET_MEAN_STD)
    return model


def model_label(name: str, weights: str | None = None) -> str:
    """How the stores and the view name the model: the weights file's stem, else the model name (characters
    other than letters, digits, `.`, `-` and `_` become `_`)."""
    import re

    text = Path(weights).stem if weights and Path(weights).is_file() else name
    return re.sub(r"[^\w.-]+", "_", text).strip("_") or "model"


def store_paths(methods: Sequence[str], out: str | Path, label: str, layer: str | None = None) -> dict[str, Path]:
    """`{spec: out/stores/<spec>/<label>}`, the layout of a study's stores (`layer`: see `method_outs`)."""
    specs = list(method_outs(list(methods), Path(out) / "stores", layer))
    for spec in specs:
        parse_method(spec)
    return {spec: Path(out) / "stores" / spec / label for spec in specs}


def explain_images(
    model: torch.nn.Module,
    dataset: SalienceDataset,
    source: dict[str, Any],
    outs: dict[str, Path],
    *,
    target_policy: str = "predicted",
    options: dict[str, dict[str, Any]] | None = None,
    normalize: str = "none",
    chunk_size: int = 256,
    batch_size: int = 64,
    progress: bool = False,
    ctx=None,
) -> dict[str, MapStore]:
    """`{spec: store}`: the maps of `model` on every image of `dataset` by each method, in the stores `outs`
    (created, or resumed when their metadata match: the stores' `data` names the images and `normalize`).
    `target_policy` "true" needs classes (a folder with class sub-folders); `options`: `{spec: {option: value}}`
    of the methods that take options."""
    if target_policy == "true" and not dataset.classes:
        raise ValueError(
            f"--target true: {source['root']} gives the images no class (class sub-folders do); "
            "use --target predicted or a class index"
        )
    data = f"{source['format']}:{source['root']}" + ("" if normalize == "none" else f" normalize={normalize}")
    return explain_stores(
        [model],
        dataset,
        list(outs),
        [outs],
        target_policy=target_policy,
        options=options,
        data=data,
        split=SPLIT,
        chunk_size=chunk_size,
        batch_size=batch_size,
        progress=progress,
        ctx=ctx,
    )[0]


def parse_kwargs(items: Sequence[str]) -> dict[str, Any]:
    """The model's constructor keywords from `--kwargs` values: each a JSON object, or `key=value` with
    `value` read as JSON when it is (`depth=3`, `pretrained=false`, `names=["a"]`), else as text."""
    kwargs: dict[str, Any] = {}
    for item in items:
        if item.lstrip().startswith("{"):
            try:
                value = json.loads(item)
            except ValueError as err:
                raise ValueError(f"--kwargs {item!r}: not a JSON object ({err})") from None
            if not isinstance(value, dict):
                raise ValueError(f"--kwargs {item!r}: not a JSON object")
            kwargs.update(value)
            continue
        key, sep, text = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ValueError(f"--kwargs {item!r}: expected key=value or a JSON object")
        try:
            kwargs[key.strip()] = json.loads(text)
        except ValueError:
            kwargs[key.strip()] = text
    return kwargs
