"""Data: the built-in benchmark, real data set readers, joint transforms and the batch collate.

Two calls cover training::

    ds = build_dataset(format, path, split, transforms=None, annotated=1.0, seed=0, **options)
    loader = DataLoader(ds, batch_size=64, shuffle=True, collate_fn=collate)

`format` is one of `builtin` (path None: generated in memory, `config=BuiltinBenchmark(...)`;
or a folder written by `make_builtin`), `voc` (VOCdevkit), `coco` (COCO 2014 root),
`waterbirds` (folder with metadata.csv), `folder` (salience-folder CSV layout), `imagefolder`
(one sub-folder per class, torchvision's ImageFolder layout, or a flat folder of images). Items and
batches follow docs/contracts.md: `image` float32 [B, 3, H, W] in [0, 1], multi-hot `labels`
[B, C], per-image xyxy `boxes` [N_i, 4] with `box_labels` [N_i], `mask` / `human_map`
[B, H, W], `has_human_map`, `annotated`, `group`, `index`, `id`.
`joint_transforms(size, train)` resizes (and crops / flips) image, boxes, mask and human map
together; `class_masks` turns boxes of chosen classes into masks (`object_masks`: per (image, class)
pair, falling back to the image's mask); `box_dilation` grows boxes;
`annotated_fraction` picks the seeded subset of images that keep their annotation.
Bad input raises `DataError` naming the file (and line or key); `inspect` reports instead.
See docs/data.md.
"""

from salience.data.builtin import CLASSES as BUILTIN_CLASSES
from salience.data.builtin import SPLITS as BUILTIN_SPLITS
from salience.data.builtin import BuiltinBenchmark, builtin_dataset, make_builtin
from salience.data.core import (
    DataError,
    Record,
    SalienceDataset,
    annotated_fraction,
    box_dilation,
    box_masks,
    class_masks,
    collate,
    joint_transforms,
    object_masks,
    read_image,
)
from salience.data.formats import FORMATS, VOC_CLASSES, build_dataset, inspect

__all__ = [
    "BUILTIN_CLASSES",
    "BUILTIN_SPLITS",
    "FORMATS",
    "VOC_CLASSES",
    "BuiltinBenchmark",
    "DataError",
    "Record",
    "SalienceDataset",
    "annotated_fraction",
    "box_dilation",
    "box_masks",
    "build_dataset",
    "builtin_dataset",
    "class_masks",
    "object_masks",
    "collate",
    "inspect",
    "joint_transforms",
    "make_builtin",
    "read_image",
]
