"""The Prometheus endpoint of a real server (gRPC and metrics both on port 0): after known traffic
the scrape has each series with the right labels and counts."""

from __future__ import annotations

import shutil
import urllib.request

import grpc
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from models.preprocessing import encode_image, read_image
from services.client import CvtasksClient
from services.launch import running_server
from services.metrics import STAGES

DETECT = "/cvtasks.v1.DetectionService/Detect"
DETECT_STREAM = "/cvtasks.v1.DetectionService/DetectStream"
SEGMENT = "/cvtasks.v1.SegmentationService/Segment"


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _requests(got, model: str, method: str, status: str) -> float:
    return got.get(("cvtasks_requests_total", (("method", method), ("model", model), ("status", status))), 0)


@pytest.fixture(scope="module")
def scraped(detector_store, segmenter_store, shapes_dir, tmp_path_factory):
    """Known traffic against a detection + segmentation server, then one scrape of its metrics."""
    store = tmp_path_factory.mktemp("metrics-store")
    shutil.copytree(detector_store / "tiny-detector", store / "tiny-detector")
    shutil.copytree(segmenter_store / "tiny-segmenter", store / "tiny-segmenter")
    images = [encode_image(read_image(p), "png") for p in sorted((shapes_dir / "images" / "test").glob("*.png"))[:4]]
    with running_server(task=["detection", "segmentation"], model_store=store, metrics_port=0) as address:
        assert address.metrics_url and address.metrics_url.endswith("/metrics")
        with CvtasksClient(address, timeout=60) as client:
            for image in images[:3]:
                client.detect(image)  # 3 x OK, 3 items
            with pytest.raises(grpc.RpcError) as bad:
                client.detect(images[0][:40])  # corrupt PNG
            assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            with pytest.raises(grpc.RpcError) as unknown:
                client.detect(images[0], model="no-such-model")
            assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
            assert len(list(client.detect_stream(images))) == 4  # 1 RPC, 4 items
            for image in images[:2]:
                client.segment(image)  # 2 x OK, 2 items
        with urllib.request.urlopen(address.metrics_url, timeout=30) as response:
            assert response.status == 200
            yield _samples(response.read().decode())


def test_requests_are_counted_by_model_method_and_status(scraped):
    assert _requests(scraped, "tiny-detector", DETECT, "OK") == 3
    assert _requests(scraped, "tiny-detector", DETECT, "INVALID_ARGUMENT") == 1
    assert _requests(scraped, "tiny-detector", DETECT_STREAM, "OK") == 1
    assert _requests(scraped, "tiny-segmenter", SEGMENT, "OK") == 2
    # An unknown name never becomes a label value (clients cannot grow the series without bound).
    assert _requests(scraped, "", DETECT, "NOT_FOUND") == 1
    assert not any(dict(labels).get("model") == "no-such-model" for _, labels in scraped)


def test_stage_latencies_are_observed_once_per_item_that_reached_the_model(scraped):
    for model, items in (("tiny-detector", 3 + 4), ("tiny-segmenter", 2)):
        for stage in STAGES:
            key = (("model", model), ("stage", stage))
            assert scraped[("cvtasks_request_latency_seconds_count", key)] == items, (model, stage)
            assert scraped[("cvtasks_request_latency_seconds_sum", key)] >= 0
        total = scraped[("cvtasks_request_latency_seconds_sum", (("model", model), ("stage", "total")))]
        inference = scraped[("cvtasks_request_latency_seconds_sum", (("model", model), ("stage", "inference")))]
        assert total >= inference > 0


def test_batch_sizes_add_up_to_the_items_and_exclude_the_warm_up(scraped):
    for model, items in (("tiny-detector", 7), ("tiny-segmenter", 2)):
        assert scraped[("cvtasks_batch_size_sum", (("model", model),))] == items
        assert 1 <= scraped[("cvtasks_batch_size_count", (("model", model),))] <= items


def test_queue_depth_per_model_is_zero_once_idle(scraped):
    assert scraped[("cvtasks_queue_depth", (("model", "tiny-detector"),))] == 0
    assert scraped[("cvtasks_queue_depth", (("model", "tiny-segmenter"),))] == 0


def test_gpu_memory_is_reported_exactly_when_the_models_run_on_cuda(scraped):
    memory = {
        dict(labels)["kind"]: value
        for (name, labels), value in scraped.items()
        if name == "cvtasks_gpu_memory_bytes" and ("device", "cuda:0") in labels
    }
    if torch.cuda.is_available():  # the server picks CUDA when present
        assert memory["reserved"] >= memory["allocated"] > 0
    else:
        assert memory == {}
