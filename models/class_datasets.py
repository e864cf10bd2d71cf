"""Classification data: the ImageFolder layout (one sub-folder per class) or a CSV of (image, label).

ImageFolder: ``root/<class name>/<image>``; the classes are the sub-folder names, sorted (or
the given ``classes``, which must name every sub-folder). CSV: a header row with ``image`` and
``label`` columns; image paths are relative to ``images_dir`` (default: the CSV's folder), and
the classes are the labels, sorted (or the given ones). Items are (path, class id).

Multi-label (a CSV only, ``multi_label=True``): the label cell lists the image's classes
separated by ``|`` (``circle|square``; empty: none of them), and items are (path, tuple of class
ids); the dataset's targets are then multi-hot float vectors (C,) for BCEWithLogits.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from models.classification import classifier_input
from models.datasets import IMAGE_SUFFIXES
from models.errors import DatasetError
from models.preprocessing import read_image

Items = list[tuple[Path, int]]  # multi-label: (path, tuple of class ids)
PathLike = str | Path
Names = Sequence[str] | None  # class names in id order; None: from the data
Loaded = tuple[tuple[str, ...], Items]  # (class names, items)
LABEL_SEPARATOR = "|"  # between the classes of a multi-label CSV's label cell


def read_class_list(path: str | Path) -> tuple[str, ...]:
    """Class names, one per line, naming ids 0, 1, ... (no background class)."""
    names = tuple(line.strip() for line in Path(path).read_text().splitlines() if line.strip())
    if len(names) < 2:
        raise DatasetError(f"{path}: a classifier needs at least two class names, one per line")
    return names


def image_folder(root: str | Path, classes: Sequence[str] | None = None) -> tuple[tuple[str, ...], Items]:
    """(classes, items) of an ImageFolder tree; DatasetError names an empty or unknown class folder."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not folders:
        raise DatasetError(f"{root} has no class sub-folders (the ImageFolder layout: {root}/<class>/<image>)")
    names = tuple(classes) if classes is not None else tuple(folders)
    unknown = sorted(set(folders) - set(names))
    if unknown:
        raise DatasetError(f"{root}: sub-folders {unknown} are not among the classes {list(names)}")
    items: Items = []
    for class_id, name in enumerate(names):
        folder = root / name
        if folder.is_dir():
            items += [(p, class_id) for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    if not items:
        raise DatasetError(f"no images under {root}")
    return names, items


def csv_labels(
    path: str | Path,
    images_dir: str | Path | None = None,
    classes: Sequence[str] | None = None,
    *,
    multi_label: bool = False,
) -> tuple[tuple[str, ...], Items]:
    """(classes, items) of a CSV with ``image`` and ``label`` columns; DatasetError names the bad row.
    ``multi_label``: a label cell holds ``|``-separated classes (see the module docstring)."""
    path = Path(path)
    base = Path(images_dir) if images_dir else path.parent
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"image", "label"} <= set(reader.fieldnames):
            raise DatasetError(f"{path}: needs a header row with `image` and `label` columns, got {reader.fieldnames}")
        cells = [(row["image"], (row["label"] or "").strip()) for row in reader]
    if not cells:
        raise DatasetError(f"{path}: no rows")
    split = LABEL_SEPARATOR if multi_label else None
    rows = [(image, [x.strip() for x in label.split(split)] if split else [label]) for image, label in cells]
    rows = [(image, [x for x in labels if x] if split else labels) for image, labels in rows]
    names = tuple(classes) if classes is not None else tuple(sorted({x for _, labels in rows for x in labels}))
    ids = {name: i for i, name in enumerate(names)}
    items: Items = []
    for line, (image, labels) in enumerate(rows, start=2):
        unknown = [x for x in labels if x not in ids]
        if unknown:
            raise DatasetError(f"{path} line {line}: label `{unknown[0]}` is not among the classes {list(names)}")
        file = base / image
        if not file.is_file():
            raise DatasetError(f"{path} line {line}: image {file} does not exist")
        found = tuple(sorted({ids[x] for x in labels}))
        items.append((file, found if multi_label else found[0]))  # type: ignore[arg-type]
    return names, items


def load_items(
    images: PathLike, labels: PathLike | None = None, classes: Names = None, multi_label: bool = False
) -> Loaded:
    """A CSV of labels when ``labels`` is given (images relative to ``images``), else ImageFolder
    (single-label only: ``multi_label`` needs the CSV)."""
    if multi_label and not labels:
        raise DatasetError(f"multi-label data comes as a CSV of `image,label` rows (labels joined by `|`); {images}")
    return csv_labels(labels, images, classes, multi_label=multi_label) if labels else image_folder(images, classes)


def class_counts(items: Items, num_classes: int) -> np.ndarray:
    """Images per class (a multi-label image counts for each of its classes)."""
    ids = [i for _, label in items for i in (label if isinstance(label, tuple) else (label,))]
    return np.bincount(ids, minlength=num_classes)


class ClassificationDataset(Dataset):
    """-> (image float (3, size, size) normalised, class id int64; for multi-label items a
    multi-hot float32 (C,)). ``transform`` is
    models.preprocessing.classification_train_transform (its output is size x size already)."""

    def __init__(
        self,
        items: Items,
        classes: Sequence[str],
        *,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        transform: Callable | None = None,
    ) -> None:
        self.items, self.class_names = list(items), tuple(classes)
        self.size, self.mean, self.std, self.transform = size, tuple(mean), tuple(std), transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        path, label = self.items[index]
        image = read_image(path)
        if self.transform is not None:
            image = self.transform(image=image)["image"]
        tensor = classifier_input(np.ascontiguousarray(image), size=self.size, mean=self.mean, std=self.std)
        if isinstance(label, tuple):
            target = torch.zeros(len(self.class_names), dtype=torch.float32)
            target[list(label)] = 1.0
            return tensor, target
        return tensor, torch.tensor(label, dtype=torch.int64)
