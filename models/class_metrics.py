"""Classifier calibration and mistakes: expected calibration error (ECE) over equal-width
confidence bins, the reliability plot, and a PNG grid of the most confident mistakes.

A prediction's confidence is the softmax probability of its top class; it is correct when that
class is the true one. ECE = sum over bins of (images in the bin / images) x |accuracy in the bin
- mean confidence in the bin|: 0 for a classifier whose 0.8-confident answers are right 80 % of
the time, and so on; an over-confident one scores the gap (all answers at 0.9, 60 % right: 0.3).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ECE_BINS = 15


@dataclass(frozen=True)
class Reliability:
    """Per confidence bin ``(edges[i], edges[i + 1]]`` (the first also takes 0): how many
    predictions fell in it, their mean confidence and their accuracy (0 for an empty bin)."""

    edges: np.ndarray  # (bins + 1,) from 0 to 1
    counts: np.ndarray  # (bins,) int64
    confidence: np.ndarray  # (bins,)
    accuracy: np.ndarray  # (bins,)

    @property
    def ece(self) -> float:
        total = self.counts.sum()
        if total == 0:
            return 0.0
        return float(np.sum(self.counts / total * np.abs(self.accuracy - self.confidence)))

    def to_json(self) -> list[dict[str, Any]]:
        """The non-empty bins: lower, upper, count, confidence, accuracy."""
        return [
            {
                "lower": float(self.edges[i]),
                "upper": float(self.edges[i + 1]),
                "count": int(self.counts[i]),
                "confidence": float(self.confidence[i]),
                "accuracy": float(self.accuracy[i]),
            }
            for i in np.flatnonzero(self.counts)
        ]


def reliability(confidence: np.ndarray, correct: np.ndarray, *, bins: int = ECE_BINS) -> Reliability:
    """Bin predictions (``confidence`` in [0, 1] and ``correct`` booleans, both (N,)) by confidence."""
    confidence, correct = np.asarray(confidence, np.float64), np.asarray(correct, bool)
    if confidence.shape != correct.shape or confidence.ndim != 1:
        raise ValueError(f"confidence and correct must be (N,) alike, got {confidence.shape} and {correct.shape}")
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    safe = np.maximum(counts, 1)
    return Reliability(
        edges=np.linspace(0.0, 1.0, bins + 1),
        counts=counts,
        confidence=np.bincount(index, weights=confidence, minlength=bins) / safe,
        accuracy=np.bincount(index, weights=correct.astype(np.float64), minlength=bins) / safe,
    )


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, *, bins: int = ECE_BINS) -> float:
    """ECE over ``bins`` equal-width confidence bins (see the module docstring)."""
    return reliability(confidence, correct, bins=bins).ece


def plot_reliability(table: Reliability, path: str | os.PathLike, *, title: str = "") -> Path:
    """The reliability diagram as a PNG: accuracy per confidence bin against the diagonal of a
    calibrated classifier, the gap to the bin's mean confidence shaded, each bin's count at its
    foot, the ECE in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lower, width = table.edges[:-1], np.diff(table.edges)
    shown = table.counts > 0
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "--", color="gray", label="calibrated")
    ax.bar(lower[shown], table.accuracy[shown], width=width[shown], align="edge", edgecolor="black", label="accuracy")
    accuracy, confidence = table.accuracy[shown], table.confidence[shown]
    ax.bar(
        lower[shown],
        np.abs(confidence - accuracy),
        bottom=np.minimum(confidence, accuracy),
        width=width[shown],
        align="edge",
        color="red",
        alpha=0.3,
        label="gap to the mean confidence",
    )
    for x, w, count in zip(lower[shown], width[shown], table.counts[shown]):  # images per bin, at its foot
        ax.text(x + w / 2, 0.01, str(count), ha="center", fontsize=7, color="white")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-class probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}  ECE {table.ece:.4f}".strip())
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def worst_mistakes(labels: np.ndarray, predicted: np.ndarray, confidence: np.ndarray, count: int) -> list[int]:
    """Indices of the misclassified predictions, the most confident first, at most ``count``."""
    wrong = np.flatnonzero(np.asarray(labels) != np.asarray(predicted))
    order = np.argsort(-np.asarray(confidence)[wrong], kind="stable")
    return wrong[order][:count].tolist()


def mistakes_sheet(
    read: Callable[[int], np.ndarray],
    labels: Sequence[int],
    predicted: Sequence[int],
    confidence: Sequence[float],
    class_names: Sequence[str],
    path: str | os.PathLike,
    *,
    count: int = 16,
    title: str = "",
) -> tuple[Path, int]:
    """A PNG grid of the ``count`` most confident mistakes, each captioned "true -> predicted (p)";
    ``read(i)`` gives image i (RGB uint8) in the order of the other arguments (only the shown ones
    are read). Returns the path and how many mistakes it shows (with none, the sheet says so)."""
    from models.visualize import caption_sheet

    picked = worst_mistakes(np.asarray(labels), np.asarray(predicted), np.asarray(confidence), count)
    rows = [
        (read(i), f"{class_names[labels[i]]} -> {class_names[predicted[i]]} ({confidence[i]:.2f})", "") for i in picked
    ]
    if not rows:
        rows = [(np.zeros((8, 8, 3), np.uint8), "no misclassified images", "")]
    heading = f"{title}: the {len(picked)} most confident mistakes" if title else "the most confident mistakes"
    return caption_sheet(rows, path, title=heading), len(picked)
