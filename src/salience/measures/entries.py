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

# --- Q1 start
# Faithfulness by removing features in the map's order, after Quantus 0.6 (probes). Their cost depends on the image
# size, which `Costing` does not know: `passes` is given at 224 x 224 RGB (a forward per step, ½ each, and one of
# the clean image where the curve needs it); all are opt-in.
from salience.measures.flipping import (  # noqa: E402
    irof,
    pixel_flipping,
    region_perturbation,
    selectivity,
    sensitivity_n,
)

_AT_224 = 224 * 224


def _curve(p: Probe, name: str, steps: list, per_image: torch.Tensor, **extra: object) -> None:
    p.curves[name] = {"steps": steps, "per_image": per_image.double().tolist(), **extra}


def _pixel_flipping(p: Probe, *, features_in_step: int = 1, softmax: bool = True, batch_size: int = 64) -> torch.Tensor:
    r = pixel_flipping(p.model, p.x, p.target, p.maps, features_in_step, softmax, batch_size)
    _curve(p, "pixel_flipping", r["steps"], r["curve"])
    return r["auc"]


def _region_perturbation(p: Probe, *, patch_size: int = 8, order: str = "morf", regions_evaluation: int = 100,
                         softmax: bool = True, batch_size: int = 64) -> torch.Tensor:  # fmt: skip
    r = region_perturbation(p.model, p.x, p.target, p.maps, patch_size, order, regions_evaluation, softmax, p.seed,
                            batch_size)  # fmt: skip
    _curve(p, "region_perturbation", list(range(1, r["curve"].shape[1] + 1)), r["curve"])
    return r["auc"]


def _irof(p: Probe, *, segments: str = "quantus", softmax: bool = True, batch_size: int = 64) -> torch.Tensor:
    r = irof(p.model, p.x, p.target, p.maps, segments, softmax, batch_size)
    per_image = [c[:n] for c, n in zip(r["curve"].double().tolist(), r["counts"].tolist(), strict=True)]
    p.curves["irof"] = {"steps": list(range(1, r["curve"].shape[1] + 1)), "per_image": per_image}
    return r["aoc"]


def _selectivity(p: Probe, *, patch_size: int = 8, softmax: bool = True, batch_size: int = 64) -> torch.Tensor:
    r = selectivity(p.model, p.x, p.target, p.maps, patch_size, softmax, batch_size)
    _curve(p, "selectivity", list(range(1, r["curve"].shape[1] + 1)), r["curve"])
    return r["auc"]


def _sensitivity_n(p: Probe, *, n_max_percentage: float = 0.8, features_in_step: int = 1, softmax: bool = True,
                   batch_size: int = 64) -> torch.Tensor:  # fmt: skip
    r = sensitivity_n(p.model, p.x, p.target, p.maps, n_max_percentage, features_in_step, softmax, batch_size)
    _curve(p, "sensitivity_n", r["steps"], r["pred_deltas"], att_sums=r["att_sums"].double().tolist(),
           correlation=r["correlation"].double().tolist())  # fmt: skip
    return r["score"]


register(Measure("pixel_flipping", "Pixel flipping (area under the target's probability as input values are set to "
                 "the minimum, most relevant first, one at a time; lower = faithful; 150,528 forwards at 224 px)",
                 "probe", "faithfulness", _pixel_flipping, range=(0.0, None), better="lower",
                 reference="Quantus PixelFlipping", passes=3 * _AT_224 / 2))  # fmt: skip
register(Measure("region_perturbation", "Region perturbation (area under the probability drop as 8 x 8 patches are "
                 "set to the minimum, most relevant first, 100 patches; higher = faithful)", "probe", "faithfulness",
                 _region_perturbation, range=(None, None), better="higher", reference="Quantus RegionPerturbation",
                 passes=(1 + 100) / 2))  # fmt: skip
register(Measure("irof", "IROF (area over the relative probability as SLIC superpixels are set to the mean, most "
                 "relevant first; higher = faithful)", "probe", "faithfulness", _irof, range=(None, None),
                 better="higher", reference="Quantus IROF", passes=(1 + 100) / 2))  # fmt: skip
register(Measure("selectivity", "Selectivity (area under the probability as every 8 x 8 patch is set to the "
                 "minimum, most relevant first; lower = faithful)", "probe", "faithfulness", _selectivity,
                 range=(0.0, None), better="lower", reference="Quantus Selectivity",
                 passes=_AT_224 / 64 / 2))  # fmt: skip
register(Measure("sensitivity_n", "Sensitivity-n (correlation of the map's sum over the removed input values with "
                 "the probability drop, over 80 % of the pixels' steps; higher = faithful)", "probe",
                 "faithfulness", _sensitivity_n, range=(-1.0, 1.0), better="higher",
                 reference="Quantus SensitivityN (per step, across images)",
                 passes=(1 + int(0.8 * _AT_224)) / 2))  # fmt: skip
# --- Q1 end

# --- Q2 start
# Monotonicity, faithfulness estimate, infidelity, sufficiency (faithfulness) and the axiomatic measures of Quantus
# 0.6 (probes; their functions and options in `salience.measures.monotonicity` and `.axiomatic`). Costs that grow
# with the image size (a forward per input value or patch, ½ each, plus the clean image) are given at 224 x 224 RGB.
from salience.measures import axiomatic as _ax  # noqa: E402
from salience.measures import monotonicity as _mo  # noqa: E402

_VALUES_224 = 3 * 224 * 224

register(Measure("monotonicity", "Monotonicity, Arya (the target's probability never falls as input values are put "
                 "back into a black image, least relevant first; 150,528 forwards at 224 px)", "probe",
                 "faithfulness", _mo._monotonicity, better="higher", reference="Quantus Monotonicity (paper's "
                 "insertion; Quantus 0.6 code with insert='baseline')", passes=_VALUES_224 / 2))  # fmt: skip
register(Measure("monotonicity_correlation", "Monotonicity correlation, Nguyen (Spearman of |A| per input value with "
                 "the probability's variance when it is set to uniform noise)", "probe", "faithfulness",
                 _mo._monotonicity_correlation, range=(-1.0, 1.0), better="higher",
                 reference="Quantus MonotonicityCorrelation",
                 passes=lambda c: (_VALUES_224 * (c.samples or 100) + 1) / 2))  # fmt: skip
register(Measure("faithfulness_estimate", "Faithfulness estimate (Pearson of A per input value with the logit drop "
                 "when it alone is set to the minimum)", "probe", "faithfulness", _mo._faithfulness_estimate,
                 range=(-1.0, 1.0), better="higher", reference="Quantus FaithfulnessEstimate",
                 passes=(_VALUES_224 + 1) / 2))  # fmt: skip
register(Measure("infidelity", "Infidelity (mean squared gap between I.A and the logit drop, 4 x 4 patches set to "
                 "the minimum one after another; lower = faithful)", "probe", "faithfulness", _mo._infidelity,
                 range=(0.0, None), better="lower", reference="Quantus Infidelity; Captum infidelity",
                 passes=(224 * 224 // 16 + 1) / 2))  # fmt: skip
register(Measure("sufficiency", "Sufficiency (share of the batch's images with a close map that get the same "
                 "prediction; depends on the batch)", "probe", "faithfulness", _mo._sufficiency, better="higher",
                 reference="Quantus Sufficiency", passes=0.5))  # fmt: skip
register(Measure("completeness", "Completeness (the map's sum equals the logit drop to a black image; Quantus "
                 "divides the map by its max first)", "probe", "axiomatic", _ax._completeness, better="higher",
                 reference="Quantus Completeness", passes=1.0))  # fmt: skip
register(Measure("non_sensitivity", "Non-sensitivity (input values whose removal leaves the probability unchanged "
                 "but that carry salience, or the reverse; lower is better)", "probe", "axiomatic",
                 _ax._non_sensitivity, range=(0.0, None), better="lower", reference="Quantus NonSensitivity",
                 passes=(_VALUES_224 + 1) / 2))  # fmt: skip
register(Measure("input_invariance", "Input invariance (maps unchanged for a model made invariant to a shift of the "
                 "input by -1)", "probe", "axiomatic", _ax._input_invariance, better="higher", needs_method=True,
                 reference="Quantus InputInvariance", passes=1.0))  # fmt: skip
# --- Q2 end

# --- Q3 start
# Robustness after Quantus 0.6 and Captum 0.9 (probes), effective complexity (maps). `epg`'s options (`weighted`,
# `max_size`, Quantus AttributionLocalisation) are keyword arguments of `epg` itself.
from salience.measures.complexity import effective_complexity  # noqa: E402
from salience.measures.stability import consistency, continuity, relative_stability, sensitivity_max  # noqa: E402


def _relative_passes(c: Costing) -> float:
    """An explanation and a forward per noisy sample, a forward of the clean images."""
    return 1.5 * (c.samples or 200) + 0.5


def _continuity(p: Probe, *, nr_steps: int = 28, batch_size: int = 64) -> torch.Tensor:
    return continuity(p.explain, p.x, p.target, p.maps, nr_steps=nr_steps, batch_size=batch_size)


def _consistency(p: Probe, *, n: int = 5, batch_size: int = 64) -> torch.Tensor:
    return consistency(p.model, p.x, p.maps, n=n, batch_size=batch_size)


def _relative(p: Probe, layer: str | list[str] | None, options: dict) -> dict[str, torch.Tensor]:
    """The three relative stabilities of one set of noisy samples, shared by the entries with the same options."""
    samples = p.samples or 200
    key = f"relative_stability {samples} {layer} {sorted(options.items())}"
    return p.once(
        key,
        lambda: relative_stability(p.model, p.explain, p.x, p.target, p.maps, samples, layer=layer, seed=p.seed,
                                   **options),
    )  # fmt: skip


def _relative_stability(kind: str) -> Callable[..., torch.Tensor]:
    def fn(p: Probe, *, lower_bound: float = 0.02, upper_bound: float = 0.2, eps_min: float = 1e-6,
           return_nan_when_prediction_changes: bool = True, batch_size: int = 64) -> torch.Tensor:  # fmt: skip
        options = dict(lower_bound=lower_bound, upper_bound=upper_bound, eps_min=eps_min, batch_size=batch_size,
                       return_nan_when_prediction_changes=return_nan_when_prediction_changes)  # fmt: skip
        return _relative(p, None, options)[kind]

    return fn


def _relative_representation_stability(p: Probe, *, layer: str | list[str] = "final", lower_bound: float = 0.02,
                                       upper_bound: float = 0.2, eps_min: float = 1e-6,
                                       return_nan_when_prediction_changes: bool = True,
                                       batch_size: int = 64) -> torch.Tensor:  # fmt: skip
    options = dict(lower_bound=lower_bound, upper_bound=upper_bound, eps_min=eps_min, batch_size=batch_size,
                   return_nan_when_prediction_changes=return_nan_when_prediction_changes)  # fmt: skip
    return _relative(p, layer, options)["representation"]


def _sensitivity_max(p: Probe, *, n_perturb_samples: int = 10, perturb_radius: float = 0.02,
                     batch_size: int = 64) -> torch.Tensor:  # fmt: skip
    return sensitivity_max(p.explain, p.x, p.target, p.maps, n_perturb_samples, perturb_radius, seed=p.seed,
                           batch_size=batch_size)  # fmt: skip


def _effective_complexity(maps: torch.Tensor, masks: torch.Tensor | None = None, *, eps: float = 1e-5) -> torch.Tensor:
    return effective_complexity(maps, eps=eps)


register(Measure("continuity", "Continuity (largest L1 map change / input change over 28 horizontal shifts)",
                 "probe", "robustness", _continuity, range=(0.0, None), better="lower",
                 reference="Quantus Continuity", passes=28))  # fmt: skip
register(Measure("consistency", "Consistency (share of images with the same discretised map and the same "
                 "prediction)", "probe", "robustness", _consistency, reference="Quantus Consistency",
                 passes=0.5))  # fmt: skip
register(Measure("relative_input_stability", "Relative input stability (relative map change / relative input "
                 "change, max over noise)", "probe", "robustness", _relative_stability("input"), range=(0.0, None),
                 better="lower", reference="Quantus RelativeInputStability", passes=_relative_passes,
                 shares="relative_stability"))  # fmt: skip
register(Measure("relative_output_stability", "Relative output stability (relative map change / logit change, max "
                 "over noise)", "probe", "robustness", _relative_stability("output"), range=(0.0, None),
                 better="lower", reference="Quantus RelativeOutputStability", passes=_relative_passes,
                 shares="relative_stability"))  # fmt: skip
register(Measure("relative_representation_stability", "Relative representation stability (relative map change / "
                 "relative change of the final layer, max over noise)", "probe", "robustness",
                 _relative_representation_stability, range=(0.0, None), better="lower",
                 reference="Quantus RelativeRepresentationStability", passes=_relative_passes))  # fmt: skip
register(Measure("sensitivity_max", "Sensitivity max, Captum (relative map change under ±0.02 noise)", "probe",
                 "robustness", _sensitivity_max, range=(0.0, None), better="lower",
                 reference="Captum sensitivity_max", passes=10))  # fmt: skip
register(Measure("effective_complexity", "Effective complexity (pixels with |A| / max |A| > 1e-5; lower = "
                 "simpler)", "maps", "complexity", _effective_complexity, range=(0.0, None), better="lower",
                 at_input=True, reference="Quantus EffectiveComplexity"))  # fmt: skip
# --- Q3 end

# --- Q4 start
from salience.measures.focus import focus_probe  # noqa: E402
from salience.measures.sanity import efficient_mprt, smooth_mprt  # noqa: E402


def _needs_method(p: Probe, name: str) -> str:
    if p.method is None:
        raise ValueError(f"{name} needs the probe's method (Probe.method) to explain the randomised models")
    return p.method


def _smooth_mprt(p: Probe, *, nr_samples: int | None = None, noise_magnitude: float = 0.1,
                 layer_order: str = "bottom_up", max_steps: int | None = 16, batch_size: int = 64) -> torch.Tensor:  # fmt: skip
    method, samples = _needs_method(p, "smooth_mprt"), nr_samples or p.samples or 50
    r = smooth_mprt(p.model, p.x, p.target, method, p.layer, seed=p.seed, samples=samples, magnitude=noise_magnitude,
                    order=layer_order, max_steps=max_steps, options=p.options, batch_size=batch_size)  # fmt: skip
    p.curves["smooth_mprt"] = {"layers": r["layers"], "similarity": r["similarity"].double().mean(0).tolist()}
    return r["summary"]


def _efficient_mprt(p: Probe, *, layer_order: str = "bottom_up", n_bins: int = 100) -> torch.Tensor:
    method = _needs_method(p, "efficient_mprt")
    r = efficient_mprt(p.model, p.x, p.target, method, p.layer, seed=p.seed, order=layer_order, bins=n_bins,
                       maps=p.maps, options=p.options)  # fmt: skip
    p.curves["efficient_mprt"] = {k: r[k].tolist() for k in ("entropy_original", "entropy_randomised")}
    return r["score"]


register(Measure("focus", "Focus (share of positive salience on the two target-class images of 2x2 mosaics)",
                 "probe", "localisation", focus_probe, needs_masks=True, reference="Quantus Focus",
                 passes=4, on_mosaics=True))  # fmt: skip
register(Measure("smooth_mprt", "SmoothMPRT: Spearman of |denoised maps| with those of the bottom-up randomised "
                 "model (mean over layers)", "probe", "sanity", _smooth_mprt, range=(-1.0, 1.0), better="lower",
                 needs_method=True, reference="Quantus SmoothMPRT",
                 passes=lambda c: (c.samples or 50) * 17))  # fmt: skip
register(Measure("efficient_mprt", "EfficientMPRT: relative rise of the maps' histogram entropy once the model is "
                 "fully randomised", "probe", "sanity", _efficient_mprt, range=(-1.0, None), better="higher",
                 needs_method=True, reference="Quantus EfficientMPRT", passes=1))  # fmt: skip
# --- Q4 end
