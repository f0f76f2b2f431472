"""Salience measures: pure tensor functions on maps `[B, h, w]` and probes that run a model.

Every function returns one value per image; summaries are in `salience.measures.summary`.
"""

from salience.measures.entropy import entropy
from salience.measures.localisation import epg, iou, pointing_game
from salience.measures.similarity import SIMILARITIES, pearson, similarity, spearman, ssim, topk_iou

__all__ = [
    "SIMILARITIES",
    "entropy",
    "epg",
    "iou",
    "pearson",
    "pointing_game",
    "similarity",
    "spearman",
    "ssim",
    "topk_iou",
]
