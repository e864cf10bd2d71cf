"""Overlapped batches (``--overlap``, the default) against one stage (``--no-overlap``): two real
servers on port 0 with the tiny segmenter give the same label maps under concurrent requests;
the replica's prepare stage; the serve flag."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from models.task import InputMover
from services.client import CvtasksClient
from services.launch import running_server
from tests.devices import assert_labels_agree

CLIENTS = 8


def _label_maps(address, images: list[bytes]) -> list[np.ndarray]:
    with CvtasksClient(address, timeout=120) as client:

        def one(data: bytes) -> np.ndarray:
            png = client.segment(data).label_map_png
            return cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)

        with ThreadPoolExecutor(CLIENTS) as pool:
            return list(pool.map(one, images))


def test_overlapped_and_one_stage_servers_give_the_same_answers(segmenter_store, shapes_dir, monkeypatch):
    """The CPU has no stage (nothing to copy); here it is made to take one, so that the overlapped
    batcher runs end to end under real requests on every machine (the move itself is then a no-op)."""
    stage_threads = set()
    move = InputMover.move

    def recorded(self, inputs):
        stage_threads.add(threading.current_thread().name)
        return move(self, inputs)

    monkeypatch.setattr(InputMover, "copies", property(lambda self: True))
    monkeypatch.setattr(InputMover, "move", recorded)
    paths = sorted((shapes_dir / "images" / "test").glob("*.png"))[:4]
    images = [p.read_bytes() for p in paths] * 6  # 24 requests, 8 at a time: batches form
    answers = {}
    for overlap in (True, False):
        with running_server(task="segmentation", model_store=segmenter_store, overlap=overlap) as address:
            answers[overlap] = _label_maps(address, images)
        assert bool(stage_threads) == overlap and all(t.startswith("prepare-") for t in stage_threads)
        stage_threads.clear()
    assert len(answers[True]) == len(images)
    for a, b in zip(answers[True], answers[False]):
        assert_labels_agree(a, b)
    # the same image got the same answer wherever it was batched
    for i, labels in enumerate(answers[True]):
        assert_labels_agree(labels, answers[True][i % len(paths)])


def test_the_serve_command_overlaps_unless_told_not_to():
    import argparse

    from services.commands.serve import add_arguments, configs

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert configs(parser.parse_args(["--task", "segmentation"]))[0].overlap is True
    assert configs(parser.parse_args(["--task", "segmentation", "--no-overlap"]))[0].overlap is False


def test_the_replicas_prepare_stage_moves_inputs_and_changes_no_answer(segmenter_store, shapes_dir):
    """The replica's stage, called directly (the CPU runs without it; on a CUDA host this is the
    pinned copy on the copy stream through a real model): same label maps as the plain path."""
    import asyncio

    import torch

    from models.preprocessing import decode_image, to_tensor
    from models.segmentation import SEGMENTATION, SegmentOptions
    from services.host import Item, ModelHost, ServingConfig
    from tests.devices import ON_CUDA

    async def main():
        host = ModelHost(segmenter_store, SEGMENTATION, ServingConfig(), names=["tiny-segmenter"])
        await host.load_all()
        try:
            replica = host.get().replicas[0]
            assert (replica.batcher.prepare is not None) == ON_CUDA
            paths = sorted((shapes_dir / "images" / "test").glob("*.png"))[:3]
            items = [Item(to_tensor(decode_image(p.read_bytes())), SegmentOptions()) for p in paths]
            with torch.inference_mode():
                prepared = replica._prepare(items)
                assert all(i.input.device.type == replica.device.type for i in prepared)
                assert all(a.options is b.options for a, b in zip(items, prepared))
                return replica._run(items), replica._run(prepared)
        finally:
            await host.close()

    plain, staged = asyncio.run(main())
    for a, b in zip(plain, staged):
        assert_labels_agree(np.asarray(a.value.labels), np.asarray(b.value.labels))
