"""The KServe v2 / Open Inference Protocol path, called with the stock tritonclient gRPC client against a
real server (port 0) that serves all four tasks: each task's outputs equal the typed RPC's answer,
BYTES and UINT8 NHWC inputs, health/metadata/config calls, streaming, statuses of bad requests,
and a full queue answering UNAVAILABLE (as Triton does)."""

from __future__ import annotations

import shutil
import threading

import cv2
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from models.preprocessing import encode_image
from services.client import CvtasksClient
from services.launch import running_server
from tests.devices import BOX_ATOL, SCORE_ATOL

DETECTOR, SEGMENTER, CAPTIONER, GENERATOR = "tiny-detector", "tiny-segmenter", "tiny-captioner", "tiny-generator"


@pytest.fixture(scope="module")
def server(tmp_path_factory, detector_store, segmenter_store, captioner_store, generator_store):
    store = tmp_path_factory.mktemp("kserve-store")
    for source, name in (
        (detector_store, DETECTOR),
        (segmenter_store, SEGMENTER),
        (captioner_store, CAPTIONER),
        (generator_store, GENERATOR),
    ):
        shutil.copytree(source / name, store / name)
    with running_server(
        task=["detection", "segmentation", "captioning", "generation"], model_store=store, max_batch_size=4
    ) as address:
        yield address


@pytest.fixture(scope="module")
def triton(server):
    client = grpcclient.InferenceServerClient(server)
    yield client
    client.close()


@pytest.fixture(scope="module")
def typed(server):
    with CvtasksClient(server, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def pngs(shapes_dir):
    return [p.read_bytes() for p in sorted((shapes_dir / "images" / "test").glob("*.png"))[:2]]


def _input(name: str, array: np.ndarray) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
    tensor.set_data_from_numpy(array)
    return tensor


def infer(client, model: str, inputs: dict[str, np.ndarray], outputs: list[str] | None = None, **parameters):
    requested = [grpcclient.InferRequestedOutput(n) for n in outputs] if outputs else None
    return client.infer(
        model,
        [_input(n, a) for n, a in inputs.items()],
        outputs=requested,
        parameters=parameters or None,
        client_timeout=60,
    )


def encoded(*images: bytes) -> dict[str, np.ndarray]:
    return {"IMAGE": np.array(images, dtype=object)}


def pixels(*images: bytes) -> dict[str, np.ndarray]:
    return {
        "PIXELS": np.stack(
            [
                cv2.cvtColor(cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
                for b in images
            ]
        )
    }


def _status(call) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value.status(), info.value.message()


# --------------------------------------------------------------------------- health, metadata, config


def test_liveness_readiness_server_metadata_and_index(triton):
    assert triton.is_server_live() and triton.is_server_ready()
    for name in (DETECTOR, SEGMENTER, CAPTIONER, GENERATOR):
        assert triton.is_model_ready(name) and triton.is_model_ready(name, "1")
    assert not triton.is_model_ready("no-such-model") and not triton.is_model_ready(DETECTOR, "7")
    meta = triton.get_server_metadata()
    assert meta.name == "cvtasks" and "model_configuration" in meta.extensions
    index = triton.get_model_repository_index()
    assert sorted(m.name for m in index.models) == sorted([DETECTOR, SEGMENTER, CAPTIONER, GENERATOR])
    assert {m.state for m in index.models} == {"READY"}


@pytest.mark.parametrize(
    "model, inputs, outputs",
    [
        (
            DETECTOR,
            {"IMAGE": ("BYTES", [-1]), "PIXELS": ("UINT8", [-1, -1, -1, -1])},
            {
                "BOXES": ("FP32", [-1, -1, 4]),
                "SCORES": ("FP32", [-1, -1]),
                "LABELS": ("INT64", [-1, -1]),
                "CLASS_NAMES": ("BYTES", [-1, -1]),
                "COUNT": ("INT32", [-1]),
                "IMAGE_SIZE": ("INT32", [-1, 2]),
            },
        ),
        (
            SEGMENTER,
            {"IMAGE": ("BYTES", [-1]), "PIXELS": ("UINT8", [-1, -1, -1, -1])},
            {"LABEL_MAP": ("UINT8", [-1, -1, -1]), "IMAGE_SIZE": ("INT32", [-1, 2])},
        ),
        (
            CAPTIONER,
            {"IMAGE": ("BYTES", [-1]), "PIXELS": ("UINT8", [-1, -1, -1, -1])},
            {
                "CAPTION": ("BYTES", [-1, -1]),
                "LOG_PROB": ("FP32", [-1, -1]),
                "SCORE": ("FP32", [-1, -1]),
                "IMAGE_SIZE": ("INT32", [-1, 2]),
            },
        ),
        (
            GENERATOR,
            {"SEED": ("INT64", [1]), "LATENT": ("FP32", [-1, 16])},
            {"IMAGE": ("UINT8", [-1, 32, 32, 3]), "LATENT": ("FP32", [-1, 16])},
        ),
    ],
)
def test_model_metadata_and_config_describe_each_task(triton, model, inputs, outputs):
    meta = triton.get_model_metadata(model)
    assert meta.name == model and list(meta.versions) == ["1"] and meta.platform == "pytorch"
    assert {t.name: (t.datatype, list(t.shape)) for t in meta.inputs} == inputs
    assert {t.name: (t.datatype, list(t.shape)) for t in meta.outputs} == outputs
    config = triton.get_model_config(model).config
    batched = model != GENERATOR
    assert config.name == model and config.platform == "pytorch" and config.max_batch_size == (4 if batched else 0)
    assert [i.name for i in config.input] == list(inputs) and all(i.optional for i in config.input)
    assert [o.name for o in config.output] == list(outputs)
    assert config.dynamic_batching.default_queue_policy.max_queue_size == 64
    assert config.parameters["task"].string_value in ("detection", "segmentation", "captioning", "generation")
    if model == DETECTOR:
        assert config.parameters["classes"].string_value == "circle,square,triangle"
        assert list(config.input[0].dims) == [1] and list(config.input[0].reshape.shape) == []


# --------------------------------------------------------------------------- each task equals its typed RPC


def test_detection_bytes_and_pixels_equal_typed_detect(triton, typed, pngs):
    for make in (encoded, pixels):
        result = infer(triton, DETECTOR, make(*pngs), score_threshold=0.2)
        boxes, scores, count = result.as_numpy("BOXES"), result.as_numpy("SCORES"), result.as_numpy("COUNT")
        assert boxes.shape[:1] == (2,) and boxes.shape[2] == 4 and boxes.dtype == np.float32
        assert result.as_numpy("IMAGE_SIZE").tolist() == [[128, 128], [128, 128]]
        assert result.get_response().model_name == DETECTOR and result.get_response().model_version == "1"
        for b, data in enumerate(pngs):
            expected = typed.detect(data, score_threshold=0.2).detections
            n = int(count[b])
            assert n == len(expected) > 0
            np.testing.assert_allclose(
                boxes[b, :n], [[d.box.x_min, d.box.y_min, d.box.x_max, d.box.y_max] for d in expected], atol=BOX_ATOL
            )
            np.testing.assert_allclose(scores[b, :n], [d.score for d in expected], atol=SCORE_ATOL)
            assert result.as_numpy("LABELS")[b, :n].tolist() == [d.label for d in expected]
            assert [c.decode() for c in result.as_numpy("CLASS_NAMES")[b, :n]] == [d.class_name for d in expected]
            assert not boxes[b, n:].any() and not result.as_numpy("LABELS")[b, n:].any()  # padding


def test_detection_parameters_filter_and_requested_outputs(triton, typed, pngs):
    result = infer(
        triton,
        DETECTOR,
        encoded(pngs[0]),
        outputs=["COUNT", "CLASS_NAMES"],
        score_threshold=0.05,
        max_detections=2,
        class_filter="square, circle",
    )
    assert [o.name for o in result.get_response().outputs] == ["COUNT", "CLASS_NAMES"]
    expected = typed.detect(pngs[0], score_threshold=0.05, max_detections=2, classes=["square", "circle"])
    assert result.as_numpy("COUNT").tolist() == [len(expected.detections)]
    assert [c.decode() for c in result.as_numpy("CLASS_NAMES")[0]] == [d.class_name for d in expected.detections]


def test_segmentation_label_maps_equal_typed_segment_and_pad_smaller_images(triton, typed, pngs):
    small = encode_image(
        cv2.cvtColor(cv2.imdecode(np.frombuffer(pngs[1], np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)[:96, :80],
        "png",
    )
    result = infer(triton, SEGMENTER, encoded(pngs[0], small))
    label_map = result.as_numpy("LABEL_MAP")
    assert label_map.shape == (2, 128, 128) and label_map.dtype == np.uint8
    assert result.as_numpy("IMAGE_SIZE").tolist() == [[128, 128], [96, 80]]
    for b, data in enumerate((pngs[0], small)):
        expected = cv2.imdecode(np.frombuffer(typed.segment(data).label_map_png, np.uint8), cv2.IMREAD_UNCHANGED)
        h, w = expected.shape
        assert np.array_equal(label_map[b, :h, :w], expected)
    assert (label_map[1, 96:] == 255).all() and (label_map[1, :, 80:] == 255).all()
    raw = infer(triton, SEGMENTER, pixels(pngs[0])).as_numpy("LABEL_MAP")
    assert np.array_equal(raw[0], label_map[0])


def test_captions_equal_typed_caption(triton, typed, pngs):
    result = infer(triton, CAPTIONER, pixels(*pngs), beam_size=3, num_captions=2, max_length=8)
    text, log_prob = result.as_numpy("CAPTION"), result.as_numpy("LOG_PROB")
    assert text.shape == (2, 2) and log_prob.dtype == np.float32
    for b, data in enumerate(pngs):
        expected = typed.caption(data, beam_size=3, num_captions=2, max_length=8).captions
        assert [t.decode() for t in text[b]] == [c.text for c in expected]
        np.testing.assert_allclose(log_prob[b], [c.log_prob for c in expected], atol=1e-4)
        np.testing.assert_allclose(result.as_numpy("SCORE")[b], [c.score for c in expected], atol=1e-4)
    single = infer(triton, CAPTIONER, encoded(pngs[0]))  # defaults: one caption per image
    assert single.as_numpy("CAPTION").shape == (1, 1)
    assert single.as_numpy("CAPTION")[0, 0].decode() == typed.caption(pngs[0]).captions[0].text


@pytest.mark.parametrize("dtype", [np.int64, np.uint64])
def test_generation_seed_and_latents_equal_typed_generate(triton, typed, dtype):
    result = infer(triton, GENERATOR, {"SEED": np.array([9], dtype)}, count=3)
    images, z = result.as_numpy("IMAGE"), result.as_numpy("LATENT")
    assert images.shape == (3, 32, 32, 3) and images.dtype == np.uint8 and z.shape == (3, 16)
    expected = typed.generate(count=3, seed=9, fmt="raw").images
    for image, e in zip(images, expected):
        assert np.array_equal(image, np.frombuffer(e.raw.data, np.uint8).reshape(32, 32, 3))
    again = infer(triton, GENERATOR, {"LATENT": z[1:]}).as_numpy("IMAGE")
    assert np.array_equal(again, images[1:])


def test_stream_infer_answers_in_order_and_a_bad_request_does_not_end_it(triton, pngs):
    answers, done = [], threading.Event()

    def callback(result, error):
        answers.append((result, error))
        if len(answers) == 3:
            done.set()

    triton.start_stream(callback=callback)
    try:
        for i, data in enumerate((pngs[0], b"not an image", pngs[1])):
            triton.async_stream_infer(SEGMENTER, [_input("IMAGE", np.array([data], dtype=object))], request_id=str(i))
        assert done.wait(60)
    finally:
        triton.stop_stream()
    (first, e0), (_, bad), (third, e2) = answers
    assert e0 is None and e2 is None and "IMAGE[0]" in bad.message()
    assert first.get_response().id == "0" and third.get_response().id == "2"
    assert first.as_numpy("LABEL_MAP").shape == (1, 128, 128)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "model, inputs, params, status, message",
    [
        ("no-such-model", "png", {}, "NOT_FOUND", "This server serves"),
        (
            DETECTOR,
            {"IMAGE": np.array([b"\x89PNG\r\n\x1a\n broken"], dtype=object)},
            {},
            "INVALID_ARGUMENT",
            "IMAGE[0]: truncated PNG",
        ),
        (DETECTOR, {"IMAGE": np.array([b"hello"], dtype=object)}, {}, "INVALID_ARGUMENT", "unrecognised image format"),
        (
            DETECTOR,
            {"IMAGE": np.zeros((1, 8, 8, 3), np.uint8)},
            {},
            "INVALID_ARGUMENT",
            "IMAGE must be BYTES, got UINT8",
        ),
        (DETECTOR, {"PIXELS": np.zeros((8, 8, 3), np.uint8)}, {}, "INVALID_ARGUMENT", "has shape [8, 8, 3]"),
        (DETECTOR, {"PIXELS": np.zeros((1, 8, 8, 2), np.uint8)}, {}, "INVALID_ARGUMENT", "channels must be 1"),
        (DETECTOR, {"PIXELS": np.zeros((5, 8, 8, 3), np.uint8)}, {}, "INVALID_ARGUMENT", "max_batch_size 4"),
        (DETECTOR, {"FOO": np.zeros(1, np.float32)}, {}, "INVALID_ARGUMENT", "unknown input `FOO`"),
        (DETECTOR, {}, {}, "INVALID_ARGUMENT", "missing input"),
        (DETECTOR, "png+pixels", {}, "INVALID_ARGUMENT", "give exactly one image input"),
        (DETECTOR, "png", {"score_treshold": 0.3}, "INVALID_ARGUMENT", "unknown parameter `score_treshold`"),
        (DETECTOR, "png", {"score_threshold": 1.5}, "INVALID_ARGUMENT", "score_threshold must be in [0, 1]"),
        (DETECTOR, "png", {"max_detections": "ten"}, "INVALID_ARGUMENT", "must be an integer"),
        (DETECTOR, "png", {"class_filter": "hexagon"}, "INVALID_ARGUMENT", "unknown classes"),
        (SEGMENTER, "png", {"large_image_mode": "zoom"}, "INVALID_ARGUMENT", "resize` or `tile"),
        (CAPTIONER, "png", {"beam_size": 0}, "INVALID_ARGUMENT", "beam_size must be in 1..16"),
        (GENERATOR, {"SEED": np.array([1], np.int64)}, {"count": 65}, "INVALID_ARGUMENT", "count must be in 1..64"),
        (GENERATOR, {"SEED": np.array([-1], np.int64)}, {}, "INVALID_ARGUMENT", "SEED must be >= 0"),
        (GENERATOR, {"LATENT": np.zeros((2, 15), np.float32)}, {}, "INVALID_ARGUMENT", "expected [-1, 16]"),
        (GENERATOR, {"SEED": np.array([1.0], np.float32)}, {}, "INVALID_ARGUMENT", "SEED must be INT64 or UINT64"),
    ],
)
def test_bad_requests_get_a_status_and_a_message_that_says_what_to_fix(
    triton, pngs, model, inputs, params, status, message
):
    if isinstance(inputs, str):
        inputs = {**encoded(pngs[0]), **(pixels(pngs[0]) if "pixels" in inputs else {})}
    code, text = _status(lambda: infer(triton, model, inputs, **params))
    assert code == f"StatusCode.{status}" and message in text, text
    assert infer(triton, DETECTOR, encoded(pngs[0])).as_numpy("COUNT").shape == (1,)  # still serving


def test_unknown_version_or_output_and_metadata_of_an_unknown_model(triton, pngs):
    image = _input("IMAGE", encoded(pngs[0])["IMAGE"])
    code, text = _status(lambda: triton.infer(DETECTOR, [image], model_version="2"))
    assert code == "StatusCode.NOT_FOUND" and "version 2 is not served" in text
    code, text = _status(lambda: infer(triton, DETECTOR, encoded(pngs[0]), outputs=["MASKS"]))
    assert code == "StatusCode.INVALID_ARGUMENT" and "unknown output(s) ['MASKS']" in text
    code, text = _status(lambda: triton.get_model_metadata("no-such-model"))
    assert code == "StatusCode.NOT_FOUND" and DETECTOR in text


def test_typed_contents_work_like_raw_contents_and_bad_raw_data_is_refused(server, triton, pngs):
    """Clients other than tritonclient may send ``contents`` instead of ``raw_input_contents``."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    def request(name, datatype, shape, model=DETECTOR, raw=None, **contents):
        r = service_pb2.ModelInferRequest(model_name=model)
        r.inputs.add(name=name, datatype=datatype, shape=shape, contents=service_pb2.InferTensorContents(**contents))
        if raw is not None:
            r.raw_input_contents.append(raw)
        return r

    with grpc.insecure_channel(server) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        response = stub.ModelInfer(request("IMAGE", "BYTES", [1], bytes_contents=[pngs[0]]), timeout=60)
        count = np.frombuffer(response.raw_output_contents[[o.name for o in response.outputs].index("COUNT")], "<i4")
        assert count.tolist() == infer(triton, DETECTOR, encoded(pngs[0])).as_numpy("COUNT").tolist()
        z = np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32)
        response = stub.ModelInfer(request("LATENT", "FP32", [2, 16], GENERATOR, fp32_contents=z.ravel()), timeout=60)
        assert response.raw_output_contents[0] == infer(triton, GENERATOR, {"LATENT": z}).as_numpy("IMAGE").tobytes()
        for bad, message in (
            (request("IMAGE", "BYTES", [1], raw=b"\x09\x00\x00\x00abc"), "truncated"),
            (request("LATENT", "FP32", [1, 16], GENERATOR, raw=b"\x00" * 60), "60 bytes of raw data"),
            (request("PIXELS", "UINT8", [1, 2, 2, 3], uint_contents=[300] * 12), "UINT8 range"),
        ):
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(bad, timeout=60)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in info.value.details()


def test_a_full_queue_is_unavailable_on_this_path(generator_store):
    with running_server(task="generation", model_store=generator_store, max_queue_size=1, max_batch_size=1) as address:
        client = grpcclient.InferenceServerClient(address)
        outcomes, lock, done = [], threading.Lock(), threading.Event()

        def callback(result, error):
            with lock:
                outcomes.append(error.status() if error is not None else "OK")
                if len(outcomes) == 24:
                    done.set()

        for _ in range(24):
            client.async_infer(GENERATOR, [_input("SEED", np.array([3], np.int64))], callback, parameters={"count": 64})
        assert done.wait(120)
        client.close()
    assert "OK" in outcomes and "StatusCode.UNAVAILABLE" in outcomes, outcomes
    assert set(outcomes) == {"OK", "StatusCode.UNAVAILABLE"}
