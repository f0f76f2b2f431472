"""`build` a classifier by name (ours, torchvision's, timm's as `timm:<name>`, Hugging Face's as `hf:<folder>`,
or any class or function as `package.module:factory`) and load weights from a file or a torchvision weight name; `load_model` also opens TorchScript and torch.export files."""

import functools
import importlib
import inspect
import logging
import pickle
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeGuard

import torch
import torchvision
from torch import nn

from salience.models.adapt import adapt
from salience.models.bcos import bcos_resnet
from salience.models.small import SmallCNN
from salience.models.xresnet import xresnet

log = logging.getLogger("salience")

_OWN = {
    "smallcnn": "small CNN for 64 px CPU runs",
    "xresnet18/34/50": "bias-free X-DNN ResNet",
    "bcos_resnet18/34/50": "B-cos ResNet, B=2",
}


def build(
    name: str,
    num_classes: int | None = None,
    weights: str | Path | None = None,
    allow_pickle: bool = False,
    kwargs: dict | None = None,
    output: int | str | None = None,
) -> nn.Module:
    """A classifier `[B, 3, H, W] -> [B, num_classes]`.

    `name`: `smallcnn`, `xresnet{18,34,50}`, `bcos_resnet{18,34,50}`, any torchvision
    classification model (`resnet50`, `densenet121`, `vit_b_16`, ...), `timm:<name>` (needs the
    `timm` extra; e.g. `timm:legacy_xception`), `hf:<folder>` (a Hugging Face image classifier saved with
    `save_pretrained`, read from disk; needs the `hf` extra) or an import path `package.module:factory`
    (a class or function returning an `nn.Module`; importing runs that module's code). `kwargs` go to the
    constructor (the factory gets only these; torchvision, timm and ours also get `num_classes`, which only
    an import path may omit; `hf:` replaces a head of another size when `num_classes` is given).
    `weights`: a local file or a torchvision weight name (`ResNet50_Weights.IMAGENET1K_V2`, or the short
    `IMAGENET1K_V2`); see `load_weights` for the files accepted and `allow_pickle`. A classifier head of
    another size is left freshly initialised. `output` says where the scores are in the forward's result
    (see `adapt`; default: the tensor itself, or `.logits`).
    """
    kwargs = dict(kwargs or {})
    if num_classes is not None and num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if name.startswith("hf:"):
        model: nn.Module = _hf_model(name[3:], num_classes, kwargs)
    elif is_import_path(name):
        model = _call(name, import_factory(name), kwargs)
    elif num_classes is None:
        raise ValueError(f"model {name!r}: num_classes is needed (only an import path or hf:<folder> may omit it)")
    elif name.startswith("timm:"):
        model = _timm_model(name[5:], num_classes, kwargs)
    else:
        model = _call(name, _named_factory(name), {"num_classes": num_classes, **kwargs})
    if weights is not None:
        load_weights(model, weights, name, allow_pickle=allow_pickle)
    if output is None and not (name.startswith("hf:") or is_import_path(name)):
        return model  # ours, torchvision's and timm's return scores; no hook (it would stop torch.jit.script)
    return adapt(model, output)


def _named_factory(name: str) -> Callable[..., nn.Module]:
    """The constructor of one of our models or a torchvision model, taking `num_classes` and keywords."""
    own = re.fullmatch(r"(xresnet|bcos_resnet)(\d+)", name)
    if name == "smallcnn":
        return SmallCNN
    if own:
        return functools.partial(xresnet if own[1] == "xresnet" else bcos_resnet, int(own[2]))
    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        raise ValueError(
            f"model name {name!r} is unknown; accepted: {', '.join(_OWN)}, "
            f"a torchvision classification model such as {', '.join(known[:8])}, ..., "
            f"timm:<name> for a timm model, hf:<folder> for a Hugging Face one, or package.module:factory"
        )
    return functools.partial(torchvision.models.get_model, name)


_IMPORT_PATH = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def is_import_path(name: str) -> bool:
    """`package.module:factory` (not `timm:` or `hf:`, which name models of those libraries)."""
    return not name.startswith(("timm:", "hf:")) and _IMPORT_PATH.fullmatch(name) is not None


def import_factory(path: str) -> Callable[..., Any]:
    """The class or function at `package.module:factory`. Importing runs the module's code, as any import does.
    ValueError naming `path` when the import fails or the name is missing or not callable."""
    module_name, _, attr = path.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except Exception as err:
        raise ValueError(
            f"model {path!r}: cannot import {module_name!r} ({type(err).__name__}: {err}); "
            f"install its package or put the folder holding it on PYTHONPATH"
        ) from err
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"model {path!r}: {module_name!r} has no {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"model {path!r}: {attr!r} is a {type(obj).__name__}, not a class or function")
    return obj


def check_kwargs(name: str, factory: Callable[..., Any], kwargs: dict) -> None:
    """ValueError naming the model and the factory's signature when `factory(**kwargs)` cannot be called."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # some builtins have none: the call itself will tell
        return
    try:
        signature.bind(**kwargs)
    except TypeError as err:
        label = getattr(factory, "__name__", type(factory).__name__)
        raise ValueError(f"model {name!r}: kwargs {kwargs} do not fit {label}{signature}: {err}") from None


def check_model(name: str | None, kwargs: dict | None = None) -> None:
    """Fail now, naming the model, when an import path does not import or its kwargs do not fit, or an
    `hf:` folder holds no `config.json`; other names are checked when built."""
    if name is None:
        if kwargs:
            raise ValueError(f"kwargs {kwargs} given without a model")
        return
    if name.startswith("hf:"):
        _hf_folder(name[3:])
    elif is_import_path(name):
        check_kwargs(name, import_factory(name), kwargs or {})


def _call(name: str, factory: Callable[..., Any], kwargs: dict) -> nn.Module:
    check_kwargs(name, factory, kwargs)
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model {name!r} returned a {type(model).__name__}, not a torch nn.Module")
    return model


def _hf_folder(folder: str) -> Path:
    path = Path(folder)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"model 'hf:{folder}': {path / 'config.json'} not found; hf:<folder> takes a folder written by "
            f"save_pretrained (nothing is downloaded)"
        )
    return path


def _hf_model(folder: str, num_classes: int | None, kwargs: dict) -> nn.Module:
    """A Hugging Face image classifier from a local folder: the class named in its config (else the
    image-classification auto class), weights from the folder; a head of another size is re-initialised."""
    path = _hf_folder(folder)
    try:
        import transformers
    except ImportError as err:
        raise ValueError(f"model 'hf:{folder}' needs transformers: pip install 'salience[hf]'") from err
    config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    arch = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, arch, None) if arch else None
    cls = cls or transformers.AutoModelForImageClassification
    same = num_classes is None or num_classes == config.num_labels
    resize = {} if same else {"num_labels": num_classes, "ignore_mismatched_sizes": True}
    try:
        model, info = cls.from_pretrained(path, local_files_only=True, output_loading_info=True, **resize, **kwargs)
    except Exception as err:
        raise ValueError(
            f"model 'hf:{folder}': {cls.__name__}.from_pretrained failed: {type(err).__name__}: {err}"
        ) from err
    fresh = {k for k, *_ in info.get("mismatched_keys", [])}
    missing = [k for k in info.get("missing_keys", []) if k not in fresh]
    if missing:
        raise ValueError(
            f"model 'hf:{folder}': the folder's weights lack {len(missing)} keys of {cls.__name__}: {missing[:5]}"
        )
    return model


def _timm_model(name: str, num_classes: int, kwargs: dict) -> nn.Module:
    try:
        import timm
    except ImportError as err:
        raise ValueError(f"model 'timm:{name}' needs timm: pip install 'salience[timm]'") from err
    if not timm.is_model(name):
        close = timm.list_models(f"*{name}*")[:8]
        raise ValueError(
            f"model 'timm:{name}' is not a timm model name" + (f"; similar: {', '.join(close)}" if close else "")
        )
    return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)


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
    torchvision does (`denselayer1.norm1.weight`). A model with a `convert_state_dict` method (our B-cos and
    X-ResNets) renames the authors' keys to its own (docs/definitions.md, "Models"). `allow_pickle=True` also accepts a whole pickled
    model (`torch.save(model)`): it runs code from the file, so only for files you trust.
    Keys whose shapes differ (a classifier head for another number of classes) keep their fresh
    initialisation, with the rest of their module (a head bias the file lacks), and are logged; any other missing or unexpected key is an error naming the
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
    convert = getattr(model, "convert_state_dict", None)  # the authors' key names of our B-cos and X-ResNets
    state = convert(state) if convert is not None else state
    skipped = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    kept = {k: v for k, v in state.items() if k not in skipped}
    fresh = {k.rpartition(".")[0] for k in skipped}  # a head of another size: all of its module stays fresh
    missing = [
        k
        for k in own
        if k not in state and not k.endswith(".num_batches_tracked") and k.rpartition(".")[0] not in fresh
    ]  # older files lack num_batches_tracked
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
    path: str | Path,
    name: str | None = None,
    num_classes: int | None = None,
    allow_pickle: bool = False,
    kwargs: dict | None = None,
    output: int | str | None = None,
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
    if name is None:
        raise ValueError(
            f"model file {path} is not a TorchScript or torch.export archive; as weights it needs "
            f"the architecture: load_model(path, name='densenet121', num_classes=2)"
        )
    return build(name, num_classes, weights=path, allow_pickle=allow_pickle, kwargs=kwargs, output=output)
