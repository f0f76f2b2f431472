"""The typed study file: which models (trained elsewhere, or trained by the study), on which images,
explained how, measured how. Validated on load; unknown keys are refused by name."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from salience.attribution.registry import check_layer, get_method, method_spec, options_by_spec, parse_method
from salience.data.formats import check_classes
from salience.io.config import DataConfig, config_error, read_tree, true_target
from salience.models.adapt import IMAGENET_MEAN_STD
from salience.models.build import check_model, is_import_path


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MeanStd(_Strict):
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @field_validator("std")
    @classmethod
    def _positive(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(v) <= 0:
            raise ValueError(f"std must be > 0 per channel, got {v}")
        return v


class StudyData(_Strict):
    """Images of a study: any format `salience train` reads, or `imagefolder` (one sub-folder per
    class; a flat folder of images for `out_of_set`)."""

    format: Literal["builtin", "voc", "coco", "waterbirds", "folder", "imagefolder"] = "builtin"
    root: str | None = None
    split: str = "test"
    """The split of `format` to read (`imagefolder` reads `root` itself; the split only names it)."""
    size: int | None = Field(None, ge=8)
    """Resize to size x size (nothing happens to an image that already has that size)."""
    normalize: Literal["none", "imagenet"] | MeanStd = "none"
    """What the models expect: images stay in [0, 1] (probes perturb them there) and each model
    normalises its input itself (a forward pre-hook). `imagenet` = torchvision's mean and std."""
    options: dict[str, Any] = Field(default_factory=dict)
    workers: int = Field(0, ge=0)
    classes: list[str] | None = None
    """The class order of the models (`imagefolder` and `folder` only): class i is the i-th name, e.g.
    `[nonface, face]` for a model whose output 0 is non-face; every class folder / label must be named, names
    without images are allowed (all 1000 of an ImageNet model). None: the sorted folder names."""

    @field_validator("classes")
    @classmethod
    def _classes(cls, v: list[str] | None, info: ValidationInfo) -> list[str] | None:
        fmt = info.data.get("format")  # None: the format itself is at fault (reported on its own)
        return v if fmt is None else check_classes(fmt, v)

    def data_config(self) -> DataConfig:
        return DataConfig(
            format=self.format,
            root=self.root,
            size=self.size,
            options=self.options,
            workers=self.workers,
            augment=False,
            classes=self.classes,
        )

    def mean_std(self) -> tuple[tuple, tuple] | None:
        if self.normalize == "none":
            return None
        if self.normalize == "imagenet":
            return IMAGENET_MEAN_STD
        return self.normalize.mean, self.normalize.std

    def describe(self) -> str:
        where = "generated in memory" if self.root is None else self.root
        if self.classes is not None:
            more = f", ... ({len(self.classes)} in all)" if len(self.classes) > 8 else ""
            where += f"; classes {', '.join(self.classes[:8])}{more}"
        return f"{self.format} {self.split} ({where})"


class ExplainConfig(_Strict):
    method: str = "grad_cam"
    """One attribution method for every model, so groups are comparable: a name of the registry
    (`salience.attribution.METHODS`)."""
    methods: list[str] | None = Field(None, min_length=1)
    """Several methods instead of `method` (`NAME` or `NAME@LAYER`, e.g. `[grad_cam@final, input_x_gradient]`):
    every model is explained and measured with each, and the report compares the methods."""
    layer: str | None = "final"
    """A named depth (input, mid1..mid3, final) or a module name; null for input methods. When not given,
    the method's default layer (`final` for the CAMs, the input for gradient, IntGrad, occlusion, ...)."""
    target: str = "true"
    """`true` (every present class; (image, class) pairs on multi-label data; YAML's boolean `true` is the
    same), `predicted` or `class:<k>`."""
    options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Options of the methods that run their own passes, by method name or spec, e.g.
    `{kernel_shap: {feature_mask: slic, n_samples: 200}, occlusion: {window: 16}}` (the keyword options of
    `salience.attribution.attribute`; kept in each store's metadata)."""
    batch_size: int = Field(64, ge=1)
    chunk_size: int = Field(256, ge=1)

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        get_method(v)  # an unknown name fails here, listing the registry
        return v

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        specs = []
        for spec in v:
            name, layer = parse_method(spec)  # an unknown name fails here, listing the registry
            layer = check_layer(name, layer)
            specs.append(method_spec(name, layer))
        dup = [s for s in specs if specs.count(s) > 1]
        if dup:
            raise ValueError(f"method {dup[0]!r} is given twice")
        return specs

    @property
    def specs(self) -> list[str]:
        """The method specs the study explains with: `methods`, or `method` at `layer`."""
        if self.methods is not None:
            return list(self.methods)
        return [method_spec(self.method, self.layer)]

    @model_validator(mode="after")
    def _layer(self) -> ExplainConfig:
        if self.methods is not None:
            given = {"method", "layer"} & self.model_fields_set
            if given:
                raise ValueError(f"give methods or {' and '.join(sorted(given))}, not both")
            return self
        method = get_method(self.method)
        if "layer" not in self.model_fields_set:
            self.layer = method.layer
        elif not method.takes_layer and self.layer not in (None, method.layer or "input"):
            raise ValueError(f"layer: method {self.method!r} takes no layer; give layer: null")
        return self

    @model_validator(mode="after")
    def _options(self) -> ExplainConfig:
        """Key the options by the study's method specs; an unknown method or option fails naming it."""
        self.options = options_by_spec(self.specs, self.options)
        return self

    @field_validator("target", mode="before")
    @classmethod
    def _true(cls, v: Any) -> Any:
        return true_target(v)

    @field_validator("target")
    @classmethod
    def _target(cls, v: str) -> str:
        if v not in ("true", "predicted") and not (v.startswith("class:") and v[6:].isdigit()):
            raise ValueError(f"must be 'true', 'predicted' or 'class:<k>', got {v!r}")
        return v


class MeasuresConfig(_Strict):
    select: Annotated[list[str], Field(min_length=1)] | Literal["all"] | None = None
    """The measures to run (names of `salience.measures.MEASURES`); `all`: every measure the data support; null:
    those costing at most `DEFAULT_MAX_PASSES` model passes per probed image (`salience.measures.registry.
    default_measures`: the "Explain To Me" measures, random logit, complexity, localisation, stability)."""
    n_probe: int = Field(64, ge=0)
    """Images the model probes (noise, transforms, blur, deletion / insertion, out of set) run on; 0: none."""
    deletion_steps: int = Field(16, ge=1)
    samples: int | None = Field(None, ge=2)
    """Noisy samples of max- / avg-sensitivity and local Lipschitz, and runs of faithfulness correlation; null:
    Quantus' defaults (200 and 100)."""
    options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Each measure's options under its name, as Quantus' settings: `{top_k_intersection: {k: 1000},
    pixel_flipping: {features_in_step: 224}}` (`salience.measures.registry.measure_options(name)` lists them)."""
    seed: int = 0
    """Seed of the noise, bootstrap CIs and permutation tests."""
    n_boot: int = Field(2000, ge=100)
    n_perm: int = Field(2000, ge=100)
    gallery: int = Field(6, ge=0)
    """Images drawn in the report with each group's map."""

    @field_validator("select")
    @classmethod
    def _select(cls, v: list[str] | str | None) -> list[str] | str | None:
        from salience.measures import get_measure

        if isinstance(v, str):
            return v
        for name in v or ():
            get_measure(name)  # an unknown name fails here, listing the registry
        if v is not None and len(set(v)) != len(v):
            raise ValueError(f"measure {next(n for n in v if v.count(n) > 1)!r} is given twice")
        return v

    @field_validator("options")
    @classmethod
    def _options(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        from salience.measures.registry import check_measure_options

        return check_measure_options(v)  # an unknown measure or option fails here, naming it


class WeightsGroup(_Strict):
    """Models trained elsewhere: one architecture, one weights file per model (or, for an import path or an
    `hf:<folder>` without weights files, the one model the factory or the folder gives)."""

    model: str | None = None
    """Any name `salience.models.build` knows (`densenet121`, `timm:legacy_xception`, `hf:<folder>`, or an import
    path `package.module:factory`, imported when the study is loaded); null when every file is a salience
    checkpoint (its saved config names the model)."""
    num_classes: int | None = Field(None, ge=1)
    """Classes of a named model's head; an import path gets only `kwargs`, `hf:` keeps the folder's head if null."""
    kwargs: dict[str, Any] = Field(default_factory=dict)
    """Passed to the model's constructor."""
    output: int | str | None = None
    """Where the class scores are in the forward's result: an index or a key / attribute; default: the
    tensor itself, or `.logits`."""
    weights: list[str] = Field(default_factory=list)
    """State dicts or salience checkpoints (TorchScript / torch.export files: input-level methods only)."""
    allow_pickle: bool = False
    """Load whole pickled models (`torch.save(model)`): runs code from the files; only for files you trust."""

    @model_validator(mode="after")
    def _model_named(self) -> WeightsGroup:
        own = self.model is not None and (self.model.startswith("hf:") or is_import_path(self.model))
        if self.model is None and (self.num_classes is not None or self.kwargs or self.output is not None):
            raise ValueError("num_classes, kwargs and output need a model (salience checkpoints name their own)")
        if self.model is not None and not own and self.num_classes is None:
            raise ValueError(f"model {self.model!r} needs num_classes")
        if not self.weights and not own:
            raise ValueError("weights: give at least one file (only an import path or hf:<folder> may have none)")
        check_model(self.model, self.kwargs)
        return self


class TrainGroup(_Strict):
    """Models the study trains (and resumes on a rerun): a training config and its seeds."""

    train: str | dict
    """A training config file, or the config itself as a mapping."""
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    set: list[str] = Field(default_factory=list)
    """`key=value` overrides of the training config."""


def _group_kind(value: Any) -> str:
    keys = value if isinstance(value, dict) else vars(value)
    return "train" if "train" in keys else "weights"


Group = Annotated[
    Annotated[WeightsGroup, Tag("weights")] | Annotated[TrainGroup, Tag("train")], Discriminator(_group_kind)
]
"""A group with a `train` key is trained by the study; any other is a group of weights files."""


class StudyConfig(_Strict):
    out: str = "study-out"
    device: str = "cpu"
    data: StudyData
    out_of_set: StudyData | None = None
    evaluate: dict[str, StudyData] = Field(default_factory=dict)
    """More labelled splits on which each model's accuracy is reported (e.g. a shifted test set)."""
    explain: ExplainConfig = Field(default_factory=ExplainConfig)
    measures: MeasuresConfig = Field(default_factory=MeasuresConfig)
    groups: dict[str, Group] = Field(default_factory=dict)
    """Groups of models; more may come from Python (`salience.study.run(cfg, models=...)`)."""
    reference: str | None = None
    """The group the others are compared with (default: the first)."""
    train_workers: int = Field(1, ge=1)
    """Training processes side by side on CPU (one torch thread each)."""
    meta: bool = False
    """Also run the meta-evaluation of the measures (MetaQuantus; `salience meta`) after measuring."""

    @model_validator(mode="after")
    def _check(self) -> StudyConfig:
        for name, g in self.groups.items():
            _check_group_name(name)
            if isinstance(g, TrainGroup) and self.data.normalize != "none":
                raise ValueError(
                    f"groups.{name}: models trained by salience see images in [0, 1]; "
                    f"data.normalize must be none for a study that trains"
                )
        return self

    def group_names(self, extra: Sequence[str] = ()) -> list[str]:
        """The file's groups, then `extra` (groups given from Python); ValueError when there are none, a name
        repeats, or `reference` is none of them."""
        names = list(self.groups) + list(extra)
        if not names:
            raise ValueError("groups: none given; a study needs groups in its file or models from Python")
        dup = next((n for n in extra if names.count(n) > 1), None)
        if dup is not None:
            raise ValueError(f"groups: {dup!r} is both a group of the study file and a group of models from Python")
        for name in extra:
            _check_group_name(name)
        if self.reference is not None and self.reference not in names:
            raise ValueError(f"reference {self.reference!r} is not a group; groups: {', '.join(names)}")
        return names


def _check_group_name(name: str) -> None:
    if "/" in name or name.startswith("."):
        raise ValueError(f"groups: {name!r}: a group name is used in file names; no '/' or leading '.'")


def load_study(source: str | Path | dict, overrides: list[str] | None = None) -> StudyConfig:
    """A study file (YAML path) or mapping, with `key=value` overrides, validated; errors name the key."""
    tree, name = read_tree(source, overrides, "study")
    try:
        return StudyConfig.model_validate(tree)
    except ValidationError as err:
        raise config_error(err, name, tagged=("groups",)) from None
