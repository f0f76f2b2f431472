"""Salience measures: pure tensor functions on maps `[B, h, w]` and probes that run a model.

Every measure is one entry of the registry `MEASURES` (name -> `Measure`: label, kind, family, range, better
direction, per-image function); `evaluate(model, images, target, ..., measures=None | [names])` runs them.
Every function returns one value per image; summaries are in `salience.measures.summary`.
"""

from salience.measures.complexity import complexity, sparseness
from salience.measures.entropy import entropy
from salience.measures.localisation import epg, iou, pointing_game
from salience.measures.registry import MEASURES, Measure, Probe, get_measure, select
from salience.measures.relevance import auc, relevance_mass_accuracy, relevance_rank_accuracy, top_k_intersection
from salience.measures.similarity import SIMILARITIES, pearson, similarity, spearman, ssim, topk_iou
from salience.measures.suite import evaluate

__all__ = [
    "MEASURES",
    "SIMILARITIES",
    "Measure",
    "Probe",
    "auc",
    "complexity",
    "entropy",
    "epg",
    "evaluate",
    "get_measure",
    "iou",
    "pearson",
    "pointing_game",
    "relevance_mass_accuracy",
    "relevance_rank_accuracy",
    "select",
    "similarity",
    "sparseness",
    "spearman",
    "ssim",
    "top_k_intersection",
    "topk_iou",
]
