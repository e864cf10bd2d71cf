"""CaptioningService on a real server (port 0): captions and their options, parity with a direct
call, streams with a bad item, bad inputs and bad options."""

from __future__ import annotations

import grpc
import pytest

from models import checkpoints
from models.captioning import MAX_CAPTION_LENGTH, beam_search, image_input
from models.preprocessing import decode_image, encode_image, read_image
from models.text import Vocabulary
from services.client import CvtasksClient
from services.launch import running_server
from tests.devices import SCORE_ATOL, SERVING_DEVICE


@pytest.fixture(scope="module")
def server(captioner_store):
    with running_server(task="captioning", model_store=captioner_store) as address:
        yield address


@pytest.fixture()
def client(server):
    with CvtasksClient(server, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def image_bytes(shapes_dir):
    return (shapes_dir / "images" / "test" / "000001.png").read_bytes()


def test_caption_with_options_and_model_info(client, image_bytes):
    response = client.caption(image_bytes, beam_size=4, num_captions=3, max_length=6, request_id="r1")
    assert response.request_id == "r1" and response.model.name == "tiny-captioner"
    assert (response.image_width, response.image_height) == (128, 128)
    assert len(response.captions) == 3
    scores = [c.score for c in response.captions]
    assert scores == sorted(scores, reverse=True)
    for c in response.captions:
        assert c.tokens == c.text.split() and len(c.tokens) <= 6 and c.log_prob <= 0
    assert client.health("cvtasks.v1.CaptioningService") == "SERVING"
    assert client.list_models("captioning")[0].name == "tiny-captioner"


def test_service_captions_equal_a_direct_model_call(client, captioner_store, shapes_dir):
    model, config = checkpoints.load_model(captioner_store / "tiny-captioner", device=SERVING_DEVICE)
    vocab = Vocabulary.from_json(config.extra["vocab"])
    for path in sorted((shapes_dir / "images" / "test").glob("*.png"))[:3]:
        data = path.read_bytes()
        image = image_input(decode_image(data), size=config.input_size)[None].to(SERVING_DEVICE)
        for beam in (1, 3):
            (direct,) = beam_search(model, image, beam_size=beam, max_length=config.extra["max_length"])
            served = client.caption(data, beam_size=beam).captions[0]
            assert served.text == vocab.decode(direct[0].tokens)
            assert served.log_prob == pytest.approx(direct[0].log_prob, abs=SCORE_ATOL)


def test_jpeg_and_raw_pixels_are_accepted(client, shapes_dir):
    pixels = read_image(shapes_dir / "images" / "test" / "000002.png")
    assert client.caption(encode_image(pixels, "jpeg")).captions[0].tokens is not None
    raw = client.caption(pixels)
    png = client.caption(encode_image(pixels, "png"))
    assert raw.captions[0].text == png.captions[0].text


def test_stream_in_order_with_a_bad_item(client, shapes_dir):
    images = [p.read_bytes() for p in sorted((shapes_dir / "images" / "test").glob("*.png"))[:3]]
    images.insert(1, b"not an image")
    responses = list(client.caption_stream(images, beam_size=2))
    assert [r.request_id for r in responses] == ["0", "1", "2", "3"]
    assert responses[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert all(len(r.captions) == 1 for i, r in enumerate(responses) if i != 1)


def test_concurrent_requests_with_mixed_options_each_get_their_own_answer(client, image_bytes, server):
    import concurrent.futures

    settings = [{"beam_size": 1}, {"beam_size": 3, "num_captions": 2}, {"beam_size": 2, "max_length": 3}] * 3
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda kw: client.caption(image_bytes, **kw), settings))
    for kw, answer in zip(settings, answers):
        assert len(answer.captions) == kw.get("num_captions", 1)
        assert all(len(c.tokens) <= kw.get("max_length", 12) for c in answer.captions)
    assert len({a.captions[0].text for a in answers[0::3]}) == 1  # same options -> same caption


@pytest.mark.parametrize(
    "payload, options, code, message",
    [
        (b"", {}, grpc.StatusCode.INVALID_ARGUMENT, "empty"),
        (b"\x00\x01garbage", {}, grpc.StatusCode.INVALID_ARGUMENT, "unrecognised image format"),
        (None, {"beam_size": 0}, grpc.StatusCode.INVALID_ARGUMENT, "beam_size"),
        (None, {"beam_size": 100}, grpc.StatusCode.INVALID_ARGUMENT, "beam_size"),
        (None, {"max_length": MAX_CAPTION_LENGTH + 1}, grpc.StatusCode.INVALID_ARGUMENT, "max_length"),
        (None, {"max_length": 0}, grpc.StatusCode.INVALID_ARGUMENT, "max_length"),
        (None, {"beam_size": 2, "num_captions": 3}, grpc.StatusCode.INVALID_ARGUMENT, "num_captions"),
        (None, {"length_penalty": -1.0}, grpc.StatusCode.INVALID_ARGUMENT, "length_penalty"),
        (None, {"model": "nope"}, grpc.StatusCode.NOT_FOUND, "tiny-captioner"),
    ],
)
def test_bad_requests_get_the_right_status_and_serving_goes_on(client, image_bytes, payload, options, code, message):
    with pytest.raises(grpc.RpcError) as err:
        client.caption(payload if payload is not None else image_bytes, **options)
    assert err.value.code() == code and message in err.value.details()
    assert len(client.caption(image_bytes).captions) == 1


def test_serving_a_task_the_store_has_no_model_for_fails_at_start_with_a_clear_message(captioner_store):
    with pytest.raises(RuntimeError, match="no detection models in model store"):
        with running_server(task=["detection", "captioning"], model_store=captioner_store):
            pass
