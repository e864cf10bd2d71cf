"""Calibration and mistakes of a classifier: ECE on hand-made predictions, the reliability bins,
the evaluation report's per-image predictions, and the PNGs (reliability plot, mistakes grid)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from models.class_metrics import (
    ECE_BINS,
    expected_calibration_error,
    mistakes_sheet,
    plot_reliability,
    reliability,
    worst_mistakes,
)
from models.evaluation import evaluate_classifier


def test_a_perfectly_calibrated_classifier_has_an_ece_of_about_zero():
    # 1000 predictions at the middle of each bin, right exactly that share of the time
    confidence, correct = [], []
    for b in range(ECE_BINS):
        c = (b + 0.5) / ECE_BINS
        hits = round(c * 1000)
        confidence += [c] * 1000
        correct += [True] * hits + [False] * (1000 - hits)
    assert expected_calibration_error(np.array(confidence), np.array(correct)) < 1e-3


def test_an_over_confident_classifier_scores_its_gap():
    # all at 0.9, 60 % right: 0.3
    correct = np.array([True] * 60 + [False] * 40)
    assert expected_calibration_error(np.full(100, 0.9), correct) == pytest.approx(0.3)
    # half at 1.0 and all right (gap 0), half at 0.8 and half right (gap 0.3): 0.5 x 0 + 0.5 x 0.3
    confidence = np.array([1.0] * 50 + [0.8] * 50)
    correct = np.array([True] * 50 + [True, False] * 25)
    assert expected_calibration_error(confidence, correct) == pytest.approx(0.15)
    # an under-confident one too: at 0.5 and always right
    assert expected_calibration_error(np.full(10, 0.5), np.ones(10, bool)) == pytest.approx(0.5)


def test_the_bins_are_equal_width_and_right_closed():
    table = reliability(np.array([0.0, 1 / 15, 1 / 15 + 1e-9, 1.0]), np.array([True, False, True, True]))
    assert len(table.counts) == ECE_BINS and table.edges[1] == pytest.approx(1 / 15)
    assert table.counts[0] == 2 and table.counts[1] == 1 and table.counts[-1] == 1
    assert table.accuracy[0] == 0.5 and table.confidence[0] == pytest.approx(1 / 30)
    assert [b["count"] for b in table.to_json()] == [2, 1, 1]
    with pytest.raises(ValueError, match="alike"):
        reliability(np.zeros(3), np.zeros(2, bool))


class _Points(Dataset):
    class_names = ("a", "b", "c")

    def __len__(self) -> int:
        return 5

    def __getitem__(self, i: int):
        return torch.tensor([float(i)]), torch.tensor([0, 1, 2, 0, 1][i])


class _Logits(torch.nn.Module):
    """Input i -> fixed logits: images 0-2 right, 3 and 4 wrong (image 4 the more confident)."""

    table = torch.tensor([[3.0, 0, 0], [0, 2.0, 0], [0, 0, 1.0], [0, 1.0, 0], [0, 0, 4.0]])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[x[:, 0].long()]


def test_the_report_keeps_each_image_s_prediction_and_its_ece():
    report = evaluate_classifier(_Logits(), _Points(), batch_size=2, progress=False)
    probs = _Logits.table.softmax(1)
    assert report.labels.tolist() == [0, 1, 2, 0, 1] and report.predicted.tolist() == [0, 1, 2, 1, 2]
    assert report.confidence == pytest.approx(probs.max(1).values.numpy())
    expected = expected_calibration_error(probs.max(1).values.numpy(), np.array([1, 1, 1, 0, 0], bool))
    assert report.ece == pytest.approx(expected) and report.to_json()["ece"] == pytest.approx(expected)
    assert worst_mistakes(report.labels, report.predicted, report.confidence, 5) == [4, 3]
    assert worst_mistakes(report.labels, report.predicted, report.confidence, 1) == [4]


def test_the_mistakes_grid_and_the_reliability_plot_are_written_and_decodable(tmp_path):
    report = evaluate_classifier(_Logits(), _Points(), batch_size=5, progress=False)
    read = []

    def image(i: int) -> np.ndarray:
        read.append(i)
        return np.full((32, 32, 3), 40 * i, np.uint8)

    sheet, shown = mistakes_sheet(
        image, report.labels.tolist(), report.predicted.tolist(), report.confidence.tolist(), ("a", "b", "c"),
        tmp_path / "mistakes.png", title="test",
    )  # fmt: skip
    assert shown == 2 and sorted(read) == [3, 4]  # only the mistakes are read
    grid = cv2.imread(str(sheet))
    assert grid is not None and grid.shape[0] > 100 and grid.shape[1] > 200
    none, count = mistakes_sheet(image, [0, 1], [0, 1], [0.9, 0.8], ("a", "b"), tmp_path / "none.png")
    assert count == 0 and cv2.imread(str(none)) is not None
    plot = plot_reliability(report.reliability(), tmp_path / "reliability.png", title="test")
    assert cv2.imread(str(plot)) is not None
