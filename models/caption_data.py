"""Caption datasets: image file name -> its reference captions, from three formats.

- COCO captions JSON: ``images`` (id, file_name) + ``annotations`` (image_id, caption), several
  captions per image (what `cvtasks data synth` writes to captions/<split>.json);
- JSON Lines: one object per line, ``{"image": "a.jpg", "caption": "..."}`` or ``"captions": [...]``;
- CSV with a header holding ``image`` and ``caption`` columns (one row per caption).
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

from models.errors import DatasetError


def _coco(path: Path) -> dict[str, list[str]]:
    data = json.loads(path.read_text())
    names = {im["id"]: im["file_name"] for im in data.get("images", [])}
    captions: dict[str, list[str]] = {name: [] for name in names.values()}
    for ann in data.get("annotations", []):
        if ann.get("image_id") not in names or not isinstance(ann.get("caption"), str):
            raise DatasetError(f"{path}: annotation id {ann.get('id')} needs an image_id of `images` and a caption")
        captions[names[ann["image_id"]]].append(ann["caption"])
    return captions


def _jsonl(path: Path) -> dict[str, list[str]]:
    captions: dict[str, list[str]] = defaultdict(list)
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}:{line_no}: not JSON ({exc.msg})") from None
        texts = row.get("captions", [row["caption"]] if "caption" in row else None)
        if "image" not in row or not texts or not all(isinstance(t, str) for t in texts):
            raise DatasetError(f'{path}:{line_no}: needs "image" and "caption" (or a "captions" list)')
        captions[row["image"]].extend(texts)
    return dict(captions)


def _csv(path: Path) -> dict[str, list[str]]:
    captions: dict[str, list[str]] = defaultdict(list)
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"image", "caption"} <= set(reader.fieldnames):
            raise DatasetError(f"{path}: the header must name `image` and `caption` columns, got {reader.fieldnames}")
        for line_no, row in enumerate(reader, 2):
            if not row["image"] or not row["caption"]:
                raise DatasetError(f"{path}:{line_no}: empty image or caption")
            captions[row["image"]].append(row["caption"])
    return dict(captions)


def load_captions(path: str | Path) -> dict[str, list[str]]:
    """Image file name -> captions, by file type (.json COCO, .jsonl, .csv). Images without captions are an error."""
    path = Path(path)
    readers = {".json": _coco, ".jsonl": _jsonl, ".csv": _csv}
    if path.suffix.lower() not in readers:
        raise DatasetError(f"{path}: unknown caption format; use COCO .json, .jsonl or .csv")
    captions = readers[path.suffix.lower()](path)
    empty = [name for name, texts in captions.items() if not texts]
    if empty:
        raise DatasetError(f"{path}: {len(empty)} image(s) have no caption, e.g. {empty[:5]}")
    return captions
