"""Detection datasets: COCO JSON + image folder, and converters from Pascal VOC XML and YOLO txt.

Targets follow torchvision: ``boxes`` FloatTensor[N, 4] (x1, y1, x2, y2) pixels, ``labels``
Int64Tensor[N] in 1..K (0 is background), ``image_id`` int (the COCO image id).
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from models.errors import DatasetError
from models.preprocessing import convert_boxes, probe_image_size, read_image, to_tensor

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def _check_box(ann: dict[str, Any], image: dict[str, Any]) -> None:
    """Reject degenerate or out-of-image boxes, naming the annotation and the image file."""
    where = f"annotation id {ann.get('id')} (image {image.get('file_name')!r})"
    bbox = ann.get("bbox")
    if not isinstance(bbox, Sequence) or len(bbox) != 4:
        raise DatasetError(f"{where}: bbox must be [x, y, width, height], got {bbox!r}")
    x, y, w, h = bbox
    if not all(math.isfinite(float(v)) for v in bbox):
        raise DatasetError(f"{where}: bbox has a non-finite value: {bbox}")
    if w <= 0 or h <= 0:
        raise DatasetError(f"{where}: degenerate bbox {bbox} (width and height must be > 0); fix or drop it")
    width, height = image.get("width"), image.get("height")
    slack = 1.0  # tolerate rounding at the border
    if width and height and (x < -slack or y < -slack or x + w > width + slack or y + h > height + slack):
        raise DatasetError(f"{where}: bbox {bbox} lies outside the {width}x{height} image")


class CocoDetectionDataset(Dataset):
    """COCO detection JSON + image folder -> (image (3, H, W) float [0, 1], target dict).

    ``transform`` is an albumentations transform from models.preprocessing
    (detection_train_transform) called as ``t(image=, bboxes=, labels=)`` with pascal_voc boxes.
    Category ids are mapped to contiguous labels 1..K in category-id order.
    """

    def __init__(self, images_dir: str | Path, annotations: str | Path, *, transform: Callable | None = None) -> None:
        self.images_dir = Path(images_dir)
        if not self.images_dir.is_dir():
            raise FileNotFoundError(f"image folder {self.images_dir} does not exist")
        data = json.loads(Path(annotations).read_text())
        categories = sorted(data.get("categories", []), key=lambda c: c["id"])
        if not categories:
            raise DatasetError(f"{annotations}: no categories")
        self.class_names: tuple[str, ...] = tuple(c["name"] for c in categories)
        self.label_to_category: dict[int, int] = {i + 1: c["id"] for i, c in enumerate(categories)}
        category_to_label = {c: label for label, c in self.label_to_category.items()}
        self.images: list[dict[str, Any]] = sorted(data["images"], key=lambda im: im["id"])
        by_id = {im["id"]: im for im in self.images}
        self._boxes: dict[int, list[tuple[list[float], int]]] = {im["id"]: [] for im in self.images}
        for ann in data.get("annotations", []):
            image = by_id.get(ann.get("image_id"))
            if image is None:
                raise DatasetError(f"annotation id {ann.get('id')}: image_id {ann.get('image_id')} is not in images")
            if ann.get("category_id") not in category_to_label:
                raise DatasetError(f"annotation id {ann.get('id')}: unknown category_id {ann.get('category_id')}")
            _check_box(ann, image)
            if ann.get("iscrowd", 0):
                continue
            x, y, w, h = (float(v) for v in ann["bbox"])
            self._boxes[image["id"]].append(([x, y, x + w, y + h], category_to_label[ann["category_id"]]))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        info = self.images[index]
        image = read_image(self.images_dir / info["file_name"])
        height, width = image.shape[:2]
        pairs = self._boxes[info["id"]]
        boxes = np.array([b for b, _ in pairs], dtype=np.float32).reshape(-1, 4)
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
        labels = np.array([lab for _, lab in pairs], dtype=np.int64)
        if self.transform is not None:
            out = self.transform(image=image, bboxes=boxes, labels=labels)
            image = out["image"]
            boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
            labels = np.asarray(out["labels"], dtype=np.int64).reshape(-1)
        target = {
            "boxes": torch.as_tensor(boxes, dtype=torch.float32),
            "labels": torch.as_tensor(labels, dtype=torch.int64),
            "image_id": int(info["id"]),
        }
        return to_tensor(np.ascontiguousarray(image)), target


def collate_detection(batch: Sequence[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    """Detection batches stay lists: images differ in size and box counts."""
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)


# --------------------------------------------------------------------------- converters


def _coco(images: list, annotations: list, classes: Sequence[str]) -> dict[str, Any]:
    return {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n, "supercategory": ""} for i, n in enumerate(classes)],
    }


def _image_size(path: Path) -> tuple[int, int]:
    size = probe_image_size(path.read_bytes())
    if size is None:
        height, width = read_image(path).shape[:2]
        return width, height
    return size


def voc_to_coco(
    xml_dir: str | Path, images_dir: str | Path, out_file: str | Path, *, classes: Sequence[str] | None = None
) -> dict[str, Any]:
    """Pascal VOC XML files (one per image) -> COCO JSON written to ``out_file``.

    VOC boxes are 1-based inclusive pixels; COCO's are 0-based [x, y, w, h].
    ``classes`` fixes the category order; by default, names sorted as found.
    """
    parsed = []
    for xml_path in sorted(Path(xml_dir).glob("*.xml")):
        root = ET.parse(xml_path).getroot()
        file_name = root.findtext("filename") or f"{xml_path.stem}.jpg"
        objects = []
        for obj in root.iter("object"):
            bb = obj.find("bndbox")
            if bb is None:
                raise DatasetError(f"{xml_path}: object {obj.findtext('name')!r} has no bndbox")
            coords = [float(bb.findtext(k, "nan")) for k in ("xmin", "ymin", "xmax", "ymax")]
            objects.append((obj.findtext("name", "").strip(), coords, int(obj.findtext("difficult", "0") or 0)))
        size = root.find("size")
        wh = (int(size.findtext("width", "0")), int(size.findtext("height", "0"))) if size is not None else (0, 0)
        if not all(wh):
            wh = _image_size(Path(images_dir) / file_name)
        parsed.append((file_name, wh, objects))
    names = list(classes) if classes else sorted({name for _, _, objs in parsed for name, _, _ in objs})
    images, annotations = [], []
    for image_id, (file_name, (w, h), objects) in enumerate(parsed, 1):
        images.append({"id": image_id, "file_name": file_name, "width": w, "height": h})
        for name, (x1, y1, x2, y2), difficult in objects:
            if name not in names:
                raise DatasetError(f"{file_name}: class {name!r} is not in the given classes {names}")
            bbox = [x1 - 1, y1 - 1, x2 - x1 + 1, y2 - y1 + 1]
            ann = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": names.index(name) + 1,
                "bbox": bbox,
                "area": bbox[2] * bbox[3],
                "iscrowd": difficult,
            }
            _check_box(ann, images[-1])
            annotations.append(ann)
    coco = _coco(images, annotations, names)
    Path(out_file).write_text(json.dumps(coco))
    return coco


def yolo_to_coco(
    labels_dir: str | Path, images_dir: str | Path, classes_file: str | Path, out_file: str | Path
) -> dict[str, Any]:
    """YOLO txt labels (``class cx cy w h`` normalised, one file per image) -> COCO JSON."""
    names = [line.strip() for line in Path(classes_file).read_text().splitlines() if line.strip()]
    images, annotations = [], []
    paths = sorted(p for p in Path(images_dir).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    for image_id, path in enumerate(paths, 1):
        width, height = _image_size(path)
        images.append({"id": image_id, "file_name": path.name, "width": width, "height": height})
        label_file = Path(labels_dir) / f"{path.stem}.txt"
        lines = label_file.read_text().splitlines() if label_file.is_file() else []
        for line_no, line in enumerate(lines, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 5 or not parts[0].isdigit() or int(parts[0]) >= len(names):
                raise DatasetError(f"{label_file}:{line_no}: expected 'class cx cy w h' with class < {len(names)}")
            xywh = convert_boxes(
                np.array([[float(v) for v in parts[1:]]]), src="yolo", dst="coco", width=width, height=height
            )[0]
            ann = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": int(parts[0]) + 1,
                "bbox": [round(float(v), 3) for v in xywh],
                "area": float(xywh[2] * xywh[3]),
                "iscrowd": 0,
            }
            _check_box(ann, images[-1])
            annotations.append(ann)
    coco = _coco(images, annotations, names)
    Path(out_file).write_text(json.dumps(coco))
    return coco
