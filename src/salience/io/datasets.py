"""Open the splits named by a `DataConfig` through `salience.data`."""

from __future__ import annotations

from salience.data import BuiltinBenchmark, SalienceDataset, build_dataset, joint_transforms
from salience.io.config import ConfigError, DataConfig


def open_split(
    cfg: DataConfig, split: str, train: bool = False, fraction: float = 1.0, seed: int = 0
) -> SalienceDataset:
    """The data set of `split` through `salience.data.build_dataset`. Training splits get
    augmentation (if `cfg.augment`: 4 px padded random crop, horizontal flip) and a seeded subset of
    `fraction` of the images marked annotated (the rest train on the task loss only). `cfg.classes` gives
    the class order (folder formats; a folder or label it does not name is a `DataError`)."""
    augment = train and cfg.augment
    transforms = joint_transforms(cfg.size, train=augment, crop_padding=4 if augment and cfg.size else 0)
    options = dict(cfg.options)
    if cfg.format == "builtin" and cfg.root is None:
        try:
            options = {"config": BuiltinBenchmark(**options)}
        except ValueError as err:
            raise ConfigError(f"data.options: {err}") from None
    elif cfg.root is None:
        raise ConfigError(f"data.root: format {cfg.format!r} needs the folder where the data lie")
    try:
        return build_dataset(
            cfg.format,
            cfg.root,
            split,
            transforms=transforms,
            annotated=fraction if train else 1.0,
            seed=seed,
            classes=cfg.classes,
            **options,
        )
    except TypeError as err:  # an option the reader does not take
        raise ConfigError(f"data.options: {err}") from None


def is_multi_label(cfg: DataConfig, ds) -> bool:
    """`cfg.task`, or for `auto`: some image of `ds` has more than one class."""
    if cfg.task != "auto":
        return cfg.task == "multi_label"
    return any(len(set(r.labels)) > 1 for r in ds.records)


def check_guidance_data(loss: str | None, ds) -> None:
    """A guided config needs boxes (box losses) or human maps (cyborg) among annotated images."""
    if loss is None:
        return
    records = [r for r, a in zip(ds.records, ds.annotated.tolist(), strict=True) if a]
    if not records:
        raise ConfigError(
            "guidance.annotated_fraction: no training image is annotated; raise the fraction or set guidance.loss: null"
        )
    if loss == "cyborg":
        if not any(r.human_map is not None for r in records):
            raise ConfigError(f"guidance.loss: 'cyborg' needs human salience maps but {ds.name or 'the data'} has none")
    elif not any(len(r.boxes) or r.segmentation is not None for r in records):
        raise ConfigError(
            f"guidance.loss: {loss!r} needs object boxes (or segmentations) but {ds.name or 'the data'} has none"
        )
