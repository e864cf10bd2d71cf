"""DetectionService end to end: a real server on port 0, a briefly trained tiny detector, real PNG/JPEG bytes."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import torch

from models import checkpoints
from models.detection import DetectOptions, predict
from models.preprocessing import decode_image, encode_image, read_image, to_tensor
from services.client import CvtasksClient
from services.launch import running_server
from tests.devices import BOX_ATOL, SCORE_ATOL, SERVING_DEVICE


@pytest.fixture(scope="module")
def server(detector_store):
    with running_server(task="detection", model_store=detector_store, max_pixels=4_000_000) as address:
        yield address


@pytest.fixture()
def client(server):
    with CvtasksClient(server, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def test_images(shapes_dir):
    return sorted((shapes_dir / "images" / "test").glob("*.png"))


def _boxes(response):
    return np.array([[d.box.x_min, d.box.y_min, d.box.x_max, d.box.y_max] for d in response.detections]).reshape(-1, 4)


def test_health_is_serving_and_models_are_listed(client):
    assert client.health() == "SERVING"
    assert client.health("cvtasks.v1.DetectionService") == "SERVING"
    (info,) = client.list_models()
    assert info.name == "tiny-detector" and info.task == "detection" and info.ready and info.is_default
    assert list(info.classes) == ["circle", "square", "triangle"] and info.device == str(SERVING_DEVICE)
    assert client.get_model("tiny-detector").architecture == "fasterrcnn_tiny"


def test_reflection_lists_the_services(server):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(server) as channel:
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {"cvtasks.v1.DetectionService", "cvtasks.v1.ModelService", "grpc.health.v1.Health"} <= services


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_detect_returns_boxes_for_encoded_images(client, test_images, fmt):
    image = read_image(test_images[0])
    response = client.detect(encode_image(image, fmt), score_threshold=0.05)
    assert response.image_width == 128 and response.image_height == 128
    assert response.model.name == "tiny-detector" and response.model.version == "1"
    assert len(response.detections) > 0
    scores = [d.score for d in response.detections]
    assert scores == sorted(scores, reverse=True) and min(scores) >= 0.05
    assert response.timings.total_ms >= response.timings.inference_ms > 0


def test_service_boxes_equal_a_direct_model_call(client, detector_store, test_images):
    model, config = checkpoints.load_model(detector_store / "tiny-detector", device=SERVING_DEVICE)
    for path in test_images[:4]:
        data = path.read_bytes()
        direct = predict(
            model,
            [to_tensor(decode_image(data)).to(SERVING_DEVICE)],
            class_names=config.classes,
            options=DetectOptions(score_threshold=0.2),
        )[0]
        response = client.detect(data, score_threshold=0.2)
        assert [d.class_name for d in response.detections] == [d.class_name for d in direct]
        np.testing.assert_allclose(_boxes(response), np.array([d.box for d in direct]).reshape(-1, 4), atol=BOX_ATOL)
        np.testing.assert_allclose([d.score for d in response.detections], [d.score for d in direct], atol=SCORE_ATOL)


def test_raw_pixels_give_the_same_answer_as_encoded_png(client, test_images):
    image = read_image(test_images[1])
    from_png = client.detect(encode_image(image, "png"), score_threshold=0.1)
    from_raw = client.detect(image, score_threshold=0.1)
    np.testing.assert_allclose(_boxes(from_raw), _boxes(from_png), atol=1e-3)


def test_options_filter_classes_and_count(client, test_images):
    data = test_images[2].read_bytes()
    everything = client.detect(data, score_threshold=0.0)
    top2 = client.detect(data, score_threshold=0.0, max_detections=2)
    assert len(top2.detections) == min(2, len(everything.detections))
    squares = client.detect(data, score_threshold=0.0, classes=["square"])
    assert {d.class_name for d in squares.detections} <= {"square"}


def test_stream_answers_in_order_and_a_bad_item_does_not_end_it(client, test_images):
    images = [p.read_bytes() for p in test_images[:5]]
    images.insert(2, b"not an image at all")
    responses = list(client.detect_stream(images, score_threshold=0.05))
    assert [r.request_id for r in responses] == [str(i) for i in range(6)]
    assert responses[2].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "unrecognised image format" in responses[2].error.message
    assert all(not r.HasField("error") and r.image_width == 128 for i, r in enumerate(responses) if i != 2)


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"", "empty"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "PNG"),
        (b"garbage bytes that are not an image", "unrecognised image format"),
    ],
)
def test_bad_images_are_invalid_argument_and_the_server_keeps_serving(client, test_images, payload, message):
    with pytest.raises(grpc.RpcError) as err:
        client.detect(payload)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message.lower() in err.value.details().lower()
    assert client.detect(test_images[0].read_bytes()).image_width == 128


def test_truncated_jpeg_is_invalid_argument(client, test_images):
    data = encode_image(read_image(test_images[0]), "jpeg")
    with pytest.raises(grpc.RpcError) as err:
        client.detect(data[: len(data) // 2])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "truncated" in err.value.details()


def test_oversized_image_is_refused_from_its_header(client):
    big = encode_image(np.zeros((2100, 2100, 3), np.uint8), "png")  # 4.4 MP > the server's 4 MP limit
    with pytest.raises(grpc.RpcError) as err:
        client.detect(big)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "4000000" in err.value.details().replace(",", "").replace("_", "")


def test_ten_mib_request_is_accepted(client):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, size=(1900, 1840, 3), dtype=np.uint8)  # 10.5 MB of raw pixels
    response = client.detect(pixels)
    assert (response.image_width, response.image_height) == (1840, 1900)


def test_unknown_model_is_not_found_and_lists_served_models(client, test_images):
    with pytest.raises(grpc.RpcError) as err:
        client.detect(test_images[0].read_bytes(), model="no-such-model")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "tiny-detector" in err.value.details()


@pytest.mark.parametrize(
    "options, message",
    [
        ({"score_threshold": 1.5}, "score_threshold"),
        ({"max_detections": 0}, "max_detections"),
        ({"classes": ["hexagon"]}, "hexagon"),
    ],
)
def test_bad_options_are_invalid_argument(client, test_images, options, message):
    with pytest.raises(grpc.RpcError) as err:
        client.detect(test_images[0].read_bytes(), **options)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in err.value.details()


def test_missing_image_says_how_to_send_one(client):
    from services.pb import detection_pb2

    with pytest.raises(grpc.RpcError) as err:
        client.detection.Detect(detection_pb2.DetectRequest(), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "image.encoded" in err.value.details()


def test_concurrent_requests_are_batched(client, test_images):
    from concurrent.futures import ThreadPoolExecutor

    data = [p.read_bytes() for p in test_images[:8]] * 2
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda d: client.detect(d, score_threshold=0.05), data))
    assert all(r.image_width == 128 for r in responses)
    torch.testing.assert_close(
        torch.tensor(_boxes(responses[0])), torch.tensor(_boxes(responses[8])), atol=1e-3, rtol=0
    )
