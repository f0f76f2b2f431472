"""Open the splits named by a `DataConfig` through `salience.data`."""

from __future__ import annotations

import inspect

from torch.utils.data import Dataset

from salience import data as data_layer
from salience.data.core import annotated_fraction, joint_transforms
from salience.training.config import ConfigError, DataConfig


def open_split(cfg: DataConfig, split: str, train: bool = False, fraction: float = 1.0, seed: int = 0) -> Dataset:
    """The data set of `split`; training splits get augmentation (if `cfg.augment`) and a seeded
    subset of `fraction` of the images marked annotated (the rest train on the task loss only)."""
    transforms = joint_transforms(cfg.size, train=train and cfg.augment, crop_padding=4 if train and cfg.augment and cfg.size else 0)
    try:
        if cfg.format == "builtin":
            from salience.data.builtin import BuiltinBenchmark, builtin_dataset

            ds = builtin_dataset(split, BuiltinBenchmark(**cfg.options), transforms=transforms)
        else:
            build = getattr(data_layer, "build_dataset", None)
            if build is None:
                raise ConfigError(f"data.format: {cfg.format!r} needs salience.data.build_dataset, which this "
                                  f"installation lacks")
            if cfg.root is None:
                raise ConfigError(f"data.root: format {cfg.format!r} needs the folder where the data lie")
            kwargs = dict(cfg.options)
            if "transforms" in inspect.signature(build).parameters:
                kwargs["transforms"] = transforms
            ds = build(cfg.format, cfg.root, split=split, **kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        raise ConfigError(f"data: cannot open split {split!r} of {cfg.format!r}: {err}") from err
    if train:
        ds.annotated = annotated_fraction(len(ds), fraction, seed)
    return ds


def is_multi_label(cfg: DataConfig, ds) -> bool:
    """`cfg.task`, or for `auto`: some image of `ds` has more than one class."""
    if cfg.task != "auto":
        return cfg.task == "multi_label"
    return any(len(set(r.labels)) > 1 for r in ds.records)


def check_guidance_data(loss: str | None, ds) -> None:
    """A guided config needs boxes (box losses) or human maps (cyborg) among annotated images."""
    if loss is None:
        return
    records = [r for r, a in zip(ds.records, ds.annotated.tolist()) if a]
    if not records:
        raise ConfigError("guidance.annotated_fraction: no training image is annotated; raise the fraction "
                          "or set guidance.loss: null")
    if loss == "cyborg":
        if not any(r.human_map is not None for r in records):
            raise ConfigError(f"guidance.loss: 'cyborg' needs human salience maps but {ds.name or 'the data'} "
                              f"has none")
    elif not any(len(r.boxes) for r in records):
        raise ConfigError(f"guidance.loss: {loss!r} needs object boxes but {ds.name or 'the data'} has none")
