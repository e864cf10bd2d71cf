"""Segmentation data: an image folder + a mask folder of PNG label maps (or palette PNGs).

Pairs match by file stem (``images/a.jpg`` <-> ``masks/a.png``). Masks hold class ids per
pixel: a grayscale PNG's values, or a palette PNG's indices. Class names come from a text file,
one per line, naming ids 0, 1, ...; when its first name is not "background", id 0 is taken as
background and the file names ids 1.. (the layout `cvtasks data synth` writes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from models.datasets import IMAGE_SUFFIXES
from models.errors import DatasetError
from models.preprocessing import read_image, to_tensor

IGNORE_INDEX = 255  # mask value for "don't care" pixels (VOC's border convention)


def read_class_names(path: str | Path) -> tuple[str, ...]:
    names = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if not names:
        raise DatasetError(f"{path}: no class names")
    return tuple(names) if names[0].lower() == "background" else ("background", *names)


def read_mask(path: str | Path) -> np.ndarray:
    """A PNG label map -> uint8 (H, W) class ids (palette PNGs give their indices, not colours)."""
    with Image.open(path) as img:
        if img.mode in ("P", "L"):
            return np.array(img, dtype=np.uint8)
        if img.mode in ("I;16", "I"):
            return np.array(img).astype(np.uint8)
    raise DatasetError(f"{path}: mask must be a grayscale or palette PNG of class ids, got mode {img.mode!r}")


def pair_files(images_dir: str | Path, masks_dir: str | Path) -> list[tuple[Path, Path]]:
    """(image, mask) pairs by stem; an image without a mask raises DatasetError naming it."""
    images = sorted(p for p in Path(images_dir).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DatasetError(f"no images in {images_dir}")
    masks = {p.stem: p for p in Path(masks_dir).glob("*.png")}
    missing = [p.name for p in images if p.stem not in masks]
    if missing:
        raise DatasetError(f"{len(missing)} image(s) in {images_dir} have no mask in {masks_dir}: {missing[:10]}")
    return [(p, masks[p.stem]) for p in images]


class SegmentationDataset(Dataset):
    """-> (image float (3, H, W) in [0, 1], mask int64 (H, W)); ``transform`` is
    models.preprocessing.segmentation_train_transform (same geometry for image and mask)."""

    def __init__(
        self,
        images_dir: str | Path,
        masks_dir: str | Path,
        *,
        class_names: Sequence[str],
        transform: Callable | None = None,
    ) -> None:
        self.pairs = pair_files(images_dir, masks_dir)
        self.class_names = tuple(class_names)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, mask_path = self.pairs[index]
        image, mask = read_image(image_path), read_mask(mask_path)
        if image.shape[:2] != mask.shape:
            raise DatasetError(f"{mask_path.name}: mask is {mask.shape}, image {image_path.name} is {image.shape[:2]}")
        bad = (mask >= len(self.class_names)) & (mask != IGNORE_INDEX)
        if bad.any():
            raise DatasetError(f"{mask_path}: class id {int(mask[bad].max())} but only {len(self.class_names)} classes")
        if self.transform is not None:
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        return to_tensor(np.ascontiguousarray(image)), torch.as_tensor(np.asarray(mask), dtype=torch.int64)
