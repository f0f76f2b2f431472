"""Salience measures: pure tensor functions on maps `[B, h, w]` and probes that run a model.

Every function returns one value per image; summaries are in `salience.measures.summary`.
`evaluate(model, images, target, ...)` runs every single-model measure in one call.
"""

from salience.measures.entropy import entropy
from salience.measures.localisation import epg, iou, pointing_game
from salience.measures.similarity import SIMILARITIES, pearson, similarity, spearman, ssim, topk_iou
from salience.measures.suite import evaluate

__all__ = [
    "SIMILARITIES",
    "entropy",
    "epg",
    "evaluate",
    "iou",
    "pearson",
    "pointing_game",
    "similarity",
    "spearman",
    "ssim",
    "topk_iou",
]
