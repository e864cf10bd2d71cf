"""onnxruntime serving detectors and captioners (models/runtimes.py TAKEN_OVER): their parts exports
take over the detector's forward and the captioner's start and step, on a real server on port 0,
and must answer as the eager model does within the export's TOLERANCES: the same labels, boxes
within 0.05 px, scores within 1e-4; the same greedy and beam-3 captions.

The detector is the tiny Faster R-CNN with random weights (the shared ``detector_store``, trained,
takes minutes to make on the loaded 2-core CPU). Its 50 boxes per image all score 0.2543 +- 1e-4,
so their order is a tie: detections are paired by IoU (export_detection.agreement, with the
model's cap of 50 boxes as a second threshold), not by rank. A random one biased to background,
which finds no box at all, is served too: its load only warns (models/runtimes.py _check_parts),
where `cvtasks export` refuses it.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
import torch

from models import checkpoints
from models.errors import ModelStoreError
from models.export import TOLERANCES
from models.export_detection import agreement
from models.preprocessing import encode_image, read_image
from models.tasks import get_task
from services.client import CvtasksClient
from services.host import ModelHost, ServingConfig
from services.launch import running_server
from tests.integration.test_runtimes import _copy

ONNX = {"runtime": "onnxruntime"}


def _blind(random_detector_store: Path, root: Path) -> Path:
    """The random detector with its background logit raised by 50: it scores every box ~0."""
    model, config = checkpoints.load_model(random_detector_store / "random-detector")
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.bias[0] += 50.0
    return checkpoints.save_model(model.eval(), config, root / config.name)


@pytest.fixture(scope="module")
def address(random_detector_store, captioner_store, tmp_path_factory):
    root = tmp_path_factory.mktemp("parts-runtime-store")
    for variant, serving in {"eager": None, "onnx": ONNX}.items():
        _copy(random_detector_store / "random-detector", root, variant, serving)
        _copy(captioner_store / "tiny-captioner", root, variant, serving)
    _copy(_blind(random_detector_store, tmp_path_factory.mktemp("blind")), root, "blind", ONNX)
    cache = tmp_path_factory.mktemp("parts-export-cache")
    with running_server(task=["detection", "captioning"], model_store=root, export_cache=str(cache)) as served:
        served.cache = cache  # type: ignore[attr-defined]
        yield served


@pytest.fixture(scope="module")
def images(shapes_dir) -> list[bytes]:
    """Four test PNGs and a crop of a size and shape the check at load did not use."""
    paths = sorted((shapes_dir / "images" / "test").glob("*.png"))[:4]
    return [p.read_bytes() for p in paths] + [encode_image(read_image(paths[0])[10:, :90])]


def test_model_info_says_onnxruntime(address):
    with CvtasksClient(address) as client:
        infos = {m.name: m for m in client.list_models()}
        assert client.get_model("tiny-captioner-onnx").runtime == "onnxruntime"
    assert infos["random-detector-onnx"].runtime == "onnxruntime"
    assert infos["random-detector-blind"].runtime == "onnxruntime"  # no box to compare: served, warned
    assert infos["random-detector-eager"].runtime == infos["tiny-captioner-eager"].runtime == "eager"
    made = sorted(p.name.rsplit("-", 1)[0] for p in address.cache.iterdir())  # one export each, at load
    assert made == ["random-detector-blind", "random-detector-onnx", "tiny-captioner-onnx"]


def _found(response) -> dict[str, torch.Tensor]:
    boxes = [[d.box.x_min, d.box.y_min, d.box.x_max, d.box.y_max] for d in response.detections]
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4),
        "scores": torch.tensor([d.score for d in response.detections], dtype=torch.float64),
        "labels": torch.tensor([d.label for d in response.detections]),
    }


def test_detections_agree_with_eager(address, images):
    compared = 0
    with CvtasksClient(address, timeout=60) as client:
        assert not client.detect(images[0], model="random-detector-blind", score_threshold=0.05).detections
        for data in images:
            ours = _found(client.detect(data, model="random-detector-eager", score_threshold=0.05))
            theirs = _found(client.detect(data, model="random-detector-onnx", score_threshold=0.05))
            figures = agreement(ours, theirs, threshold=0.05, band=TOLERANCES["max_score_diff"], cap=50)
            assert figures["unmatched_boxes"] == figures["label_disagreements"] == 0, figures
            assert figures["max_box_diff_px"] <= TOLERANCES["max_box_diff_px"], figures
            assert figures["max_score_diff"] <= TOLERANCES["max_score_diff"], figures
            compared += figures["boxes_compared"]
    assert compared >= 5 * 40  # boxes were compared, not none


def test_captions_agree_with_eager(address, images):
    with CvtasksClient(address, timeout=60) as client:
        for beam in (1, 3):
            for data in images:
                ours = client.caption(data, model="tiny-captioner-eager", beam_size=beam).captions
                theirs = client.caption(data, model="tiny-captioner-onnx", beam_size=beam).captions
                assert [c.text for c in ours] == [c.text for c in theirs] and ours[0].text
                assert abs(ours[0].log_prob - theirs[0].log_prob) <= TOLERANCES["max_log_prob_diff"]


def test_what_detectors_and_captioners_cannot_serve_with_is_refused(random_detector_store, captioner_store, tmp_path):
    detection = ModelHost(random_detector_store, get_task("detection"), ServingConfig(device="cpu", runtime="compiled"))
    with pytest.raises(ModelStoreError, match="detection models do not serve compiled: torch.compile of a Faster"):
        asyncio.run(detection.load("random-detector"))
    shutil.copytree(captioner_store / "tiny-captioner", tmp_path / "tiny-captioner")
    _copy(captioner_store / "tiny-captioner", tmp_path, "bf16", {"precision": "bf16"})
    host = ModelHost(tmp_path, get_task("captioning"), ServingConfig(device="cpu"))
    with pytest.raises(ModelStoreError, match="captioning models serve at fp32 only.*--runtime eager or onnxruntime"):
        asyncio.run(host.load("tiny-captioner-bf16"))
    with pytest.raises(ValueError, match="the onnxruntime runtime runs the fp32 ONNX export; for bf16"):
        onnx_bf16 = ServingConfig(device="cpu", runtime="onnxruntime", precision="bf16")
        ModelHost(tmp_path, get_task("captioning"), onnx_bf16)
