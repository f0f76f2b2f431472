"""`build` a classifier by name (ours, torchvision's, or timm's as `timm:<name>`) and load weights
from a file or a torchvision weight name; `load_model` also opens TorchScript and torch.export files."""

import logging
import pickle
import re
import zipfile
from pathlib import Path
from typing import TypeGuard

import torch
import torchvision
from torch import nn

from salience.models.bcos import bcos_resnet
from salience.models.small import SmallCNN
from salience.models.xresnet import xresnet

log = logging.getLogger("salience")

_OWN = {
    "smallcnn": "small CNN for 64 px CPU runs",
    "xresnet18/34/50": "bias-free X-DNN ResNet",
    "bcos_resnet18/34/50": "B-cos ResNet, B=2",
}


def build(name: str, num_classes: int, weights: str | Path | None = None, allow_pickle: bool = False) -> nn.Module:
    """A classifier `[B, 3, H, W] -> [B, num_classes]`.

    `name`: `smallcnn`, `xresnet{18,34,50}`, `bcos_resnet{18,34,50}`, any torchvision
    classification model (`resnet50`, `densenet121`, `vit_b_16`, ...) or `timm:<name>` (needs the
    `timm` extra; e.g. `timm:legacy_xception`). `weights`: a local file or a torchvision weight name
    (`ResNet50_Weights.IMAGENET1K_V2`, or the short `IMAGENET1K_V2`); see `load_weights` for the
    files accepted and `allow_pickle`. A classifier head of another size is left freshly initialised.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    own = re.fullmatch(r"(xresnet|bcos_resnet)(\d+)", name)
    if name == "smallcnn":
        model: nn.Module = SmallCNN(num_classes)
    elif own:
        model = (xresnet if own[1] == "xresnet" else bcos_resnet)(int(own[2]), num_classes)
    elif name.startswith("timm:"):
        model = _timm_model(name[5:], num_classes)
    else:
        known = torchvision.models.list_models(module=torchvision.models)
        if name not in known:
            raise ValueError(
                f"model name {name!r} is unknown; accepted: {', '.join(_OWN)}, "
                f"a torchvision classification model such as {', '.join(known[:8])}, ..., "
                f"or timm:<name> for a timm model"
            )
        model = torchvision.models.get_model(name, num_classes=num_classes)
    if weights is not None:
        load_weights(model, weights, name, allow_pickle=allow_pickle)
    return model


def _timm_model(name: str, num_classes: int) -> nn.Module:
    try:
        import timm
    except ImportError as err:
        raise ValueError(f"model 'timm:{name}' needs timm: pip install 'salience[timm]'") from err
    if not timm.is_model(name):
        close = timm.list_models(f"*{name}*")[:8]
        raise ValueError(
            f"model 'timm:{name}' is not a timm model name" + (f"; similar: {', '.join(close)}" if close else "")
        )
    return timm.create_model(name, pretrained=False, num_classes=num_classes)


def _torchvision_state_dict(weights: str, name: str) -> dict:
    if name.startswith("timm:"):
        raise FileNotFoundError(
            f"weights {weights!r} is not a file; timm models take a local weights file "
            f"(a state dict saved with torch.save(model.state_dict(), path))"
        )
    try:
        if "." in weights:
            entry = torchvision.models.get_weight(weights)
        else:
            entry = torchvision.models.get_model_weights(name)[weights]
    except (KeyError, ValueError, AttributeError) as err:
        raise FileNotFoundError(
            f"weights {weights!r} is neither a file nor a torchvision weight name for {name!r} "
            f"(e.g. 'ResNet50_Weights.IMAGENET1K_V2' or a path to a .pth file)"
        ) from err
    try:
        return entry.get_state_dict(progress=False)
    except Exception as err:  # urllib/OS errors differ by platform; all mean "not fetchable here"
        file_name = entry.url.rsplit("/", 1)[-1]
        raise RuntimeError(
            f"cannot fetch torchvision weights {weights!r} from {entry.url} ({type(err).__name__}: {err}). "
            f"Download that file on a machine with internet access and pass its local path instead: "
            f"build({name!r}, num_classes, weights='/path/to/{file_name}') or `model.weights: "
            f"/path/to/{file_name}` in a config"
        ) from err


_LEGACY_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")  # torch.save before 1.6


def _archive_kind(path: Path) -> str | None:
    """From the file's first bytes and zip entries: "torchscript" (torch.jit.save), "export"
    (torch.export.save), "torch" (torch.save, zip or legacy format) or None (none of these)."""
    try:
        with zipfile.ZipFile(path) as z:
            entries = {n.split("/", 1)[-1] for n in z.namelist()}
    except (zipfile.BadZipFile, OSError):
        with open(path, "rb") as f:
            return "torch" if f.read(len(_LEGACY_MAGIC)) == _LEGACY_MAGIC else None
    if "archive_format" in entries:
        return "export"
    if "constants.pkl" in entries:
        return "torchscript"
    return "torch" if "data.pkl" in entries else None


# DenseNet files saved before torchvision 0.3 (ImageNet's densenet121-a639ec97.pth among them) name
# `denselayer1.norm.1.weight` what is now `denselayer1.norm1.weight`; torchvision renames them the same way.
_OLD_DENSENET = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def _tensor_dict(obj: object) -> TypeGuard[dict[str, torch.Tensor]]:
    return isinstance(obj, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def read_state_dict(path: str | Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The state dict in a weights file: a state dict, or a dict holding one under `state_dict` or
    `model` (a salience checkpoint, and many other code bases' checkpoints).

    By default the file is read with `torch.load(weights_only=True)`, which runs no code from it; a
    file holding other Python objects (a whole model saved with `torch.save(model)`) is refused.
    `allow_pickle=True` unpickles it (`weights_only=False`): this runs code from the file, so pass it
    only for files you trust; a whole model then gives its `state_dict()`.
    TorchScript and torch.export files are refused here: open them with `load_model`.
    """
    path = Path(path)
    kind = _archive_kind(path)
    if kind in ("torchscript", "export"):
        what = "a TorchScript archive (torch.jit.save)" if kind == "torchscript" else "a torch.export archive"
        raise ValueError(
            f"weights file {path} is {what}, not a state dict: open it with salience.models.load_model({str(path)!r})"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as err:
        if allow_pickle or kind != "torch":  # not written by torch.save: any pickle error means a bad file
            raise ValueError(f"weights file {path} could not be read as a torch state dict: {err}") from err
        raise ValueError(
            f"weights file {path} holds pickled Python objects, not only tensors (e.g. a whole model saved "
            f"with torch.save(model)); loading it would run code from the file. Save a state dict instead: "
            f"torch.save(model.state_dict(), {str(path)!r}); or, only for a file you trust, pass "
            f"allow_pickle=True (build(..., allow_pickle=True) / load_model(..., allow_pickle=True))"
        ) from None
    except Exception as err:
        raise ValueError(
            f"weights file {path} could not be read as a torch state dict: {type(err).__name__}: {err}"
        ) from err
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if _tensor_dict(obj):
        return obj
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, nn.Module):
                return inner.state_dict()
            if _tensor_dict(inner):
                return inner
        raise ValueError(
            f"weights file {path} holds a dict that is not a state dict (name -> tensor) and has no "
            f"'state_dict' or 'model' entry holding one; its keys: {list(obj)[:10]}"
        )
    raise ValueError(f"weights file {path} holds a {type(obj).__name__}, not a state dict")


def load_weights(model: nn.Module, weights: str | Path, name: str = "", allow_pickle: bool = False) -> None:
    """Load `weights` (file or torchvision weight name) into `model` in place.

    A file is a state dict or a checkpoint holding one under `state_dict` or `model` (see
    `read_state_dict`); keys saved from a DataParallel / DistributedDataParallel model
    (all prefixed `module.`) lose the prefix, and DenseNet keys of torchvision < 0.3
    (`denselayer1.norm.1.weight`, as in ImageNet's densenet121-a639ec97.pth) are renamed the way
    torchvision does (`denselayer1.norm1.weight`). `allow_pickle=True` also accepts a whole pickled
    model (`torch.save(model)`): it runs code from the file, so only for files you trust.
    Keys whose shapes differ (a classifier head for another number of classes) keep their fresh
    initialisation and are logged; any other missing or unexpected key is an error naming the
    file, the model and the first keys.
    """
    path = Path(weights)
    if path.is_file():
        state = read_state_dict(path, allow_pickle)
    else:
        state = _torchvision_state_dict(str(weights), name)
    own = model.state_dict()
    prefix = "module."
    if state and all(k.startswith(prefix) for k in state) and not all(k.startswith(prefix) for k in own):
        state = {k[len(prefix) :]: v for k, v in state.items()}
    state = {_OLD_DENSENET.sub(r"\1\2", k): v for k, v in state.items()}
    skipped = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    kept = {k: v for k, v in state.items() if k not in skipped}
    missing = [k for k in own if k not in state and not k.endswith(".num_batches_tracked")]  # older files lack it
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise ValueError(
            f"weights {weights} do not match model {name or type(model).__name__!r}: "
            f"{len(missing)} missing keys {missing[:5]}, {len(unexpected)} unexpected keys "
            f"{unexpected[:5]}"
        )
    model.load_state_dict(kept, strict=False)
    if skipped:
        log.info("weights %s: kept fresh initialisation for %s (shape differs)", weights, skipped)


def load_model(
    path: str | Path, name: str | None = None, num_classes: int | None = None, allow_pickle: bool = False
) -> nn.Module:
    """A model from a file trained anywhere.

    A TorchScript archive (`torch.jit.save`) is returned as the scripted module in eval mode; a
    torch.export archive (`torch.export.save`, `.pt2`) as `ExportedProgram.module()` (it runs in the
    mode it was exported in). Both get `salience_opaque = True`: their inner modules cannot be
    hooked, so only input-level methods work on them (`gradient`, `input_x_gradient` without a
    layer, `integrated_gradients`). Any other file is weights for `build(name, num_classes,
    weights=path, allow_pickle=allow_pickle)` (see `load_weights`), which needs `name` and
    `num_classes`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} not found")
    kind = _archive_kind(path)
    if kind in ("torchscript", "export"):
        try:
            if kind == "torchscript":
                model = torch.jit.load(path, map_location="cpu").eval()
            else:
                with open(path, "rb") as f:  # a file object: torch.export.load wants a name ending in .pt2
                    model = torch.export.load(f).module()
        except Exception as err:
            what = "TorchScript" if kind == "torchscript" else "torch.export"
            raise ValueError(
                f"model file {path} looks like a {what} archive but could not be loaded: {type(err).__name__}: {err}"
            ) from err
        model.salience_opaque = True
        return model
    if name is None or num_classes is None:
        raise ValueError(
            f"model file {path} is not a TorchScript or torch.export archive; as weights it needs "
            f"the architecture: load_model(path, name='densenet121', num_classes=2)"
        )
    return build(name, num_classes, weights=path, allow_pickle=allow_pickle)
