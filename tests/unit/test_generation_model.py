"""models/generation.py: DCGAN shapes and layers as in the paper, init, seeded latents (standard
normal or a Gaussian mixture), interpolation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from models import checkpoints
from models.errors import InvalidInputError
from models.generation import Discriminator, Generator, LatentPrior, image_grid, interpolate, latents, to_uint8


@pytest.mark.parametrize("size", [32, 64, 128])
@pytest.mark.parametrize("channels", [1, 3])
def test_generator_and_discriminator_shapes(size, channels):
    g = Generator(image_size=size, channels=channels, nz=16, ngf=8).eval()
    d = Discriminator(image_size=size, channels=channels, ndf=8).eval()
    with torch.no_grad():
        images = g(torch.randn(3, 16))
        logits = d(images)
    assert images.shape == (3, channels, size, size)
    assert float(images.min()) >= -1 and float(images.max()) <= 1
    assert logits.shape == (3,)


def test_layers_follow_the_paper():
    g, d = Generator(), Discriminator()
    g_layers, d_layers = list(g.net), list(d.net)
    assert isinstance(g_layers[-1], nn.Tanh) and isinstance(g_layers[-2], nn.ConvTranspose2d)  # no BN at G's output
    assert isinstance(d_layers[0], nn.Conv2d) and isinstance(d_layers[1], nn.LeakyReLU)  # no BN at D's input
    assert all(m.negative_slope == 0.2 for m in d.modules() if isinstance(m, nn.LeakyReLU))
    assert any(isinstance(m, nn.ReLU) for m in g.modules()) and not any(isinstance(m, nn.Linear) for m in g.modules())
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert all(m.stride == (2, 2) for m in convs[:-1]) and convs[-1].kernel_size == (4, 4)  # strided, then 4x4 valid
    assert not any(isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) for m in [*g.modules(), *d.modules()])
    weights = torch.cat([m.weight.detach().flatten() for m in g.modules() if isinstance(m, nn.ConvTranspose2d)])
    assert abs(float(weights.mean())) < 0.002 and float(weights.std()) == pytest.approx(0.02, rel=0.05)
    scales = torch.cat([m.weight.detach() for m in d.modules() if isinstance(m, nn.BatchNorm2d)])
    assert float(scales.mean()) == pytest.approx(1.0, abs=0.01)


def test_the_same_seed_gives_the_same_latents_and_images():
    assert torch.equal(latents(7, 4, 100), latents(7, 4, 100))
    assert not torch.equal(latents(7, 4, 100), latents(8, 4, 100))
    assert torch.equal(latents(7, 4, 100)[:2], latents(7, 2, 100))  # a prefix: count does not change earlier ones
    torch.manual_seed(0)
    g = Generator(image_size=32, nz=100, ngf=8).eval()
    with torch.no_grad():
        assert np.array_equal(to_uint8(g(latents(3, 2, 100))), to_uint8(g(latents(3, 2, 100))))


def test_a_mixture_prior_draws_seeded_latents_around_its_fixed_means():
    prior = LatentPrior(nz=64, components=5, spread=2.0)
    z = prior.sample(7, 400)
    assert torch.equal(z, prior.sample(7, 400)) and torch.equal(z[:3], prior.sample(7, 3))  # seeded; a prefix
    assert not torch.equal(z, prior.sample(8, 400))
    # the means are a function of (components, nz, spread) alone: another instance draws the same
    assert torch.equal(prior.means, LatentPrior(nz=64, components=5, spread=2.0).means)
    distances = torch.cdist(z, prior.means)  # (400, 5)
    nearest, second = distances.topk(2, dim=1, largest=False).values.T
    # each latent lies one unit Gaussian (norm ~ sqrt(64) = 8) from its own mean, far closer than to any other
    assert float(nearest.mean()) == pytest.approx(8.0, rel=0.1) and bool((second > 1.5 * nearest).all())
    counts = torch.bincount(distances.argmin(dim=1), minlength=5)
    assert int(counts.min()) > 40  # every component is drawn, about equally
    torch.manual_seed(0)
    trained = prior.draw(400)  # training draws from the global random state, around the same means
    assert bool((torch.cdist(trained, prior.means).min(dim=1).values < 11).all())


def test_a_standard_normal_prior_draws_what_latents_always_drew():
    assert LatentPrior(nz=100).means is None
    assert torch.equal(LatentPrior(nz=100).sample(7, 4), latents(7, 4, 100))
    assert LatentPrior.of({"nz": 16}) == LatentPrior(nz=16)  # a model stored before mixtures existed
    assert Generator(nz=16, ngf=8, latent_components=3, latent_spread=0.5).prior == LatentPrior(16, 3, 0.5)
    with pytest.raises(ValueError, match="latent_components must be 0"):
        LatentPrior(nz=8, components=-1)
    with pytest.raises(ValueError, match="latent_spread must be > 0"):
        LatentPrior(nz=8, components=2, spread=float("nan"))


def test_stored_generator_rebuilds_from_its_config(tmp_path):
    torch.manual_seed(0)
    g = Generator(image_size=32, channels=1, nz=8, ngf=8).eval()
    config = checkpoints.ModelConfig(
        name="g",
        task="generation",
        architecture="dcgan",
        classes=(),
        model_args={"image_size": 32, "channels": 1, "nz": 8, "ngf": 8},
        input_size=32,
    )
    checkpoints.save_model(g, config, tmp_path / "g")
    loaded, _ = checkpoints.load_model(tmp_path / "g")
    z = latents(1, 2, 8)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(z), g(z))
    other = checkpoints.ModelConfig(**{**config.__dict__, "architecture": "stylegan"})
    with pytest.raises(InvalidInputError, match="unknown generation architecture `stylegan`"):
        checkpoints.build_model(other)


def test_interpolation_ends_and_norms():
    a, b = latents(1, 1, 64)[0], latents(2, 1, 64)[0]
    for mode in ("linear", "spherical"):
        path = interpolate(a, b, 5, mode=mode)
        assert path.shape == (5, 64)
        assert torch.allclose(path[0], a, atol=1e-5) and torch.allclose(path[-1], b, atol=1e-5)
    middle_linear = interpolate(a, b, 3, mode="linear")[1].norm()
    middle_slerp = interpolate(a, b, 3, mode="spherical")[1].norm()
    assert middle_slerp > middle_linear  # slerp does not shrink toward the origin
    assert torch.allclose(interpolate(a, a, 3, mode="spherical")[1], a, atol=1e-5)  # parallel: no NaN


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"steps": 1}, "steps"),
        ({"steps": 3, "mode": "cubic"}, "interpolation"),
    ],
)
def test_bad_interpolation_options(kwargs, message):
    a = torch.zeros(4)
    with pytest.raises(InvalidInputError, match=message):
        interpolate(a, a + 1, **kwargs)


@pytest.mark.parametrize("kwargs", [{"image_size": 48}, {"channels": 2}, {"nz": 0}])
def test_bad_configurations(kwargs):
    with pytest.raises(ValueError):
        Generator(**kwargs)


def test_wrong_latent_size_is_refused_clearly():
    with pytest.raises(InvalidInputError, match=r"\(N, 100\)"):
        Generator(image_size=32, ngf=8)(torch.zeros(2, 99))


def test_grid_places_images_row_major():
    images = np.stack([np.full((4, 4, 3), i * 40, np.uint8) for i in range(5)])
    grid = image_grid(images, columns=3, pad=1)
    assert grid.shape == (2 * 5 + 1, 3 * 5 + 1, 3)
    assert grid[1, 1, 0] == 0 and grid[1, 6, 0] == 40 and grid[6, 1, 0] == 120 and grid[6, 11, 0] == 0
