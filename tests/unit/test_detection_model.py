"""models/detection.py and models/checkpoints.py: registry, builders, postprocess, store round trip."""

from __future__ import annotations

import json

import pytest
import torch

from models import checkpoints, detection
from models.errors import InvalidInputError, UnknownModelError


def test_registry_lists_every_architecture():
    assert detection.DETECTORS.names() == [
        "fasterrcnn_mobilenet_v3_large_320_fpn",
        "fasterrcnn_mobilenet_v3_large_fpn",
        "fasterrcnn_resnet50_fpn",
        "fasterrcnn_resnet50_fpn_v2",
        "fasterrcnn_tiny",
    ]


def test_unknown_architecture_names_the_known_ones():
    with pytest.raises(UnknownModelError) as err:
        detection.build_detector("yolo_v99", num_classes=3)
    assert "yolo_v99" in str(err.value) and "fasterrcnn_tiny" in str(err.value)


@pytest.mark.parametrize("name", ["fasterrcnn_mobilenet_v3_large_320_fpn", "fasterrcnn_resnet50_fpn_v2"])
def test_full_size_builders_take_num_classes_without_weights(name):
    model = detection.build_detector(name, num_classes=5)
    assert model.roi_heads.box_predictor.cls_score.out_features == 5


def test_tiny_detector_outputs_boxes_in_input_pixels():
    torch.manual_seed(0)
    model = detection.build_detector("fasterrcnn_tiny", num_classes=4).eval()
    out = detection.predict(
        model,
        [torch.rand(3, 96, 200)],
        class_names=("a", "b", "c"),
        options=detection.DetectOptions(score_threshold=0.0, max_detections=7),
    )
    assert len(out) == 1 and len(out[0]) <= 7
    for det in out[0]:
        x1, y1, x2, y2 = det.box
        assert 0 <= x1 <= x2 <= 200 and 0 <= y1 <= y2 <= 96
        assert det.class_name in ("a", "b", "c")


def test_postprocess_filters_by_score_class_and_count():
    output = {
        "boxes": torch.tensor([[0, 0, 10, 10], [5, 5, 20, 20], [1, 1, 2, 2], [3, 3, 9, 9.0]]),
        "scores": torch.tensor([0.9, 0.3, 0.95, 0.8]),
        "labels": torch.tensor([1, 2, 2, 1]),
    }
    names = ("circle", "square")
    kept = detection.postprocess(output, class_names=names, options=detection.DetectOptions(score_threshold=0.5))
    assert [d.score for d in kept] == pytest.approx([0.95, 0.9, 0.8])
    only = detection.postprocess(
        output, class_names=names, options=detection.DetectOptions(score_threshold=0.5, class_filter=("circle",))
    )
    assert [d.class_name for d in only] == ["circle", "circle"]
    top1 = detection.postprocess(output, class_names=names, options=detection.DetectOptions(max_detections=1))
    assert [d.box for d in top1] == [(1.0, 1.0, 2.0, 2.0)]


@pytest.mark.parametrize("kwargs", [{"score_threshold": 1.5}, {"score_threshold": -0.1}, {"max_detections": 0}])
def test_bad_options_are_invalid_input(kwargs):
    with pytest.raises(InvalidInputError):
        detection.DetectOptions(**kwargs)


def test_class_filter_with_unknown_class_says_which():
    with pytest.raises(InvalidInputError, match="hexagon"):
        detection.DetectOptions(class_filter=("hexagon",)).check_classes(("circle",))


def test_store_round_trip_rebuilds_identical_model(tmp_path):
    torch.manual_seed(1)
    model = detection.build_detector("fasterrcnn_tiny", num_classes=3, image_size=96).eval()
    config = checkpoints.ModelConfig(
        name="tiny",
        task="detection",
        architecture="fasterrcnn_tiny",
        classes=("cat", "dog"),
        model_args={"image_size": 96},
        input_size=96,
    )
    checkpoints.save_model(model, config, tmp_path / "tiny")
    stored = json.loads((tmp_path / "tiny" / "config.json").read_text())
    assert stored["classes"] == ["cat", "dog"] and stored["created"]
    loaded, cfg = checkpoints.load_model(checkpoints.resolve(tmp_path, "tiny"))
    image = torch.rand(3, 96, 96)
    with torch.inference_mode():
        a, b = model([image])[0], loaded([image])[0]
    assert torch.equal(a["boxes"], b["boxes"]) and cfg.classes == ("cat", "dog")
    assert checkpoints.next_version(tmp_path, "tiny") == "2"


def test_store_unknown_name_lists_available(tmp_path):
    model = detection.build_detector("fasterrcnn_tiny", num_classes=2)
    checkpoints.save_model(
        model,
        checkpoints.ModelConfig(name="one", task="detection", architecture="fasterrcnn_tiny", classes=("x",)),
        tmp_path / "one",
    )
    with pytest.raises(UnknownModelError, match=r"\['one'\]"):
        checkpoints.resolve(tmp_path, "two")


def test_coco_weights_missing_says_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert detection.coco_weights_file("fasterrcnn_resnet50_fpn") is None
    with pytest.raises(FileNotFoundError, match="cvtasks weights pull fasterrcnn_resnet50_fpn"):
        detection.build_coco_pretrained("fasterrcnn_resnet50_fpn")


def test_coco_weights_load_from_local_file_with_91_categories(tmp_path):
    """A local file in torchvision's layout is loaded (here: a randomly initialised state dict)."""
    source = detection.build_detector("fasterrcnn_mobilenet_v3_large_320_fpn", num_classes=91)
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    model = detection.build_coco_pretrained("fasterrcnn_mobilenet_v3_large_320_fpn", path=path)
    assert torch.equal(model.roi_heads.box_predictor.cls_score.weight, source.roi_heads.box_predictor.cls_score.weight)
    names = detection.coco_category_names("fasterrcnn_mobilenet_v3_large_320_fpn")
    assert len(names) == 90 and names[0] == "person"


def test_fine_tuning_helpers_swap_head_and_freeze_backbone():
    model = detection.build_detector("fasterrcnn_resnet50_fpn", num_classes=91)
    detection.replace_box_predictor(model, num_classes=4)
    assert model.roi_heads.box_predictor.cls_score.out_features == 4
    detection.set_trainable_backbone_layers(model, 2)
    blocks = list(model.backbone.body.children())
    assert not any(p.requires_grad for p in blocks[0].parameters())
    assert all(p.requires_grad for p in blocks[-1].parameters())
    with pytest.raises(ValueError, match="trainable backbone layers"):
        detection.set_trainable_backbone_layers(model, 99)


def test_weights_import_puts_coco_weights_into_the_store(tmp_path):
    from services.cli import main

    source = detection.build_detector("fasterrcnn_mobilenet_v3_large_320_fpn", num_classes=91)
    torch.save(source.state_dict(), tmp_path / "coco.pth")
    assert (
        main(
            [
                "weights",
                "import",
                "fasterrcnn_mobilenet_v3_large_320_fpn",
                "--name",
                "coco-mobile",
                "--path",
                str(tmp_path / "coco.pth"),
                "--model-store",
                str(tmp_path / "store"),
            ]
        )
        == 0
    )
    model, config = checkpoints.load_model(tmp_path / "store" / "coco-mobile")
    assert len(config.classes) == 90 and config.classes[0] == "person" and config.input_size == 320
    assert torch.equal(model.roi_heads.box_predictor.bbox_pred.weight, source.roi_heads.box_predictor.bbox_pred.weight)


@pytest.mark.parametrize("height, width", [(1, 4000), (4000, 1), (3, 500), (1, 1), (2, 3), (1, 64)])
def test_images_of_any_shape_the_decoder_admits_are_detected(height, width):
    """An extreme aspect ratio used to make torchvision's resize produce a zero-pixel side."""
    torch.manual_seed(0)
    model = detection.build_detector("fasterrcnn_tiny", num_classes=4).eval()
    image = torch.rand(3, height, width)
    (found,) = detection.predict(
        model, [image], class_names=["a", "b", "c"], options=detection.DetectOptions(score_threshold=0.0)
    )
    for d in found:
        x1, y1, x2, y2 = d.box
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
    fitted, scale = detection.fit_for_model(image, max_size=128)
    assert scale == 1.0 or (min(fitted.shape[-2:]) >= 32 and max(fitted.shape[-2:]) <= 128)


def test_a_normal_image_is_not_touched_by_the_fit():
    image = torch.rand(3, 100, 120)
    fitted, scale = detection.fit_for_model(image, max_size=128)
    assert scale == 1.0 and fitted is image
