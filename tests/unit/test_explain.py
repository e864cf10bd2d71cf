"""Grad-CAM (models/explain.py) and the classifier's explain and multi-label paths, without a
server: maps of the right shape and range, no hooks or gradients left behind, other threads
untouched, the letterbox undone, a clear error where it cannot explain, the sigmoid threshold."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from models import checkpoints
from models.class_datasets import ClassificationDataset, csv_labels
from models.classification import CLASSIFICATION, cam_layer, top_labels
from models.errors import DatasetError, InvalidInputError
from models.evaluation import MultiLabelReport, average_precision
from models.explain import grad_cam, heatmap_on_image, overlay_heatmap
from models.options import ClassifyOptions
from models.preprocessing import IMAGENET_MEAN, IMAGENET_STD, letterbox


def _config(architecture: str, **args) -> checkpoints.ModelConfig:
    return checkpoints.ModelConfig(
        name="c",
        task="classification",
        architecture=architecture,
        classes=("a", "b", "c"),
        model_args=args,
        input_size=64,
    )


@pytest.mark.parametrize("architecture,args", [("classifier_tiny", {"widths": [8, 16, 32]}), ("resnet18", {})])
def test_grad_cam_under_inference_mode_gives_maps_and_leaves_nothing_behind(architecture, args):
    torch.manual_seed(0)
    config = _config(architecture, **args)
    model = CLASSIFICATION.build_model(config).eval()
    rgb = np.random.default_rng(0).integers(0, 255, (40, 90, 3), dtype=np.uint8)
    x = CLASSIFICATION.model_input(rgb, config)
    with torch.inference_mode():  # as the batcher runs it
        options = [ClassifyOptions(explain=True), ClassifyOptions()]
        explained, plain = CLASSIFICATION.run_batch(model, config, [x, x], options)
        (alone,) = CLASSIFICATION.run_batch(model, config, [x], [ClassifyOptions()])
    assert plain.heatmap is None and explained.heatmap.shape == (64, 64) and explained.heatmap.dtype == np.float32
    assert 0.0 <= explained.heatmap.min() and explained.heatmap.max() == pytest.approx(1.0)
    assert [label.label for label in explained.labels] == [label.label for label in alone.labels]
    assert explained.labels[0].probability == pytest.approx(alone.labels[0].probability, abs=1e-5)
    assert explained.explanation_map((40, 90)).shape == (40, 90)
    layer = cam_layer(model, architecture)
    assert not layer._forward_hooks and all(p.grad is None for p in model.parameters())


def test_grad_cam_explains_the_class_asked_for_and_ignores_other_threads():
    torch.manual_seed(0)
    config = _config("classifier_tiny", widths=[8, 16, 32])
    model = CLASSIFICATION.build_model(config).eval()
    batch = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        expected = model(batch)
    layer, seen, stop = cam_layer(model, "classifier_tiny"), [], threading.Event()

    def other_thread() -> None:  # plain inference on the same model while Grad-CAM's hook is set
        while not stop.is_set():
            with torch.inference_mode():
                seen.append(torch.allclose(model(batch), expected, atol=1e-5))

    worker = threading.Thread(target=other_thread)
    worker.start()
    try:
        for _ in range(20):
            logits, maps = grad_cam(model, layer, batch, targets=[0, 2])
    finally:
        stop.set()
        worker.join()
    assert seen and all(seen) and torch.allclose(logits, expected, atol=1e-5) and maps.shape == (2, 64, 64)
    assert not torch.equal(maps[0], grad_cam(model, layer, batch[:1], targets=[1])[1][0])


def test_the_map_goes_back_through_the_letterbox_to_the_image():
    rgb = np.zeros((30, 90, 3), np.uint8)
    rgb[:, 60:] = 255  # the right third is bright
    boxed = letterbox(rgb, size=64)[0][..., 0].astype(np.float32) / 255  # a "map" that is the boxed image
    back = heatmap_on_image(boxed, (30, 90))
    assert back.shape == (30, 90)
    assert back[:, :55].max() < 0.05 and back[:, 65:].min() > 0.95  # the padding is cut off, the rest aligned
    assert np.array_equal(heatmap_on_image(back, (30, 90)), back)  # a map at the image's size stays as it is
    overlay = overlay_heatmap(rgb, back)
    assert overlay.shape == rgb.shape and overlay.dtype == np.uint8


def test_explain_is_refused_clearly_where_grad_cam_has_no_layer():
    config = _config("tu-resnet10t")
    with pytest.raises(InvalidInputError, match="explain .*not available for `tu-resnet10t`.*classifier_tiny"):
        CLASSIFICATION.options(config, {"explain": True})
    assert CLASSIFICATION.options(config, {}).explain is False


def test_multi_label_answers_every_label_over_the_threshold():
    logits = torch.tensor([[3.0, 0.5, -2.0], [-3.0, -3.0, -3.0]])  # sigmoid: 0.95, 0.62, 0.12; all 0.05
    over_half, over_tenth = top_labels(
        logits[:1].repeat(2, 1), "abc", [ClassifyOptions(top_k=1), ClassifyOptions(threshold=0.1)], multi_label=True
    )
    assert [x.class_name for x in over_half] == ["a", "b"]  # top_k does not cut a multi-label answer
    assert [x.class_name for x in over_tenth] == ["a", "b", "c"]
    assert top_labels(logits[1:], "abc", [ClassifyOptions()], multi_label=True) == [[]]


def test_multi_label_csv_rows_and_their_multi_hot_targets(tmp_path):
    from models.preprocessing import encode_image

    for name in ("1.png", "2.png", "3.png"):
        (tmp_path / name).write_bytes(encode_image(np.zeros((8, 8, 3), np.uint8)))
    (tmp_path / "labels.csv").write_text("image,label\n1.png,circle|square\n2.png,triangle\n3.png,\n")
    classes, items = csv_labels(tmp_path / "labels.csv", multi_label=True)
    assert classes == ("circle", "square", "triangle") and [label for _, label in items] == [(0, 1), (2,), ()]
    data = ClassificationDataset(items, classes, size=16, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    assert data[0][1].tolist() == [1.0, 1.0, 0.0] and data[2][1].tolist() == [0.0, 0.0, 0.0]
    (tmp_path / "bad.csv").write_text("image,label\n1.png,circle|hexagon\n")
    with pytest.raises(DatasetError, match="line 2: label `hexagon`"):
        csv_labels(tmp_path / "bad.csv", classes=classes, multi_label=True)


def test_average_precision_and_the_multi_label_report():
    truth = np.array([True, False, True, False])
    assert average_precision(np.array([0.9, 0.8, 0.7, 0.1]), truth) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision(np.array([0.1, 0.9, 0.8, 0.2]), truth) == pytest.approx((1 / 2 + 2 / 4) / 2)
    probs = np.array([[0.9, 0.2], [0.6, 0.7], [0.1, 0.4]])
    report = MultiLabelReport.of(probs, np.array([[1, 0], [1, 1], [0, 0]]), ("a", "b"), 0.5)
    assert report.mean_ap == 1.0 and report.subset_accuracy == 1.0 and report.macro_f1 == 1.0
    worse = MultiLabelReport.of(probs, np.array([[1, 1], [0, 1], [0, 0]]), ("a", "b"), 0.5)
    assert worse.subset_accuracy == pytest.approx(1 / 3) and worse.f1["a"] == pytest.approx(2 / 3)
