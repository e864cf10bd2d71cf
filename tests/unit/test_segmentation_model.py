"""models/segmentation.py: registry, any-size inputs, large-image modes, areas, contours, overlay."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models import checkpoints, segmentation
from models.errors import InvalidInputError, UnknownModelError
from models.visualize import overlay_labels

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class SegmenterCase:
    """Shared checks; one subclass per architecture (smp's habit)."""

    arch = ""
    encoder = "resnet18"
    multiple = 32

    @pytest.fixture(scope="class")
    @classmethod
    def model(cls):
        torch.manual_seed(0)
        return segmentation.build_segmenter(cls.arch, num_classes=4, encoder=cls.encoder).eval()

    def test_size_multiple(self, model):
        assert segmentation.size_multiple(model) == self.multiple

    @pytest.mark.parametrize("size", [(37, 50), (64, 64), (100, 61)])
    def test_any_size_in_same_size_out(self, model, size):
        with torch.inference_mode():
            logits = segmentation.forward_any_size(model, torch.rand(2, 3, *size))
        assert logits.shape == (2, 4, *size)


class TestUnet(SegmenterCase):
    arch = "unet"


class TestDeepLabV3Plus(SegmenterCase):
    arch = "deeplabv3plus"
    multiple = 16


class TestDeepLabV3(SegmenterCase):
    arch = "deeplabv3"
    encoder = "mobilenet_v2"
    multiple = 8


def test_unknown_architecture_and_encoder_list_the_options():
    with pytest.raises(UnknownModelError, match="deeplabv3plus"):
        segmentation.build_segmenter("segformer-xxl", num_classes=2)
    with pytest.raises(InvalidInputError, match="resnet34"):
        segmentation.build_segmenter("unet", num_classes=2, encoder="resnet9000")


def test_mobile_encoder_and_binary_head():
    model = segmentation.build_segmenter("unet", num_classes=1, encoder="tu-mobilenetv3_small_100").eval()
    with torch.inference_mode():
        labels = segmentation.logits_to_labels(segmentation.forward_any_size(model, torch.rand(1, 3, 50, 70)))
    assert labels.shape == (1, 50, 70) and set(labels.unique().tolist()) <= {0, 1}


def test_encoder_weights_from_a_local_file(tmp_path):
    source = segmentation.build_segmenter("unet", num_classes=3, encoder="resnet18")
    torch.save(source.encoder.state_dict(), tmp_path / "enc.pth")
    model = segmentation.build_segmenter(
        "unet", num_classes=3, encoder="resnet18", encoder_weights_path=str(tmp_path / "enc.pth")
    )
    assert torch.equal(model.encoder.conv1.weight, source.encoder.conv1.weight)


def test_stored_segmenter_round_trip(tmp_path):
    model = segmentation.build_segmenter("unet", num_classes=3, encoder="resnet18").eval()
    config = checkpoints.ModelConfig(
        name="seg",
        task="segmentation",
        architecture="unet",
        classes=("background", "a", "b"),
        model_args={"encoder": "resnet18"},
    )
    checkpoints.save_model(model, config, tmp_path / "seg")
    loaded, _ = checkpoints.load_model(tmp_path / "seg")
    x = torch.rand(3, 64, 64)
    assert torch.equal(
        segmentation.predict_labels(model, x, mean=MEAN, std=STD),
        segmentation.predict_labels(loaded, x, mean=MEAN, std=STD),
    )


@pytest.mark.parametrize("mode, processing", [("resize", "resized"), ("tile", "tiled")])
def test_large_images_are_resized_or_tiled_and_come_back_full_size(mode, processing):
    model = segmentation.build_segmenter("unet", num_classes=3, encoder="resnet18").eval()
    options = segmentation.SegmentOptions(
        max_side=64, large_image_mode=segmentation.LargeImageMode(mode), tile_overlap=16
    )
    with torch.inference_mode():
        result = segmentation.segment_image(model, torch.rand(3, 150, 100), mean=MEAN, std=STD, options=options)
    assert result.labels.shape == (150, 100) and result.labels.dtype == np.uint8
    assert result.processing == processing
    if mode == "tile":
        assert result.detail.startswith("6 tiles of 64 px")  # rows at 0, 48, 86; columns at 0, 36


def test_small_image_is_one_pass():
    model = segmentation.build_segmenter("unet", num_classes=3, encoder="resnet18").eval()
    with torch.inference_mode():
        result = segmentation.segment_image(model, torch.rand(3, 40, 30), mean=MEAN, std=STD)
    assert result.processing == "whole"


@pytest.mark.parametrize("kwargs", [{"max_side": 10}, {"max_side": 128, "tile_overlap": 64}])
def test_bad_segment_options(kwargs):
    with pytest.raises(InvalidInputError):
        segmentation.SegmentOptions(**kwargs)


def test_class_areas_and_contours():
    labels = np.zeros((10, 20), np.uint8)
    labels[2:5, 3:7] = 1  # 12 px
    labels[6:9, 10:19] = 2  # 27 px
    areas = segmentation.class_areas(labels, ("background", "a", "b", "c"))
    assert [(a[1], a[2]) for a in areas] == [("background", 161), ("a", 12), ("b", 27), ("c", 0)]
    assert sum(a[3] for a in areas) == pytest.approx(1.0)
    contours = segmentation.class_contours(labels, ("background", "a", "b", "c"))
    assert [c[1] for c in contours] == ["a", "b"]
    (poly,) = contours[0][2]
    assert sorted(map(tuple, poly)) == [(3, 2), (3, 4), (6, 2), (6, 4)]


def test_overlay_colours_only_labelled_pixels():
    image = np.full((4, 4, 3), 100, np.uint8)
    labels = np.zeros((4, 4), np.uint8)
    labels[0, 0] = 2
    out = overlay_labels(image, labels, alpha=1.0)
    assert (out[1:, :] == 100).all() and not (out[0, 0] == 100).all()


def test_batched_segmentation_equals_one_by_one():
    torch.manual_seed(0)
    model = segmentation.build_segmenter("unet", num_classes=3, encoder="resnet18").eval()
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64), torch.rand(3, 40, 50), torch.rand(3, 200, 90)]
    options = [segmentation.SegmentOptions(max_side=128)] * 4
    with torch.inference_mode():
        batched = segmentation.segment_batch(model, images, mean=MEAN, std=STD, options=options)
        single = [
            segmentation.segment_image(model, im, mean=MEAN, std=STD, options=o) for im, o in zip(images, options)
        ]
    for b, s in zip(batched, single):
        assert b.processing == s.processing
        assert (b.labels != s.labels).mean() < 0.001  # float sums differ in the last bits, argmax hardly
