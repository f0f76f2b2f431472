"""The transformer-native methods vs their reference code, side by side in one run (ViT-B/16, random weights).

    python benchmarks/vit.py                     # ViT-B/16, 224 px, 8 images, CPU, 2 threads, median of 2
    python benchmarks/vit.py --quick             # 2 images, 1 repeat: checks that the script runs
    python benchmarks/vit.py --methods attn_lrp chefer_lrp --repeats 3 --device cuda

Compared (the references explain one image per call, as their code runs; lxt takes the batch):

- `attention_rollout` (mean over heads, discard 0.9) and `grad_rollout` (discard 0.9) vs jacobgil/vit-explain's
  `VITAttentionRollout` / `VITAttentionGradRollout` (commit 15a81d3). Their usage is reproduced on an unfused copy
  of the timm model (`fused_attn=False`): forward hooks on each block's `attn_drop` keep the attention (moved to
  the CPU, as theirs), the gradient rollout runs `zero_grad` and a backward through the model (parameter gradients
  included, as theirs) with the attention's gradient hooked; then the rollout of the transcription
  `tests/vit_reference.py` under `no_grad` (with their division by the row sums and their gradient order), the
  class token's row over the patches, divided by its max. (Their backward hook receives the gradient of the
  scores before the softmax; the attention's own gradient costs the same.)
- `chefer_grad` vs Transformer-MM-Explainability's `generate_relevance` (ViT notebook): the same hooks,
  `zero_grad`, `backward(retain_graph=True)`, the rule of `tests/vit_reference.py` (`chefer_grad_reference`).
- `chefer_lrp` vs the transcription of Chefer et al.'s `generate_LRP` (`tests/chefer_reference.py`), one image
  per call on the same timm weights (it takes the attention gradients with `autograd.grad`: no parameter
  gradients, so it costs a little less than their `backward`).
- `attn_lrp` (`rule="cp"`) vs lxt 2.1's `lxt.efficient` patches for torchvision's ViT (its `cp_LRP` map: GELU,
  LayerNorm, MultiheadAttention with CP-LRP), applied to the modules of a copy of `torchvision.models.vit_b_16()`
  (lxt's `monkey_patch` would change the classes for the whole process), parameters frozen as in lxt's example;
  input x gradient of the batch's target logits in one backward, summed over channels and over each patch.

salience runs each method on the whole batch, on the fused timm model (its explicit forward reads the attention)
or the same torchvision model. The maps are first checked to agree in float64 (1 image by default; the vit-explain
rollouts then with the paper's division and block order, which salience computes: the same work); then timed
in float32. Each repeat runs every method and its reference, alternating who goes first; the table gives medians.
The default run took 9 minutes on a shared 2-core CPU (2 threads), `--quick` 4 (mostly the float64 check).
"""

import argparse
import copy
import importlib.util
import statistics
import sys
import types
from pathlib import Path

import timm
import torch
import torchvision
from torch import nn

from common import timed
from salience import attribution as A

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
import chefer_reference
from vit_reference import chefer_grad_reference, grad_rollout_reference, rollout_reference

METHODS = ("attention_rollout", "grad_rollout", "chefer_grad", "chefer_lrp", "attn_lrp")
DISCARD = 0.9  # vit-explain's default discard ratio, for both rollouts
# Chefer's `safe_divide` adds 1e-9 to each denominator; the reference scales `q kᵀ` after the product, salience
# before it, so their maps agree to where that stabiliser meets values (timm's initial weights make them small).
# lxt's identity rule divides by `x + 1e-10`, salience by `x ± 1e-10` (the sign of x): GELU inputs near 0.
TOLERANCE = {"chefer_lrp": 1e-3, "attn_lrp": 1e-5}


class Hooked:
    """An unfused copy of a timm ViT with a forward hook on each block's `attn_drop` (an identity in eval mode):
    `attentions` its outputs, block order; `gradients` their gradients (appended by the backward: last block
    first). `to_cpu`: both moved to the CPU, as vit-explain's hooks do."""

    def __init__(self, model: nn.Module, to_cpu: bool) -> None:
        self.model = copy.deepcopy(model)
        self.to_cpu = to_cpu
        self.attentions: list[torch.Tensor] = []
        self.gradients: list[torch.Tensor] = []
        for block in self.model.blocks:
            block.attn.fused_attn = False
            block.attn.attn_drop.register_forward_hook(self._keep)

    def _keep(self, module, inputs, output) -> None:
        if output.requires_grad:
            output.register_hook(lambda g: self.gradients.append(g.cpu() if self.to_cpu else g))
        self.attentions.append(output.cpu() if self.to_cpu else output)

    def reset(self) -> None:
        self.attentions, self.gradients = [], []


def _class_row(full: torch.Tensor) -> torch.Tensor:
    """The class token's row of an `[N, N]` rollout over the patch tokens, on the square grid `[h, w]`."""
    row = full[0, 1:]
    side = int(row.numel() ** 0.5)
    return row.reshape(side, side)


def vit_explain_rollout(hooked: Hooked, x: torch.Tensor, paper: bool = False) -> torch.Tensor:
    """`VITAttentionRollout(head_fusion="mean", discard_ratio=0.9)` called on each image: maps `[B, h, w]`, max 1."""
    maps = []
    for image in x.split(1):
        hooked.reset()
        with torch.no_grad():
            hooked.model(image)
            full = rollout_reference([a[0] for a in hooked.attentions], DISCARD, "mean", their_division=not paper)
            row = _class_row(full)
        maps.append(row / row.max())
    return torch.stack(maps)


def vit_explain_grad_rollout(hooked: Hooked, x: torch.Tensor, t: torch.Tensor, paper: bool = False) -> torch.Tensor:
    """`VITAttentionGradRollout(discard_ratio=0.9)` called on each (image, class): maps `[B, h, w]`, max 1."""
    maps = []
    for image, cls in zip(x.split(1), t.tolist(), strict=True):
        hooked.reset()
        hooked.model.zero_grad()
        output = hooked.model(image)
        mask = torch.zeros_like(output)
        mask[:, cls] = 1
        (output * mask).sum().backward()
        with torch.no_grad():
            attentions, gradients = [a[0] for a in hooked.attentions], [g[0] for g in hooked.gradients[::-1]]
            full = grad_rollout_reference(
                attentions, gradients, DISCARD, their_division=not paper, their_gradient_order=not paper
            )
            row = _class_row(full)
        maps.append(row / row.max())
    return torch.stack(maps)


def mm_generate_relevance(hooked: Hooked, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Transformer-MM-Explainability's `generate_relevance` on each (image, class): maps `[B, h, w]`."""
    maps = []
    for image, cls in zip(x.split(1), t.tolist(), strict=True):
        hooked.reset()
        output = hooked.model(image)
        one_hot = torch.zeros_like(output)
        one_hot[0, cls] = 1
        hooked.model.zero_grad()
        (one_hot * output).sum().backward(retain_graph=True)
        gradients = [g[0] for g in hooked.gradients[::-1]]
        with x.device:  # its identity on the model's device, as theirs (`.cuda()`)
            full = chefer_grad_reference([a[0] for a in hooked.attentions], gradients)
        maps.append(_class_row(full).detach())
    return torch.stack(maps)


def chefer_generate_lrp(params: dict, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The `generate_LRP` transcription on each (image, class): maps `[B, h, w]`."""
    with x.device:  # the transcription makes its identity on the default device
        rows = [chefer_reference.generate_lrp(params, x[i : i + 1], c) for i, c in enumerate(t.tolist())]
    side = int(rows[0].numel() ** 0.5)
    return torch.cat(rows).reshape(-1, side, side)


def lxt_patches() -> types.ModuleType:
    """`lxt.efficient.patches`. lxt 2.1's `lxt.efficient.models` imports its language-model patches, which fail
    under transformers 5 (`transformers.modeling_attn_mask_utils` is gone): a stand-in package module, with the
    real folder as its path, takes its place so that `lxt.efficient` and its `vit_torch` map import."""
    name = "lxt.efficient.models"
    if name not in sys.modules:
        stub = types.ModuleType(name)
        stub.__path__ = [str(Path(importlib.util.find_spec("lxt").origin).parent / "efficient" / "models")]
        stub.get_default_map = None
        sys.modules[name] = stub
    from lxt.efficient import patches

    return patches


def lxt_model(model: nn.Module) -> nn.Module:
    """A frozen copy of a torchvision ViT whose GELU, LayerNorm and MultiheadAttention modules run lxt's
    `vit_torch.cp_LRP` patches (each module's `forward`, the original kept as `original_forward` where lxt
    keeps it, as `patch_method` does to the class)."""
    lxt_patches()
    from lxt.efficient.models.vit_torch import cp_LRP

    patched = copy.deepcopy(model).eval()
    for p in patched.parameters():
        p.requires_grad_(False)
    for module in patched.modules():
        for cls, patch in cp_LRP.items():
            if isinstance(module, cls):
                if patch.keywords.get("keep_original"):
                    module.original_forward = module.forward
                module.forward = types.MethodType(patch.args[0], module)
    return patched


def lxt_maps(patched: nn.Module, x: torch.Tensor, t: torch.Tensor, patch: int = 16) -> torch.Tensor:
    """lxt's relevance, input x gradient of the target logits (one backward for the batch), summed over the
    channels and over each `patch` x `patch` square: `[B, h, w]`."""
    xi = x.detach().clone().requires_grad_(True)
    patched(xi).gather(1, t[:, None]).sum().backward()
    relevance = (xi * xi.grad).sum(1)
    b, height, width = relevance.shape
    return relevance.reshape(b, height // patch, patch, width // patch, patch).sum((2, 4))


def _max1(maps: torch.Tensor) -> torch.Tensor:
    return maps / maps.flatten(1).amax(1)[:, None, None]


def references(methods, vit_model, tv_model, paper=False) -> dict:
    """`{method: (reference name, fn(x, t) -> maps [B, h, w])}`; `paper`: the vit-explain rollouts with the
    paper's division and block order (the maps salience computes)."""
    refs = {}
    if "attention_rollout" in methods:
        hooked = Hooked(vit_model, to_cpu=True)
        refs["attention_rollout"] = (
            "vit-explain VITAttentionRollout",
            lambda x, t: vit_explain_rollout(hooked, x, paper),
        )
    if "grad_rollout" in methods:
        hooked_g = Hooked(vit_model, to_cpu=True)
        refs["grad_rollout"] = (
            "vit-explain VITAttentionGradRollout",
            lambda x, t: vit_explain_grad_rollout(hooked_g, x, t, paper),
        )
    if "chefer_grad" in methods:
        hooked_mm = Hooked(vit_model, to_cpu=False)
        refs["chefer_grad"] = ("Transformer-MM-Explainability", lambda x, t: mm_generate_relevance(hooked_mm, x, t))
    if "chefer_lrp" in methods:
        params = chefer_reference.params(vit_model, "timm")
        refs["chefer_lrp"] = ("Chefer generate_LRP (transcription)", lambda x, t: chefer_generate_lrp(params, x, t))
    if "attn_lrp" in methods:
        patched = lxt_model(tv_model)
        refs["attn_lrp"] = ("lxt 2.1 efficient, cp_LRP", lambda x, t: lxt_maps(patched, x, t))
    return refs


def ours(methods, vit_model, tv_model) -> dict:
    """`{method: fn(x, t) -> maps [B, h, w]}`: salience's method on the whole batch (rollout maps max 1)."""
    runs = {
        "attention_rollout": lambda x, t: _max1(
            A.attribute("attention_rollout", vit_model, x, t, discard_ratio=DISCARD)
        ),
        "grad_rollout": lambda x, t: _max1(A.attribute("grad_rollout", vit_model, x, t, discard_ratio=DISCARD)),
        "chefer_grad": lambda x, t: A.attribute("chefer_grad", vit_model, x, t),
        "chefer_lrp": lambda x, t: A.attribute("chefer_lrp", vit_model, x, t),
        "attn_lrp": lambda x, t: A.attribute("attn_lrp", tv_model, x, t, rule="cp"),
    }
    return {m: runs[m] for m in methods}


def check_in_float64(methods, vit_model, tv_model, x, t) -> None:
    """Each method agrees with its reference in float64 before anything is timed."""
    vit64, tv64, x64 = copy.deepcopy(vit_model).double(), copy.deepcopy(tv_model).double(), x.double()
    refs, runs = references(methods, vit64, tv64, paper=True), ours(methods, vit64, tv64)
    errors = []
    for method in methods:
        mine, ref = runs[method](x64, t), refs[method][1](x64, t)
        err = ((mine - ref).abs().max() / ref.abs().max()).item()
        bound = TOLERANCE.get(method, 1e-8)
        assert err < bound, f"{method}: salience and {refs[method][0]} disagree in float64 (relative error {err:.1e})"
        errors.append(f"{method} {err:.1e}")
    print(f"float64, {x.shape[0]} images, max |salience - reference| / max |reference|: {', '.join(errors)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--check-images", type=int, default=1, help="images of the float64 agreement check")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--quick", action="store_true", help="2 images, 1 repeat: checks that the script runs")
    args = parser.parse_args()
    if args.quick:
        args.images, args.repeats = 2, 1
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    vit_model = timm.create_model("vit_base_patch16_224", pretrained=False, img_size=args.size).eval().to(device)
    tv_model = torchvision.models.vit_b_16(image_size=args.size).eval().to(device)
    nn.init.trunc_normal_(tv_model.heads.head.weight, std=0.02)  # torchvision starts it at 0: all maps 0
    g = torch.Generator().manual_seed(1)
    x = torch.rand(args.images, 3, args.size, args.size, generator=g).to(device)
    t = torch.randint(0, 1000, (args.images,), generator=g).to(device)
    n = args.check_images
    check_in_float64(args.methods, vit_model, tv_model, x[:n], t[:n])

    refs, runs = references(args.methods, vit_model, tv_model), ours(args.methods, vit_model, tv_model)
    times = {m: ([], []) for m in args.methods}
    for r in range(args.repeats):
        for method in args.methods:
            fns = (lambda m=method: runs[m](x, t), lambda m=method: refs[m][1](x, t))
            for i in (0, 1) if r % 2 == 0 else (1, 0):  # alternate who goes first
                times[method][i].append(timed(fns[i], device))
            print(f"repeat {r + 1}, {method}: salience {times[method][0][-1]:.2f} s, reference "
                  f"{times[method][1][-1]:.2f} s", flush=True)  # fmt: skip
    threads = f"{torch.get_num_threads()} threads" if device.type == "cpu" else ""
    print(f"\nViT-B/16, {args.size} px, {args.images} images, {device.type} {threads}, median of {args.repeats}")
    print("| method | reference | reference s | salience s | speed-up |")
    print("|---|---|---|---|---|")
    for method, (mine, ref) in times.items():
        o, r = statistics.median(mine), statistics.median(ref)
        print(f"| `{method}` | {refs[method][0]} | {r:.2f} | {o:.2f} | {r / o:.2f}x |")


if __name__ == "__main__":
    main()
