"""Shared fixtures: a small synthetic dataset and a briefly trained tiny detector in a model store."""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory):
    """The synthetic shapes dataset: 200 train / 24 val / 16 test images of 128 px."""
    from models.synth import generate_shapes

    out = tmp_path_factory.mktemp("shapes")
    generate_shapes(out, splits={"train": 200, "val": 24, "test": 16}, image_size=128, seed=123)
    return out


@pytest.fixture(scope="session")
def detector_store(shapes_dir, tmp_path_factory):
    """A model store holding `tiny-detector`, trained for ~50 s (AP50 ~0.6: real boxes, not the target)."""
    from models.train.detection import DetectionTrainConfig, train_detection

    torch.set_num_threads(2)
    store = tmp_path_factory.mktemp("store")
    cfg = DetectionTrainConfig(
        train_images=str(shapes_dir / "images" / "train"),
        train_annotations=str(shapes_dir / "annotations" / "train.json"),
        val_images=str(shapes_dir / "images" / "val"),
        val_annotations=str(shapes_dir / "annotations" / "val.json"),
        run_dir=str(tmp_path_factory.mktemp("run")),
        model_store=str(store),
        name="tiny-detector",
        epochs=5,
        optimizer="adamw",
        lr=0.002,
        warmup_steps=10,
        progress=False,
    )
    train_detection(cfg)
    return store


@pytest.fixture(scope="session")
def segmenter_store(tmp_path_factory):
    """A model store with `tiny-segmenter`: a U-Net (mobile encoder), random weights — the service
    tests check transport, parity and errors; learning is checked by the slow test."""
    from models import checkpoints
    from models.segmentation import build_segmenter

    torch.manual_seed(0)
    args = {"encoder": "tu-mobilenetv3_small_100", "decoder_channels": [32, 16, 16, 8, 8]}
    model = build_segmenter("unet", num_classes=4, **args)
    store = tmp_path_factory.mktemp("seg-store")
    config = checkpoints.ModelConfig(
        name="tiny-segmenter",
        task="segmentation",
        architecture="unet",
        classes=("background", "circle", "square", "triangle"),
        model_args=args,
        input_size=128,
    )
    checkpoints.save_model(model.eval(), config, store / config.name)
    return store


@pytest.fixture(scope="session")
def captioner_store(tmp_path_factory, shapes_dir):
    """A model store with `tiny-captioner`: Show and Tell (ResNet-18, small LSTM), random weights,
    its vocabulary built from the synthetic captions — for transport, parity and error tests."""
    from models import checkpoints
    from models.caption_data import load_captions
    from models.captioning import Captioner
    from models.preprocessing import IMAGENET_MEAN, IMAGENET_STD
    from models.text import Vocabulary

    refs = load_captions(shapes_dir / "captions" / "train.json")
    vocab = Vocabulary.build(c for cs in refs.values() for c in cs)
    torch.manual_seed(0)
    args = {
        "backbone": "resnet18",
        "embed_size": 32,
        "hidden_size": 64,
        "num_layers": 1,
        "dropout": 0.0,
        "pooling": "grid",
        "grid": 2,
    }
    model = Captioner(vocab_size=len(vocab), **args)
    store = tmp_path_factory.mktemp("cap-store")
    config = checkpoints.ModelConfig(
        name="tiny-captioner",
        task="captioning",
        architecture="show_and_tell",
        classes=(),
        model_args=args,
        input_size=96,
        normalization={"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        extra={"vocab": vocab.to_json(), "max_length": 12},
    )
    checkpoints.save_model(model.eval(), config, store / config.name)
    return store


@pytest.fixture(scope="session")
def random_detector_store(tmp_path_factory):
    """A model store with `random-detector`: the tiny Faster R-CNN with random weights (no training), for
    tests about transport where any detector will do; `detector_store` is the one that finds shapes."""
    from models import checkpoints
    from models.detection import build_detector

    torch.manual_seed(0)
    args = {"image_size": 128}
    store = tmp_path_factory.mktemp("random-det-store")
    config = checkpoints.ModelConfig(
        name="random-detector",
        task="detection",
        architecture="fasterrcnn_tiny",
        classes=("circle", "square", "triangle"),
        model_args=args,
        input_size=128,
    )
    checkpoints.save_model(build_detector("fasterrcnn_tiny", num_classes=4, **args).eval(), config, store / config.name)
    return store


@pytest.fixture(scope="session")
def generator_store(tmp_path_factory):
    """A model store with `tiny-generator`: a 32 px RGB DCGAN generator, random weights (DCGAN
    init) — for transport, determinism and error tests; learning is checked by the slow test."""
    return _generator_store(tmp_path_factory, "tiny-generator", {"image_size": 32, "channels": 3, "nz": 16, "ngf": 8})


@pytest.fixture(scope="session")
def mixture_generator_store(tmp_path_factory):
    """A model store with `tiny-mixture-generator`: as `tiny-generator`, but its latents come from
    a mixture of 4 Gaussians (spread 0.7, which float32 would round: the prior travels as a double)."""
    return _generator_store(
        tmp_path_factory,
        "tiny-mixture-generator",
        {"image_size": 32, "channels": 3, "nz": 16, "ngf": 8, "latent_components": 4, "latent_spread": 0.7},
    )


def _generator_store(tmp_path_factory, name, args):
    from models import checkpoints
    from models.generation import Generator

    torch.manual_seed(0)
    store = tmp_path_factory.mktemp("gen-store")
    config = checkpoints.ModelConfig(
        name=name,
        task="generation",
        architecture="dcgan",
        classes=(),
        model_args=args,
        input_size=32,
        normalization={"mean": [0.5] * 3, "std": [0.5] * 3},
    )
    checkpoints.save_model(Generator(**args).eval(), config, store / config.name)
    return store


@pytest.fixture(scope="session")
def classifier_store(tmp_path_factory):
    """A model store with `tiny-classifier`: the tiny CNN at 64 px over the three shapes, random
    weights — for transport, parity and error tests; learning is checked by the slow test."""
    from models import checkpoints
    from models.classification import build_classifier

    torch.manual_seed(0)
    args = {"widths": [8, 16, 32]}
    store = tmp_path_factory.mktemp("cls-store")
    config = checkpoints.ModelConfig(
        name="tiny-classifier",
        task="classification",
        architecture="classifier_tiny",
        classes=("circle", "square", "triangle"),
        model_args=args,
        input_size=64,
    )
    model = build_classifier("classifier_tiny", num_classes=3, **args)
    checkpoints.save_model(model.eval(), config, store / config.name)
    return store
