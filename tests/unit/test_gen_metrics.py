"""models/gen_metrics.py: the Fréchet distance against closed forms, and the classifier-based scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.gen_metrics import ShapeClassifier, accuracy, frechet_distance, score_samples, train_classifier


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shifted = a + np.array([3.0, 0.0, 4.0])  # same covariance: distance = |shift|^2 = 25
    assert frechet_distance(a, shifted) == pytest.approx(25.0, rel=1e-6)
    scaled = a * 2.0  # N(0, I) vs N(0, 4I): Tr(I + 4I - 2*2I) = 3 (up to sampling)
    assert frechet_distance(a, scaled) == pytest.approx(3.0 * np.var(a, ddof=1), rel=0.05)
    with pytest.raises(ValueError, match="feature arrays"):
        frechet_distance(a, a[:, :2])


def _bars(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two easy classes: a bright horizontal or vertical bar on black, in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    images = -torch.ones(n, 1, 16, 16)
    labels = torch.randint(0, 2, (n,), generator=g)
    for i, label in enumerate(labels.tolist()):
        at = int(torch.randint(2, 14, (), generator=g))
        if label:
            images[i, 0, :, at - 1 : at + 1] = 1.0
        else:
            images[i, 0, at - 1 : at + 1, :] = 1.0
    return images, labels


def test_a_trained_classifier_recognises_real_images_and_not_noise():
    images, labels = _bars(256, 0)
    model = train_classifier(images, labels, num_classes=2, epochs=4)
    test_images, test_labels = _bars(128, 1)
    assert accuracy(model, test_images, test_labels) > 0.95
    like_real = score_samples(model, images, test_images, class_names=("horizontal", "vertical"))
    noise = score_samples(model, images, torch.rand(128, 1, 16, 16) * 2 - 1)
    assert like_real["recognised_share"] > 0.9 and like_real["share_horizontal"] > 0.3
    assert noise["frechet_distance"] > 5 * like_real["frechet_distance"]
    assert isinstance(ShapeClassifier(num_classes=3).features(torch.zeros(2, 3, 32, 32)).shape[1], int)


def test_evaluate_generator_scores_given_samples_against_an_untrained_baseline(tmp_path):
    from models.gen_metrics import evaluate_generator, labelled_images
    from models.generation import Generator
    from models.synth import generate_shapes

    generate_shapes(
        tmp_path,
        splits={"train": 600, "test": 60, "more": 60},
        image_size=32,
        max_shapes=1,
        solid_backgrounds=True,
        seed=3,
    )
    args = {"image_size": 32, "channels": 3, "nz": 8, "ngf": 8}
    real_like, _, _ = labelled_images(
        tmp_path / "images" / "more", tmp_path / "annotations" / "more.json", size=32, channels=3
    )
    report, drawn = evaluate_generator(Generator(**args), args, tmp_path, classifier_epochs=8, generated=real_like)
    assert set(drawn) == {"model", "untrained baseline"} and len(drawn["untrained baseline"]) == 60
    assert report["samples"] == 60 and report["real_images_compared"] == 60
    assert report["feature_classifier"]["test_accuracy"] > 0.8
    # Real images of the same distribution stand in for a perfect generator.
    assert report["frechet_ratio_to_baseline"] < 0.3
    assert report["model"]["recognised_share"] > report["untrained baseline"]["recognised_share"]
    with pytest.raises(ValueError, match="generator or its samples"):
        evaluate_generator(None, args, tmp_path)
