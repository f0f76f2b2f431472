"""Every registered measure: one `register(Measure(...))` per measure, in the order of CSV columns and report
rows. The functions live in their modules; probe entries read a `Probe` (see `salience.measures.registry`)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from salience.measures.complexity import complexity, sparseness
from salience.measures.degradation import blur_degradation, deletion_insertion
from salience.measures.entropy import entropy
from salience.measures.faithfulness import ROAD_PERCENTAGES, faithfulness_correlation, road
from salience.measures.localisation import epg, iou, pointing_game
from salience.measures.probes import NOISE_AMOUNTS, TRANSFORMS, noise_response, seed_stability, transform_consistency
from salience.measures.registry import Costing, Measure, Probe, register
from salience.measures.relevance import auc, relevance_mass_accuracy, relevance_rank_accuracy, top_k_intersection
from salience.measures.robustness import local_lipschitz, sensitivity
from salience.measures.sanity import mprt, random_logit

# Costs (`Measure.passes`, per probed image: an explanation 1, a forward ½). ROAD: one forward per percentage
# (its linear imputation, on the CPU, is not counted); blur: the clean map and one per mode; deletion and insertion:
# a forward per step and curve.
_ROAD = len(ROAD_PERCENTAGES) / 2
_BLUR = 3


def _deletion_passes(c: Costing) -> float:
    return float(c.deletion_steps + 1)


def _maps_only(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[..., torch.Tensor]:
    """A maps-kind function of the maps alone (masks ignored)."""
    return lambda maps, masks=None: fn(maps)


# --- sanity checks (probes) ---------------------------------------------------------------------------
def _mprt(p: Probe) -> torch.Tensor:
    if p.method is None:
        raise ValueError("mprt needs the probe's method (Probe.method) to explain the randomised models")
    method = p.method
    r = p.once(
        "mprt", lambda: mprt(p.model, p.x, p.target, method, p.layer, seed=p.seed, maps=p.maps, options=p.options)
    )
    p.curves["mprt"] = {"layers": r["layers"], "similarity": r["similarity"].double().mean(0).tolist()}
    return r["summary"]


def _random_logit(p: Probe) -> torch.Tensor:
    return random_logit(p.model, p.explain, p.x, p.target, maps=p.maps, seed=p.seed)["similarity"]


register(Measure("mprt", "MPRT: Spearman of |maps| with those of the cascadingly randomised model (mean over layers)",
                 "probe", "sanity", _mprt, range=(-1.0, 1.0), better="lower", needs_method=True,
                 reference="Quantus MPRT", passes=16))  # fmt: skip
register(Measure("random_logit", "Random logit: SSIM of the map with that of a random other class", "probe",
                 "sanity", _random_logit, range=(-1.0, 1.0), better="lower", reference="Quantus RandomLogit",
                 passes=1))  # fmt: skip


# --- faithfulness and robustness (probes, Quantus 0.6) ---------------------------------------------------
def _road(order: str) -> Callable[[Probe], torch.Tensor]:
    def fn(p: Probe) -> torch.Tensor:
        r = road(p.model, p.x, p.target, p.maps, order=order, seed=p.seed)
        curve = p.curves.setdefault("road", {"percentages": r["percentages"]})
        curve[order] = r["correct"].double().mean(0).tolist()
        return r["score"]

    return fn


def _faithfulness_correlation(p: Probe) -> torch.Tensor:
    return faithfulness_correlation(p.model, p.x, p.target, p.maps, runs=p.samples or 100, seed=p.seed)


def _sensitivity(reduce: str) -> Callable[[Probe], torch.Tensor]:
    def fn(p: Probe) -> torch.Tensor:
        s = p.once("sensitivity", lambda: sensitivity(p.explain, p.x, p.target, p.maps, p.samples or 200, seed=p.seed))
        return s.amax(1) if reduce == "max" else s.mean(1)

    return fn


def _local_lipschitz(p: Probe) -> torch.Tensor:
    return local_lipschitz(p.explain, p.x, p.target, p.maps, p.samples or 200, seed=p.seed)


register(Measure("road_morf", "ROAD, most relevant first (accuracy while imputing; lower = faithful)", "probe",
                 "faithfulness", _road("morf"), better="lower", reference="Quantus ROAD", passes=_ROAD))  # fmt: skip
register(Measure("road_lerf", "ROAD, least relevant first (accuracy while imputing; higher = faithful)", "probe",
                 "faithfulness", _road("lerf"), better="higher", reference="Quantus ROAD on -A",
                 passes=_ROAD))  # fmt: skip
register(Measure("faithfulness_correlation", "Faithfulness correlation (map sums vs logit drops)", "probe",
                 "faithfulness", _faithfulness_correlation, range=(-1.0, 1.0), better="higher",
                 reference="Quantus FaithfulnessCorrelation",
                 passes=lambda c: ((c.samples or 100) + 1) / 2))  # fmt: skip
register(Measure("max_sensitivity", "Max-sensitivity (relative map change under ±0.2 noise)", "probe", "robustness",
                 _sensitivity("max"), range=(0.0, None), better="lower", reference="Quantus MaxSensitivity",
                 passes=lambda c: c.samples or 200, shares="sensitivity"))  # fmt: skip
register(Measure("avg_sensitivity", "Avg-sensitivity (relative map change under ±0.2 noise)", "probe", "robustness",
                 _sensitivity("mean"), range=(0.0, None), better="lower", reference="Quantus AvgSensitivity",
                 passes=lambda c: c.samples or 200, shares="sensitivity"))  # fmt: skip
register(Measure("local_lipschitz", "Local Lipschitz estimate (map change / input change)", "probe", "robustness",
                 _local_lipschitz, range=(0.0, None), better="lower", reference="Quantus LocalLipschitzEstimate",
                 passes=lambda c: c.samples or 200))  # fmt: skip


# --- complexity (maps only) ------------------------------------------------------------------------
register(Measure("entropy_histogram", "Entropy, histogram (paper's; lower = more concentrated)", "maps",
                 "explain_to_me", _maps_only(functools.partial(entropy, kind="histogram")), better="lower",
                 reference="scikit-image shannon_entropy"))  # fmt: skip
register(Measure("entropy_spatial", "Entropy, spatial (lower = fewer salient pixels)", "maps", "explain_to_me",
                 _maps_only(functools.partial(entropy, kind="spatial")), better="lower",
                 reference="Quantus Complexity / log(h w)"))  # fmt: skip
register(Measure("sparseness", "Sparseness (Gini of |A|; higher = fewer salient pixels)", "maps", "complexity",
                 _maps_only(sparseness), better="higher", at_input=True, reference="Quantus Sparseness"))  # fmt: skip
register(Measure("complexity", "Complexity (entropy of |A| shares, nats; lower = simpler)", "maps", "complexity",
                 _maps_only(complexity), range=(0.0, None), better="lower", at_input=True,
                 reference="Quantus Complexity"))  # fmt: skip

# --- localisation (maps and masks) ---------------------------------------------------------------------
register(Measure("epg", "EPG (share of positive salience in the boxes; higher is better)", "maps", "localisation",
                 epg, needs_masks=True, reference="Quantus AttributionLocalisation"))  # fmt: skip
register(Measure("iou", "IoU of the thresholded map with the boxes", "maps", "localisation", iou,
                 needs_masks=True, reference="closed form"))  # fmt: skip
register(Measure("pointing_game", "Pointing game (map maximum inside the boxes)", "maps", "localisation",
                 pointing_game, needs_masks=True, reference="Quantus PointingGame"))  # fmt: skip
register(Measure("relevance_mass_accuracy", "Relevance mass accuracy (share of signed salience in the boxes)",
                 "maps", "localisation", relevance_mass_accuracy, range=(None, None), needs_masks=True,
                 at_input=True, reference="Quantus RelevanceMassAccuracy"))  # fmt: skip
register(Measure("relevance_rank_accuracy", "Relevance rank accuracy (top-|M| pixels inside the boxes)", "maps",
                 "localisation", relevance_rank_accuracy, needs_masks=True, at_input=True,
                 reference="Quantus RelevanceRankAccuracy"))  # fmt: skip
register(Measure("top_k_intersection", "Top-k intersection (top 2 % of pixels inside the boxes)", "maps",
                 "localisation", top_k_intersection, needs_masks=True, at_input=True,
                 reference="Quantus TopKIntersection"))  # fmt: skip
register(Measure("auc", "Localisation ROC AUC (map as a pixel classifier of the boxes)", "maps", "localisation",
                 auc, needs_masks=True, at_input=True, reference="Quantus AUC"))  # fmt: skip


# --- Explain To Me probes ------------------------------------------------------------------------------
def _noise(p: Probe) -> torch.Tensor:
    noise = p.once(
        "noise", lambda: noise_response(p.model, p.explain, p.x, p.target, seed=p.seed, similarities=("ssim",))
    )
    p.curves["noise"] = {
        "amounts": noise["amounts"].tolist(),
        "ssim": noise["similarity"]["ssim"].double().mean(0).tolist(),
        "score_change": noise["score_change"].double().mean(0).tolist(),
    }
    return noise["similarity"]["ssim"][:, noise["amounts"].tolist().index(0.1)]


def _transforms(p: Probe) -> torch.Tensor:
    trans = transform_consistency(p.model, p.explain, p.x, p.target, similarities=("ssim",))
    p.curves["transforms"] = dict(
        zip(trans["transforms"], trans["similarity"]["ssim"].double().mean(0).tolist(), strict=True)
    )
    return trans["similarity"]["ssim"].double().mean(1)


def _blur(mode: str) -> Callable[[Probe], torch.Tensor]:
    def fn(p: Probe) -> torch.Tensor:
        blur = p.once("blur", lambda: blur_degradation(p.model, p.explain, p.x, p.target, similarities=("ssim",)))
        p.curves["blur"] = {
            m: {
                "score_change": blur[m]["score_change"].double().mean().item(),
                "agreement": blur[m]["agreement"].double().mean().item(),
                "ssim": blur[m]["similarity"]["ssim"].double().mean().item(),
            }
            for m in ("nonsalient", "salient")
        }
        return blur[mode]["score_change"]

    return fn


def _deletion(kind: str) -> Callable[[Probe], torch.Tensor]:
    def fn(p: Probe) -> torch.Tensor:
        d = p.once("deletion", lambda: deletion_insertion(p.model, p.x, p.target, p.maps, steps=p.deletion_steps))
        p.curves[f"{kind}_curve"] = d[kind].double().mean(0).tolist()
        return d[f"{kind}_auc"]

    return fn


register(Measure("noise_ssim_0.1", "Map SSIM, clean vs 10 % salt-and-pepper", "probe", "explain_to_me", _noise,
                 range=(-1.0, 1.0), reference="scikit-image SSIM", passes=1 + len(NOISE_AMOUNTS)))  # fmt: skip
register(Measure("transform_ssim", "Transformation consistency (mean SSIM over 12 transforms)", "probe",
                 "explain_to_me", _transforms, range=(-1.0, 1.0), reference="closed form (exact transforms)",
                 passes=1 + len(TRANSFORMS)))  # fmt: skip
register(Measure("blur_nonsalient_score_change", "Score change, blurring non-salient regions", "probe",
                 "explain_to_me", _blur("nonsalient"), range=(-1.0, 1.0), better="higher",
                 reference="scipy.ndimage Gaussian blur", passes=_BLUR, shares="blur"))  # fmt: skip
register(Measure("blur_salient_score_change", "Score change, blurring salient regions", "probe", "explain_to_me",
                 _blur("salient"), range=(-1.0, 1.0), better="lower", reference="scipy.ndimage Gaussian blur",
                 passes=_BLUR, shares="blur"))  # fmt: skip
register(Measure("deletion_auc", "Deletion AUC (lower = map finds what matters)", "probe", "faithfulness",
                 _deletion("deletion"), better="lower", reference="closed form (linear model)",
                 passes=_deletion_passes, shares="deletion"))  # fmt: skip
register(Measure("insertion_auc", "Insertion AUC (higher = map finds what matters)", "probe", "faithfulness",
                 _deletion("insertion"), better="higher", reference="closed form (linear model)",
                 passes=_deletion_passes, shares="deletion"))  # fmt: skip


# --- stability across the models of a group ------------------------------------------------------------
def _stability(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda maps: seed_stability(maps, (name,))["mean"][name]


for _sim, _range in (
    ("ssim", (-1.0, 1.0)),
    ("pearson", (-1.0, 1.0)),
    ("spearman", (-1.0, 1.0)),
    ("topk_iou", (0.0, 1.0)),
):
    register(Measure(f"stability_{_sim}", f"Stability across models (mean pairwise {_sim})", "group", "stability",
                     _stability(_sim), range=_range, reference="pairwise similarity, closed form"))  # fmt: skip
