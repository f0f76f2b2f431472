"""The shared data set class, the collate function and the box helpers.

Every format reader turns its files into a list of `Record`s; `SalienceDataset` turns a record
into one sample dict (keys of the batch contract in docs/contracts.md) and applies the joint
transforms. Boxes are xyxy in pixels of the image as stored, continuous coordinates: pixel
column j covers [j, j + 1), so a box [x0, y0, x1, y1] contains the pixel whose centre
(j + 0.5, i + 0.5) lies inside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image as PILImage
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF


class DataError(ValueError):
    """Bad input data. The message names the file (and line or key) at fault."""


@dataclass
class Record:
    """One image as a reader found it.

    `image` / `human_map` / `segmentation` are a path, or for in-memory data a uint8 tensor
    (`[3, H, W]` image, `[H, W]` maps with 255 = 1.0). `boxes` is float32 `[N, 4]` xyxy in
    pixels of the stored image, `box_labels` long `[N]`, `difficult` bool `[N]` (VOC's flag).
    `labels` lists the image's class indices (empty for out-of-set images).
    """

    id: str
    image: Path | torch.Tensor
    labels: list[int]
    boxes: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 4))
    box_labels: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    difficult: torch.Tensor | None = None
    human_map: Path | torch.Tensor | None = None
    segmentation: Path | torch.Tensor | None = None
    group: int = -1


def read_image(path: Path | str, mode: str = "RGB") -> torch.Tensor:
    """Decode an image file into uint8 `[C, H, W]` (mode "RGB": C = 3, "L": C = 1)."""
    try:
        with PILImage.open(path) as im:
            arr = np.asarray(im.convert(mode))
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except Exception as e:  # PIL raises many types for corrupt files
        raise DataError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from None
    t = torch.from_numpy(arr.copy())
    return t[None] if t.ndim == 2 else t.permute(2, 0, 1).contiguous()


def image_size(path: Path | str) -> tuple[int, int]:
    """`(H, W)` from the image header, without decoding the pixels."""
    try:
        with PILImage.open(path) as im:
            w, h = im.size
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except Exception as e:
        raise DataError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from None
    return h, w


def box_masks(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """bool `[N, H, W]`: pixel (i, j) is in box n when its centre (j+.5, i+.5) lies inside."""
    h, w = size
    ys = torch.arange(h, dtype=torch.float32) + 0.5
    xs = torch.arange(w, dtype=torch.float32) + 0.5
    b = boxes.to(torch.float32)
    inside_x = (xs[None] >= b[:, 0:1]) & (xs[None] < b[:, 2:3])  # [N, W]
    inside_y = (ys[None] >= b[:, 1:2]) & (ys[None] < b[:, 3:4])  # [N, H]
    return inside_y[:, :, None] & inside_x[:, None, :]


def class_masks(
    boxes: list[torch.Tensor], box_labels: list[torch.Tensor], classes: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """float32 `[B, H, W]`: union of the boxes of class `classes[i]` in image i (0/1)."""
    if not (len(boxes) == len(box_labels) == len(classes)):
        raise ValueError(f"class_masks: {len(boxes)} box sets, {len(box_labels)} label sets, {len(classes)} classes")
    out = torch.zeros(len(boxes), *size)
    for i, (b, lab) in enumerate(zip(boxes, box_labels, strict=True)):
        sel = b[lab.to(b.device) == int(classes[i])]
        if len(sel):
            out[i] = box_masks(sel.cpu(), size).any(0).float()
    return out.to(boxes[0].device if boxes else "cpu")


def object_masks(batch: dict, image: torch.Tensor, classes: torch.Tensor, dilation: float = 0.0) -> torch.Tensor:
    """float `[P, H, W]` for (image, class) pairs: the union of that class's boxes, each grown by
    `dilation`·w and ·h per side; an image without boxes uses its `mask` (e.g. a segmentation)."""
    size = tuple(batch["image"].shape[-2:])
    boxes = [box_dilation(batch["boxes"][i], dilation, size) for i in image.tolist()]
    masks = class_masks(boxes, [batch["box_labels"][i] for i in image.tolist()], classes.cpu(), size)
    masks = masks.to(batch["mask"].device)
    no_boxes = torch.tensor([len(b) == 0 for b in boxes], dtype=torch.bool, device=masks.device)
    return torch.where(no_boxes[:, None, None], batch["mask"][image.to(masks.device)], masks)


def box_dilation(boxes: torch.Tensor, p: float, size: tuple[int, int]) -> torch.Tensor:
    """Grow each xyxy box `[N, 4]` by p*w left and right and p*h top and bottom, clipped to `(H, W)`."""
    if p < 0:
        raise ValueError(f"box_dilation: p must be >= 0, got {p}")
    b = boxes.to(torch.float32)
    dw = p * (b[:, 2] - b[:, 0])
    dh = p * (b[:, 3] - b[:, 1])
    h, w = size
    return torch.stack(
        [
            (b[:, 0] - dw).clamp(0, w),
            (b[:, 1] - dh).clamp(0, h),
            (b[:, 2] + dw).clamp(0, w),
            (b[:, 3] + dh).clamp(0, h),
        ],
        dim=1,
    )


def annotated_fraction(dataset_or_n, fraction: float, seed: int) -> torch.Tensor:
    """bool `[N]` with exactly round(fraction * N) True entries chosen by `seed`.

    Images marked False train on the task loss only; they keep their boxes for evaluation.
    """
    n = dataset_or_n if isinstance(dataset_or_n, int) else len(dataset_or_n)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"annotated_fraction: fraction must be in [0, 1], got {fraction}")
    g = torch.Generator().manual_seed(seed)
    keep = torch.randperm(n, generator=g)[: round(fraction * n)]
    out = torch.zeros(n, dtype=torch.bool)
    out[keep] = True
    return out


class JointTransforms:
    """Geometric transforms that move image, boxes, mask and human map together.

    Resize to `size` (an int n: n x n; `(H, W)`; None: no resize; bilinear with antialiasing; masks nearest). An
    image that already has that size passes through untouched, bit for bit. For training, a random crop (after
    zero padding of `crop_padding` px) and a random horizontal flip. Boxes are clipped to the image and boxes
    narrower or lower than 1 px (or of area below 1 px²) are dropped with their labels.

    The same results, random draws included, as torchvision's `v2.Compose([Resize, RandomCrop,
    RandomHorizontalFlip, SanitizeBoundingBoxes])` on tv_tensors (checked in `tests/test_data.py`), from
    torchvision's kernels on plain tensors: a tenth of the per-item cost, which matters in a CPU training loop.
    Only geometric transforms belong here: the human map travels as a second image.
    """

    def __init__(self, size: int | tuple[int, int] | None = None, train: bool = False, crop_padding: int = 0):
        self.size = None if size is None else ((size, size) if isinstance(size, int) else (int(size[0]), int(size[1])))
        if train and crop_padding and self.size is None:
            raise ValueError("joint_transforms: crop_padding needs a fixed size")
        self.train, self.crop_padding = train, crop_padding

    def __call__(self, sample: dict) -> dict:
        """`sample`: `image` uint8 `[3, H, W]`, `human_map` float `[1, H, W]`, `boxes` float xyxy `[N, 4]`,
        `box_labels` `[N]`, optionally `mask` uint8 `[H, W]`; returns it with those keys transformed."""
        out = dict(sample)
        image, hmap, boxes, mask = out["image"], out["human_map"], out["boxes"], out.get("mask")
        canvas = (image.shape[-2], image.shape[-1])
        xyxy = tv_tensors.BoundingBoxFormat.XYXY
        if self.size is not None and canvas != self.size:
            size = list(self.size)
            image, hmap = TF.resize_image(image, size, antialias=True), TF.resize_image(hmap, size, antialias=True)
            mask = None if mask is None else TF.resize_mask(mask, size)
            boxes, canvas = TF.resize_bounding_boxes(boxes, canvas, size, format=xyxy)
        if self.train and self.crop_padding:  # v2.RandomCrop: pad, then draw top and left
            p, (h, w) = self.crop_padding, canvas
            top, left = int(torch.randint(0, 2 * p + 1, size=())), int(torch.randint(0, 2 * p + 1, size=()))
            pad = [p, p, p, p]
            image = TF.crop_image(TF.pad_image(image, pad, fill=0), top, left, h, w)
            hmap = TF.crop_image(TF.pad_image(hmap, pad, fill=0), top, left, h, w)
            mask = None if mask is None else TF.crop_mask(TF.pad_mask(mask, pad, fill=0), top, left, h, w)
            boxes, _ = TF.pad_bounding_boxes(boxes, xyxy, canvas, pad)
            boxes, canvas = TF.crop_bounding_boxes(boxes, xyxy, top, left, h, w)
        if self.train and torch.rand(1) < 0.5:  # v2.RandomHorizontalFlip's draw
            image, hmap = TF.horizontal_flip_image(image), TF.horizontal_flip_image(hmap)
            mask = None if mask is None else TF.horizontal_flip_mask(mask)
            boxes = TF.horizontal_flip_bounding_boxes(boxes, xyxy, canvas)
        _, valid = TF.sanitize_bounding_boxes(boxes, xyxy, canvas, min_size=1.0, min_area=1.0)
        out |= {"image": image, "human_map": hmap, "boxes": boxes[valid], "box_labels": out["box_labels"][valid]}
        if mask is not None:
            out["mask"] = mask
        return out


def joint_transforms(size: int | tuple[int, int] | None = None, train: bool = False, crop_padding: int = 0):
    """`JointTransforms(size, train, crop_padding)`: see there."""
    return JointTransforms(size, train, crop_padding)


_KEYS = (
    "image",
    "labels",
    "boxes",
    "box_labels",
    "mask",
    "human_map",
    "has_human_map",
    "annotated",
    "group",
    "index",
    "id",
)


class SalienceDataset(Dataset):
    """Map-style data set over `Record`s; items are dicts with the batch contract's keys.

    `image` float32 `[3, H, W]` in [0, 1]; `labels` float32 multi-hot `[C]`; `boxes` float32
    `[N, 4]`; `box_labels` long `[N]`; `mask` float32 `[H, W]` (segmentation if given, else
    union of boxes; a single-label record with a segmentation and no boxes gets the mask's
    bounding box); `human_map` float32 `[H, W]` in [0, 1]; `has_human_map`, `annotated`
    bool; `group`, `index` int; `id` str. `transforms` is a callable on the sample dict
    (see `joint_transforms`); `annotated` a bool `[N]` (see `annotated_fraction`).
    """

    # set by the readers after construction, not by __init__
    problems: list[dict]  # open_split: the reader's errors and skipped files
    cue: torch.Tensor  # builtin_dataset: long [N], 1 red, 0 blue, -1 none
    identity: torch.Tensor  # builtin_dataset: long [N, max_faces], lfw index of each real face, -1 otherwise

    def __init__(self, records: list[Record], classes: list[str], transforms=None, annotated=None, name: str = ""):
        self.records = records
        self.classes = list(classes)
        self.transforms = transforms
        self.name = name
        n = len(records)
        self.annotated = (
            torch.ones(n, dtype=torch.bool) if annotated is None else torch.as_tensor(annotated, dtype=torch.bool)
        )
        if len(self.annotated) != n:
            raise ValueError(f"annotated has {len(self.annotated)} entries for {n} images")

    def __len__(self) -> int:
        return len(self.records)

    @property
    def groups(self) -> torch.Tensor:
        """long `[N]`: the group of every image (-1 where undefined)."""
        return torch.tensor([r.group for r in self.records], dtype=torch.long)

    def _gray(self, src, hw: tuple[int, int], what: str, image_src) -> torch.Tensor:
        t = src if isinstance(src, torch.Tensor) else read_image(src, "L")[0]
        if tuple(t.shape[-2:]) != hw:
            raise DataError(
                f"{src if not isinstance(src, torch.Tensor) else what}: {what} is {tuple(t.shape[-2:])} "
                f"but its image {image_src} is {hw} (H, W)"
            )
        return t.to(torch.float32) / 255.0

    def __getitem__(self, index: int) -> dict:
        r = self.records[index]
        img = r.image if isinstance(r.image, torch.Tensor) else read_image(r.image, "RGB")
        hw = (img.shape[-2], img.shape[-1])
        img_name = r.image if not isinstance(r.image, torch.Tensor) else r.id
        boxes, box_labels = r.boxes.to(torch.float32), r.box_labels.to(torch.long)
        mask = None  # box masks are drawn after the transforms, from the moved boxes
        if r.segmentation is not None:
            mask = (self._gray(r.segmentation, hw, "segmentation", img_name) >= 0.5).to(torch.uint8)
            if not len(boxes) and mask.any() and len(r.labels) == 1:  # the object's box from its mask
                ys, xs = torch.nonzero(mask, as_tuple=True)
                boxes = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
                box_labels = torch.tensor(r.labels, dtype=torch.long)
        has_map = r.human_map is not None
        hmap = self._gray(r.human_map, hw, "human map", img_name) if has_map else torch.zeros(hw)
        labels = torch.zeros(len(self.classes))
        labels[list(r.labels)] = 1.0
        sample: dict[str, Any] = {
            "image": img,
            "labels": labels,
            "boxes": boxes,
            "box_labels": box_labels,
            "human_map": hmap[None],
            "has_human_map": has_map,
            "annotated": bool(self.annotated[index]),
            "group": r.group,
            "index": index,
            "id": r.id,
        }
        if mask is not None:
            sample["mask"] = mask
        if isinstance(self.transforms, JointTransforms):
            sample = self.transforms(sample)
        elif self.transforms is not None:  # another callable gets tv_tensors, as torchvision's v2 transforms expect
            sample = self.transforms(_tv_tensors(sample, hw))
            sample = {k: v.as_subclass(torch.Tensor) if isinstance(v, torch.Tensor) else v for k, v in sample.items()}
        sample["image"] = sample["image"].to(torch.float32) / 255.0
        sample["boxes"] = sample["boxes"].to(torch.float32)
        sample["human_map"] = sample["human_map"][0].to(torch.float32)
        size = (sample["image"].shape[-2], sample["image"].shape[-1])
        if mask is None:
            sample["mask"] = box_masks(sample["boxes"], size).any(0).to(torch.float32)
        else:
            sample["mask"] = sample["mask"].to(torch.float32)
        return {k: sample[k] for k in _KEYS}


def _tv_tensors(sample: dict, hw: tuple[int, int]) -> dict:
    """The sample with its image, human map, boxes and mask as torchvision tv_tensors."""
    out = sample | {
        "image": tv_tensors.Image(sample["image"]),
        "human_map": tv_tensors.Image(sample["human_map"]),
        "boxes": tv_tensors.BoundingBoxes(sample["boxes"], format="XYXY", canvas_size=hw),
    }
    if "mask" in sample:
        out["mask"] = tv_tensors.Mask(sample["mask"])
    return out


def collate(samples: list[dict]) -> dict:
    """Stack a list of `SalienceDataset` items into the batch of docs/contracts.md."""
    shapes = {tuple(s["image"].shape) for s in samples}
    if len(shapes) > 1:
        ids = [(s["id"], tuple(s["image"].shape)) for s in samples[:4]]
        raise DataError(
            f"collate: images of different sizes {sorted(shapes)} (e.g. {ids}); "
            "pass transforms=joint_transforms(size) to build_dataset"
        )
    return {
        "image": torch.stack([s["image"] for s in samples]),
        "labels": torch.stack([s["labels"] for s in samples]),
        "boxes": [s["boxes"] for s in samples],
        "box_labels": [s["box_labels"] for s in samples],
        "mask": torch.stack([s["mask"] for s in samples]),
        "human_map": torch.stack([s["human_map"] for s in samples]),
        "has_human_map": torch.tensor([s["has_human_map"] for s in samples], dtype=torch.bool),
        "annotated": torch.tensor([s["annotated"] for s in samples], dtype=torch.bool),
        "group": torch.tensor([s["group"] for s in samples], dtype=torch.long),
        "index": torch.tensor([s["index"] for s in samples], dtype=torch.long),
        "id": [s["id"] for s in samples],
    }
