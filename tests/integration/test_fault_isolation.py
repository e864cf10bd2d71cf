"""One request's input never fails another's: images of any shape the decoder admits are served by
every image task (typed and KServe), and a request that does break its batch fails alone while the
others batched with it are answered. Real servers on port 0, real PNG bytes."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor

import cv2
import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from models.preprocessing import encode_image
from services.client import CvtasksClient
from services.launch import running_server

ODD_SHAPES = [(1, 4000), (4000, 1), (3, 500), (1, 1), (2, 3)]


@pytest.fixture(scope="module")
def server(tmp_path_factory, detector_store, segmenter_store, captioner_store):
    store = tmp_path_factory.mktemp("isolation-store")
    for source in (detector_store, segmenter_store, captioner_store):
        for folder in source.iterdir():
            shutil.copytree(folder, store / folder.name)
    # A long batching delay, so that requests sent together share a batch.
    with running_server(
        task=["detection", "segmentation", "captioning"], model_store=store, max_batch_size=8, max_delay_ms=300
    ) as address:
        yield address


@pytest.fixture(scope="module")
def client(server):
    with CvtasksClient(server, timeout=120) as c:
        yield c


def _png(height: int, width: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return encode_image(rng.integers(0, 255, (height, width, 3), dtype=np.uint8), "png")


@pytest.mark.parametrize("height, width", ODD_SHAPES)
def test_every_image_task_serves_odd_shapes(client, height, width):
    image = _png(height, width)
    detected = client.detect(image, score_threshold=0.0)
    assert (detected.image_height, detected.image_width) == (height, width)
    for d in detected.detections:
        assert 0 <= d.box.x_min < d.box.x_max <= width and 0 <= d.box.y_min < d.box.y_max <= height
    segmented = client.segment(image)
    labels = cv2.imdecode(np.frombuffer(segmented.label_map_png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert labels.shape == (height, width)
    captioned = client.caption(image, beam_size=2)
    assert (captioned.image_height, captioned.image_width) == (height, width) and captioned.captions


def test_odd_shapes_batched_with_normal_images_leave_them_unharmed(client, shapes_dir):
    """Once, a 1 x 4000 image in a batch failed every request of that batch with INTERNAL."""
    normal = [p.read_bytes() for p in sorted((shapes_dir / "images" / "test").glob("*.png"))[:4]]
    alone = [client.detect(image, score_threshold=0.1) for image in normal]
    mixed = [normal[0], _png(1, 4000), normal[1], _png(4000, 1), normal[2], normal[3]]
    with ThreadPoolExecutor(len(mixed)) as pool:
        answers = list(pool.map(lambda image: client.detect(image, score_threshold=0.1), mixed))
    for got, want in zip([answers[i] for i in (0, 2, 4, 5)], alone):
        assert [d.class_name for d in got.detections] == [d.class_name for d in want.detections]
    assert (answers[1].image_height, answers[1].image_width) == (1, 4000)


def test_a_request_that_breaks_its_batch_fails_alone(client, shapes_dir):
    """A tiling request that would need more tiles than allowed fails inside the model's batch; the
    requests batched with it still get their label maps."""
    normal = (shapes_dir / "images" / "test" / "000001.png").read_bytes()
    hostile = _png(1, 300_000)  # 5,357 tiles of 64 px: over the limit

    def call(i: int):
        if i == 2:
            return client.segment(hostile, large_image_mode="tile", max_side=64)
        return client.segment(normal)

    with ThreadPoolExecutor(5) as pool:
        futures = [pool.submit(call, i) for i in range(5)]
    for i, future in enumerate(futures):
        if i == 2:
            with pytest.raises(grpc.RpcError) as err:
                future.result()
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "tiles" in err.value.details() and "resize mode" in err.value.details()
        else:
            assert future.result().label_map_png
    assert client.health() == "SERVING"


def test_a_kserve_request_mixing_normal_and_odd_images_is_served(server, shapes_dir):
    normal = (shapes_dir / "images" / "test" / "000001.png").read_bytes()
    images = np.array([normal, _png(1, 4000), _png(1, 1)], dtype=object)
    tensor = grpcclient.InferInput("IMAGE", [3], "BYTES")
    tensor.set_data_from_numpy(images)
    client = grpcclient.InferenceServerClient(server)
    try:
        for model in ("tiny-detector", "tiny-segmenter", "tiny-captioner"):
            result = client.infer(model, [tensor], client_timeout=120)
            assert result.as_numpy("IMAGE_SIZE").tolist() == [[128, 128], [1, 4000], [1, 1]]
    finally:
        client.close()
