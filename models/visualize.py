"""Drawing results on images for people to look at (OpenCV, RGB uint8 in and out; caption sheets via matplotlib)."""

from __future__ import annotations

import colorsys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:  # models.detection draws with this module
    from models.detection import Detection


def class_color(label: int) -> tuple[int, int, int]:
    """A stable, well-separated RGB colour for a class label (golden-ratio hue steps)."""
    hue = (label * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(image: np.ndarray, detections: Sequence[Detection], *, thickness: int | None = None) -> np.ndarray:
    """A copy of ``image`` (RGB uint8 HxWx3) with each box and "class score" drawn on it."""
    out = np.ascontiguousarray(image.copy())
    height, width = out.shape[:2]
    thick = thickness or max(1, round(max(height, width) / 300))
    scale = max(0.35, max(height, width) / 900)
    for det in detections:
        color = class_color(det.label)
        x1, y1, x2, y2 = (int(round(v)) for v in det.box)
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thick)
        text = f"{det.class_name} {det.score:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        ty = y1 - 2 if y1 - th - base - 2 >= 0 else min(height - 1, y2 + th + 2)
        cv2.rectangle(out, (x1, ty - th - base), (x1 + tw + 2, ty + 1), color, -1)
        cv2.putText(out, text, (x1 + 1, ty - base + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def draw_text_band(image: np.ndarray, lines: Sequence[str]) -> np.ndarray:
    """``image`` (RGB uint8 HxWx3) above a white band holding ``lines`` (wrapped to its width):
    a caption or a list of labels shown with the picture they describe."""
    height, width = image.shape[:2]
    scale = max(0.35, min(0.8, width / 700))
    (char_w, line_h), base = cv2.getTextSize("M", cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    per_line = max(8, int((width - 8) / (char_w * 0.75)))  # "M" is the widest letter
    wrapped = [part for line in lines for part in (textwrap.wrap(line, per_line) or [""])]
    step = line_h + base + 6
    band = np.full((step * len(wrapped) + 6, width, 3), 255, np.uint8)
    for i, text in enumerate(wrapped):
        y = 4 + line_h + i * step
        cv2.putText(band, text, (4, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([np.ascontiguousarray(image[..., :3]), band], axis=0)


def overlay_labels(
    image: np.ndarray, labels: np.ndarray, *, alpha: float = 0.5, skip_background: bool = True
) -> np.ndarray:
    """``image`` (RGB uint8 HxWx3) with each class of ``labels`` (H, W) blended on in its class colour."""
    out = image.astype(np.float32)
    for class_id in np.unique(labels):
        if skip_background and class_id == 0:
            continue
        where = labels == class_id
        out[where] = (1 - alpha) * out[where] + alpha * np.array(class_color(int(class_id)), np.float32)
    return out.round().clip(0, 255).astype(np.uint8)


def caption_sheet(
    rows: Sequence[tuple[np.ndarray, str, str]], path: str | Path, *, columns: int = 4, title: str = ""
) -> Path:
    """A PNG grid of images, each with its predicted caption (bold) and a reference below it.

    rows: (RGB uint8 image, predicted caption, reference caption or "").
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = max(1, len(rows))
    cols = min(columns, count)
    lines = (count + cols - 1) // cols
    fig, axes = plt.subplots(lines, cols, figsize=(3.2 * cols, 4.3 * lines), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (image, predicted, reference) in zip(axes.flat, rows):
        ax.imshow(image)
        wrap = lambda text: "\n".join(textwrap.wrap(text, 34))  # noqa: E731
        ax.set_title(wrap(predicted), fontsize=8, fontweight="bold")
        if reference:
            ax.text(
                0.5,
                -0.04,
                wrap(f"ref: {reference}"),
                transform=ax.transAxes,
                ha="center",
                va="top",
                fontsize=7,
                color="dimgray",
            )
    if title:
        fig.suptitle(title, y=1 - 0.15 / (4.3 * lines))
    height = 4.3 * lines  # inches: room above each image for its caption, below for its reference
    fig.subplots_adjust(left=0.02, right=0.98, top=1 - 1.0 / height, bottom=0.55 / height, hspace=0.5, wspace=0.08)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
