"""Transport-level faults on a real server (port 0) with a random-weight detector: request bytes that are
not protobufs, KServe RPCs that are not implemented, client strings of 1 MiB, and model management on
a server that listens on every interface. Each gets a clean status with a short message, and the
server goes on serving."""

from __future__ import annotations

import logging
import struct
import time

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as kpb
from tritonclient.grpc import service_pb2_grpc as kgrpc

from models.preprocessing import encode_image
from services.client import CvtasksClient
from services.launch import running_server
from services.pb import models_pb2, models_pb2_grpc

GARBAGE = b"\xff\xff garbage"
MiB_NAME = "m" * (1 << 20)
MODEL = "random-detector"
DETECT = "/cvtasks.v1.DetectionService/Detect"


@pytest.fixture(scope="module")
def served(random_detector_store):
    with running_server(task="detection", model_store=random_detector_store) as address:
        yield address


@pytest.fixture(scope="module")
def channel(served):
    with grpc.insecure_channel(served, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        yield channel


@pytest.fixture(scope="module")
def png():
    return encode_image(np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8), "png")


def _error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value


def _logged(caplog, method: str) -> list[logging.LogRecord]:
    """The "rpc" lines of ``method`` that are not OK; each is written just after its status went out, so wait."""
    for _ in range(100):
        lines = [
            r
            for r in caplog.records
            if r.getMessage() == "rpc" and getattr(r, "method", None) == method and r.status != "OK"
        ]
        if lines:
            return lines
        time.sleep(0.1)
    return []


def _still_serves(address, png) -> None:
    with CvtasksClient(address, timeout=60) as client:
        assert client.health() == "SERVING"
        assert client.detect(png).image_width == 96


@pytest.mark.parametrize(
    ("method", "message_type"),
    [
        (DETECT, "cvtasks.v1.DetectRequest"),
        ("/grpc.health.v1.Health/Check", "grpc.health.v1.HealthCheckRequest"),
        ("/inference.GRPCInferenceService/ModelInfer", "inference.ModelInferRequest"),
        ("/cvtasks.v1.ModelService/ListModels", "cvtasks.v1.ListModelsRequest"),
    ],
)
def test_unary_bytes_that_are_not_a_protobuf_are_invalid_argument(served, channel, png, method, message_type, caplog):
    call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    with caplog.at_level(logging.INFO, logger="cvtasks.server"):
        err = _error(lambda: call(GARBAGE, timeout=30))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
        assert f"the request is not a valid {message_type} protobuf" in err.details()
        _still_serves(served, png)
        lines = _logged(caplog, method)
    assert [(r.status, r.levelname) for r in lines] == [("INVALID_ARGUMENT", "WARNING")]  # logged once
    assert "not a valid" in lines[0].error


@pytest.mark.parametrize(
    ("method", "message_type"),
    [
        ("/cvtasks.v1.DetectionService/DetectStream", "cvtasks.v1.DetectRequest"),
        ("/inference.GRPCInferenceService/ModelStreamInfer", "inference.ModelInferRequest"),
        (
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            "grpc.reflection.v1alpha.ServerReflectionRequest",
        ),
    ],
)
def test_stream_messages_that_are_not_a_protobuf_are_invalid_argument(served, channel, png, method, message_type):
    call = channel.stream_stream(method, request_serializer=None, response_deserializer=None)
    err = _error(lambda: list(call(iter([GARBAGE]), timeout=30)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert f"the request is not a valid {message_type} protobuf" in err.details()
    _still_serves(served, png)


@pytest.mark.parametrize(
    "rpc",
    [
        "ModelStatistics",
        "RepositoryModelLoad",
        "RepositoryModelUnload",
        "SystemSharedMemoryStatus",
        "SystemSharedMemoryRegister",
        "SystemSharedMemoryUnregister",
        "CudaSharedMemoryStatus",
        "CudaSharedMemoryRegister",
        "CudaSharedMemoryUnregister",
        "TraceSetting",
        "LogSettings",
    ],
)
def test_kserve_rpcs_that_are_not_implemented_answer_unimplemented(channel, rpc):
    stub = kgrpc.GRPCInferenceServiceStub(channel)
    request = getattr(kpb, f"{rpc}Request")()
    err = _error(lambda: getattr(stub, rpc)(request, timeout=30))
    assert err.code() == grpc.StatusCode.UNIMPLEMENTED, err.details()
    assert f"{rpc} is not implemented by cvtasks" in err.details()


def test_kserve_repository_load_says_what_to_use_instead(channel):
    err = _error(
        lambda: kgrpc.GRPCInferenceServiceStub(channel).RepositoryModelLoad(
            kpb.RepositoryModelLoadRequest(model_name=MODEL), timeout=30
        )
    )
    assert "ModelService/LoadModel" in err.details()


def _infer_request(png: bytes, **fields) -> kpb.ModelInferRequest:
    request = kpb.ModelInferRequest(**fields)
    request.inputs.add(name="IMAGE", datatype="BYTES", shape=[1])
    request.raw_input_contents.append(struct.pack("<I", len(png)) + png)
    return request


def _short(err: grpc.RpcError, code: grpc.StatusCode, *expected: str) -> None:
    assert err.code() == code, (err.code(), err.details()[:200])
    assert len(err.details()) < 1000, len(err.details())
    for text in expected:
        assert text in err.details(), err.details()


def test_a_1_mib_model_name_is_not_found_with_a_short_message(served, channel, png):
    with CvtasksClient(served, timeout=60) as client:
        _short(
            _error(lambda: client.detect(png, model=MiB_NAME)),
            grpc.StatusCode.NOT_FOUND,
            f"({1 << 20} characters)",
            MODEL,
        )
    infer = kgrpc.GRPCInferenceServiceStub(channel).ModelInfer
    _short(
        _error(lambda: infer(_infer_request(png, model_name=MiB_NAME), timeout=60)),
        grpc.StatusCode.NOT_FOUND,
        f"({1 << 20} characters)",
        MODEL,
    )
    _still_serves(served, png)


def test_1_mib_parameter_keys_inputs_outputs_and_classes_are_invalid_argument_with_a_short_message(
    served, channel, png
):
    infer = kgrpc.GRPCInferenceServiceStub(channel).ModelInfer
    request = _infer_request(png, model_name=MODEL)
    request.parameters[MiB_NAME].string_param = "x"
    _short(
        _error(lambda: infer(request, timeout=60)), grpc.StatusCode.INVALID_ARGUMENT, "unknown parameter", "characters)"
    )
    request = _infer_request(png, model_name=MODEL)
    request.parameters["class_filter"].string_param = ",".join([MiB_NAME, *map(str, range(1000))])
    _short(
        _error(lambda: infer(request, timeout=60)), grpc.StatusCode.INVALID_ARGUMENT, "class_filter", "993 more]"
    )  # 1001 unknown names, sorted: 8 are shown
    request = _infer_request(png, model_name=MODEL)
    request.outputs.add(name=MiB_NAME)
    _short(_error(lambda: infer(request, timeout=60)), grpc.StatusCode.INVALID_ARGUMENT, "unknown output")
    request = _infer_request(png, model_name=MODEL)
    request.inputs[0].name = MiB_NAME
    _short(_error(lambda: infer(request, timeout=60)), grpc.StatusCode.INVALID_ARGUMENT, "unknown input")
    with CvtasksClient(served, timeout=60) as client:
        _short(
            _error(lambda: client.detect(png, classes=[MiB_NAME])),
            grpc.StatusCode.INVALID_ARGUMENT,
            "class_filter",
            "characters)",
        )
    _still_serves(served, png)


def test_garbage_from_a_client_without_a_token_is_refused_for_the_token_first(random_detector_store):
    from services.security import SecurityConfig

    security = SecurityConfig(tokens=("user-token-0123456789abcdef",))
    with running_server(task="detection", model_store=random_detector_store, security=security) as address:
        with grpc.insecure_channel(address) as channel:
            call = channel.unary_unary(DETECT, request_serializer=None, response_deserializer=None)
            err = _error(lambda: call(GARBAGE, timeout=30))
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED, err.details()
            err = _error(
                lambda: call(GARBAGE, timeout=30, metadata=[("authorization", "Bearer user-token-0123456789abcdef")])
            )
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT  # with the token: what is wrong with it


def test_model_management_is_closed_on_every_interface_without_admin_tokens(random_detector_store):
    with running_server(task="detection", model_store=random_detector_store, host="0.0.0.0") as address:
        with grpc.insecure_channel(address.replace("0.0.0.0", "127.0.0.1")) as channel:
            stub = models_pb2_grpc.ModelServiceStub(channel)
            for call, request in (
                (stub.LoadModel, models_pb2.LoadModelRequest(name=MODEL)),
                (stub.UnloadModel, models_pb2.UnloadModelRequest(name=MODEL)),
            ):
                err = _error(lambda: call(request, timeout=60))
                assert err.code() == grpc.StatusCode.PERMISSION_DENIED
                assert "admin tokens" in err.details() and "--host 127.0.0.1" in err.details()
            assert [m.name for m in stub.ListModels(models_pb2.ListModelsRequest(), timeout=30).models] == [MODEL]


def test_model_management_opens_on_a_trusted_network_when_asked(random_detector_store):
    from services.security import SecurityConfig

    with running_server(
        task="detection",
        model_store=random_detector_store,
        host="0.0.0.0",
        security=SecurityConfig(open_management=True),
    ) as address:
        with grpc.insecure_channel(address.replace("0.0.0.0", "127.0.0.1")) as channel:
            stub = models_pb2_grpc.ModelServiceStub(channel)
            assert stub.LoadModel(models_pb2.LoadModelRequest(name=MODEL), timeout=120).ready
            assert stub.UnloadModel(models_pb2.UnloadModelRequest(name=MODEL), timeout=120).name == MODEL
