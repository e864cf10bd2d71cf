"""Batch pieces of the three image tasks: detection, segmentation, captioning."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.batch.store import atomic_write
from models.batch.tasks import BATCH_TASKS, BatchTask, device_of, options_from, png, write_csv
from models.captioning import CaptionSettings, caption_batch, image_input
from models.detection import Detection, DetectOptions, predict
from models.preprocessing import decode_image, encode_image
from models.segmentation import LargeImageMode, Segmentation, SegmentOptions, class_areas, segment_batch
from models.text import Vocabulary
from models.visualize import draw_detections, overlay_labels


# --------------------------------------------------------------------------- detection


@dataclass(frozen=True)
class DetectJobOptions:
    score_threshold: float = 0.5
    max_detections: int = 100
    classes: tuple[str, ...] = ()
    annotate: bool = False  # write annotated/<input>.jpg with the boxes drawn


@BATCH_TASKS.register("detection")
class DetectionBatch(BatchTask):
    """Rows ``{"width", "height", "detections": [{"box": [x1, y1, x2, y2] pixels, "score", "label",
    "class"}]}``; results ``detections.jsonl`` and ``detections_coco.json`` (a COCO dataset file:
    images, categories and the detections as annotations with scores, which pycocotools reads
    with ``COCO(path)`` or ``coco_gt.loadRes(json["annotations"])``)."""

    task, results = "detection", "detections"

    def parse_options(self, **options: Any) -> DetectJobOptions:
        opts = options_from(DetectJobOptions, options)
        opts = DetectJobOptions(opts.score_threshold, opts.max_detections, tuple(opts.classes), opts.annotate)
        self.detect_options = DetectOptions(score_threshold=opts.score_threshold,
                                            max_detections=opts.max_detections, class_filter=opts.classes)
        self.detect_options.check_classes(self.config.classes)
        return opts

    def infer(self, model: nn.Module, inputs: Sequence[torch.Tensor]) -> list[list[Detection]]:
        device = device_of(model)
        return predict(model, [x.to(device) for x in inputs], class_names=self.config.classes,
                       options=self.detect_options)

    def record(self, key: str, output: list[Detection], size: tuple[int, int],
               array: np.ndarray | None = None) -> dict[str, Any]:
        row: dict[str, Any] = {"height": size[0], "width": size[1], "detections": [
            {"box": [round(v, 2) for v in d.box], "score": round(d.score, 4), "label": d.label, "class": d.class_name}
            for d in output]}
        if self.options.annotate and array is not None:
            drawn = encode_image(draw_detections(array, output), "jpeg", quality=90)
            row["annotated"] = self.write("annotated", key, ".jpg", drawn)
        return row

    @property
    def needs_pixels(self) -> bool:
        return self.options.annotate

    def finish(self, rows: list[dict[str, Any]]) -> list[Path]:
        return [*super().finish(rows), atomic_write(self.out / "detections_coco.json",
                                                    json.dumps(coco_results(rows, self.config.classes)))]

    def request_options(self) -> dict[str, Any]:
        o = self.options
        return {"score_threshold": o.score_threshold, "max_detections": o.max_detections, "classes": o.classes}


def coco_results(rows: Sequence[dict[str, Any]], class_names: Sequence[str]) -> dict[str, Any]:
    """Detection rows -> a COCO-format dict: ``images`` (id = position in ``rows`` + 1, file_name =
    the input's relative path), ``categories`` (id = label, 1-based as the model's), and
    ``annotations`` with bbox [x, y, w, h], area and score."""
    images, annotations = [], []
    for image_id, row in enumerate(rows, start=1):
        images.append({"id": image_id, "file_name": row["input"], "width": row["width"],
                       "height": row["height"]})
        for d in row["detections"]:
            x1, y1, x2, y2 = d["box"]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": d["label"],
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                                "score": d["score"], "iscrowd": 0})
    categories = [{"id": i, "name": name} for i, name in enumerate(class_names, start=1)]
    return {"images": images, "categories": categories, "annotations": annotations}


# --------------------------------------------------------------------------- segmentation


@dataclass(frozen=True)
class SegmentJobOptions:
    max_side: int = 1024
    large_image_mode: str = "resize"  # or "tile"
    tile_overlap: int | None = None
    overlay: bool = False  # write overlays/<input>.png with the classes blended on
    overlay_alpha: float = 0.5


@BATCH_TASKS.register("segmentation")
class SegmentationBatch(BatchTask):
    """Per input ``masks/<input>.png`` (the label map: pixel value = class id), optionally
    ``overlays/<input>.png``; rows ``{"width", "height", "mask", "processing", "classes":
    {name: {"pixels", "fraction"}}}``; results ``segments.jsonl`` and ``segments.csv`` (one
    column of area fractions per class)."""

    task, results = "segmentation", "segments"

    def parse_options(self, **options: Any) -> SegmentJobOptions:
        opts = options_from(SegmentJobOptions, options)
        if opts.large_image_mode not in {m.value for m in LargeImageMode}:
            raise ValueError(f"large_image_mode must be resize or tile, got {opts.large_image_mode!r}")
        if not 0.0 <= opts.overlay_alpha <= 1.0:
            raise ValueError(f"overlay_alpha must be in [0, 1], got {opts.overlay_alpha}")
        self.segment_options = SegmentOptions(max_side=opts.max_side,
                                              large_image_mode=LargeImageMode(opts.large_image_mode),
                                              tile_overlap=opts.tile_overlap)
        return opts

    def infer(self, model: nn.Module, inputs: Sequence[torch.Tensor]) -> list[Segmentation]:
        device, norm = device_of(model), self.config.normalization
        with torch.inference_mode():
                return segment_batch(model, [x.to(device) for x in inputs], mean=norm["mean"], std=norm["std"],
                                 options=[self.segment_options] * len(inputs))

    def record(self, key: str, output: Segmentation, size: tuple[int, int],
               array: np.ndarray | None = None) -> dict[str, Any]:
        labels = output.labels
        row: dict[str, Any] = {
            "height": int(labels.shape[0]), "width": int(labels.shape[1]), "processing": output.processing,
            "mask": self.write("masks", key, ".png", png(labels)),
            "classes": {name: {"pixels": count, "fraction": round(fraction, 6)}
                        for _, name, count, fraction in class_areas(labels, self.config.classes)},
        }
        if self.options.overlay and array is not None:
            blended = overlay_labels(array, labels, alpha=self.options.overlay_alpha)
            row["overlay"] = self.write("overlays", key, ".png", png(blended))
        return row

    @property
    def needs_pixels(self) -> bool:
        return self.options.overlay

    def finish(self, rows: list[dict[str, Any]]) -> list[Path]:
        names = list(self.config.classes)
        table = [[r["input"], r["width"], r["height"], *(r["classes"][n]["fraction"] for n in names)] for r in rows]
        csv_path = write_csv(self.out / "segments.csv", ["input", "width", "height", *names], table)
        return [*super().finish(rows), csv_path]

    def request_options(self) -> dict[str, Any]:
        o = self.options
        return {"max_side": o.max_side, "large_image_mode": o.large_image_mode, "tile_overlap": o.tile_overlap}


def segmentation_from_png(label_png: bytes, processing: str) -> Segmentation:
    """A served label map (PNG, one channel) back as a Segmentation (remote mode)."""
    return Segmentation(decode_label_png(label_png), processing, "served")


def decode_label_png(data: bytes) -> np.ndarray:
    import cv2

    labels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if labels is None or labels.ndim != 2:
        raise ValueError("the server's label map is not a one-channel PNG")
    return labels


# --------------------------------------------------------------------------- captioning


@dataclass(frozen=True)
class CaptionJobOptions:
    beam_size: int = 3
    max_length: int | None = None  # None: the model's trained caption length
    num_captions: int = 1
    length_penalty: float = 1.0


@BATCH_TASKS.register("captioning")
class CaptioningBatch(BatchTask):
    """Rows ``{"width", "height", "caption", "captions": [{"text", "log_prob", "score"}]}``;
    results ``captions.jsonl`` and ``captions.csv`` (input, caption, score)."""

    task, results = "captioning", "captions"

    def parse_options(self, **options: Any) -> CaptionJobOptions:
        opts = options_from(CaptionJobOptions, options)
        max_length = opts.max_length or int(self.config.extra.get("max_length", 20))
        self.settings = CaptionSettings(beam_size=opts.beam_size, max_length=max_length,
                                        num_captions=opts.num_captions, length_penalty=opts.length_penalty).check()
        self.vocab = Vocabulary(tuple(self.config.extra["vocab"]["words"])) if "vocab" in self.config.extra else None
        return opts

    def prepare(self, data: bytes) -> tuple[np.ndarray, torch.Tensor]:
        array = decode_image(data, max_pixels=self.max_pixels)
        return array, image_input(array, size=self.config.input_size or 224)

    def infer(self, model: nn.Module, inputs: Sequence[torch.Tensor]) -> list[list[dict[str, Any]]]:
        images = torch.stack(list(inputs)).to(device_of(model))
        with torch.inference_mode():
            found = caption_batch(model, images, [self.settings] * len(inputs))
        return [[{"text": self.vocab.decode(c.tokens), "log_prob": round(c.log_prob, 4), "score": round(c.score, 4)}
                 for c in captions] for captions in found]

    def record(self, key: str, output: list[dict[str, Any]], size: tuple[int, int],
               array: np.ndarray | None = None) -> dict[str, Any]:
        return {"height": size[0], "width": size[1], "caption": output[0]["text"] if output else "",
                "captions": output}

    def finish(self, rows: list[dict[str, Any]]) -> list[Path]:
        table = [[r["input"], r["caption"], r["captions"][0]["score"] if r["captions"] else ""] for r in rows]
        return [*super().finish(rows), write_csv(self.out / "captions.csv", ["input", "caption", "score"], table)]

    def request_options(self) -> dict[str, Any]:
        o = self.options
        return {"beam_size": o.beam_size, "max_length": o.max_length, "num_captions": o.num_captions,
                "length_penalty": o.length_penalty}
