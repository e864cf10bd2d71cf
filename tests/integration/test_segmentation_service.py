"""SegmentationService on a real server (port 0): label maps, areas, contours, overlays, large images,
parity with a direct call, bad inputs."""

from __future__ import annotations

import cv2
import grpc
import numpy as np
import pytest
import torch

from models import checkpoints
from models.preprocessing import decode_image, encode_image, read_image, to_tensor
from models.segmentation import segment_image
from services.client import CvtasksClient
from services.launch import running_server
from services.pb import segmentation_pb2
from tests.devices import SERVING_DEVICE, assert_labels_agree


@pytest.fixture(scope="module")
def server(segmenter_store):
    with running_server(task="segmentation", model_store=segmenter_store) as address:
        yield address


@pytest.fixture()
def client(server):
    with CvtasksClient(server, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def image_bytes(shapes_dir):
    return (shapes_dir / "images" / "test" / "000001.png").read_bytes()


def _labels(response) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(response.label_map_png, np.uint8), cv2.IMREAD_UNCHANGED)


def test_label_map_areas_and_model_info(client, image_bytes):
    response = client.segment(image_bytes)
    labels = _labels(response)
    assert labels.shape == (128, 128) and labels.dtype == np.uint8 and labels.max() < 4
    assert [a.class_name for a in response.areas] == ["background", "circle", "square", "triangle"]
    assert sum(a.pixel_count for a in response.areas) == 128 * 128
    for area in response.areas:
        assert area.pixel_count == int((labels == area.class_id).sum())
    assert response.processing == segmentation_pb2.PROCESSING_WHOLE
    assert client.health("cvtasks.v1.SegmentationService") == "SERVING"
    assert client.list_models("segmentation")[0].name == "tiny-segmenter"


def test_service_label_map_equals_a_direct_model_call(client, segmenter_store, shapes_dir):
    model, config = checkpoints.load_model(segmenter_store / "tiny-segmenter", device=SERVING_DEVICE)
    for path in sorted((shapes_dir / "images" / "test").glob("*.png"))[:3]:
        data = path.read_bytes()
        with torch.inference_mode():
            direct = segment_image(
                model,
                to_tensor(decode_image(data)).to(SERVING_DEVICE),
                mean=config.normalization["mean"],
                std=config.normalization["std"],
            )
        assert_labels_agree(_labels(client.segment(data)), np.asarray(direct.labels))


def test_contours_and_overlay_on_request(client, image_bytes):
    response = client.segment(image_bytes, contours=True, overlay=True, overlay_alpha=0.4)
    overlay = decode_image(response.overlay_png)
    assert overlay.shape == (128, 128, 3)
    labels = _labels(response)
    for group in response.contours:
        assert group.class_id > 0 and (labels == group.class_id).any()
        for polygon in group.polygons:
            assert all(0 <= p.x < 128 and 0 <= p.y < 128 for p in polygon.points)


@pytest.mark.parametrize(
    "mode, processing", [("resize", segmentation_pb2.PROCESSING_RESIZED), ("tile", segmentation_pb2.PROCESSING_TILED)]
)
def test_large_images_are_resized_or_tiled_as_asked(client, shapes_dir, mode, processing):
    big = cv2.resize(read_image(shapes_dir / "images" / "test" / "000002.png"), (300, 200))
    response = client.segment(encode_image(big, "jpeg"), large_image_mode=mode, max_side=128, tile_overlap=32)
    assert _labels(response).shape == (200, 300)
    assert response.processing == processing and response.processing_detail


def test_stream_in_order_with_a_bad_item(client, shapes_dir):
    images = [p.read_bytes() for p in sorted((shapes_dir / "images" / "test").glob("*.png"))[:3]]
    images.insert(1, b"")
    responses = list(client.segment_stream(images))
    assert [r.request_id for r in responses] == ["0", "1", "2", "3"]
    assert responses[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert all(_labels(r).shape == (128, 128) for i, r in enumerate(responses) if i != 1)


@pytest.mark.parametrize(
    "payload, options, code, message",
    [
        (b"\x00\x01garbage", {}, grpc.StatusCode.INVALID_ARGUMENT, "unrecognised image format"),
        (None, {"max_side": 10}, grpc.StatusCode.INVALID_ARGUMENT, "max_side"),
        (None, {"max_side": 128, "tile_overlap": 100}, grpc.StatusCode.INVALID_ARGUMENT, "tile_overlap"),
        (None, {"overlay_alpha": 2.0}, grpc.StatusCode.INVALID_ARGUMENT, "overlay_alpha"),
        (None, {"model": "nope"}, grpc.StatusCode.NOT_FOUND, "tiny-segmenter"),
    ],
)
def test_bad_requests_get_the_right_status_and_serving_goes_on(client, image_bytes, payload, options, code, message):
    with pytest.raises(grpc.RpcError) as err:
        client.segment(payload if payload is not None else image_bytes, **options)
    assert err.value.code() == code and message in err.value.details()
    assert _labels(client.segment(image_bytes)).shape == (128, 128)
