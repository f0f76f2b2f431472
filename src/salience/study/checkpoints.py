"""`salience measure --checkpoints / --group`: a study of salience checkpoints, built from its arguments and
run as any study."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from salience.distributed import Context
from salience.io.checkpoint import load_run
from salience.study.config import load_study
from salience.study.pipeline import run


def measure_checkpoints(
    groups: Mapping[str, Sequence[str | Path]],
    out: str | Path,
    *,
    method: str | list[str],
    split: str = "test",
    layer: str | None = None,
    target_policy: str = "true",
    overrides: list[str] | None = None,
    n_probe: int = 128,
    out_of_set: str | None = None,
    seed: int = 0,
    batch_size: int = 64,
    device: str = "cpu",
    progress: bool = False,
    ctx: Context | None = None,
    measures: list[str] | None = None,
    samples: int | None = None,
) -> dict | None:
    """`salience measure --checkpoints / --group`: a study of salience checkpoints (group -> paths) on `split`
    of their (shared) data config, explained with `method` (`NAME`, `NAME@LAYER`, or the name and `layer`),
    with the first `n_probe` images of the split `out_of_set` as out-of-set samples; a list of methods compares
    them. `measures`: names of `MEASURES` to run (None: every one the data support); `samples`: see
    `MeasuresConfig.samples`. `overrides` change the
    checkpoints' saved configs (e.g. `data.root=/data`). Returns the study's results (None off rank 0)."""
    explain = _explain_section(method, layer)
    section = _shared_data(groups, overrides)
    study = {
        "out": str(out),
        "device": device,
        "data": section | {"split": split},
        "explain": explain | {"target": target_policy, "batch_size": batch_size},
        "measures": {"n_probe": n_probe, "seed": seed, "select": measures or "all", "samples": samples},
        "groups": {g: {"weights": [str(p) for p in paths]} for g, paths in groups.items()},
    }
    if out_of_set is not None:
        study["out_of_set"] = section | {"split": out_of_set}
    return run(load_study(study), ctx=ctx, progress=progress)


def _explain_section(method: str | list[str], layer: str | None) -> dict[str, Any]:
    """The study's `explain` methods: a list of specs, or one method and its layer."""
    if isinstance(method, list):
        if layer is not None:
            raise ValueError("layer applies to one method; give each method as NAME@LAYER")
        return {"methods": method}
    name, _, at = method.partition("@")
    if at and layer is not None:
        raise ValueError(f"method {method!r} names its layer; do not also pass layer={layer!r}")
    return {"method": name, "layer": at or layer}


def _shared_data(groups: Mapping[str, Sequence[str | Path]], overrides: list[str] | None) -> dict[str, Any]:
    """The data section (format, root, size, options, workers) every checkpoint's saved config shares (after
    `overrides`); ValueError when two differ or none is given."""
    data = None
    for paths in groups.values():
        for path in paths:
            _, config = load_run(path, overrides)
            if data is None:
                data, first = config.data, path
            elif config.data != data:
                raise ValueError(
                    f"{path}: its data config differs from that of {first}; measure checkpoints of "
                    f"one data set together (or align them with --set data.<key>=...)"
                )
    if data is None:
        raise ValueError("measure_checkpoints: no checkpoints given")
    return {
        "format": data.format,
        "root": data.root,
        "size": data.size,
        "options": data.options,
        "workers": data.workers,
    }
