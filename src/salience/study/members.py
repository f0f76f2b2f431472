"""The study's models (its members): what each group's models are, loaded, checked and made ready to explain.

Groups of weights files and models from Python are built and checked before any training
(`given_members`); the models of `train` groups join once trained (`trained_members`); `ready` puts every
model in eval mode on the device, normalising its input as the data say."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from salience import attribution as A
from salience.io.checkpoint import load_run
from salience.io.config import ConfigError
from salience.models import adapt, build, load_model
from salience.models.adapt import adapted, check_scores, normalise_input
from salience.study.config import StudyConfig, TrainGroup, WeightsGroup


@dataclass
class Member:
    """One model of a study: its group, name (the weights file's stem, or `<group>_s<seed>`), where it came from."""

    group: str
    name: str
    model: nn.Module
    source: str
    seed: int | None = None
    run: Path | None = None


def given_members(cfg: StudyConfig, models: dict, first: torch.Tensor) -> list[Member]:
    """The models not trained here: the weights groups' (in the file's order), then `models` from Python
    (group -> list or name -> module; deep copies, adapted), each checked to return scores `[1, C]` on the
    `first` image `[1, 3, H, W]`. Every name, the trained models' to come included, must be unique."""
    stems = [Path(w).stem for g in cfg.groups.values() if isinstance(g, WeightsGroup) for w in g.weights]
    members: list[Member] = []
    for group, g in cfg.groups.items():
        if isinstance(g, WeightsGroup):
            members += weights_members(group, g, stems)
    for group, given in models.items():
        members += _python_members(group, given)
    for m in members:
        try:
            check_scores(m.model, first.to(next(m.model.parameters(), first).device))
        except Exception as err:
            raise ConfigError(f"groups.{m.group}: model {m.name} ({m.source}): {err}") from None
    _check_unique_names(cfg, members)
    return members


def weights_members(group: str, g: WeightsGroup, stems: list[str]) -> list[Member]:
    """The models of a group of weights files (or the one model its import path or `hf:` folder gives);
    `stems`: every weights file's stem in the study (a stem that repeats names its model `<group>_<i>`)."""
    if not g.weights:
        assert g.model is not None  # checked on load: a group without weights names its model
        try:
            model = build(g.model, g.num_classes, kwargs=g.kwargs, output=g.output)
        except (ValueError, FileNotFoundError) as err:
            raise ConfigError(f"groups.{group}.model: {err}") from None
        return [Member(group, f"{group}_0", model, g.model)]
    members = []
    for i, w in enumerate(g.weights):
        if not Path(w).is_file():
            raise ConfigError(f"groups.{group}.weights: {w}: file not found")
        name = Path(w).stem if stems.count(Path(w).stem) == 1 else f"{group}_{i}"
        if g.model is None:
            model, config = load_run(w)
            members.append(Member(group, name, model, f"{config.model.name} checkpoint {w}"))
        else:
            model = load_model(w, g.model, g.num_classes, g.allow_pickle, g.kwargs, g.output)
            members.append(Member(group, name, model, f"{g.model} weights {w}"))
    return members


def _python_members(group: str, given: list[nn.Module] | dict[str, nn.Module]) -> list[Member]:
    """A group of modules from Python (a list: named `<group>_<i>`), deep-copied and adapted."""
    named = given if isinstance(given, dict) else {f"{group}_{i}": m for i, m in enumerate(given)}
    members = []
    for name, model in named.items():
        if not isinstance(model, nn.Module):
            raise ConfigError(f"models[{group!r}]: {name} is a {type(model).__name__}, not a torch nn.Module")
        model = copy.deepcopy(model)
        members.append(
            Member(group, name, model if adapted(model) else adapt(model), f"{type(model).__name__} from Python")
        )
    return members


def _check_unique_names(cfg: StudyConfig, members: list[Member]) -> None:
    names = [m.name for m in members] + [
        f"{group}_s{seed}" for group, g in cfg.groups.items() if isinstance(g, TrainGroup) for seed in g.seeds
    ]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise ConfigError(
            f"groups: two models are named {dup!r} (weights file stems, <group>_<i>, the names of models from "
            f"Python and <group>_s<seed> must differ)"
        )


def trained_members(cfg: StudyConfig, runs: dict[tuple[str, int], Path]) -> list[Member]:
    """The models of the `train` groups, from the last checkpoint of each (group, seed) run in `runs`."""
    members = []
    for group, g in cfg.groups.items():
        if isinstance(g, TrainGroup):
            for seed in g.seeds:
                run_dir = runs[(group, seed)]
                model, _ = load_run(run_dir / "checkpoints" / "last.pt")
                members.append(Member(group, f"{group}_s{seed}", model, f"trained here: {run_dir}", seed, run_dir))
    return members


def ready(cfg: StudyConfig, members: list[Member], device: torch.device) -> list[Member]:
    """`members`, each model in eval mode on `device` and normalising its input as the data say; then checked
    to give every one of the study's methods."""
    norm = cfg.data.mean_std()
    for m in members:
        m.model = m.model.to(device).eval()
        if norm is not None:
            normalise_input(m.model, *norm)
    for spec in cfg.explain.specs:
        _check_method(*A.parse_method(spec), members)
    return members


def _check_method(method: str, layer: str | None, members: list[Member]) -> None:
    """Fail before any work when a model cannot give the maps of `method` at `layer`."""
    needs_layer = layer not in (None, "input") or A.get_method(method).layer is not None
    for m in members:
        if needs_layer and getattr(m.model, "salience_opaque", False):
            raise ConfigError(
                f"explain: {m.name} ({m.source}) is a TorchScript / torch.export model; its layers "
                f"cannot be hooked, so only input methods ("
                + ", ".join(name for name, e in A.METHODS.items() if e.layer is None)
                + " with layer: null) work for it"
            )
        if layer not in (None, "input"):
            try:
                A.resolve_layer(m.model, layer)
            except ValueError as err:
                raise ConfigError(f"explain.layer: {m.name}: {err}") from None
