"""mAP for multi-label tasks (VOC, COCO): macro AP over classes with a positive, as scikit-learn's;
it enters `evaluate`'s metrics and, next to F1, the Pareto front of training."""

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from salience.training.evaluate import mean_average_precision, metrics, task_metric_names
from salience.training.pareto import ParetoFront


def test_map_equals_scikit_learns_macro_average_precision():
    g = torch.Generator().manual_seed(0)
    labels = (torch.rand(40, 5, generator=g) > 0.7).float()
    labels[:, 4] = 0  # no positive: no AP, left out of the mean
    scores = torch.randn(40, 5, generator=g).round(decimals=1)  # ties within a class
    scores[:, 1] = labels[:, 1] * 0.5 + scores[:, 1]  # one easier class
    expected = np.mean([average_precision_score(labels[:, c].numpy(), scores[:, c].numpy()) for c in range(4)])
    assert mean_average_precision(scores, labels) == pytest.approx(expected, abs=1e-6)
    assert mean_average_precision(scores, torch.zeros(40, 5)) is None


def test_multi_label_metrics_and_pareto_objectives_include_map(tmp_path):
    logits = torch.tensor([[2.0, -1.0], [-1.0, 1.0], [0.5, 0.2], [-2.0, -0.5]])
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    out = metrics(logits, labels, torch.full((4,), -1), torch.zeros(0), torch.zeros(0), True)
    # class 0: scores 2, -1, .5, -2 with positives 2, -2 -> AP (1 + 2/4) / 2; class 1: .2 and 1 top-2 -> AP 1
    assert out["map"] == pytest.approx(((1 + 2 / 4) / 2 + 1) / 2)
    names = (*task_metric_names(True), "epg", "iou")
    assert names == ("f1", "map", "epg", "iou")
    front = ParetoFront(tmp_path, names)
    ckpt = tmp_path / "last.pt"
    for epoch, objectives in enumerate([(0.6, 0.5, 0.5, 0.5), (0.6, 0.7, 0.5, 0.5)], 1):
        ckpt.write_text(str(epoch))
        front.commit(epoch, front.consider(epoch, objectives), ckpt)
    assert [e["epoch"] for e in front.entries] == [2]  # better in mAP alone
    assert json.loads((tmp_path / "pareto.json").read_text())["objectives"] == list(names)
