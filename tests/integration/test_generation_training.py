"""DCGAN training end to end on a few synthetic images: store, samples, loss plot, resume, bad folders."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from models import checkpoints
from models.errors import DatasetError
from models.generation import LatentPrior, image_grid, latents, to_uint8
from models.preprocessing import center_crop_resize
from models.train import common
from models.train.generation import (
    GenerationTrainConfig,
    diff_augment,
    ema_update,
    gan_input,
    learning_rate,
    train_generation,
)


def _config(shapes_dir, tmp_path, **kw) -> GenerationTrainConfig:
    return GenerationTrainConfig(
        images=str(shapes_dir / "images" / "val"),
        run_dir=str(tmp_path / "run"),
        model_store=str(tmp_path / "store"),
        name="gan",
        image_size=32,
        nz=16,
        ngf=8,
        ndf=8,
        batch_size=8,
        sample_count=9,
        progress=False,
        **kw,
    )


def test_train_store_samples_and_resume(shapes_dir, tmp_path):
    first = train_generation(_config(shapes_dir, tmp_path, epochs=1, label_smoothing=0.1))
    assert set(first["history"]) == {"d_loss", "g_loss", "D(x)", "D(G(z))"}
    grid = cv2.imread(str(first["samples"]))
    assert grid.shape == (3 * 34 + 2, 3 * 34 + 2, 3)  # 9 samples of 32 px, 2 px apart
    assert cv2.imread(str(first["plot"])) is not None
    generator, config = checkpoints.load_model(tmp_path / "store" / "gan")
    assert config.task == "generation" and config.model_args["nz"] == 16
    with torch.no_grad():
        assert generator.eval()(latents(0, 2, 16)).shape == (2, 3, 32, 32)

    resumed = train_generation(_config(shapes_dir, tmp_path, epochs=2, label_smoothing=0.1, resume=True))
    assert len(resumed["history"]["g_loss"]) == 2
    assert len(json.loads((tmp_path / "run" / "history.json").read_text())["d_loss"]) == 2
    assert (tmp_path / "run" / "samples" / "epoch_002.png").is_file()


def test_a_mixture_prior_is_stored_with_the_generator(shapes_dir, tmp_path):
    train_generation(_config(shapes_dir, tmp_path, epochs=1, latent_components=3, latent_spread=0.5))
    generator, config = checkpoints.load_model(tmp_path / "store" / "gan")
    assert (config.model_args["latent_components"], config.model_args["latent_spread"]) == (3, 0.5)
    assert generator.prior == LatentPrior(nz=16, components=3, spread=0.5)
    # the per-epoch grid shows the stored generator's samples of its prior (sample seed 0)
    with torch.no_grad():
        expected = image_grid(to_uint8(generator.eval()(generator.prior.sample(0, 9))))
    assert np.array_equal(cv2.imread(str(tmp_path / "run" / "samples" / "epoch_001.png"))[..., ::-1], expected)
    with pytest.raises(ValueError, match="latent_components must be 0"):  # before any image is read
        train_generation(GenerationTrainConfig(images=str(tmp_path / "missing"), latent_components=-2))


def test_learning_rate_decays_linearly_from_its_epoch_and_resume_keeps_the_schedule(shapes_dir, tmp_path):
    cfg = _config(shapes_dir, tmp_path, epochs=4, lr=1e-3, lr_decay_from=3)
    assert [learning_rate(cfg, e) for e in range(1, 5)] == pytest.approx([1e-3, 1e-3, 1e-3 * 2 / 2, 1e-3 / 2])
    assert learning_rate(GenerationTrainConfig(images="x", epochs=4), 4) == 2e-4  # no decay by default
    train_generation(_config(shapes_dir, tmp_path, epochs=3, lr=1e-3, lr_decay_from=3))
    train_generation(_config(shapes_dir, tmp_path, epochs=4, lr=1e-3, lr_decay_from=3, resume=True))
    state = common.load_resume_state(tmp_path / "run")
    assert [state[k]["param_groups"][0]["lr"] for k in ("opt_g", "opt_d")] == pytest.approx([5e-4, 5e-4])
    with pytest.raises(ValueError, match="lr_decay_from"):
        train_generation(_config(shapes_dir, tmp_path, epochs=4, lr_decay_from=-1))
    assert learning_rate(_config(shapes_dir, tmp_path, epochs=4, lr_decay_from=5), 4) == 2e-4  # cut short: constant


def test_the_average_generator_is_stored_and_kept_for_resume(shapes_dir, tmp_path):
    train_generation(_config(shapes_dir, tmp_path, epochs=1, ema_decay=0.9, augment="translation,color"))
    state = common.load_resume_state(tmp_path / "run")
    stored, _ = checkpoints.load_model(tmp_path / "store" / "gan")
    for name, tensor in stored.state_dict().items():
        assert torch.equal(tensor, state["generator_ema"][name]), name
    assert any(not torch.equal(state["generator"][k], state["generator_ema"][k]) for k in state["generator"])
    resumed = train_generation(
        _config(shapes_dir, tmp_path, epochs=2, ema_decay=0.9, augment="translation,color", resume=True)
    )
    assert len(resumed["history"]["g_loss"]) == 2
    common.save_parts(tmp_path / "run", {"generator": torch.nn.Linear(1, 1)}, epoch=1, history={}, best=0.0)
    with pytest.raises(ValueError, match="resume has no discriminator, opt_g, opt_d, generator_ema: it was written"):
        train_generation(_config(shapes_dir, tmp_path, epochs=2, ema_decay=0.9, resume=True))
    with pytest.raises(ValueError, match="ema_decay"):
        train_generation(_config(shapes_dir, tmp_path, ema_decay=1.0))
    with pytest.raises(ValueError, match="unknown augmentation 'flip': choose from translation, color"):
        train_generation(_config(shapes_dir, tmp_path, augment="translation,flip"))


def test_ema_update_moves_parameters_and_copies_buffers():
    average, live = torch.nn.BatchNorm2d(2), torch.nn.BatchNorm2d(2)
    with torch.no_grad():
        live.weight.fill_(3.0)
        live.running_mean.fill_(5.0)
    ema_update(average, live, 0.75)
    assert torch.allclose(average.weight, torch.full((2,), 1.5))  # 1 + (3 - 1) / 4
    assert torch.equal(average.running_mean, live.running_mean)


def test_diff_augment_shifts_within_an_eighth_recolours_per_image_and_passes_gradients():
    torch.manual_seed(0)
    images = -torch.ones(64, 3, 32, 32)
    images[:, :, 12:20, 12:20] = 1.0  # a white 8 px square in the middle of black
    shifted = diff_augment(images, "translation")
    assert shifted.shape == images.shape
    corners = [(s[0] > 0).nonzero().min(0).values.tolist() for s in shifted]
    assert {c for corner in corners for c in corner} == set(range(8, 17))  # moved by -4..4 px, all seen
    assert (shifted[:, 0] > 0).sum(dim=(1, 2)).eq(64).all()  # the square is whole
    assert set(shifted.unique().tolist()) <= {-1.0, 0.0, 1.0}  # the gap is filled with 0
    recoloured = diff_augment(images, "color")
    assert len({round(float(m), 4) for m in recoloured.mean(dim=(1, 2, 3))}) > 32  # each image its own draw
    source = images.clone().requires_grad_(True)
    diff_augment(source, "translation,color").sum().backward()
    assert source.grad is not None and source.grad.abs().sum() > 0
    assert torch.equal(diff_augment(images, ""), images)


def test_gray_inputs_are_centre_cropped_and_scaled_to_minus_one_one():
    image = np.zeros((40, 80, 3), np.uint8)
    image[:, 20:60] = 255  # the centred 40x40 square is white
    tensor = gan_input(image, size=16, channels=1)
    assert tensor.shape == (1, 16, 16) and float(tensor.min()) == pytest.approx(1.0)
    assert center_crop_resize(image, size=20).shape == (20, 20, 3)


def test_bad_folders_are_named(tmp_path):
    with pytest.raises(DatasetError, match="no images"):
        train_generation(GenerationTrainConfig(images=str(tmp_path), run_dir=str(tmp_path / "r")))
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="broken.png"):
        train_generation(GenerationTrainConfig(images=str(tmp_path), run_dir=str(tmp_path / "r")))
    with pytest.raises(ValueError, match="label_smoothing"):
        train_generation(GenerationTrainConfig(images=str(tmp_path), label_smoothing=0.7))
