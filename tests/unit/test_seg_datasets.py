"""models/seg_datasets.py: palette and grayscale masks, class-name files, pairing, augmentation."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from models.errors import DatasetError
from models.preprocessing import segmentation_train_transform
from models.seg_datasets import SegmentationDataset, read_class_names, read_mask


def test_palette_png_gives_indices_not_colours(tmp_path):
    ids = np.array([[0, 1], [2, 255]], np.uint8)
    img = Image.fromarray(ids, mode="P")
    palette = [0, 0, 0, 200, 10, 10, 10, 200, 10] + [255, 255, 255] * 253
    img.putpalette(palette)
    img.save(tmp_path / "m.png")
    assert np.array_equal(read_mask(tmp_path / "m.png"), ids)


def test_grayscale_png_and_rgb_refused(tmp_path):
    Image.fromarray(np.array([[3, 0]], np.uint8), mode="L").save(tmp_path / "g.png")
    assert read_mask(tmp_path / "g.png").tolist() == [[3, 0]]
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(DatasetError, match="grayscale or palette"):
        read_mask(tmp_path / "rgb.png")


def test_class_names_file_adds_background_when_missing(tmp_path):
    (tmp_path / "a.txt").write_text("cat\ndog\n")
    (tmp_path / "b.txt").write_text("background\ncat\n")
    assert read_class_names(tmp_path / "a.txt") == ("background", "cat", "dog")
    assert read_class_names(tmp_path / "b.txt") == ("background", "cat")


def test_dataset_pairs_by_stem_and_augments_image_and_mask_together(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    mask = np.zeros((128, 128), np.uint8)
    mask[30:90, 20:70] = 1
    image = np.where(mask[..., None] == 1, 255, 0).astype(np.uint8).repeat(3, axis=2)  # white where class 1
    Image.fromarray(image).save(tmp_path / "images" / "a.jpg", quality=100)
    Image.fromarray(mask, mode="L").save(tmp_path / "masks" / "a.png")
    dataset = SegmentationDataset(
        tmp_path / "images",
        tmp_path / "masks",
        class_names=("background", "box"),
        transform=segmentation_train_transform(size=96, seed=3),
    )
    for _ in range(5):  # several random geometries: image and mask must move together
        augmented, labels = dataset[0]
        assert augmented.shape == (3, 96, 96) and labels.shape == (96, 96) and str(labels.dtype) == "torch.int64"
        brightness = augmented.mean(0)
        if (labels == 1).any():
            assert brightness[labels == 1].mean() > 0.6
        assert brightness[labels == 0].mean() < 0.3


def test_mask_with_too_large_class_id_is_named(tmp_path, shapes_dir):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "images" / "x.png").write_bytes((shapes_dir / "images" / "train" / "000001.png").read_bytes())
    Image.fromarray(np.full((128, 128), 9, np.uint8), mode="L").save(tmp_path / "masks" / "x.png")
    dataset = SegmentationDataset(tmp_path / "images", tmp_path / "masks", class_names=("background", "a"))
    with pytest.raises(DatasetError, match="x.png: class id 9"):
        dataset[0]
