"""ModelService LoadModel / UnloadModel on a real server: several models per process, a new
version swapped in under steady load without one failed request, unload, and refusals."""

from __future__ import annotations

import dataclasses
import shutil
import threading
import time

import grpc
import pytest

from models import checkpoints
from services.client import CvtasksClient
from services.launch import running_server


@pytest.fixture()
def store(segmenter_store, generator_store, tmp_path):
    shutil.copytree(segmenter_store / "tiny-segmenter", tmp_path / "tiny-segmenter")
    model, config = checkpoints.load_model(segmenter_store / "tiny-segmenter")
    checkpoints.save_model(model, dataclasses.replace(config, name="other-segmenter"), tmp_path / "other-segmenter")
    shutil.copytree(generator_store / "tiny-generator", tmp_path / "tiny-generator")
    shutil.copytree(segmenter_store / "tiny-segmenter", tmp_path / "copied-segmenter")  # config says tiny-segmenter
    return tmp_path


def _bump_version(store, name, version):
    model, config = checkpoints.load_model(store / name)
    checkpoints.save_model(model, dataclasses.replace(config, version=version), store / name)


def test_a_new_version_swaps_in_under_steady_load_and_no_request_fails(store, shapes_dir):
    image = (shapes_dir / "images" / "test" / "000001.png").read_bytes()
    stop, failures, versions, lock = threading.Event(), [], set(), threading.Lock()
    with running_server(task="segmentation", model_store=store, models=["tiny-segmenter"]) as address:

        def steady_load():
            with CvtasksClient(address, timeout=60) as client:
                while not stop.is_set():
                    try:
                        response = client.segment(image, model="tiny-segmenter")
                        with lock:
                            versions.add(response.model.version)
                    except grpc.RpcError as exc:
                        with lock:
                            failures.append(f"{exc.code().name}: {exc.details()}")

        clients = [threading.Thread(target=steady_load) for _ in range(4)]
        for thread in clients:
            thread.start()
        with CvtasksClient(address, timeout=120) as admin:
            for version in ("2", "3"):
                _bump_version(store, "tiny-segmenter", version)
                info = admin.load_model("tiny-segmenter")
                assert info.version == version and info.ready
            deadline = time.monotonic() + 30  # let the load reach the last version before stopping it
            while "3" not in versions and not failures and time.monotonic() < deadline:
                time.sleep(0.01)
            stop.set()
            for thread in clients:
                thread.join(60)
            assert admin.get_model("tiny-segmenter").version == "3"
    assert failures == [] and "3" in versions and len(versions) >= 2


def test_load_a_second_model_make_it_default_then_unload_it(store):
    with running_server(task="segmentation", model_store=store, models=["tiny-segmenter"]) as address:
        with CvtasksClient(address, timeout=120) as client:
            info = client.load_model("other-segmenter", make_default=True)
            assert info.is_default and info.task == "segmentation"
            assert sorted(m.name for m in client.list_models()) == ["other-segmenter", "tiny-segmenter"]
            assert client.get_model("").name == "other-segmenter"
            response = client.unload_model("other-segmenter")
            assert (response.name, response.default_model) == ("other-segmenter", "tiny-segmenter")
            with pytest.raises(grpc.RpcError) as err:
                client.segment(b"\x89PNG", model="other-segmenter")
            assert err.value.code() == grpc.StatusCode.NOT_FOUND and "tiny-segmenter" in err.value.details()
            assert client.health() == "SERVING"


def test_bad_load_and_unload_requests_are_refused(store):
    cases = [
        (lambda c: c.load_model("nope"), grpc.StatusCode.NOT_FOUND, "Available models"),
        (
            lambda c: c.load_model("tiny-generator"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "does not serve generation models",
        ),
        (lambda c: c.load_model(""), grpc.StatusCode.INVALID_ARGUMENT, "name the model"),
        (
            lambda c: c.load_model("copied-segmenter"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "holds a model named `tiny-segmenter`",
        ),
        (lambda c: c.unload_model("nope"), grpc.StatusCode.NOT_FOUND, "tiny-segmenter"),
    ]
    with running_server(task="segmentation", model_store=store, models=["tiny-segmenter"]) as address:
        with CvtasksClient(address, timeout=60) as client:
            for call, code, words in cases:
                with pytest.raises(grpc.RpcError) as err:
                    call(client)
                assert err.value.code() == code and words in err.value.details()
            assert [m.name for m in client.list_models()] == ["tiny-segmenter"]


def test_a_request_that_picked_the_old_version_just_before_the_swap_runs_on_the_new_one(store):
    """The race the steady-load test can only hit by chance: host.get() returned the old version,
    the swap happened while the request was decoding, then it submits."""
    import asyncio

    import torch

    from models.segmentation import SEGMENTATION, SegmentOptions
    from services.host import Item, ModelHost, ServingConfig

    async def scenario():
        host = ModelHost(store, SEGMENTATION, ServingConfig(), names=["tiny-segmenter"])
        await host.load_all()
        try:
            old = host.get("tiny-segmenter")
            _bump_version(store, "tiny-segmenter", "7")
            await host.load("tiny-segmenter")
            result = await old.submit(Item(torch.zeros(3, 64, 64), SegmentOptions()))
            return result.value.labels.shape, host.get("tiny-segmenter").config.version
        finally:
            await host.close()

    assert asyncio.run(scenario()) == ((64, 64), "7")


def test_replicas_on_several_devices_share_the_load(store, shapes_dir):
    import asyncio

    from models.preprocessing import decode_image, to_tensor
    from models.segmentation import SEGMENTATION, SegmentOptions
    from services.host import Item, ModelHost, ServingConfig

    image = (shapes_dir / "images" / "test" / "000001.png").read_bytes()

    async def scenario():
        host = ModelHost(
            store, SEGMENTATION, ServingConfig(devices=("cpu", "cpu"), max_delay_ms=20), names=["tiny-segmenter"]
        )
        await host.load_all()
        try:
            item = Item(to_tensor(decode_image(image)), SegmentOptions())
            loaded = host.get("tiny-segmenter")
            results = await asyncio.gather(*(loaded.submit(item) for _ in range(24)))
            return [r.batches_run for r in loaded.replicas], loaded.info().device, len(results)
        finally:
            await host.close()

    batches, device, answered = asyncio.run(scenario())
    assert answered == 24 and device == "cpu,cpu"
    assert all(b >= 2 for b in batches)  # warm-up + traffic on each replica


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the fallback of a CPU-only machine")
def test_gpus_this_machine_lacks_fall_back_to_the_cpu(store):
    from services.host import ServingConfig, serving_devices

    assert [str(d) for d in serving_devices(ServingConfig(devices=("cuda:0", "cuda:1")))] == ["cpu"]
    with running_server(
        task="segmentation", model_store=store, models=["tiny-segmenter"], devices=("cuda:0", "cuda:1")
    ) as address:
        with CvtasksClient(address, timeout=60) as client:
            assert client.get_model("tiny-segmenter").device == "cpu"
    with pytest.raises(ValueError, match="either device or devices"):
        ServingConfig(device="cpu", devices=("cpu",))
