"""Grad-CAM explanations on every path of a real server on port 0 (the tiny classifier, random
weights: this is about transport; tests/e2e/test_learning_explain.py checks what the maps show):
the typed RPC's overlay and map PNGs at the image's size (and none without ``explain``), the
KServe GRADCAM output only when asked, a batch job's explanations/<input>.png, and
`cvtasks classify --explain` saving the overlay."""

from __future__ import annotations

import base64
import json

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from models import checkpoints
from models.batch.engine import file_work, run_local
from models.batch.job import build_job
from models.batch.store import Manifest, list_inputs
from models.preprocessing import decode_image, encode_image, read_image
from services.cli import main as cli_main
from services.client import CvtasksClient
from services.launch import running_server
from tests.web import call


@pytest.fixture(scope="module")
def address(classifier_store):
    with running_server(task="classification", model_store=classifier_store, http_port=0) as served:
        yield served


@pytest.fixture(scope="module")
def image(shapes_dir) -> np.ndarray:
    """A 100 x 60 crop: not square, so the letterbox pads it."""
    return read_image(sorted((shapes_dir / "images" / "test").glob("*.png"))[0])[:60, :100]


def test_classify_with_explain_returns_an_overlay_and_a_map_of_the_image_size(address, image):
    with CvtasksClient(address, timeout=60) as client:
        explained = client.classify(encode_image(image), explain=True)
        plain = client.classify(encode_image(image))
        streamed = list(client.classify_stream([encode_image(image)] * 2, explain=True))
    overlay, heatmap = decode_image(explained.explanation_png), decode_image(explained.heatmap_png)
    assert overlay.shape == (60, 100, 3) and heatmap.shape == (60, 100, 3)
    assert not np.array_equal(overlay, image) and heatmap.max() == 255  # the map is scaled to its peak
    assert plain.explanation_png == b"" and plain.heatmap_png == b""
    assert [c.class_name for c in plain.classes] == [c.class_name for c in explained.classes]
    for r in streamed:  # batched together: the same map, to a rounding of the 8-bit PNG
        assert np.abs(decode_image(r.heatmap_png).astype(int) - heatmap).max() <= 1


def test_the_http_route_explains_in_json_and_draws_the_overlay(address, image):
    route = f"{address.http_url}/v1/models/tiny-classifier/classify"
    png = {"Content-Type": "image/png"}
    explained = call(route, method="POST", body=encode_image(image), headers=png, query={"explain": "true"})
    assert explained.status == 200, explained.body[:300]
    overlay = decode_image(base64.b64decode(explained.json()["explanation_png"]))
    assert overlay.shape == (60, 100, 3)
    plain = call(route, method="POST", body=encode_image(image), headers=png)
    assert plain.json().get("explanation_png", "") == ""  # (the JSON shows every field, empty ones too)
    drawn = call(
        route,
        method="POST",
        body=encode_image(image),
        headers={**png, "Accept": "image/png"},
        query={"explain": "true"},
    )
    assert drawn.status == 200 and decode_image(drawn.body).shape[1] == 100  # the overlay above its classes


def test_kserve_gives_gradcam_only_when_asked(address, image):
    triton = grpcclient.InferenceServerClient(address)
    try:
        pixels = grpcclient.InferInput("PIXELS", [1, 60, 100, 3], "UINT8")
        pixels.set_data_from_numpy(image[None])
        asked = triton.infer("tiny-classifier", [pixels], parameters={"explain": True})
        plain = triton.infer("tiny-classifier", [pixels])
        with pytest.raises(Exception) as refused:
            triton.infer("tiny-classifier", [pixels], outputs=[grpcclient.InferRequestedOutput("GRADCAM")])
    finally:
        triton.close()
    gradcam = asked.as_numpy("GRADCAM")
    assert gradcam.shape == (1, 60, 100) and 0.0 <= gradcam.min() and gradcam.max() == pytest.approx(1.0)
    assert plain.as_numpy("GRADCAM") is None and plain.as_numpy("LABELS") is not None
    assert "explain" in str(refused.value)
    with CvtasksClient(address, timeout=60) as client:
        typed = decode_image(client.classify(encode_image(image), explain=True).heatmap_png)
    assert np.abs(typed[..., 0] / 255.0 - gradcam[0]).max() <= 1 / 255 + 1e-6  # the same map on both paths


def test_a_batch_job_with_explain_writes_an_overlay_per_image(classifier_store, shapes_dir, tmp_path):
    model, config = checkpoints.load_model(classifier_store / "tiny-classifier")
    job = build_job("classification", config, tmp_path / "out", explain=True)
    work = file_work(job, list_inputs(shapes_dir / "images" / "test"))
    summary = run_local(job, model, work, Manifest(tmp_path / "out", job.job()), batch_size=4, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "out" / "classifications.jsonl").read_text().splitlines()]
    assert summary.failed == 0 and rows and all(r["explanation"].startswith("explanations/") for r in rows)
    first = decode_image((tmp_path / "out" / rows[0]["explanation"]).read_bytes())
    assert first.shape == (rows[0]["height"], rows[0]["width"], 3)


def test_the_classify_command_saves_the_overlay(address, image, tmp_path):
    (tmp_path / "crop.png").write_bytes(encode_image(image))
    code = cli_main(
        ["classify", str(tmp_path / "crop.png"), "--server", address, "--explain", "--out", str(tmp_path / "x")]
        + ["--output", str(tmp_path / "rows.json")]
    )
    saved = tmp_path / "x" / "crop_explanation.png"
    assert code == 0 and decode_image(saved.read_bytes()).shape == (60, 100, 3)
    assert json.loads((tmp_path / "rows.json").read_text())[0]["explanation"] == str(saved)


def test_bad_explain_values_are_invalid_argument(address, image):
    triton = grpcclient.InferenceServerClient(address)
    pixels = grpcclient.InferInput("PIXELS", [1, 60, 100, 3], "UINT8")
    pixels.set_data_from_numpy(image[None])
    try:
        with pytest.raises(Exception, match="explain"):
            triton.infer("tiny-classifier", [pixels], parameters={"explain": "yes"})
    finally:
        triton.close()
    with CvtasksClient(address, timeout=60) as client:
        with pytest.raises(grpc.RpcError) as caught:
            client.classify(encode_image(image), threshold=1.5)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "threshold" in caught.value.details()
