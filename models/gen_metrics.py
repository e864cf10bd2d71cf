"""Offline evaluation of a generator: Fréchet distance in a feature space we can train here, and
the share of samples a classifier trained on real images recognises with confidence.

No Inception weights can be downloaded, so the feature network is a small CNN classifier trained
on the real images' labels (e.g. the shape class of single-shape synthetic images); its
penultimate layer is the feature space. The Fréchet distance is the FID formula
(|mu_r - mu_g|^2 + Tr(S_r + S_g - 2 (S_r S_g)^1/2)) in that space: comparable between
generators scored with the same classifier, not with published FIDs.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import nn


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature rows ``a`` (N, D) and ``b`` (M, D)."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two (N >= 2, D) feature arrays of one width, got {a.shape} and {b.shape}")
    a, b = a.astype(np.float64), b.astype(np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # Nudge both covariances so that their product is never singular (dead ReLU features are
    # common in a small network); the same nudge everywhere keeps identical inputs at 0.
    eps = np.eye(a.shape[1]) * 1e-6
    cov_a, cov_b = cov_a + eps, cov_b + eps
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = np.asarray(scipy.linalg.sqrtm(cov_a @ cov_b)).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean))


class ShapeClassifier(nn.Module):
    """A small CNN: (N, C, S, S) in [-1, 1] -> class logits; ``features`` is the penultimate layer."""

    def __init__(self, *, num_classes: int, channels: int = 3, width: int = 32, feature_size: int = 64) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(True),
                nn.MaxPool2d(2),
            ]

        self.body = nn.Sequential(
            *block(channels, width),
            *block(width, width * 2),
            *block(width * 2, width * 4),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(width * 4, feature_size),
            nn.ReLU(True),
        )
        self.head = nn.Linear(feature_size, num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(images))


def train_classifier(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    num_classes: int,
    epochs: int = 8,
    batch_size: int = 32,
    lr: float = 2e-3,
    seed: int = 0,
) -> ShapeClassifier:
    """Fit a ShapeClassifier on real images (N, C, S, S) in [-1, 1] with integer labels (N,)."""
    torch.manual_seed(seed)
    model = ShapeClassifier(num_classes=num_classes, channels=images.shape[1])
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    # the rate decays to zero (cosine), so the last step's weights are a settled minimum: with a
    # constant rate the final weights depended on the thread count (test accuracy 0.78 or 1.0)
    steps = epochs * math.ceil(len(images) / batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps))
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(images))
        for start in range(0, len(images), batch_size):
            index = order[start : start + batch_size]
            loss = F.cross_entropy(model(images[index]), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()


@torch.no_grad()
def classifier_outputs(
    model: ShapeClassifier, images: torch.Tensor, *, batch_size: int = 128
) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, F), class probabilities (N, K)) of images in [-1, 1]."""
    model.eval()
    feats, probs = [], []
    for start in range(0, len(images), batch_size):
        f = model.features(images[start : start + batch_size])
        feats.append(f.numpy())
        probs.append(torch.softmax(model.head(f), dim=1).numpy())
    return np.concatenate(feats), np.concatenate(probs)


def accuracy(model: ShapeClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    _, probs = classifier_outputs(model, images)
    return float((probs.argmax(1) == labels.numpy()).mean())


def score_samples(
    model: ShapeClassifier,
    real: torch.Tensor,
    generated: torch.Tensor,
    *,
    confidence: float = 0.9,
    class_names: Sequence[str] = (),
) -> dict[str, float]:
    """Fréchet distance (classifier features) between real and generated images, and the share of
    generated images whose top class probability is at least ``confidence``."""
    real_feats, _ = classifier_outputs(model, real)
    gen_feats, gen_probs = classifier_outputs(model, generated)
    top = gen_probs.max(1)
    result = {
        "frechet_distance": frechet_distance(real_feats, gen_feats),
        "recognised_share": float((top >= confidence).mean()),
    }
    for k, name in enumerate(class_names):
        result[f"share_{name}"] = float(((gen_probs.argmax(1) == k) & (top >= confidence)).mean())
    return result


def labelled_images(
    images_dir: str | Path, annotations: str | Path, *, size: int, channels: int
) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """Real images (N, C, size, size) in [-1, 1] as a generator sees them, each labelled with the
    category of its largest box in a COCO file (images without boxes are skipped), and the class
    names in label order."""
    from models.preprocessing import read_image
    from models.train.generation import gan_input

    data = json.loads(Path(annotations).read_text())
    categories = sorted(data["categories"], key=lambda c: c["id"])
    index = {c["id"]: i for i, c in enumerate(categories)}
    largest: dict[int, dict] = {}
    for ann in data["annotations"]:
        if ann["image_id"] not in largest or ann["area"] > largest[ann["image_id"]]["area"]:
            largest[ann["image_id"]] = ann
    images, labels = [], []
    for image in sorted(data["images"], key=lambda im: im["id"]):
        if image["id"] in largest:
            pixels = read_image(Path(images_dir) / image["file_name"])
            images.append(gan_input(pixels, size=size, channels=channels))
            labels.append(index[largest[image["id"]]["category_id"]])
    if not images:
        raise ValueError(f"{annotations}: no image with a box to label it")
    return torch.stack(images), torch.tensor(labels), tuple(c["name"] for c in categories)


@torch.no_grad()
def samples(generator: nn.Module, count: int, *, seed: int, batch_size: int = 64) -> torch.Tensor:
    """``count`` generated images (N, C, S, S) in [-1, 1] from latents seeded from ``seed`` and
    drawn from the generator's own prior, on the CPU."""
    generator.eval()
    device = next(generator.parameters()).device
    z = generator.prior.sample(seed, count)
    return torch.cat([generator(z[i : i + batch_size].to(device)).cpu() for i in range(0, count, batch_size)])


def evaluate_generator(
    generator: nn.Module | None,
    model_args: dict[str, Any],
    data: str | Path,
    *,
    train_split: str = "train",
    test_split: str = "test",
    count: int = 500,
    seed: int = 0,
    confidence: float = 0.9,
    classifier_epochs: int = 8,
    generated: torch.Tensor | None = None,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The generator's samples against labelled real images in the `cvtasks data synth` layout,
    next to an untrained DCGAN of the same architecture (the baseline).

    A small classifier learns the classes from ``train_split``; Fréchet distance is measured in its
    feature space against ``test_split``, and the recognised share is the share of samples it
    classifies with probability >= ``confidence``. ``generated`` takes samples already drawn (by
    the service, say; (N, C, S, S) in [-1, 1]; ``generator`` may then be None); otherwise ``count``
    are drawn from ``generator`` with ``seed``.
    Returns (report, {"model": samples, "untrained baseline": samples}).
    """
    from models.generation import Generator

    if generator is None and generated is None:
        raise ValueError("give the generator or its samples (generated=)")
    size, channels = int(model_args["image_size"]), int(model_args["channels"])
    root = Path(data)
    train_x, train_y, names = labelled_images(
        root / "images" / train_split, root / "annotations" / f"{train_split}.json", size=size, channels=channels
    )
    test_x, test_y, _ = labelled_images(
        root / "images" / test_split, root / "annotations" / f"{test_split}.json", size=size, channels=channels
    )
    classifier = train_classifier(train_x, train_y, num_classes=len(names), epochs=classifier_epochs, seed=seed)
    if generated is None:
        generated = samples(generator, count, seed=seed)
    torch.manual_seed(seed)
    baseline = Generator(**model_args)  # the same architecture, DCGAN-initialised, never trained
    drawn = {"model": generated, "untrained baseline": samples(baseline, len(generated), seed=seed)}
    scores = {
        k: score_samples(classifier, test_x, v, confidence=confidence, class_names=names) for k, v in drawn.items()
    }
    report = {
        "samples": len(generated),
        "feature_classifier": {
            "classes": list(names),
            "train_images": len(train_x),
            "test_accuracy": accuracy(classifier, test_x, test_y),
        },
        "real_images_compared": len(test_x),
        "confidence": confidence,
        **scores,
        "frechet_ratio_to_baseline": scores["model"]["frechet_distance"]
        / max(1e-12, scores["untrained baseline"]["frechet_distance"]),
    }
    return report, drawn
