"""Randomly initialised models of the quickstart architectures, written into a model store for
the benchmarks (a random model costs the same to run as a trained one, up to how many boxes or
words it keeps). Each returns (store, model name)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from models import checkpoints

SHAPE_CLASSES = ("circle", "square", "triangle")
SEGMENT_CLASSES = ("background", *SHAPE_CLASSES)


def _store(model: torch.nn.Module, config: checkpoints.ModelConfig, root: Path) -> tuple[Path, str]:
    checkpoints.save_model(model, config, root / config.name)
    return root, config.name


def detector_store(root: Path) -> tuple[Path, str]:
    from models.detection import build_detector

    torch.manual_seed(0)
    return _store(
        build_detector("fasterrcnn_tiny", num_classes=4),
        checkpoints.ModelConfig(
            name="bench-detector",
            task="detection",
            architecture="fasterrcnn_tiny",
            classes=SHAPE_CLASSES,
            input_size=128,
        ),
        root,
    )


def _segmenter_store(root: Path, name: str, args: dict) -> tuple[Path, str]:
    from models.segmentation import build_segmenter

    torch.manual_seed(0)
    return _store(
        build_segmenter("unet", num_classes=len(SEGMENT_CLASSES), **args),
        checkpoints.ModelConfig(
            name=name,
            task="segmentation",
            architecture="unet",
            classes=SEGMENT_CLASSES,
            model_args=args,
            input_size=128,
        ),
        root,
    )


def segmenter_store(root: Path) -> tuple[Path, str]:
    """The quickstart U-Net's architecture."""
    from models.train.segmentation import QUICKSTART_SEGMENTERS

    recipe = QUICKSTART_SEGMENTERS["unet"]
    return _segmenter_store(root, "bench-segmenter", {"encoder": recipe["encoder"], **recipe["model_args"]})


def tiny_segmenter_store(root: Path) -> tuple[Path, str]:
    """A small U-Net (MobileNetV3-small encoder), as the tests use."""
    return _segmenter_store(
        root, "bench-tiny-unet", {"encoder": "tu-mobilenetv3_small_100", "decoder_channels": [32, 16, 16, 8, 8]}
    )


def captioner_store(root: Path) -> tuple[Path, str]:
    from models.captioning import Captioner
    from models.preprocessing import IMAGENET_MEAN, IMAGENET_STD
    from models.synth import CLASSES, COLORS
    from models.text import Vocabulary
    from models.train.captioning import QUICKSTART_RECIPE, model_args, quickstart_config

    torch.manual_seed(0)
    vocab = Vocabulary.build([f"a {c} {k} to the left of and right" for c in COLORS for k in CLASSES])
    args = model_args(quickstart_config(".", "."))
    config = checkpoints.ModelConfig(
        name="bench-captioner",
        task="captioning",
        architecture="show_and_tell",
        classes=(),
        model_args=args,
        input_size=QUICKSTART_RECIPE["image_size"],
        normalization={"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        extra={"vocab": vocab.to_json(), "max_length": 20},
    )
    return _store(Captioner(vocab_size=len(vocab), **args), config, root)


def generator_store(root: Path, size: int = 64) -> tuple[Path, str]:
    from models.generation import Generator

    torch.manual_seed(0)
    args = {"image_size": size, "channels": 3, "nz": 100, "ngf": 64}
    return _store(
        Generator(**args),
        checkpoints.ModelConfig(
            name="bench-generator",
            task="generation",
            architecture="dcgan",
            classes=(),
            model_args=args,
            input_size=size,
        ),
        root,
    )


def classifier_store(root: Path) -> tuple[Path, str]:
    """The quickstart classifier's architecture (the tiny CNN at 64 px)."""
    from models.classification import build_classifier
    from models.train.classification import QUICKSTART_RECIPE

    torch.manual_seed(0)
    architecture = QUICKSTART_RECIPE["architecture"]
    config = checkpoints.ModelConfig(
        name="bench-classifier",
        task="classification",
        architecture=architecture,
        classes=SHAPE_CLASSES,
        input_size=QUICKSTART_RECIPE["image_size"],
    )
    return _store(build_classifier(architecture, num_classes=len(SHAPE_CLASSES)), config, root)


# task -> a random model of it in a store (what batch_folder.py runs without --model-store)
RANDOM_STORES: dict[str, Callable[[Path], tuple[Path, str]]] = {
    "segmentation": tiny_segmenter_store,
    "detection": detector_store,
    "captioning": captioner_store,
    "classification": classifier_store,
}
