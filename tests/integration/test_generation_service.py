"""GenerationService on a real server (port 0): seeds are deterministic through the service, latents
and interpolation, formats, parity with a direct call, bad options."""

from __future__ import annotations

import concurrent.futures

import grpc
import numpy as np
import pytest
import torch

from models import checkpoints
from models.generation import LatentPrior, latents, to_uint8
from models.preprocessing import decode_image
from services.client import CvtasksClient
from services.launch import running_server
from tests.devices import assert_images_agree


@pytest.fixture(scope="module")
def server(generator_store):
    with running_server(task="generation", model_store=generator_store) as address:
        yield address


@pytest.fixture()
def client(server):
    with CvtasksClient(server, timeout=60) as c:
        yield c


def test_the_same_seed_gives_the_same_bytes_and_another_seed_does_not(client):
    first = client.generate(count=4, seed=123)
    again = client.generate(count=4, seed=123)
    other = client.generate(count=4, seed=124)
    assert [i.png for i in first.images] == [i.png for i in again.images]
    assert [i.png for i in first.images] != [i.png for i in other.images]
    assert first.latent_size == 16 and first.image_size == 32 and first.model.name == "tiny-generator"
    assert decode_image(first.images[0].png).shape == (32, 32, 3)
    assert client.health("cvtasks.v1.GenerationService") == "SERVING"


def test_seeds_stay_deterministic_when_requests_share_batches(client):
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda s: client.generate(count=3, seed=s % 2), range(12)))
    for seed in (0, 1):
        same = {tuple(i.png for i in a.images) for a in answers[seed::2]}
        assert len(same) == 1


def test_service_images_equal_a_direct_model_call_and_carry_their_latents(client, generator_store):
    model, _ = checkpoints.load_model(generator_store / "tiny-generator")
    with torch.no_grad():
        direct = to_uint8(model.eval()(latents(9, 2, 16)))
    response = client.generate(count=2, seed=9, fmt="raw")
    for image, expected in zip(response.images, direct):
        raw = np.frombuffer(image.raw.data, np.uint8).reshape(image.raw.height, image.raw.width, image.raw.channels)
        assert np.array_equal(raw, expected)
    vectors = [list(i.latent.values) for i in response.images]
    assert np.allclose(vectors, latents(9, 2, 16).numpy())
    replay = client.generate(latents=vectors, fmt="raw")
    assert [i.raw.data for i in replay.images] == [i.raw.data for i in response.images]


def test_a_mixture_generator_draws_a_seeds_latents_from_its_own_prior(mixture_generator_store):
    model, config = checkpoints.load_model(mixture_generator_store / "tiny-mixture-generator")
    prior = LatentPrior.of(config.model_args)
    with running_server(task="generation", model_store=mixture_generator_store) as address:
        with CvtasksClient(address, timeout=60) as client:
            response = client.generate(count=3, seed=5)
            path = client.interpolate(5, 6, steps=3)
    assert (response.latent_components, response.latent_spread) == (4, 0.7)  # enough to draw them elsewhere
    assert np.allclose([list(i.latent.values) for i in response.images], prior.sample(5, 3).numpy())
    assert not np.allclose([list(i.latent.values) for i in response.images], latents(5, 3, 16).numpy())
    with torch.no_grad():
        direct = to_uint8(model.eval()(prior.sample(5, 3)))
    assert all(np.array_equal(_pixels(image), expected) for image, expected in zip(response.images, direct))
    assert np.allclose(list(path.images[-1].latent.values), prior.sample(6, 1)[0].numpy())


def test_interpolation_ends_are_the_seeds_images(client):
    path = client.interpolate(3, 4, steps=5)
    assert len(path.images) == 5
    assert list(path.images[0].latent.values) == list(client.generate(count=1, seed=3).images[0].latent.values)
    # One forward pass for the whole path: bitwise the single images on the CPU, within rounding on CUDA.
    assert_images_agree(_pixels(path.images[0]), _pixels(client.generate(count=1, seed=3).images[0]))
    assert_images_agree(_pixels(path.images[-1]), _pixels(client.generate(count=1, seed=4).images[0]))
    linear = client.interpolate(3, 4, steps=5, path="linear")
    assert_images_agree(_pixels(linear.images[0]), _pixels(path.images[0]))
    # The paths part in the middle (compared by latent: a small random generator can draw two
    # nearby latents as the same PNG, as it did on CUDA).
    assert list(linear.images[2].latent.values) != list(path.images[2].latent.values)
    start = list(path.images[0].latent.values)
    assert_images_agree(_pixels(client.interpolate(start, 4, steps=2).images[0]), _pixels(path.images[0]))


def _pixels(image) -> np.ndarray:
    return decode_image(image.png)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda c: c.generate(count=65), "count must be in 1..64"),
        (lambda c: c.generate(latents=[[0.0] * 15]), "latent size is 16"),
        (lambda c: c.generate(latents=[[float("nan")] * 16]), "NaN"),
        (lambda c: c.interpolate(1, 2, steps=1), "steps must be in 2..64"),
        (lambda c: c.interpolate(1, 2, steps=65), "steps must be in 2..64"),
        (lambda c: c.interpolate([0.0] * 3, 2, steps=3), "latent size is 16"),
    ],
)
def test_bad_options_are_invalid_argument_and_serving_goes_on(client, call, message):
    with pytest.raises(grpc.RpcError) as err:
        call(client)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in err.value.details()
    assert len(client.generate(count=1).images) == 1


def test_unknown_model_and_missing_end(client):
    with pytest.raises(grpc.RpcError) as err:
        client.generate(model="nope")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "tiny-generator" in err.value.details()
    from services.pb import generation_pb2

    with pytest.raises(grpc.RpcError) as err:
        client.generation.Interpolate(generation_pb2.InterpolateRequest(start_seed=1, steps=3), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "end_seed or end_latent" in err.value.details()
