"""Bounding-box formats: conversion between pascal_voc, coco and yolo, and clipping.

Boxes are float arrays of shape (N, 4):

- "pascal_voc": (x1, y1, x2, y2) in pixels (torchvision's format);
- "coco": (x, y, width, height) in pixels, (x, y) the top-left corner;
- "yolo": (cx, cy, width, height) normalised to [0, 1] by the image width / height.

Re-exported by models.preprocessing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BOX_FORMATS = ("pascal_voc", "coco", "yolo")


def _as_boxes(boxes: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    array = np.asarray(boxes, dtype=np.float64)
    if array.size == 0:
        return array.reshape(0, 4)
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4), got {array.shape}")
    return array


def convert_boxes(boxes: np.ndarray, *, src: str, dst: str, width: float, height: float) -> np.ndarray:
    """Convert float (N, 4) boxes between formats; returns a new float64 (N, 4) array.

    Formats: "pascal_voc" (x1, y1, x2, y2 pixels), "coco" (x, y, w, h pixels),
    "yolo" (cx, cy, w, h normalised to [0, 1] by the image ``width`` / ``height`` in pixels).
    """
    for fmt in (src, dst):
        if fmt not in BOX_FORMATS:
            raise ValueError(f"unknown box format {fmt!r}; choose one of {', '.join(BOX_FORMATS)}")
    if width <= 0 or height <= 0:
        raise ValueError(f"image width and height must be positive, got {width}x{height}")
    size = np.array([width, height, width, height], dtype=np.float64)
    b = _as_boxes(boxes).copy()
    if src == "yolo":  # normalised centre -> pixel top-left corner
        b *= size
        b[:, :2] -= b[:, 2:] / 2
    if src != "pascal_voc":  # (x, y, w, h) -> (x1, y1, x2, y2)
        b[:, 2:] += b[:, :2]
    if dst != "pascal_voc":  # (x1, y1, x2, y2) -> (x, y, w, h)
        b[:, 2:] -= b[:, :2]
    if dst == "yolo":  # pixel top-left corner -> normalised centre
        b[:, :2] += b[:, 2:] / 2
        b /= size
    return b


def clip_boxes(boxes_xyxy: np.ndarray, *, width: float, height: float) -> np.ndarray:
    """Clip pascal_voc (x1, y1, x2, y2) pixel boxes (N, 4) to the image; returns a new float64 array."""
    b = _as_boxes(boxes_xyxy).copy()
    b[:, 0::2] = b[:, 0::2].clip(0, width)
    b[:, 1::2] = b[:, 1::2].clip(0, height)
    return b
