"""`build` a classifier by name (ours, torchvision's, or timm's as `timm:<name>`) and load weights
from a file or a torchvision weight name."""

import logging
import re
from pathlib import Path

import torch
import torchvision
from torch import nn

from salience.models.bcos import bcos_resnet
from salience.models.small import SmallCNN
from salience.models.xresnet import xresnet

log = logging.getLogger("salience")

_OWN = {"smallcnn": "small CNN for 64 px CPU runs", "xresnet18/34/50": "bias-free X-DNN ResNet",
        "bcos_resnet18/34/50": "B-cos ResNet, B=2"}


def build(name: str, num_classes: int, weights: str | Path | None = None) -> nn.Module:
    """A classifier `[B, 3, H, W] -> [B, num_classes]`.

    `name`: `smallcnn`, `xresnet{18,34,50}`, `bcos_resnet{18,34,50}`, any torchvision
    classification model (`resnet50`, `densenet121`, `vit_b_16`, ...) or `timm:<name>` (needs the
    `timm` extra; e.g. `timm:legacy_xception`). `weights`: a local file (a state dict or a salience
    checkpoint) or a torchvision weight name (`ResNet50_Weights.IMAGENET1K_V2`, or the short
    `IMAGENET1K_V2`); a classifier head of another size is left freshly initialised.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    own = re.fullmatch(r"(xresnet|bcos_resnet)(\d+)", name)
    if name == "smallcnn":
        model = SmallCNN(num_classes)
    elif own:
        model = (xresnet if own[1] == "xresnet" else bcos_resnet)(int(own[2]), num_classes)
    elif name.startswith("timm:"):
        model = _timm_model(name[5:], num_classes)
    else:
        known = torchvision.models.list_models(module=torchvision.models)
        if name not in known:
            raise ValueError(f"model name {name!r} is unknown; accepted: {', '.join(_OWN)}, "
                             f"a torchvision classification model such as {', '.join(known[:8])}, ..., "
                             f"or timm:<name> for a timm model")
        model = torchvision.models.get_model(name, num_classes=num_classes)
    if weights is not None:
        load_weights(model, weights, name)
    return model


def _timm_model(name: str, num_classes: int) -> nn.Module:
    try:
        import timm
    except ImportError as err:
        raise ValueError(f"model 'timm:{name}' needs timm: pip install 'salience[timm]'") from err
    if not timm.is_model(name):
        close = timm.list_models(f"*{name}*")[:8]
        raise ValueError(f"model 'timm:{name}' is not a timm model name"
                         + (f"; similar: {', '.join(close)}" if close else ""))
    return timm.create_model(name, pretrained=False, num_classes=num_classes)


def _torchvision_state_dict(weights: str, name: str) -> dict:
    if name.startswith("timm:"):
        raise FileNotFoundError(f"weights {weights!r} is not a file; timm models take a local weights file "
                                f"(a state dict saved with torch.save(model.state_dict(), path))")
    try:
        if "." in weights:
            entry = torchvision.models.get_weight(weights)
        else:
            entry = torchvision.models.get_model_weights(name)[weights]
    except (KeyError, ValueError, AttributeError) as err:
        raise FileNotFoundError(
            f"weights {weights!r} is neither a file nor a torchvision weight name for {name!r} "
            f"(e.g. 'ResNet50_Weights.IMAGENET1K_V2' or a path to a .pth file)") from err
    try:
        return entry.get_state_dict(progress=False)
    except Exception as err:  # urllib/OS errors differ by platform; all mean "not fetchable here"
        file_name = entry.url.rsplit("/", 1)[-1]
        raise RuntimeError(
            f"cannot fetch torchvision weights {weights!r} from {entry.url} ({type(err).__name__}: {err}). "
            f"Download that file on a machine with internet access and pass its local path instead: "
            f"build({name!r}, num_classes, weights='/path/to/{file_name}') or `model.weights: "
            f"/path/to/{file_name}` in a config") from err


def load_weights(model: nn.Module, weights: str | Path, name: str = "") -> None:
    """Load `weights` (file or torchvision weight name) into `model` in place.

    Keys whose shapes differ (a classifier head for another number of classes) keep their fresh
    initialisation and are logged; any other missing or unexpected key is an error naming it.
    """
    path = Path(weights)
    if path.is_file():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(f"weights file {path} could not be read as a torch state dict: {err}") from err
        if isinstance(state, dict) and isinstance(state.get("model"), dict):
            state = state["model"]  # a salience checkpoint
    else:
        state = _torchvision_state_dict(str(weights), name)
    own = model.state_dict()
    skipped = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    kept = {k: v for k, v in state.items() if k not in skipped}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise ValueError(f"weights {weights}: do not match the model: missing keys {missing[:5]}, "
                         f"unexpected keys {unexpected[:5]}")
    model.load_state_dict(kept, strict=False)
    if skipped:
        log.info("weights %s: kept fresh initialisation for %s (shape differs)", weights, skipped)
