"""Named guidance depths: `input`, `mid1`, `mid2`, `mid3`, `final` -> module names, per model family.

`final` is the layer GradCAM tools pick by default: the last module with a spatial 4-D output before
global pooling. `mid1`..`mid3` end the stages at output strides 4, 8 and 16 (ResNet's `layer1`..`layer3`):

| family | mid1, mid2, mid3 | final |
|---|---|---|
| ResNet / ResNeXt / Wide ResNet, X-ResNet, B-cos ResNet | `layer1`, `layer2`, `layer3` | `layer4` |
| SmallCNN | `block1`, `block2`, `block3` | `block4` |
| DenseNet | `features.denseblock1` .. `3` | `features` (after `norm5`) |
| VGG, AlexNet, SqueezeNet, MobileNet v2 / v3, EfficientNet v1 / v2, ConvNeXt, MNASNet | the last child of `features` (`layers` for MNASNet) at stride 4, 8, 16 | `features` (`layers`) |
| Inception v3 | `Conv2d_4a_3x3`, `Mixed_5d`, `Mixed_6e` | `Mixed_7c` |
| timm models | the last `feature_info` entry at reduction 4, 8, 16 | the last `feature_info` entry |
| Hugging Face ResNet, ConvNeXt | `<base>.encoder.stages.<i>` at stride 4, 8, 16 | the last stage |
| Hugging Face Swin | the last block of the stage at stride 4, 8, 16: `swin.encoder.layers.<i>.blocks.<j>` (tokens) | `swin.layernorm` (tokens) |
| Hugging Face ViT, DeiT (L blocks) | the blocks ending a quarter, half and three quarters of the depth, never the last | `layernorm_before` of the last block |

Strides of `features` children are read off one forward of a 128 px zero image (eval mode, no
gradient, train/eval flags restored), once per model. A family without a stage at some stride
(SqueezeNet stops at 16) repeats the next deeper stage. Hugging Face strides come from the model's config.
A ViT classifies from its class token, so the patch tokens after the last block get no gradient: `final`
is the normalised input of the last block, and no mid depth is the last block.
"""

from __future__ import annotations

import math
import weakref

import torch
from torch import nn
from torchvision import models as tvm

DEPTHS = ("input", "mid1", "mid2", "mid3", "final")
_STRIDES = {"mid1": 4, "mid2": 8, "mid3": 16}
_RESNET = {"input": None, "mid1": "layer1", "mid2": "layer2", "mid3": "layer3", "final": "layer4"}
_DENSENET = {
    "input": None,
    "mid1": "features.denseblock1",
    "mid2": "features.denseblock2",
    "mid3": "features.denseblock3",
    "final": "features",
}
_INCEPTION = {"input": None, "mid1": "Conv2d_4a_3x3", "mid2": "Mixed_5d", "mid3": "Mixed_6e", "final": "Mixed_7c"}
_SEQUENTIAL_FAMILIES = (
    tvm.VGG,
    tvm.AlexNet,
    tvm.SqueezeNet,
    tvm.MobileNetV2,
    tvm.MobileNetV3,
    tvm.EfficientNet,
    tvm.ConvNeXt,
    tvm.MNASNet,
)
_SWIN = {"input": None, "mid1": "features.1", "mid2": "features.3", "mid3": "features.5", "final": "features"}
_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _vit_blocks(model: nn.Module) -> tuple[str, int, str] | None:
    """`(blocks prefix, number of blocks, name of the first norm in a block)` for torchvision's and timm's
    ViT / DeiT, else None."""
    if isinstance(model, tvm.VisionTransformer):
        return "encoder.layers.encoder_layer_", len(model.encoder.layers), "ln_1"
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential) or getattr(model, "patch_embed", None) is None:
        return None
    if len(blocks) and hasattr(blocks[-1], "norm1"):
        return "blocks.", len(blocks), "norm1"
    return None


def _vit_table(prefix: str, n: int, norm: str) -> dict[str, str | None]:
    """ViT depths: `mid1`..`mid3` = the outputs of the blocks at 1/4, 1/2 and 3/4 of the depth; `final` =
    the first norm of the last block (the tokens its attention reads). The last block's output is no use:
    the head reads the class token only, so every patch token's gradient there is zero."""
    table: dict[str, str | None] = {"input": None, "final": f"{prefix}{n - 1}.{norm}"}
    for k, depth in enumerate(("mid1", "mid2", "mid3"), start=1):
        table[depth] = f"{prefix}{max(0, round(k * n / 4) - 1)}"
    return table


def depth_table(model: nn.Module) -> dict[str, str | None]:
    """`{depth: module name or None (the input)}` for the model's family; ValueError listing the
    model's modules when the family has no table."""
    own = getattr(model, "guidance_depths", None)
    if own is not None:
        return own
    if isinstance(model, tvm.ResNet):
        return _RESNET
    if isinstance(model, tvm.DenseNet):
        return _DENSENET
    if isinstance(model, tvm.Inception3):
        return _INCEPTION
    if isinstance(model, tvm.SwinTransformer):
        return _SWIN
    blocks = _vit_blocks(model)
    if blocks is not None:
        return _vit_table(*blocks)
    hf = _hf_table(model)
    if hf is not None:
        return hf
    if model not in _cache:
        if isinstance(model, _SEQUENTIAL_FAMILIES):
            container = "layers" if isinstance(model, tvm.MNASNet) else "features"
            _cache[model] = _stage_ends(model, container)
        elif isinstance(info := getattr(model, "feature_info", None), list) and info:  # timm
            _cache[model] = _from_feature_info(info)
        else:
            names = [n for n, _ in model.named_modules() if n]
            shown = ", ".join(names[:40]) + (f", ... ({len(names)} modules)" if len(names) > 40 else "")
            raise ValueError(
                f"named depths ({', '.join(DEPTHS)}) are not defined for {type(model).__name__}; "
                f"pass a module name instead, one of: {shown}"
            )
    return _cache[model]


def _table(ends: dict[int, str], final: str) -> dict[str, str | None]:
    """Depth table from `{stride: module}`; a missing stride takes the next deeper stage (or `final`)."""
    table: dict[str, str | None] = {"input": None, "final": final}
    for depth, stride in _STRIDES.items():
        deeper = [ends[s] for s in sorted(ends) if s >= stride]
        table[depth] = deeper[0] if deeper else final
    return table


def _from_feature_info(info: list[dict]) -> dict[str, str | None]:
    ends = {entry["reduction"]: entry["module"] for entry in info}  # later entries win: the stage's last
    return _table(ends, info[-1]["module"])


def _hf_table(model: nn.Module) -> dict[str, str | None] | None:
    """Depths of a Hugging Face ViT, DeiT, Swin, ConvNeXt or ResNet classifier, from its config; None for
    any other model."""
    config, base = getattr(model, "config", None), getattr(model, "base_model_prefix", "")
    kind = getattr(config, "model_type", None)
    if config is None:
        return None
    modules = dict(model.named_modules())
    if kind in ("vit", "deit"):
        blocks = next(f"{base}.{p}" for p in ("layers", "encoder.layer") if f"{base}.{p}" in modules)
        n = len(modules[blocks])
        mid = {f"mid{q}": f"{blocks}.{max(min(n * q // 4, n - 1) - 1, 0)}" for q in (1, 2, 3)}
        return {"input": None, **mid, "final": f"{blocks}.{n - 1}.layernorm_before"}
    if kind == "swin":
        stages = modules[f"{base}.encoder.layers"]
        ends = {
            config.patch_size * 2**i: f"{base}.encoder.layers.{i}.blocks.{len(s.blocks) - 1}"
            for i, s in enumerate(stages)
        }
        return _table(ends, f"{base}.layernorm")
    if kind in ("convnext", "resnet"):
        first = config.patch_size if kind == "convnext" else 4 * (2 if config.downsample_in_first_stage else 1)
        n = len(modules[f"{base}.encoder.stages"])
        ends = {first * 2**i: f"{base}.encoder.stages.{i}" for i in range(n)}
        return _table(ends, ends[max(ends)])
    return None


def _stage_ends(model: nn.Module, container: str) -> dict[str, str | None]:
    """Run the children of `model.<container>` on a 128 px zero image and keep the last child of each stride."""
    seq = getattr(model, container)
    param = next(model.parameters())
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            h = torch.zeros(1, 3, 128, 128, dtype=param.dtype, device=param.device)
            ends = {}
            for name, child in seq.named_children():
                h = child(h)
                if h.dim() == 4 and h.shape[-1] > 0:
                    ends[2 ** round(math.log2(128 / h.shape[-1]))] = f"{container}.{name}"
    finally:
        for m, flag in flags.items():
            m.training = flag
    return _table(ends, container)


def layer_name(model: nn.Module, depth: str) -> str | None:
    """Module name of a named depth (`None` means the input)."""
    if depth not in DEPTHS:
        raise ValueError(f"depth {depth!r} is unknown; accepted: {', '.join(DEPTHS)}")
    return None if depth == "input" else depth_table(model)[depth]  # the input needs no table (any model)
