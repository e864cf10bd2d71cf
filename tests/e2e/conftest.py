"""Session fixtures of the slow learning tests: the quickstart dataset and the quickstart U-Net,
shared because the quickstart captioner starts from that U-Net's encoder."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def quickstart_data(tmp_path_factory):
    """The demo's dataset: QUICKSTART_SPLITS (600 / 60 / 100), seed 0."""
    from models.synth import generate_shapes
    from models.train.detection import QUICKSTART_SPLITS

    data = tmp_path_factory.mktemp("quickstart-data")
    generate_shapes(data, splits=QUICKSTART_SPLITS, image_size=128, seed=0)
    return data


@pytest.fixture(scope="session")
def quickstart_out(tmp_path_factory):
    """One output folder (model_store/, run-*/) as the demo's, shared by the learning tests."""
    return tmp_path_factory.mktemp("quickstart-out")


@pytest.fixture(scope="session")
def quickstart_unet(quickstart_data, quickstart_out):
    """The quickstart U-Net trained once: (result, minutes)."""
    import time

    from models.train.segmentation import quickstart_config, train_segmentation

    started = time.perf_counter()
    result = train_segmentation(quickstart_config(quickstart_data, quickstart_out, arch="unet", progress=False))
    return result, (time.perf_counter() - started) / 60
