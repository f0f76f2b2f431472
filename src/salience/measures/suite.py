"""Every model probe of the five measures on one batch of images, with one number per image each: what the
demo and `salience measure --checkpoints` report per model."""

from __future__ import annotations

import torch
from torch import nn

from salience.measures.degradation import blur_degradation, deletion_insertion
from salience.measures.entropy import entropy
from salience.measures.localisation import epg, iou, pointing_game
from salience.measures.probes import Explain, noise_response, out_of_set_response, transform_consistency

ENTROPIES = ("entropy_histogram", "entropy_spatial")
LOCALISATION = ("epg", "iou", "pointing_game")
PROBES = (
    "noise_ssim_0.1",
    "transform_ssim",
    "blur_nonsalient_score_change",
    "blur_salient_score_change",
    "deletion_auc",
    "insertion_auc",
)
"""Per-image probe values: SSIM of the map under 10% salt-and-pepper noise (b), mean SSIM of `T(map(x))`
and `map(T(x))` over the transforms (c), change of the target's probability when the non-salient or the
salient region is blurred (e), deletion and insertion AUC."""


def map_values(maps: torch.Tensor, masks: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per-image values `[B]` computed from the maps alone: the two entropies (a), and with `masks [B, H, W]`
    the localisation metrics (NaN for an image with an empty mask)."""
    out = {"entropy_histogram": entropy(maps, "histogram"), "entropy_spatial": entropy(maps, "spatial")}
    if masks is not None:
        out |= {"epg": epg(maps, masks), "iou": iou(maps, masks), "pointing_game": pointing_game(maps, masks)}
    return out


def probe_suite(
    model: nn.Module,
    explain: Explain,
    x: torch.Tensor,
    target: torch.Tensor,
    maps: torch.Tensor,
    out_of_set: torch.Tensor | None = None,
    seed: int = 0,
    deletion_steps: int = 16,
) -> dict:
    """Run the probes on images `x [B, C, H, W]` explained for `target [B]`, whose maps are `maps [B, h, w]`.

    Returns `{"values": {name in PROBES: [B]}, "curves": {...}}`; the curves are means over the images:
    noise (amounts, SSIM, score change), per-transform SSIM, blur (score change, agreement, SSIM per mode),
    deletion and insertion curves, and with `out_of_set [N, C, H, W]` the entropies and scores of in-set vs
    out-of-set images with their shift (see `out_of_set_response`).
    """
    noise = noise_response(model, explain, x, target, seed=seed, similarities=("ssim",))
    trans = transform_consistency(model, explain, x, target, similarities=("ssim",))
    blur = blur_degradation(model, explain, x, target, similarities=("ssim",))
    del_ins = deletion_insertion(model, x, target, maps, steps=deletion_steps)
    values = {
        "noise_ssim_0.1": noise["similarity"]["ssim"][:, noise["amounts"].tolist().index(0.1)],
        "transform_ssim": trans["similarity"]["ssim"].double().mean(1),
        "blur_nonsalient_score_change": blur["nonsalient"]["score_change"],
        "blur_salient_score_change": blur["salient"]["score_change"],
        "deletion_auc": del_ins["deletion_auc"],
        "insertion_auc": del_ins["insertion_auc"],
    }
    curves = {
        "noise": {
            "amounts": noise["amounts"].tolist(),
            "ssim": noise["similarity"]["ssim"].double().mean(0).tolist(),
            "score_change": noise["score_change"].double().mean(0).tolist(),
        },
        "transforms": dict(
            zip(trans["transforms"], trans["similarity"]["ssim"].double().mean(0).tolist(), strict=True)
        ),
        "blur": {
            mode: {
                "score_change": blur[mode]["score_change"].double().mean().item(),
                "agreement": blur[mode]["agreement"].double().mean().item(),
                "ssim": blur[mode]["similarity"]["ssim"].double().mean().item(),
            }
            for mode in ("nonsalient", "salient")
        },
        "deletion_curve": del_ins["deletion"].double().mean(0).tolist(),
        "insertion_curve": del_ins["insertion"].double().mean(0).tolist(),
    }
    if out_of_set is not None:
        oos = out_of_set_response(model, explain, x, target, out_of_set, seed=seed)
        curves["out_of_set"] = {
            "entropy_in": oos["in"]["entropy_histogram"].tolist(),
            "entropy_out": oos["out"]["entropy_histogram"].tolist(),
            "score_in": oos["in"]["score"].double().mean().item(),
            "score_out": oos["out"]["score"].double().mean().item(),
            "scores_out": oos["out"]["score"].double().tolist(),  # per out-of-set image, for `salience view`
            "shift": oos["shift"],
        }
    return {"values": {k: v.detach().cpu() for k, v in values.items()}, "curves": curves}


def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    target: torch.Tensor,
    method: str = "grad_cam",
    layer: str | None = "final",
    masks: torch.Tensor | None = None,
    seed: int = 0,
    deletion_steps: int = 16,
) -> dict[str, torch.Tensor]:
    """Every measure that needs one model, per image, in one call: `{name: [B]}`.

    `images [B, C, H, W]` are explained for `target` (long `[B]`) with `method` at `layer` (see
    `salience.attribution.attribute`; model in eval mode); the maps give the entropies (a) and, with
    `masks [B, H, W]` (bool, or float read as > 0.5), EPG, IoU and the pointing game; the probes add
    noise response (b), transformation consistency (c), blur degradation (e) and deletion / insertion
    AUC (names in `ENTROPIES`, `LOCALISATION`, `PROBES`). Stability needs several models: see
    `salience.measures.probes.seed_stability`.
    """
    import functools

    from salience.attribution import attribute

    explain = functools.partial(attribute, method, model, layer=layer)
    maps = explain(images, target)
    probes = probe_suite(model, explain, images, target, maps, seed=seed, deletion_steps=deletion_steps)
    return {k: v.detach().cpu() for k, v in map_values(maps, masks).items()} | probes["values"]
