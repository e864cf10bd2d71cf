"""HTTP/REST on a real server (port 0) next to gRPC, with real PNG bytes: bad bodies get a 4xx that
says what to fix and serving goes on, the body limit refuses before the body is read in full,
multipart uploads, JSON tensors, HTTP and gRPC requests sharing a batch, the request metrics,
the OpenAPI schema, tokens and TLS, deadlines and the graceful drain. What every task answers
over HTTP (tritonclient.http, the typed routes, their pictures) is in test_task_contract.py."""

from __future__ import annotations

import shutil
import threading
import time

import cv2
import numpy as np
import pytest
import tritonclient.http as httpclient

from models.preprocessing import encode_image
from services.client import CvtasksClient
from services.launch import running_server
from services.security import SecurityConfig
from tests.integration.test_security import USER, pki  # noqa: F401 — pki is a fixture
from tests.web import call, multipart, send_until_answered, without_timings

DETECTOR, CLASSIFIER, GENERATOR = "random-detector", "tiny-classifier", "tiny-generator"
LIMIT = 1 << 20  # bytes: the server's message limit, gRPC's and HTTP's
MAX_PIXELS = 200_000


@pytest.fixture(scope="module")
def store(tmp_path_factory, random_detector_store, classifier_store, generator_store):
    root = tmp_path_factory.mktemp("http-store")
    for source, name in (
        (random_detector_store, DETECTOR),
        (classifier_store, CLASSIFIER),
        (generator_store, GENERATOR),
    ):
        shutil.copytree(source / name, root / name)
    return root


@pytest.fixture(scope="module")
def server(store):
    # A batch waits up to 300 ms for company, so two requests sent together share one.
    with running_server(
        task=["detection", "classification", "generation"],
        model_store=store,
        http_port=0,
        metrics_port=0,
        max_message_bytes=LIMIT,
        max_pixels=MAX_PIXELS,
        max_batch_size=4,
        max_delay_ms=300,
    ) as address:
        yield address


@pytest.fixture(scope="module")
def png(shapes_dir) -> bytes:
    return (shapes_dir / "images" / "test" / "000001.png").read_bytes()


def detect(server, body, kind="image/png", *, query=None, **headers):
    headers = {"Content-Type": kind, **headers} if kind else headers
    return call(
        f"{server.http_url}/v1/models/{DETECTOR}/detect", method="POST", body=body, headers=headers, query=query
    )


def infer(server, model, body, **headers):
    return call(f"{server.http_url}/v2/models/{model}/infer", method="POST", body=body, headers=headers)


# --------------------------------------------------------------------------- bad requests


def _chunks(size: int):
    for _ in range(size // 65536):
        yield b"\0" * 65536


def _stream(server, size: int, *, length: bool = False, expect: bool = False, base: str = "", **kwargs):
    """Send ``size`` bytes as a detect request's body, stopping when the server answers: (reply, bytes sent)."""
    headers = {"Content-Type": "image/png", **({"Content-Length": str(size)} if length else {})}
    if expect:
        headers["Expect"] = "100-continue"
    url = f"{base or server.http_url}/v1/models/{DETECTOR}/detect"
    return send_until_answered(url, headers, _chunks(size), chunked=not length, **kwargs)


BAD = {
    "not an image": (lambda s, png: detect(s, b"hello, world"), 400, "unrecognised image format"),
    "empty": (lambda s, png: detect(s, b""), 400, "empty image"),
    "truncated": (lambda s, png: detect(s, png[: len(png) // 2]), 400, "truncated"),
    "json for an image": (lambda s, png: detect(s, b"{}", kind="application/json"), 415, "is not an image"),
    "curl's default type": (
        lambda s, png: detect(s, png, kind="application/x-www-form-urlencoded"),
        415,
        "-H 'Content-Type: image/jpeg'",
    ),
    "too large by length": (lambda s, png: _stream(s, 4 * LIMIT, length=True)[0], 413, f"limit of {LIMIT} bytes"),
    "too large streamed": (lambda s, png: _stream(s, 4 * LIMIT)[0], 413, f"over {LIMIT} bytes"),
    "too many pixels": (
        lambda s, png: detect(s, encode_image(np.zeros((500, 500, 3), np.uint8))),
        413,
        "pixels",
    ),
    "option not a number": (lambda s, png: detect(s, png, query={"score_threshold": "high"}), 400, "must be a number"),
    "option out of range": (lambda s, png: detect(s, png, query={"score_threshold": "1.5"}), 400, "score_threshold"),
    "unknown option": (lambda s, png: detect(s, png, query={"threshold": "0.2"}), 400, "unknown option `threshold`"),
    "unknown class": (lambda s, png: detect(s, png, query={"classes": "dog"}), 400, "unknown classes"),
    "unknown model": (
        lambda s, png: call(
            f"{s.http_url}/v1/models/nope/detect", method="POST", body=png, headers={"Content-Type": "image/png"}
        ),
        404,
        DETECTOR,
    ),
    "multipart without the image": (
        lambda s, png: detect(s, *multipart({"score_threshold": "0.3"}, {})),
        400,
        "`image`",
    ),
    "multipart that does not parse": (
        lambda s, png: detect(s, b"--x\r\nnonsense", kind="multipart/form-data; boundary=y"),
        400,
        "curl -F image=@photo.jpg",
    ),
    "infer: not JSON": (lambda s, png: infer(s, GENERATOR, b"{inputs: oops"), 400, "not JSON"),
    "infer: empty": (lambda s, png: infer(s, GENERATOR, b""), 400, "body is empty"),
    "infer: no inputs": (lambda s, png: infer(s, GENERATOR, b'{"inputs": []}'), 400, "SEED"),
    "infer: wrong datatype": (
        lambda s, png: infer(
            s, GENERATOR, b'{"inputs": [{"name": "SEED", "datatype": "FP32", "shape": [1], "data": [1]}]}'
        ),
        400,
        "SEED must be INT64 or UINT64",
    ),
    "infer: header past the body": (
        lambda s, png: infer(s, CLASSIFIER, b'{"inputs": []}', **{"Inference-Header-Content-Length": "999"}),
        400,
        "Inference-Header-Content-Length",
    ),
    "infer: unknown parameter": (
        lambda s, png: infer(
            s,
            GENERATOR,
            b'{"inputs": [{"name": "SEED", "datatype": "INT64", "shape": [1], "data": [1]}], '
            b'"parameters": {"cout": 2}}',
        ),
        400,
        "unknown parameter `cout`",
    ),
    "infer: an image's type": (lambda s, png: infer(s, CLASSIFIER, png, **{"Content-Type": "image/png"}), 415, "JSON"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_request_gets_a_4xx_saying_what_to_fix_and_serving_goes_on(server, png, case):
    send, status, text = BAD[case]
    reply = send(server, png)
    assert reply.status == status, reply.body[:300]
    assert reply.headers["content-type"] == "application/json"
    assert text in reply.error, reply.error
    good = detect(server, png, query={"score_threshold": "0.0"})
    assert good.status == 200 and good.json()["image_width"] == 128


def test_a_body_over_the_limit_is_refused_before_it_is_read_in_full(server):
    size = 64 * LIMIT
    reply, sent = _stream(server, size, length=True, expect=True)  # curl's way for a large file
    assert reply.status == 413 and sent == 0 and "--max-message-mb" in reply.error
    reply, sent = _stream(server, size, length=True)  # the length is read before the body
    assert reply.status == 413 and sent < size // 4  # (what was sent went into socket buffers, unread)
    reply, sent = _stream(server, size)  # no length: counted as it streams, refused at the limit
    assert reply.status == 413 and LIMIT <= sent < size // 4


# --------------------------------------------------------------------------- what the routes take


def test_a_multipart_upload_with_form_options_equals_the_raw_body_with_query_options(server, png):
    body, kind = multipart({"score_threshold": "0.0", "max_detections": "3"}, {"image": ("a.png", png, "image/png")})
    upload = detect(server, body, kind=kind)
    raw = detect(server, png, query={"score_threshold": "0.0", "max_detections": "3"})
    assert upload.status == raw.status == 200
    assert without_timings(upload.json()) == without_timings(raw.json())
    assert len(raw.json()["detections"]) == 3


def test_json_tensors_give_what_binary_tensors_give(server, png):
    """PIXELS as a JSON array (curl's way) against IMAGE through tritonclient.http's binary extension."""
    rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    request = {
        "inputs": [{"name": "PIXELS", "datatype": "UINT8", "shape": [1, *rgb.shape], "data": rgb.ravel().tolist()}],
        "parameters": {"top_k": 2},
        "outputs": [{"name": "CLASS_NAMES"}, {"name": "PROBABILITIES"}],
    }
    import json

    reply = infer(server, CLASSIFIER, json.dumps(request).encode(), **{"Content-Type": "application/json"})
    assert reply.status == 200 and reply.headers["content-type"] == "application/json"
    outputs = {o["name"]: o for o in reply.json()["outputs"]}
    assert list(outputs) == ["CLASS_NAMES", "PROBABILITIES"] and outputs["CLASS_NAMES"]["shape"] == [1, 2]
    client = httpclient.InferenceServerClient(server.http_url.removeprefix("http://"))
    try:
        tensor = httpclient.InferInput("IMAGE", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([png], dtype=object))
        result = client.infer(CLASSIFIER, [tensor], parameters={"top_k": 2})
    finally:
        client.close()
    assert [n.decode() for n in result.as_numpy("CLASS_NAMES")[0]] == outputs["CLASS_NAMES"]["data"]
    assert np.allclose(result.as_numpy("PROBABILITIES")[0], outputs["PROBABILITIES"]["data"])


def test_health_metadata_and_the_model_routes(server):
    base = server.http_url
    assert call(f"{base}/v2/health/live").json() == {"live": True}
    assert call(f"{base}/v2/health/ready").status == 200
    assert call(f"{base}/v2").json()["name"] == "cvtasks"
    assert call(f"{base}/v2/models/{CLASSIFIER}/versions/1/ready").status == 200
    missing = call(f"{base}/v2/models/nope/ready")
    assert missing.status == 404 and CLASSIFIER in missing.error
    assert call(f"{base}/v2/models/{CLASSIFIER}/versions/7").status == 404
    config = call(f"{base}/v2/models/{GENERATOR}/config").json()
    assert config["name"] == GENERATOR and config["parameters"]["task"]["string_value"] == "generation"
    models = call(f"{base}/v1/models").json()["models"]
    assert sorted(m["name"] for m in models) == sorted([DETECTOR, CLASSIFIER, GENERATOR])
    assert call(f"{base}/v1/models/{CLASSIFIER}").json()["classes"] == ["circle", "square", "triangle"]
    assert call(f"{base}/v1/models/nope").status == 404
    assert call(f"{base}/v1/nothing-here").status == 404


def test_the_openapi_schema_lists_the_routes_with_options_from_their_declaration(server):
    schema = call(f"{server.http_url}/openapi.json").json()
    detect_route = schema["paths"]["/v1/models/{name}/detect"]["post"]
    params = {p["name"]: p for p in detect_route["parameters"]}
    assert params["score_threshold"]["schema"] == {"type": "number", "minimum": 0.0, "maximum": 1.0, "default": 0.5}
    assert "annotate" not in params  # a batch-job option the request does not carry
    assert "multipart/form-data" in detect_route["requestBody"]["content"]
    assert "/v1/models/{name}/interpolate" in schema["paths"] and "/v2/models/{name}/infer" in schema["paths"]
    docs = call(f"{server.http_url}/docs")
    assert docs.status == 200 and b"/docs/static/swagger-ui-bundle.js" in docs.body  # served here, no CDN
    assert b"cdn." not in docs.body and b"https://" not in docs.body
    script = call(f"{server.http_url}/docs/static/swagger-ui-bundle.js")
    assert script.status == 200 and len(script.body) > 100_000


# --------------------------------------------------------------------------- one process, one set of models


def _batches(metrics_url: str, model: str) -> tuple[float, float]:
    """(batches run, batches of one item) of ``model``, from its /metrics text."""
    text = call(metrics_url).body.decode()
    count = one = 0.0
    for line in text.splitlines():
        if line.startswith("cvtasks_batch_size_count") and f'model="{model}"' in line:
            count = float(line.rsplit(" ", 1)[1])
        if line.startswith("cvtasks_batch_size_bucket") and 'le="1.0"' in line and f'model="{model}"' in line:
            one = float(line.rsplit(" ", 1)[1])
    return count, one


def test_an_http_request_and_a_grpc_request_share_a_batch(server, png):
    before = _batches(server.metrics_url, CLASSIFIER)
    replies = {}
    with CvtasksClient(server, timeout=60) as client:
        gate = threading.Barrier(2)

        def over_http():
            gate.wait()
            replies["http"] = call(
                f"{server.http_url}/v1/models/{CLASSIFIER}/classify",
                method="POST",
                body=png,
                headers={"Content-Type": "image/png"},
            )

        thread = threading.Thread(target=over_http)
        thread.start()
        gate.wait()
        replies["grpc"] = client.classify(png, model=CLASSIFIER)
        thread.join(60)
    after = _batches(server.metrics_url, CLASSIFIER)
    assert replies["http"].status == 200
    assert after[0] - before[0] == 1 and after[1] == before[1]  # one batch, of two items
    assert [c["class_name"] for c in replies["http"].json()["classes"]] == [
        c.class_name for c in replies["grpc"].classes
    ]


def test_http_requests_are_counted_on_the_process_metrics(server, png):
    assert detect(server, png).status == 200
    assert detect(server, b"nope").status == 400
    text = call(server.metrics_url).body.decode()
    route = 'method="POST /v1/models/{name}/detect"'
    counted = {
        line.split("} ")[0] for line in text.splitlines() if line.startswith("cvtasks_requests_total") and route in line
    }
    assert any('status="200"' in c and f'model="{DETECTOR}"' in c for c in counted), counted
    assert any('status="400"' in c for c in counted), counted
    assert f'cvtasks_request_latency_seconds_count{{model="{DETECTOR}",stage="total"}}' in text


# --------------------------------------------------------------------------- tokens and TLS


@pytest.fixture(scope="module")
def secured(store, pki):  # noqa: F811 — the fixture imported above
    security = SecurityConfig(tls_cert=str(pki / "server.crt"), tls_key=str(pki / "server.key"), tokens=(USER,))
    with running_server(
        task="classification", model_store=store, models=[CLASSIFIER], http_port=0, security=security
    ) as address:
        yield address


def _tls(pki):  # noqa: F811
    import ssl

    return ssl.create_default_context(cafile=str(pki / "ca.crt"))


def test_tokens_are_checked_before_the_body_and_health_stays_open(secured, pki, png):  # noqa: F811
    base = secured.http_url.replace("127.0.0.1", "localhost")
    assert base.startswith("https://")
    url, context = f"{base}/v1/models/{CLASSIFIER}/classify", _tls(pki)
    image = {"Content-Type": "image/png"}
    missing = call(url, method="POST", body=png, headers=image, context=context)
    assert missing.status == 401 and "Authorization: Bearer" in missing.error
    assert missing.headers["www-authenticate"].startswith("Bearer")
    wrong = call(
        url, method="POST", body=png, headers={**image, "Authorization": "Bearer not-the-token-at-all"}, context=context
    )
    assert wrong.status == 401 and "not valid" in wrong.error
    big, sent = _stream(secured, 256 * LIMIT, length=True, expect=True, base=base, context=context)
    assert big.status == 401 and sent == 0  # refused before any of the body is read
    good = call(url, method="POST", body=png, headers={**image, "Authorization": f"Bearer {USER}"}, context=context)
    assert good.status == 200 and good.json()["model"]["name"] == CLASSIFIER
    assert call(f"{base}/v1/models", context=context).status == 401
    assert call(f"{base}/v2/health/ready", context=context).status == 200  # probes need no token
    assert call(f"{base}/v2/health/live", context=context).status == 200


def test_tritonclient_http_with_a_token_over_tls(secured, pki, png):  # noqa: F811
    import gevent.ssl

    client = httpclient.InferenceServerClient(
        secured.http_url.replace("127.0.0.1", "localhost").removeprefix("https://"),
        ssl=True,
        ssl_context_factory=lambda: gevent.ssl.create_default_context(cafile=str(pki / "ca.crt")),
    )
    try:
        tensor = httpclient.InferInput("IMAGE", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([png], dtype=object))
        result = client.infer(CLASSIFIER, [tensor], headers={"Authorization": f"Bearer {USER}"})
        assert result.as_numpy("CLASS_NAMES").shape == (1, 3)
        with pytest.raises(Exception, match="token"):
            client.infer(CLASSIFIER, [tensor])
    finally:
        client.close()


def test_plain_http_to_the_tls_port_gets_no_answer(secured):
    with pytest.raises(OSError):
        call(secured.http_url.replace("https://", "http://") + "/v2/health/live", timeout=10)


# --------------------------------------------------------------------------- deadlines and draining


def test_a_queued_request_past_its_deadline_is_504_and_a_stop_drains_the_one_in_flight(store):
    # Every batch waits 1.5 s for company: past the 0.5 s default deadline, within a 10 s one.
    with running_server(
        task="generation", model_store=store, http_port=0, max_delay_ms=1500, default_deadline_s=0.5, grace_s=10
    ) as server:
        route = f"{server.http_url}/v1/models/{GENERATOR}/generate"
        late = call(route, method="POST", query={"seed": 1})
        assert late.status == 504 and "deadline" in late.error
        # the client's own deadline, as a gRPC client's: long enough, too short, not a number
        assert call(route, method="POST", query={"seed": 1, "timeout_s": 10}).status == 200
        short = call(route, method="POST", query={"seed": 1, "timeout_s": 0.2})
        assert short.status == 504 and "deadline" in short.error
        bad = call(route, method="POST", query={"seed": 1, "timeout_s": "soon"})
        assert bad.status == 400 and "timeout_s" in bad.error and "number" in bad.error
        client = httpclient.InferenceServerClient(server.http_url.removeprefix("http://"), network_timeout=60)
        seed = httpclient.InferInput("SEED", [1], "INT64")
        seed.set_data_from_numpy(np.array([3], np.int64))
        replies = {}
        thread = threading.Thread(
            target=lambda: replies.update(result=client.infer(GENERATOR, [seed], timeout=10_000_000))  # µs
        )
        thread.start()
        time.sleep(0.5)  # the request waits in the batcher when the server is told to stop
    thread.join(30)
    client.close()
    assert replies["result"].as_numpy("IMAGE").shape == (1, 32, 32, 3)
    with pytest.raises(OSError):
        call(f"{server.http_url}/v2/health/live", timeout=5)


def test_keep_alive_responses_do_not_wait_for_delayed_acks(server):
    """TCP_NODELAY on the HTTP connections: with Nagle on, each response's body waited for the
    client's delayed ACK, >= 40 ms per request on one connection (found by benchmarks/http_vs_grpc.py)."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(server.http_url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    seconds = []
    try:
        for _ in range(10):
            started = time.perf_counter()
            connection.request("GET", "/v2/health/live")
            assert connection.getresponse().read() == b'{"live":true}'
            seconds.append(time.perf_counter() - started)
    finally:
        connection.close()
    assert min(seconds[1:]) < 0.02, seconds


def test_under_mutual_tls_the_http_port_needs_a_client_certificate(store, pki):  # noqa: F811
    import ssl

    security = SecurityConfig(
        tls_cert=str(pki / "server.crt"), tls_key=str(pki / "server.key"), tls_client_ca=str(pki / "ca.crt")
    )
    with running_server(task="generation", model_store=store, models=[GENERATOR], http_port=0, security=security) as s:
        url = s.http_url.replace("127.0.0.1", "localhost") + "/v2/health/live"
        with pytest.raises(OSError):  # the handshake fails without a certificate
            call(url, context=_tls(pki), timeout=10)
        context = _tls(pki)
        context.load_cert_chain(str(pki / "client.crt"), str(pki / "client.key"))
        assert isinstance(context, ssl.SSLContext) and call(url, context=context).json() == {"live": True}


# --------------------------------------------------------------------------- CORS and the page


def test_cors_is_off_by_default_and_on_for_the_origins_given(server, store):
    origin = {"Origin": "https://app.example"}
    plain = call(f"{server.http_url}/v1/models", headers=origin)
    assert plain.status == 200 and "access-control-allow-origin" not in {k.lower() for k in plain.headers}
    tokens = SecurityConfig(tokens=(USER,))
    with running_server(
        task="generation",
        model_store=store,
        models=[GENERATOR],
        http_port=0,
        cors_origins=("https://app.example",),
        security=tokens,
    ) as s:
        preflight = {
            **origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        }
        # the preflight carries no token and still passes; the call itself needs one
        answered = call(f"{s.http_url}/v1/models/{GENERATOR}/generate", method="OPTIONS", headers=preflight)
        assert answered.status == 200
        assert answered.headers["access-control-allow-origin"] == "https://app.example"
        assert "authorization" in answered.headers["access-control-allow-headers"].lower()
        listed = call(f"{s.http_url}/v1/models", headers={**origin, "Authorization": f"Bearer {USER}"})
        assert listed.status == 200 and listed.headers["access-control-allow-origin"] == "https://app.example"
        assert call(f"{s.http_url}/v1/models", headers=origin).status == 401
        other = call(
            f"{s.http_url}/v1/models", headers={"Origin": "https://evil.example", "Authorization": f"Bearer {USER}"}
        )
        assert "access-control-allow-origin" not in {k.lower() for k in other.headers}
        # the page and its files are open; what they fetch is not
        assert call(f"{s.http_url}/").status == 200 and b"cvtasks" in call(f"{s.http_url}/").body
        config = call(f"{s.http_url}/ui/config.json")
        assert config.status == 200 and len(config.json()["palette"]) == 256
        assert call(f"{s.http_url}/ui/app.js").status == 200
