"""models/synth.py and models/datasets.py: determinism, consistency of boxes/masks/captions, converters."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from models.datasets import CocoDetectionDataset, collate_detection, voc_to_coco, yolo_to_coco
from models.errors import DatasetError
from models.preprocessing import detection_train_transform
from models.synth import CLASSES, generate_shapes


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    generate_shapes(out, splits={"train": 12, "test": 4}, image_size=96, seed=5)
    return out


def test_same_seed_gives_identical_files_and_another_seed_differs(small, tmp_path):
    generate_shapes(tmp_path / "again", splits={"train": 12, "test": 4}, image_size=96, seed=5)
    generate_shapes(tmp_path / "other", splits={"train": 12, "test": 4}, image_size=96, seed=6)
    for rel in ("images/train/000003.png", "masks/test/000002.png", "annotations/train.json", "captions/test.json"):
        assert (small / rel).read_bytes() == (tmp_path / "again" / rel).read_bytes()
    assert (small / "images/train/000003.png").read_bytes() != (tmp_path / "other/images/train/000003.png").read_bytes()


def test_solid_backgrounds_are_one_colour_outside_the_shapes(tmp_path):
    generate_shapes(tmp_path, splits={"train": 8}, image_size=32, max_shapes=1, solid_backgrounds=True, seed=2)
    for path in sorted((tmp_path / "images" / "train").glob("*.png")):
        image = cv2.imread(str(path))
        background = image[cv2.imread(str(tmp_path / "masks" / "train" / path.name), cv2.IMREAD_GRAYSCALE) == 0]
        assert len(np.unique(background, axis=0)) == 1, path.name
    assert json.loads((tmp_path / "dataset.json").read_text())["solid_backgrounds"] is True


def test_boxes_are_tight_around_the_mask_pixels_of_their_class(small):
    coco = json.loads((small / "annotations/train.json").read_text())
    assert [c["name"] for c in coco["categories"]] == list(CLASSES)
    for ann in coco["annotations"]:
        image = next(im for im in coco["images"] if im["id"] == ann["image_id"])
        mask = cv2.imread(str(small / "masks/train" / image["file_name"]), cv2.IMREAD_UNCHANGED)
        x, y, w, h = ann["bbox"]
        crop = mask[y : y + h, x : x + w] == ann["category_id"]
        assert crop[0].any() and crop[-1].any() and crop[:, 0].any() and crop[:, -1].any()
        assert ann["area"] == int(crop.sum())


def test_captions_name_the_shapes_left_to_right(small):
    coco = json.loads((small / "annotations/test.json").read_text())
    captions = json.loads((small / "captions/test.json").read_text())
    for image in coco["images"]:
        anns = sorted(
            (a for a in coco["annotations"] if a["image_id"] == image["id"]),
            key=lambda a: 2 * a["bbox"][0] + a["bbox"][2],
        )
        first = next(c["caption"] for c in captions["annotations"] if c["image_id"] == image["id"])
        expected = [f"{a['attributes']['color']} {CLASSES[a['category_id'] - 1]}" for a in anns]
        positions = [first.index(e) for e in expected]
        assert positions == sorted(positions), (first, expected)


def test_coco_json_loads_in_pycocotools(small):
    coco = COCO(str(small / "annotations/train.json"))
    assert len(coco.getImgIds()) == 12 and len(coco.getCatIds()) == 3


def test_dataset_gives_torchvision_targets_and_augments_consistently(small):
    plain = CocoDetectionDataset(small / "images/train", small / "annotations/train.json")
    image, target = plain[0]
    assert image.shape == (3, 96, 96) and str(image.dtype) == "torch.float32" and 0 <= image.min() <= image.max() <= 1
    assert target["boxes"].shape[1] == 4 and target["labels"].min() >= 1 and target["image_id"] == 1
    augmented = CocoDetectionDataset(
        small / "images/train", small / "annotations/train.json", transform=detection_train_transform(size=96, seed=1)
    )
    images, targets = collate_detection([augmented[i] for i in range(4)])
    for image, target in zip(images, targets):
        assert image.shape == (3, 96, 96)
        boxes = target["boxes"]
        assert ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all()
        assert boxes.min() >= 0 and boxes.max() <= 96


def test_degenerate_box_is_rejected_naming_the_annotation(small, tmp_path):
    coco = json.loads((small / "annotations/train.json").read_text())
    coco["annotations"][3]["bbox"][2] = 0
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(coco))
    with pytest.raises(DatasetError, match=f"annotation id {coco['annotations'][3]['id']}.*degenerate"):
        CocoDetectionDataset(small / "images/train", bad)


def test_voc_xml_converts_to_coco(tmp_path):
    cv2.imwrite(str(tmp_path / "a.jpg"), np.zeros((50, 80, 3), np.uint8))
    (tmp_path / "a.xml").write_text(
        "<annotation><filename>a.jpg</filename><size><width>80</width><height>50</height></size>"
        "<object><name>dog</name><bndbox><xmin>11</xmin><ymin>6</ymin><xmax>30</xmax><ymax>25</ymax></bndbox></object>"
        "<object><name>cat</name><difficult>1</difficult><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>10</xmax>"
        "<ymax>10</ymax></bndbox></object></annotation>"
    )
    coco = voc_to_coco(tmp_path, tmp_path, tmp_path / "out.json")
    assert [c["name"] for c in coco["categories"]] == ["cat", "dog"]
    dog = next(a for a in coco["annotations"] if a["category_id"] == 2)
    assert dog["bbox"] == [10, 5, 20, 20] and dog["iscrowd"] == 0
    assert next(a for a in coco["annotations"] if a["category_id"] == 1)["iscrowd"] == 1
    assert json.loads((tmp_path / "out.json").read_text()) == coco


def test_yolo_txt_converts_to_coco_and_bad_lines_are_named(tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    cv2.imwrite(str(images / "x.png"), np.zeros((100, 200, 3), np.uint8))
    (labels / "x.txt").write_text("1 0.5 0.5 0.2 0.4\n")
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    coco = yolo_to_coco(labels, images, tmp_path / "classes.txt", tmp_path / "out.json")
    (ann,) = coco["annotations"]
    assert ann["category_id"] == 2 and ann["bbox"] == pytest.approx([80, 30, 40, 40])
    (labels / "x.txt").write_text("7 0.5 0.5 0.2 0.4\n")
    with pytest.raises(DatasetError, match="x.txt:1"):
        yolo_to_coco(labels, images, tmp_path / "classes.txt", tmp_path / "out.json")
