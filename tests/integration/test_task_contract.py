"""The contract every task keeps, run for each (the shape of smp's shared ``BaseModelTester``): a
unary call, a stream with one bad item in the middle, an unknown model, bad options, the KServe
path (over gRPC and over HTTP, with the stock tritonclient clients) and the typed HTTP route
agreeing with the typed RPC, the HTTP route's picture, and a batch job that records a bad input and
goes on. One real server on port 0 serves all five tasks over gRPC and HTTP; per-task test files
keep only what is task-specific.

A new task adds one ``Contract`` to CONTRACTS."""

from __future__ import annotations

import base64
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from models import checkpoints
from models.batch.engine import file_work, index_work, run_local
from models.batch.job import build_job
from models.batch.store import Manifest, list_inputs
from models.preprocessing import decode_image
from services.client import CvtasksClient
from services.http_typed import to_json
from services.launch import running_server
from tests.web import call, without_timings

BROKEN_PNG = b"\x89PNG\r\n\x1a\n not really"


@dataclass(frozen=True)
class Contract:
    model: str
    unary: Callable[[CvtasksClient, bytes, str], Any]  # (client, image, model) -> response
    stream: str  # the client's streaming method ("" : the task has none)
    refused: Callable[[CvtasksClient, bytes], Any]  # a call with options the server must refuse
    bad_message: str  # what its INVALID_ARGUMENT message names
    # The typed response and the KServe outputs of one image, made comparable.
    typed_value: Callable[[Any], Any]
    kserve_value: Callable[[Any], Any]
    kserve_inputs: Callable[[bytes], dict[str, np.ndarray]]
    kserve_parameters: dict[str, Any] | None = None
    # The typed HTTP route asking what ``unary`` asks: its verb and query.
    http: tuple[str, dict[str, str]] = ("", {})
    # The HTTP JSON made comparable with ``typed_value``; None: the JSON must equal the typed
    # response's JSON mapping field for field (timings aside).
    http_value: Callable[[dict], Any] | None = None
    picture_width: int = 128  # of the route's Accept: image/png answer for the test image


def _label_map(response) -> np.ndarray:
    import cv2

    return cv2.imdecode(np.frombuffer(response.label_map_png, np.uint8), cv2.IMREAD_UNCHANGED)


def _encoded(image: bytes) -> dict[str, np.ndarray]:
    return {"IMAGE": np.array([image], dtype=object)}


CONTRACTS = {
    "detection": Contract(
        "random-detector",
        lambda c, img, m: c.detect(img, model=m, score_threshold=0.0),
        "detect_stream",
        lambda c, img: c.detect(img, score_threshold=1.5),
        "score_threshold",
        lambda r: len(r.detections),
        lambda r: int(r.as_numpy("COUNT")[0]),
        _encoded,
        {"score_threshold": 0.0},
        ("detect", {"score_threshold": "0.0"}),
    ),
    "segmentation": Contract(
        "tiny-segmenter",
        lambda c, img, m: c.segment(img, model=m),
        "segment_stream",
        lambda c, img: c.segment(img, max_side=10),
        "max_side",
        _label_map,
        lambda r: r.as_numpy("LABEL_MAP")[0],
        _encoded,
        http=("segment", {}),
    ),
    "captioning": Contract(
        "tiny-captioner",
        lambda c, img, m: c.caption(img, model=m),
        "caption_stream",
        lambda c, img: c.caption(img, beam_size=0),
        "beam_size",
        lambda r: r.captions[0].text,
        lambda r: r.as_numpy("CAPTION")[0, 0].decode(),
        _encoded,
        http=("caption", {}),
    ),
    "classification": Contract(
        "tiny-classifier",
        lambda c, img, m: c.classify(img, model=m, top_k=3),
        "classify_stream",
        lambda c, img: c.classify(img, top_k=0),
        "top_k",
        lambda r: [x.class_name for x in r.classes],
        lambda r: [n.decode() for n in r.as_numpy("CLASS_NAMES")[0]],
        _encoded,
        {"top_k": 3},
        ("classify", {"top_k": "3"}),
    ),
    "generation": Contract(
        "tiny-generator",
        lambda c, img, m: c.generate(model=m, seed=4, count=2, fmt="raw"),
        "",
        lambda c, img: c.generate(count=65),
        "count must be in 1..64",
        lambda r: np.stack([np.frombuffer(i.raw.data, np.uint8).reshape(32, 32, 3) for i in r.images]),
        lambda r: r.as_numpy("IMAGE"),
        lambda _: {"SEED": np.array([4], np.int64)},
        {"count": 2},
        ("generate", {"seed": "4", "count": "2"}),
        lambda j: np.stack([decode_image(base64.b64decode(i["png"])) for i in j["images"]]),
        picture_width=2 * (32 + 2) + 2,  # a grid of two 32 px images, 2 px apart
    ),
}
TASKS = sorted(CONTRACTS)
IMAGE_TASKS = [t for t in TASKS if CONTRACTS[t].stream]


@pytest.fixture(scope="module")
def store(tmp_path_factory, random_detector_store, segmenter_store, captioner_store, generator_store, classifier_store):
    root = tmp_path_factory.mktemp("contract-store")
    for source, contract in zip(
        (random_detector_store, segmenter_store, captioner_store, generator_store, classifier_store),
        (CONTRACTS[t] for t in ("detection", "segmentation", "captioning", "generation", "classification")),
    ):
        shutil.copytree(source / contract.model, root / contract.model)
    return root


@pytest.fixture(scope="module")
def address(store):
    with running_server(task=TASKS, model_store=store, max_batch_size=4, http_port=0) as served:
        yield served


@pytest.fixture(scope="module")
def client(address):
    with CvtasksClient(address, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def image(shapes_dir) -> bytes:
    return (shapes_dir / "images" / "test" / "000001.png").read_bytes()


def _status(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details()


@pytest.mark.parametrize("task", TASKS)
def test_a_unary_call_names_its_model_and_times_its_stages(client, image, task):
    contract = CONTRACTS[task]
    response = contract.unary(client, image, "")
    assert response.model.name == contract.model and response.model.version == "1"
    assert response.timings.total_ms > 0 and response.timings.inference_ms > 0


@pytest.mark.parametrize("task", IMAGE_TASKS)
def test_a_stream_answers_in_order_and_a_bad_item_fails_alone(client, image, task):
    responses = list(getattr(client, CONTRACTS[task].stream)([image, BROKEN_PNG, image], timeout=120))
    assert [r.request_id for r in responses] == ["0", "1", "2"]
    assert responses[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "truncated" in responses[1].error.message or "decode" in responses[1].error.message
    assert not responses[0].HasField("error") and not responses[2].HasField("error")
    value = CONTRACTS[task].typed_value
    assert np.array_equal(value(responses[0]), value(responses[2]))


@pytest.mark.parametrize("task", TASKS)
def test_an_unknown_model_is_not_found_and_the_message_lists_the_served_ones(client, image, task):
    code, message = _status(lambda: CONTRACTS[task].unary(client, image, "no-such-model"))
    assert code == grpc.StatusCode.NOT_FOUND and CONTRACTS[task].model in message


@pytest.mark.parametrize("task", TASKS)
def test_bad_options_are_invalid_argument_and_serving_goes_on(client, image, task):
    contract = CONTRACTS[task]
    code, message = _status(lambda: contract.refused(client, image))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and contract.bad_message in message
    assert contract.unary(client, image, "")  # the server goes on


@pytest.mark.parametrize("task", TASKS)
def test_the_kserve_path_gives_what_the_typed_rpc_gives(address, client, image, task):
    contract = CONTRACTS[task]
    triton = grpcclient.InferenceServerClient(address)
    try:
        tensors = []
        for name, array in contract.kserve_inputs(image).items():
            tensor = grpcclient.InferInput(name, list(array.shape), "BYTES" if array.dtype == object else "INT64")
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        result = triton.infer(contract.model, tensors, parameters=contract.kserve_parameters, client_timeout=120)
    finally:
        triton.close()
    typed = contract.typed_value(contract.unary(client, image, ""))
    assert np.array_equal(np.asarray(contract.kserve_value(result)), np.asarray(typed))


@pytest.mark.parametrize("task", TASKS)
def test_the_kserve_rest_path_gives_what_the_typed_rpc_gives(address, client, image, task):
    contract = CONTRACTS[task]
    triton = httpclient.InferenceServerClient(address.http_url.removeprefix("http://"), network_timeout=120)
    try:
        assert triton.is_server_ready() and triton.is_model_ready(contract.model)
        tensors = []
        for name, array in contract.kserve_inputs(image).items():
            tensor = httpclient.InferInput(name, list(array.shape), "BYTES" if array.dtype == object else "INT64")
            tensor.set_data_from_numpy(array)  # binary tensor data extension
            tensors.append(tensor)
        result = triton.infer(contract.model, tensors, parameters=contract.kserve_parameters)
    finally:
        triton.close()
    typed = contract.typed_value(contract.unary(client, image, ""))
    assert np.array_equal(np.asarray(contract.kserve_value(result)), np.asarray(typed))


def _route(address, task: str, image: bytes, **headers: str):
    contract = CONTRACTS[task]
    verb, query = contract.http
    takes_image = bool(contract.stream)
    return call(
        f"{address.http_url}/v1/models/{contract.model}/{verb}",
        method="POST",
        body=image if takes_image else None,
        headers={"Content-Type": "image/png", **headers} if takes_image else headers,
        query=query,
    )


@pytest.mark.parametrize("task", TASKS)
def test_the_typed_http_route_gives_what_the_typed_rpc_gives(address, client, image, task):
    contract = CONTRACTS[task]
    reply = _route(address, task, image)
    assert reply.status == 200 and reply.headers["content-type"] == "application/json", reply.body[:300]
    typed = contract.unary(client, image, "")
    if contract.http_value is None:
        assert without_timings(reply.json()) == without_timings(to_json(typed))
    else:
        assert np.array_equal(contract.http_value(reply.json()), contract.typed_value(typed))
    assert reply.json()["model"] == {"name": contract.model, "version": "1"}
    assert reply.json()["timings"]["total_ms"] > 0


@pytest.mark.parametrize("task", TASKS)
def test_the_typed_http_route_draws_its_answer_when_asked_for_a_png(address, image, task):
    reply = _route(address, task, image, Accept="image/png")
    assert reply.status == 200 and reply.headers["content-type"] == "image/png"
    picture = decode_image(reply.body)
    assert picture.shape[1] == CONTRACTS[task].picture_width and picture.shape[2] == 3


@pytest.mark.parametrize("task", TASKS)
def test_a_batch_job_writes_a_row_per_input_and_records_a_bad_one(store, shapes_dir, tmp_path, task):
    contract = CONTRACTS[task]
    model, config = checkpoints.load_model(store / contract.model)
    job = build_job(task, config, tmp_path / "out")
    if job.task.takes_images:
        folder = tmp_path / "in"
        folder.mkdir()
        for path in sorted((shapes_dir / "images" / "test").glob("*.png"))[:3]:
            shutil.copy(path, folder / path.name)
        (folder / "broken.png").write_bytes(BROKEN_PNG)
        work, expected = file_work(job, list_inputs(folder)), 3
    else:
        work, expected = index_work(job, 3), 3
    summary = run_local(job, model, work, Manifest(tmp_path / "out", job.job()), batch_size=2, progress=False)
    assert summary.processed == expected and summary.failed == (1 if job.task.takes_images else 0)
    results = (tmp_path / "out" / f"{job.task.results}.jsonl").read_text().splitlines()
    assert len(results) == expected
    if not job.task.takes_images:  # the job's images are the service's for the same seed (image i: latent i)
        first = decode_image((tmp_path / "out" / "images" / "0" / "000000.png").read_bytes())
        assert first.shape == (32, 32, 3)
