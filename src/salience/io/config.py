"""The typed training config (and its data section, shared with studies): a YAML file validated on
load; errors name the file and the key."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from salience.data.formats import check_classes
from salience.guidance import LOSSES
from salience.guidance.step import METHODS
from salience.models.build import build, check_model


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file and the key at fault."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ModelConfig(_Strict):
    name: str = "smallcnn"
    """Any name `salience.models.build` takes: ours, torchvision's, `timm:<name>`, `hf:<folder>` or an import
    path `package.module:factory` (imported when the config is loaded: that runs the module's code)."""
    kwargs: dict[str, Any] = Field(default_factory=dict)
    """Passed to the model's constructor (an import path's factory gets only these)."""
    output: int | str | None = None
    """Where the class scores are in the forward's result: an index or a key / attribute; default: the
    tensor itself, or `.logits`."""
    weights: str | None = None
    """A local file, or a torchvision weight name (needs the network)."""

    @model_validator(mode="after")
    def _importable(self):
        check_model(self.name, self.kwargs)
        return self

    def build(self, num_classes: int, weights: str | None = None):
        """The model of this config for `num_classes` classes, with `weights` (a file or weight name) if given."""
        return build(self.name, num_classes, weights, kwargs=self.kwargs, output=self.output)


class DataConfig(_Strict):
    format: Literal["builtin", "voc", "coco", "waterbirds", "folder", "imagefolder"] = "builtin"
    root: str | None = None
    """Where the data lie on disk; not used by `builtin` (generated in memory)."""
    size: int | None = Field(None, ge=8)
    """Images are resized to size x size (None: as stored; they must then all agree)."""
    train_split: str = "train"
    val_split: str = "val"
    augment: bool = True
    """Random crop (4 px padding) and horizontal flip on the training split."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Passed on to the format's loader (e.g. the built-in benchmark's sizes and knobs)."""
    workers: int = Field(0, ge=0)
    task: Literal["auto", "single_label", "multi_label"] = "auto"
    """`auto`: multi-label when some training image has more than one class."""
    classes: list[str] | None = None
    """The class order (`imagefolder` and `folder` only): class i is the i-th name, as the model's outputs
    are ordered; every class folder / label must be named, names without images are allowed. None: the
    sorted folder names (`imagefolder`), `classes.txt` or the sorted labels (`folder`)."""

    @field_validator("classes")
    @classmethod
    def _classes(cls, v: list[str] | None, info: ValidationInfo) -> list[str] | None:
        fmt = info.data.get("format")  # None: the format itself is at fault (reported on its own)
        return v if fmt is None else check_classes(fmt, v)


def true_target(v: Any) -> Any:
    """A `target` as read from YAML: the boolean `true` (`target: true`) is the string "true" (the true class);
    `false` means nothing and is refused, saying what is accepted."""
    if v is True:
        return "true"
    if v is False:
        raise ValueError("false is not a target; give true (the true class), predicted or class:<k>")
    return v


class OptimConfig(_Strict):
    name: Literal["adam", "sgd"] = "adam"
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    """SGD only."""


class ScheduleConfig(_Strict):
    name: Literal["constant", "cosine", "step"] = "constant"
    """Stepped once per epoch; `cosine` anneals to 0 over `epochs`, `step` multiplies by `gamma`
    every `step_epochs`."""
    warmup_epochs: int = Field(0, ge=0)
    step_epochs: int = Field(10, ge=1)
    gamma: float = Field(0.1, gt=0, le=1)


class GuidanceConfig(_Strict):
    # Literal[...] built from the registries (LOSSES, METHODS) at import, so the accepted names live in one
    # place: pydantic validates against them at runtime; mypy only takes literal values there (valid-type)
    loss: Literal[tuple(LOSSES)] | None = None  # type: ignore[valid-type]
    """None trains on the task loss only."""
    method: Literal[METHODS] = "input_x_gradient"  # type: ignore[valid-type]
    depth: str = "input"
    """input, mid1, mid2, mid3, final, or a module name."""
    lam: float = Field(1.0, alias="lambda", ge=0)
    """Weight of the guidance: of its mean over the guided images of a batch, or of its sum with
    `reduction: sum` (see docs/training.md)."""
    reduction: Literal["mean", "sum"] = "mean"
    """`sum` reproduces Rao et al.'s `λ · Σ_images`; `mean` (default) keeps λ's meaning across batch sizes."""
    annotated_fraction: float = Field(1.0, ge=0, le=1)
    box_dilation: float = Field(0.0, ge=0)
    ig_steps: int = Field(16, ge=1)
    output: Literal["auto", "logit", "log_softmax"] = "auto"
    """What gradient maps explain during guidance: `auto` = the log-probability (`log_softmax`) of the
    sampled class for single-label tasks with input_x_gradient / grad_cam / cam, else the `logit`;
    always the `logit` for `cyborg` (CYBORG's CAM)."""
    target: Literal["auto", "true", "predicted"] = "auto"
    """Whose map is guided: the drawn `true` class or the `predicted` one (`cyborg` only); `auto` =
    `predicted` for `cyborg` (as CYBORG), `true` otherwise. YAML's boolean `true` means `true`."""
    alpha: float | None = Field(None, gt=0, le=1)
    """CYBORG's α: the objective becomes `α · task + (1 − α) · guidance` (replaces `lambda`, which must stay 1)."""

    @field_validator("target", mode="before")
    @classmethod
    def _target(cls, v: Any) -> Any:
        if v is False:
            raise ValueError("false is not a target; give auto, true (the drawn true class) or predicted")
        return true_target(v)

    @model_validator(mode="after")
    def _alpha_or_lambda(self):
        if self.alpha is not None and self.lam != 1.0:
            raise ValueError(
                f"guidance: give `alpha` (CYBORG's α·task + (1−α)·guidance) or `lambda` ({self.lam}), not both"
            )
        return self


class EvalConfig(_Strict):
    # Literal built from the METHODS registry: see GuidanceConfig
    method: Literal[METHODS] | None = None  # type: ignore[valid-type]
    """Attribution for EPG and IoU; None: the guidance method."""
    depth: str | None = None
    """None: the guidance depth."""
    iou_threshold: float = Field(0.5, gt=0, le=1)
    batch_size: int | None = Field(None, ge=1)


class TrainConfig(_Strict):
    out: str = "runs/run"
    """The run directory: log.jsonl, config.yaml, checkpoints/."""
    seed: int = 0
    device: str = "auto"
    """auto (cuda when available), cpu, cuda, cuda:N. Under torchrun, cuda means the local rank's GPU."""
    amp: bool = True
    """bfloat16 autocast on CUDA; ignored on CPU."""
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(64, ge=1)
    """Per process."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    guidance: GuidanceConfig = Field(default_factory=GuidanceConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _check(self):
        if self.schedule.warmup_epochs >= self.epochs and self.schedule.warmup_epochs > 0:
            raise ValueError(
                f"schedule.warmup_epochs ({self.schedule.warmup_epochs}) must be below epochs ({self.epochs})"
            )
        return self

    def dump(self) -> dict:
        return self.model_dump(mode="json", by_alias=True)


def _set(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: {key} is not a section")
        node = child
    node[keys[-1]] = value


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    """`key.sub=value` strings -> (key, YAML-parsed value) pairs."""
    out = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value (e.g. guidance.lambda=0.5)")
        out.append((key.strip(), yaml.safe_load(raw)))
    return out


def config_error(err: ValidationError, source: str, tagged: tuple[str, ...] = ()) -> ConfigError:
    """One line per bad key: `source: key.path: message (got value)`. Under a `tagged` section (a mapping
    of tagged unions: `groups.<name>.<tag>.key`) the tag pydantic puts in the path is left out."""
    lines = []
    for e in err.errors():
        loc = list(e["loc"])
        if loc[:1] and loc[0] in tagged and len(loc) >= 3:
            del loc[2]
        key = ".".join(str(p) for p in loc) or "(top level)"
        got = f" (got {e['input']!r})" if "input" in e and not isinstance(e["input"], dict) else ""
        lines.append(f"{source}: {key}: {e['msg']}{got}")
    return ConfigError("\n".join(lines))


def validate(tree: dict, source: str = "config") -> TrainConfig:
    """Validate a nested dict; errors name `source` and every bad key."""
    try:
        return TrainConfig.model_validate(tree)
    except ValidationError as err:
        raise config_error(err, source) from None


def read_tree(
    source: str | Path | dict | None, overrides: list[str] | None = None, what: str = "config"
) -> tuple[dict, str]:
    """`(mapping, name for errors)` of a YAML file (or a copy of a mapping), with `key=value` overrides applied."""
    tree: dict = {}
    name = what
    if isinstance(source, dict):
        tree = copy.deepcopy(source)
    elif source is not None:
        path = Path(source)
        name = str(path)
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: {what} file not found") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys")
    for key, value in parse_overrides(overrides or []):
        _set(tree, key, value)
    return tree, name


def load_config(path: str | Path | dict | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config (or take a mapping), apply `--set key=value` overrides, validate."""
    return validate(*read_tree(path, overrides))
