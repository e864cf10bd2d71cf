"""Grad-CAM looks at the object: a tiny classifier trained on the synthetic classification data,
served over gRPC with ``explain``, puts on each held-out image's shape (its mask from the
generator) a share of the map's mass well above the shape's share of the image. Slow (~4 min
on 2 busy cores)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from models.class_datasets import image_folder
from models.preprocessing import decode_image, read_image
from models.synth import generate_classification
from models.train.classification import ClassificationTrainConfig, train_classification
from services.client import CvtasksClient
from services.launch import running_server

SPLITS = {"train": 600, "val": 40, "test": 60}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_grad_cam_mass_falls_on_the_object_of_a_trained_classifier(tmp_path, capsys):
    data = tmp_path / "data"
    generate_classification(data, splits=SPLITS, image_size=64, seed=0, masks=True)
    started = time.perf_counter()
    cfg = ClassificationTrainConfig(
        train_images=str(data / "images" / "train"),
        val_images=str(data / "images" / "val"),
        run_dir=str(tmp_path / "run"),
        model_store=str(tmp_path / "store"),
        name="explained",
        architecture="classifier_tiny",
        model_args={"widths": [16, 32, 64]},  # three stages: an 8 x 8 map at 64 px
        image_size=64,
        epochs=8,
        batch_size=32,
        lr=3e-3,
        warmup_steps=10,
        augment=True,
        progress=False,
    )
    train_classification(cfg)
    seconds = time.perf_counter() - started
    classes, items = image_folder(data / "images" / "test")
    masks = [
        read_image(data / "masks" / "test" / p.relative_to(data / "images" / "test"))[..., 0] > 127 for p, _ in items
    ]
    with running_server(task="classification", model_store=tmp_path / "store") as address:
        with CvtasksClient(address, timeout=120) as client:
            responses = list(client.classify_stream((p.read_bytes() for p, _ in items), explain=True, timeout=300))
    top1 = np.mean([r.classes[0].class_name == classes[label] for r, (_, label) in zip(responses, items)])
    maps = [decode_image(r.heatmap_png)[..., 0].astype(np.float64) for r in responses]
    mass = np.array([m[mask].sum() / max(m.sum(), 1e-9) for m, mask in zip(maps, masks)])
    area = np.array([mask.mean() for mask in masks])
    with capsys.disabled():
        print(
            f"\nGrad-CAM on {len(items)} held-out images: mean mass share on the shape {mass.mean():.3f}, "
            f"mean area share {area.mean():.3f} ({mass.mean() / area.mean():.2f}x; per image mean "
            f"{(mass / area).mean():.2f}x); held-out top-1 {top1:.3f}; trained in {seconds:.0f} s"
        )
    assert top1 >= 0.8  # a trained classifier, not a random one
    # Measured 2.16x here (2.0x on other held-out draws): the map has 8 x 8 cells and the shapes are
    # large (24 % of the image on average), so the most it could be is ~4x; 1.75x leaves a margin.
    assert mass.mean() >= 1.75 * area.mean()
