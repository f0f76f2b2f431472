"""Readers for data as laid out on disk, the `build_dataset` factory and `inspect`.

Each reader returns `(records, classes)` and reports trouble to a `Problems` collector:
`error` (strict mode raises `DataError` naming the file, line or key; `inspect` counts it) or
`skip` (a documented skip, always counted: VOC XML without objects, COCO images without
annotations under `empty="skip"`, COCO boxes of zero width or height).
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import math
import os
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import torch
from torchvision.datasets.folder import IMG_EXTENSIONS

from salience.data.core import DataError, Record, SalienceDataset, annotated_fraction, image_size

FORMATS = ("builtin", "voc", "coco", "waterbirds", "folder", "imagefolder")
CLASS_ORDER_FORMATS = ("imagefolder", "folder")
"""The formats whose class order a `classes` list may give (the others have a fixed order of their own)."""
VOC_CLASSES = [
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
]


class Problems:
    """Collects problems; in strict mode an `error` raises `DataError` at once."""

    def __init__(self, strict: bool):
        self.strict = strict
        self.items: list[dict] = []

    def error(self, message: str) -> None:
        if self.strict:
            raise DataError(message)
        self.items.append({"kind": "error", "message": message})

    def skip(self, message: str) -> None:
        self.items.append({"kind": "skip", "message": message})


def _boxes(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)


# ---------------------------------------------------------------- PASCAL VOC 2007
def _voc_root(path: Path) -> Path:
    for cand in (path, path / "VOC2007", path / "VOCdevkit" / "VOC2007"):
        if (cand / "Annotations").is_dir():
            return cand
    raise DataError(f"{path}: no VOC2007 folder with Annotations/ (looked in ., VOC2007/, VOCdevkit/VOC2007/)")


def read_voc(path: Path, split: str, problems: Problems) -> tuple[list[Record], list[str]]:
    """VOCdevkit/VOC2007: ids from ImageSets/Main/<split>.txt, boxes from Annotations/<id>.xml.

    VOC pixel indices are 1-based and inclusive; boxes become xyxy [xmin-1, ymin-1, xmax, ymax].
    "difficult" objects are kept (boxes and labels) and flagged in `Record.difficult`.
    """
    root = _voc_root(Path(path))
    split_file = root / "ImageSets" / "Main" / f"{split}.txt"
    if not split_file.is_file():
        raise DataError(f"{split_file}: split file not found")
    ids = [ln.split()[0] for ln in split_file.read_text().splitlines() if ln.strip()]
    records = []
    for img_id in ids:
        record = _voc_record(root, img_id, split_file, problems)
        if record is not None:
            records.append(record)
    return records, VOC_CLASSES


def _voc_record(root: Path, img_id: str, split_file: Path, problems: Problems) -> Record | None:
    """The record of image `img_id` from its annotation file; None (reported) if the file is missing or bad,
    or it has no objects."""
    xml_path = root / "Annotations" / f"{img_id}.xml"
    try:
        tree = ET.parse(xml_path).getroot()
    except FileNotFoundError:
        problems.error(f"{xml_path}: annotation file not found (listed in {split_file})")
        return None
    except ET.ParseError as e:
        problems.error(f"{xml_path}: not valid XML ({e})")
        return None
    objects = _voc_objects(tree, xml_path, problems)
    if objects is None:
        return None
    rows, labels, difficult = objects
    if not rows:
        problems.skip(f"{xml_path}: no objects; image skipped")
        return None
    fname = (tree.findtext("filename") or f"{img_id}.jpg").strip()
    return Record(
        id=img_id,
        image=root / "JPEGImages" / fname,
        labels=sorted(set(labels)),
        boxes=_boxes(rows),
        box_labels=torch.tensor(labels),
        difficult=torch.tensor(difficult, dtype=torch.bool),
    )


def _voc_objects(
    tree: ET.Element, xml_path: Path, problems: Problems
) -> tuple[list[list[float]], list[int], list[bool]] | None:
    """The objects of a VOC annotation: xyxy boxes (0-based), class indices and difficult flags, one each per
    object; None (reported) at the first object with an unknown class or a missing or degenerate bndbox."""
    rows, labels, difficult = [], [], []
    for k, obj in enumerate(tree.findall("object")):
        name = (obj.findtext("name") or "").strip()
        if name not in VOC_CLASSES:
            problems.error(f"{xml_path}: object {k}: unknown class {name!r}")
            return None
        try:
            bb = obj.find("bndbox")
            if bb is None:
                raise ValueError("no bndbox")
            xmin, ymin, xmax, ymax = (float(bb.findtext(t, "")) for t in ("xmin", "ymin", "xmax", "ymax"))
        except (AttributeError, TypeError, ValueError):
            problems.error(f"{xml_path}: object {k} ({name}): bndbox needs numeric xmin, ymin, xmax, ymax")
            return None
        if not (xmin <= xmax and ymin <= ymax and math.isfinite(xmax) and math.isfinite(ymax)):
            # VOC boxes are 1-based and inclusive: xmin == xmax is a one-pixel-wide box
            problems.error(
                f"{xml_path}: object {k} ({name}): degenerate bndbox {(xmin, ymin, xmax, ymax)}: "
                "needs xmin <= xmax and ymin <= ymax"
            )
            return None
        rows.append([xmin - 1, ymin - 1, xmax, ymax])
        labels.append(VOC_CLASSES.index(name))
        difficult.append((obj.findtext("difficult") or "0").strip() == "1")
    return rows, labels, difficult


# ---------------------------------------------------------------- MS COCO 2014
def _need(obj: dict, keys: tuple[str, ...], where: str, file: Path) -> None:
    for k in keys:
        if k not in obj:
            raise DataError(f"{file}: {where} has no key {k!r}")


def read_coco(path: Path, split: str, problems: Problems, empty: str = "skip") -> tuple[list[Record], list[str]]:
    """COCO 2014: `annotations/instances_<split>2014.json`, images in `<split>2014/`.

    The 80 category ids, sorted, become classes 0..79; boxes xywh -> xyxy (crowd boxes kept).
    Images without annotations: `empty="skip"` (default; counted as skips) drops them, as
    multi-label training needs at least one label; `empty="keep"` keeps them with no labels.
    """
    if empty not in ("skip", "keep"):
        raise ValueError(f"read_coco: empty must be 'skip' or 'keep', got {empty!r}")
    split = split.removesuffix("2014")
    root = Path(path)
    ann_file = root / "annotations" / f"instances_{split}2014.json"
    coco = _coco_index(_coco_json(ann_file))
    cat_ids = sorted(coco.getCatIds())
    contiguous = {c: i for i, c in enumerate(cat_ids)}
    classes = [coco.cats[c]["name"] for c in cat_ids]
    records = []
    for img_id in sorted(coco.getImgIds()):
        info = coco.imgs[img_id]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id, iscrowd=None))
        rows, labels = _coco_boxes(anns, img_id, contiguous, problems, ann_file)
        if not rows and empty == "skip":
            problems.skip(f"{ann_file}: image {img_id} ({info['file_name']}) has no annotations; skipped")
            continue
        records.append(
            Record(
                id=str(img_id),
                image=root / f"{split}2014" / info["file_name"],
                labels=sorted(set(labels)),
                boxes=_boxes(rows),
                box_labels=torch.tensor(labels, dtype=torch.long),
            )
        )
    return records, classes


def _coco_json(ann_file: Path) -> dict:
    """The annotation file's JSON, checked for the keys the reader uses (a `DataError` names the first missing)."""
    try:
        data = json.loads(ann_file.read_text())
    except FileNotFoundError:
        raise DataError(f"{ann_file}: annotation file not found") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{ann_file}: not valid JSON ({e})") from None
    _need(data, ("images", "annotations", "categories"), "the top level", ann_file)
    for i, im in enumerate(data["images"]):
        _need(im, ("id", "file_name"), f"images[{i}]", ann_file)
    for i, a in enumerate(data["annotations"]):
        _need(a, ("image_id", "category_id", "bbox"), f"annotations[{i}]", ann_file)
    for i, c in enumerate(data["categories"]):
        _need(c, ("id", "name"), f"categories[{i}]", ann_file)
    return data


def _coco_index(data: dict):
    """A pycocotools `COCO` index of the annotation JSON `data` (its progress output silenced)."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    return coco


def _coco_boxes(
    anns: list[dict], img_id: int, contiguous: dict[int, int], problems: Problems, ann_file: Path
) -> tuple[list[list[float]], list[int]]:
    """xyxy boxes and class indices (`contiguous`: category id -> class) of the annotations `anns` of image
    `img_id`.

    An unknown category or a bbox that is not four finite numbers is an error, a box of zero width or
    height a skip; neither gives a box.
    """
    rows, labels = [], []
    for a in anns:
        where = f"{ann_file}: annotation {a.get('id')} of image {img_id}"
        if a["category_id"] not in contiguous:
            problems.error(f"{where}: unknown category_id {a['category_id']}")
            continue
        try:
            x, y, w, h = (float(v) for v in a["bbox"])
        except (TypeError, ValueError):
            problems.error(f"{where}: bbox {a['bbox']!r} is not [x, y, width, height]")
            continue
        if not all(math.isfinite(v) for v in (x, y, w, h)):
            problems.error(f"{where}: bbox {a['bbox']} is not finite")
            continue
        if w <= 0 or h <= 0:
            problems.skip(f"{where}: empty box {a['bbox']} skipped")
            continue
        rows.append([x, y, x + w, y + h])
        labels.append(contiguous[a["category_id"]])
    return rows, labels


# ---------------------------------------------------------------- CSV helpers
def _csv_rows(file: Path, required: tuple[str, ...]) -> list[tuple[int, dict]]:
    """(line number, row) pairs of a CSV with a header; missing columns raise naming the file."""
    try:
        with open(file, newline="") as f:
            reader = csv.DictReader(f)
            cols = reader.fieldnames or []
            missing = [c for c in required if c not in cols]
            if missing:
                raise DataError(f"{file}: missing column(s) {missing}; found {cols}")
            return [(reader.line_num, row) for row in reader]
    except FileNotFoundError:
        raise DataError(f"{file}: CSV file not found") from None


def _int(value, file: Path, line: int, column: str, allowed=None) -> int:
    try:
        v = int(str(value).strip())
    except ValueError:
        raise DataError(f"{file}:{line}: column {column!r}: {value!r} is not an integer") from None
    if allowed is not None and v not in allowed:
        raise DataError(f"{file}:{line}: column {column!r}: {v} not in {sorted(allowed)}")
    return v


# ---------------------------------------------------------------- Waterbirds
WATERBIRDS_SPLITS = {"train": 0, "val": 1, "test": 2}


def read_waterbirds(path: Path, split: str, problems: Problems) -> tuple[list[Record], list[str]]:
    """Waterbirds: `metadata.csv` with img_filename, y (0 land, 1 water bird), split (0/1/2), place.

    group = 2 * y + place. Where `segmentations/<img_filename>.png` exists (the CUB layout),
    it becomes the mask and its bounding box the bird's box.
    """
    root = Path(path)
    if split not in WATERBIRDS_SPLITS:
        raise DataError(f"Waterbirds split {split!r} unknown; choose from {list(WATERBIRDS_SPLITS)}")
    file = root / "metadata.csv"
    records = []
    for line, row in _csv_rows(file, ("img_filename", "y", "split", "place")):
        try:
            if _int(row["split"], file, line, "split", {0, 1, 2}) != WATERBIRDS_SPLITS[split]:
                continue
            y = _int(row["y"], file, line, "y", {0, 1})
            place = _int(row["place"], file, line, "place", {0, 1})
        except DataError as e:
            problems.error(str(e))
            continue
        fname = row["img_filename"].strip()
        seg = (root / "segmentations" / fname).with_suffix(".png")
        records.append(
            Record(
                id=Path(fname).stem,
                image=root / fname,
                labels=[y],
                group=2 * y + place,
                segmentation=seg if seg.is_file() else None,
            )
        )
    return records, ["landbird", "waterbird"]


# ---------------------------------------------------------------- salience folder (CYBORG layout)
def read_folder(
    path: Path, split: str, problems: Problems, classes: list[str] | None = None
) -> tuple[list[Record], list[str]]:
    """A folder with `<split>.csv` (or `path` is the CSV itself) and optional `classes.txt`.

    Columns: `image` and `label` (required; class names joined by ';', empty = no class),
    `human_map` (grey image of the same size, 255 = 1.0), `boxes` ("x0 y0 x1 y1 class" items
    joined by ';', pixels of the image), `group` (int). Paths are relative to the CSV's folder.
    The classes are `classes` when given (class i is the i-th name; every label must be one of them),
    else those of `classes.txt`, else the sorted label names found in the CSV.
    """
    path = Path(path)
    file = path if path.is_file() else path / f"{split}.csv"
    base = file.parent
    rows = _csv_rows(file, ("image", "label"))
    classes = _folder_classes(base, rows, classes)
    index = {c: i for i, c in enumerate(classes)}
    records = []
    for line, r in rows:
        try:
            names = [n.strip() for n in (r["label"] or "").split(";") if n.strip()]
            unknown = [n for n in names if n not in index]
            if unknown:
                raise DataError(f"{file}:{line}: unknown label(s) {unknown}; classes are {classes}")
            box_rows, box_labels = [], []
            for item in (r.get("boxes") or "").split(";"):
                if not item.strip():
                    continue
                parts = item.split()
                if len(parts) != 5 or parts[4] not in index:
                    raise DataError(f"{file}:{line}: box {item!r} is not 'x0 y0 x1 y1 class' with a known class")
                try:
                    x0, y0, x1, y1 = (float(v) for v in parts[:4])
                except ValueError:
                    raise DataError(f"{file}:{line}: box {item!r} has a non-numeric coordinate") from None
                if not (x0 < x1 and y0 < y1):  # also false for NaN coordinates
                    raise DataError(f"{file}:{line}: box {item!r} is degenerate: needs x0 < x1 and y0 < y1")
                box_rows.append([x0, y0, x1, y1])
                box_labels.append(index[parts[4]])
            group = _int(r["group"], file, line, "group") if (r.get("group") or "").strip() else -1
        except DataError as e:
            problems.error(str(e))
            continue
        hm = (r.get("human_map") or "").strip()
        img = r["image"].strip()
        records.append(
            Record(
                id=Path(img).stem,
                image=base / img,
                labels=sorted(index[n] for n in names),
                boxes=_boxes(box_rows),
                box_labels=torch.tensor(box_labels, dtype=torch.long),
                human_map=base / hm if hm else None,
                group=group,
            )
        )
    return records, classes


def _folder_classes(base: Path, rows: list[tuple[int, dict]], classes: list[str] | None) -> list[str]:
    """The classes of a salience folder: `classes` when given, else `base/classes.txt`, else the sorted label
    names of the CSV `rows`."""
    names_file = base / "classes.txt"
    if classes is not None:
        return list(classes)
    if names_file.is_file():
        return [c.strip() for c in names_file.read_text().splitlines() if c.strip()]
    return sorted({n.strip() for _, r in rows for n in (r["label"] or "").split(";") if n.strip()})


# ---------------------------------------------------------------- image folder (torchvision ImageFolder layout)
def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMG_EXTENSIONS)


def read_imagefolder(
    path: Path, split: str, problems: Problems, classes: list[str] | None = None
) -> tuple[list[Record], list[str]]:
    """`path/<class>/**/<image>`: classes are the sorted sub-folder names, or `classes` when given (class i
    is the i-th name; every sub-folder must be named in it, names without a folder are kept as classes
    without images); or a flat folder of images (its classes are [] whatever `classes` says).

    Every image file (torchvision's `IMG_EXTENSIONS`, any case) under a class folder, at any depth,
    is one record with `id` = its path relative to `path` (posix), labels = [class index], no boxes
    and no human map; records are sorted by id. A flat folder (images directly in `path`, no
    sub-folders) gives one record per image with no label and classes = [] (out-of-set images).
    Names starting with "." are ignored; other files are ignored. `split` does not pick a
    sub-folder: `path` itself is read (the split only names the data set).
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(
            f"{root}: image folder not found (imagefolder reads a folder with one sub-folder per "
            "class, or a flat folder of images)"
        )
    entries = sorted(e for e in root.iterdir() if not e.name.startswith("."))
    class_dirs = [e for e in entries if e.is_dir()]
    loose = [e for e in entries if e.is_file() and _is_image(e.name)]
    if class_dirs and loose:
        raise DataError(
            f"{root}: holds both images ({', '.join(e.name for e in loose[:3])}) and class folders "
            f"({', '.join(e.name for e in class_dirs[:3])}); put every image in a class folder, or "
            "use a flat folder of images only"
        )
    if not class_dirs and not loose:
        raise DataError(f"{root}: no class folders and no images (extensions {', '.join(IMG_EXTENSIONS)})")
    if loose:
        return [Record(id=e.name, image=e, labels=[]) for e in loose], []
    names = [d.name for d in class_dirs] if classes is None else list(classes)
    _check_class_folders(root, class_dirs, names)
    records = []
    for folder in class_dirs:
        index = names.index(folder.name)
        found = []
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            found += [Path(dirpath) / f for f in filenames if _is_image(f)]
        if not found:
            problems.error(
                f"{folder}: class folder {folder.name!r} has no images "
                f"(extensions {', '.join(IMG_EXTENSIONS)}, in it or in its sub-folders)"
            )
        records += [Record(id=p.relative_to(root).as_posix(), image=p, labels=[index]) for p in found]
    records.sort(key=lambda r: r.id)
    return records, names


def _short(names: list[str], n: int = 12) -> str:
    """`names` for a message: the first `n`, then how many there are in all."""
    more = f", ... ({len(names)} in all)" if len(names) > n else ""
    return "[" + ", ".join(names[:n]) + more + "]"


def _check_class_folders(root: Path, class_dirs: list[Path], names: list[str]) -> None:
    """A `DataError` naming the class folders of `root` that `names` (the `classes` list) leaves out."""
    missing = [d.name for d in class_dirs if d.name not in names]
    if missing:
        raise DataError(
            f"{root}: class folder(s) {_short(missing)} not in classes {_short(names)}; "
            "`classes` must name every class folder (it may name classes without a folder)"
        )


def check_classes(format: str, classes) -> list[str] | None:
    """`classes` (a class order: class i is the i-th name) checked for `format`: a list of distinct, non-empty
    names, given only for the folder formats (`CLASS_ORDER_FORMATS`); ValueError otherwise. None passes."""
    if classes is None:
        return None
    if isinstance(classes, str) or not isinstance(classes, (list, tuple)):
        raise ValueError(f"classes must be a list of class names, got {classes!r}")
    if format not in CLASS_ORDER_FORMATS:
        raise ValueError(
            f"classes applies to the folder formats ({', '.join(CLASS_ORDER_FORMATS)}) only; "
            f"format {format!r} has its own fixed class order"
        )
    names = [str(c) for c in classes]
    if not names or any(not n.strip() or n != n.strip() for n in names):
        raise ValueError(f"classes must be non-empty names without surrounding spaces, got {names}")
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise ValueError(f"classes: {dup!r} is given twice")
    return names


READERS = {
    "voc": read_voc,
    "coco": read_coco,
    "waterbirds": read_waterbirds,
    "folder": read_folder,
    "imagefolder": read_imagefolder,
}


def _read(format: str, path, split: str, problems: Problems, classes=None, **options):
    if format not in FORMATS:
        raise ValueError(f"unknown data format {format!r}; choose from {FORMATS}")
    classes = check_classes(format, classes)
    if classes is not None:
        options["classes"] = classes
    if format == "builtin":
        if path is None:
            from salience.data.builtin import builtin_dataset

            ds = builtin_dataset(split, **options)
            return ds.records, ds.classes
        format = "folder"  # a benchmark written by make_builtin
    if path is None:
        raise ValueError(f"format {format!r} needs a path")
    return READERS[format](Path(path), split, problems, **options)


def _files(r: Record):
    for what in ("image", "human_map", "segmentation"):
        p = getattr(r, what)
        if p is not None and not isinstance(p, torch.Tensor):
            yield what, p


def _file_problems(records):
    """Messages for missing or undecodable image, human-map and segmentation files (headers only) and for
    maps whose size differs from their image."""
    for r in records:
        sizes = {}
        for what, p in _files(r):
            try:
                sizes[what] = image_size(p)
            except DataError as e:
                yield str(e)
        for what in ("human_map", "segmentation"):
            if what in sizes and "image" in sizes and sizes[what] != sizes["image"]:
                yield f"{getattr(r, what)}: {what} is {sizes[what]} but its image {r.image} is {sizes['image']} (H, W)"


def check_files(dataset) -> None:
    """Open the header of every file of a `SalienceDataset` (images, human maps, segmentations) before a long
    run reads them; a DataError names the first bad files. Pixel data are not decoded: a file that is
    truncated after its header is still only found when it is read."""
    bad = list(itertools.islice(_file_problems(dataset.records), 6))
    if bad:
        more = " (and more)" if len(bad) > 5 else ""
        raise DataError(f"{dataset.name or 'data'}: unreadable files{more}: " + "; ".join(bad[:5]))


def build_dataset(
    format: str,
    path,
    split: str,
    transforms=None,
    annotated: float = 1.0,
    seed: int = 0,
    classes: list[str] | None = None,
    **options,
) -> SalienceDataset:
    """Read `split` of the data at `path` in `format` (builtin, voc, coco, waterbirds, folder, imagefolder).

    `format="builtin"` with `path=None` generates the benchmark in memory (`config=` a
    `BuiltinBenchmark`); with a path it reads a folder written by `make_builtin`. `imagefolder`
    reads `path` itself (one sub-folder per class, or a flat folder of images); `split` only names it.
    `transforms`: joint transforms on each sample (see `joint_transforms`); `annotated`: the
    fraction of images whose boxes/maps may guide training, chosen by `seed`
    (`annotated_fraction`). `classes` (`imagefolder` and `folder` only; ValueError for the other
    formats): the class order, class i = the i-th name, as a pretrained model's outputs are ordered
    (see `check_classes`). Other options go to the reader (COCO: `empty`). Raises `DataError`
    on the first bad file and when image / map files are missing (listing them).
    """
    check_classes(format, classes)
    if format == "builtin" and path is None:
        from salience.data.builtin import builtin_dataset

        ds = builtin_dataset(split, transforms=transforms, **options)
        ds.annotated = annotated_fraction(len(ds), annotated, seed)
        ds.problems = []
        return ds
    problems = Problems(strict=True)
    records, classes = _read(format, path, split, problems, classes, **options)
    missing = [f"{p} ({what})" for r in records for what, p in _files(r) if not os.path.exists(p)]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DataError(f"{len(missing)} file(s) missing: {', '.join(missing[:5])}{more}")
    ds = SalienceDataset(
        records,
        classes,
        transforms=transforms,
        annotated=annotated_fraction(len(records), annotated, seed),
        name=f"{format}/{split}",
    )
    ds.problems = problems.items
    return ds


def inspect(format: str, path, split: str = "train", check_files: bool = True, **options) -> dict:
    """Summary of one split as a JSON-ready dict: images, classes, boxes per class, unannotated
    images (no box, map or segmentation), groups, difficult boxes and the problems found.
    `options` go to the reader, `classes` (a class order, folder formats) as in `build_dataset`.

    With `check_files`, every image, human map and segmentation header is opened: missing or
    undecodable files and maps whose size differs from their image are reported.
    """
    problems = Problems(strict=False)
    try:
        records, classes = _read(format, path, split, problems, **options)
    except DataError as e:
        return {
            "format": format,
            "path": str(path),
            "split": split,
            "images": 0,
            "classes": [],
            "problems": [{"kind": "error", "message": str(e)}],
            "errors": 1,
            "skips": 0,
        }
    if check_files:
        for message in _file_problems(records):
            problems.error(message)
    per_class = Counter(int(c) for r in records for c in r.box_labels.tolist())
    return {
        "format": format,
        "path": str(path),
        "split": split,
        "images": len(records),
        "classes": classes,
        "images_per_class": {classes[c]: n for c, n in sorted(Counter(c for r in records for c in r.labels).items())},
        "boxes_per_class": {classes[c]: n for c, n in sorted(per_class.items())},
        "difficult_boxes": sum(int(r.difficult.sum()) for r in records if r.difficult is not None),
        "unannotated_images": sum(
            1 for r in records if not len(r.boxes) and r.human_map is None and r.segmentation is None
        ),
        "human_maps": sum(1 for r in records if r.human_map is not None),
        "groups": {str(g): n for g, n in sorted(Counter(r.group for r in records if r.group >= 0).items())},
        "problems": problems.items,
        "errors": sum(p["kind"] == "error" for p in problems.items),
        "skips": sum(p["kind"] == "skip" for p in problems.items),
    }
