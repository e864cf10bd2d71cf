"""Batched JPEG decoding (models/jpeg_batch.py, services/imaging.py Decoder): the batching,
fallback and checks run on the CPU (torchvision's decode_jpeg takes a list there too); the nvJPEG
tolerance is checked only where CUDA is."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
import torch
from PIL import Image

from models.errors import DecodeError, ImageTooLargeError
from models.jpeg_batch import CPU_TOLERANCE, CUDA_TOLERANCE, batchable_jpeg, decode_jpegs, difference
from models.preprocessing import decode_image, encode_image
from services.imaging import Decoder, jpeg_batch_device
from tests.unit.test_preprocessing import jpeg_with_exif


def scene(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Gradients with a noisy block and a sharp-edged square: smooth areas and edges, like photos."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x * 255 // width, y * 255 // height, (x + y) * 3 % 256], -1).astype(np.uint8)
    rng = np.random.default_rng(seed)
    image[height // 4 : height // 2, width // 4 : width // 2] = rng.integers(
        0, 256, (height // 2 - height // 4, width // 2 - width // 4, 3)
    )
    image[height // 2 :, width // 2 :] = (200, 30, 60)
    return image


def pil_jpeg(image: np.ndarray, *, mode: str = "RGB", quality: int = 85, subsampling: int = 2) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).convert(mode).save(buffer, "JPEG", quality=quality, subsampling=subsampling)
    return buffer.getvalue()


def corrupt_huffman_table(jpeg: bytes) -> bytes:
    """The first DHT segment's class/id byte broken: header checks pass, every decoder refuses it."""
    data = bytearray(jpeg)
    data[data.index(b"\xff\xc4") + 4] = 0x55
    return bytes(data)


def decode_all(decoder: Decoder, images: list[bytes]) -> list[np.ndarray | Exception]:
    """Decode ``images`` concurrently (one event loop, as concurrent requests are)."""

    async def go() -> list[np.ndarray | Exception]:
        try:
            results = await asyncio.gather(
                *(decoder.decode(i, lambda rgb: None) for i in images), return_exceptions=True
            )
        finally:
            await decoder.stop()
        return [r if isinstance(r, Exception) else r[0] for r in results]

    return asyncio.run(go())


CASES = [
    (64, 64, 0, 50, 0),
    (97, 131, 1, 75, 1),
    (240, 320, 2, 95, 2),
    (120, 90, 3, 85, 2),
]  # h, w, seed, quality, subsampling
JPEGS = [pil_jpeg(scene(h, w, seed), quality=q, subsampling=s) for h, w, seed, q, s in CASES]


def test_cpu_batched_decode_matches_the_cpu_decoder_within_tolerance():
    arrays = decode_jpegs(JPEGS, device="cpu", max_pixels=10**7)
    for array, data in zip(arrays, JPEGS, strict=True):
        worst, _, mean = difference(array, decode_image(data))
        assert worst <= CPU_TOLERANCE.max_abs and mean <= CPU_TOLERANCE.mean_abs


def test_concurrent_jpegs_are_decoded_in_one_batch_equal_to_the_cpu_path():
    decoder = Decoder(workers=2, max_pixels=10**7, jpeg_device="cpu")
    results = decode_all(decoder, JPEGS)
    assert decoder.decode_batches == 1 and decoder.batched_images == decoder.largest_decode_batch == len(JPEGS)
    for array, data in zip(results, JPEGS, strict=True):
        assert difference(array, decode_image(data))[0] <= CPU_TOLERANCE.max_abs


def test_a_corrupt_jpeg_fails_alone_with_the_cpu_paths_message():
    bad = corrupt_huffman_table(JPEGS[0])
    assert batchable_jpeg(bad, max_pixels=10**7)  # the header checks pass: only decoding finds it
    with pytest.raises(DecodeError) as cpu_error:
        decode_image(bad)
    decoder = Decoder(workers=2, max_pixels=10**7, jpeg_device="cpu")
    results = decode_all(decoder, [JPEGS[1], bad, JPEGS[2]])
    assert isinstance(results[1], DecodeError) and str(results[1]) == str(cpu_error.value)
    for index in (0, 2):
        np.testing.assert_array_equal(results[index], decode_image([JPEGS[1], bad, JPEGS[2]][index]))
    assert decoder.batched_images == 2  # the batch failed, was rerun one by one; the good ones were answered


def test_png_grayscale_and_cmyk_go_to_the_cpu_decoder():
    image = scene(48, 64)
    png, gray, cmyk = encode_image(image, "png"), pil_jpeg(image, mode="L"), pil_jpeg(image, mode="CMYK")
    assert not any(batchable_jpeg(x, max_pixels=10**7) for x in (png, gray, cmyk))
    decoder = Decoder(workers=2, max_pixels=10**7, jpeg_device="cpu")
    results = decode_all(decoder, [png, gray, cmyk, JPEGS[0]])
    for array, data in zip(results, [png, gray, cmyk, JPEGS[0]], strict=True):
        np.testing.assert_array_equal(array, decode_image(data))
    assert decoder.batched_images == 1


def test_a_too_large_jpeg_is_refused_before_decoding_with_the_same_error():
    big = JPEGS[2]  # 320 x 240 = 76,800 pixels
    with pytest.raises(ImageTooLargeError) as cpu_error:
        decode_image(big, max_pixels=50_000)
    decoder = Decoder(workers=2, max_pixels=50_000, jpeg_device="cpu")
    (result,) = decode_all(decoder, [big])
    assert isinstance(result, ImageTooLargeError) and str(result) == str(cpu_error.value)
    assert decoder.decode_batches == 0


def test_an_exif_rotated_jpeg_comes_back_upright_as_on_the_cpu_path():
    rotated = jpeg_with_exif(JPEGS[1], 6)  # stored 131 x 97, shown rotated 90 degrees clockwise
    decoder = Decoder(workers=2, max_pixels=10**7, jpeg_device="cpu")
    (array,) = decode_all(decoder, [rotated])
    assert array.shape == (131, 97, 3) and decoder.batched_images == 1
    np.testing.assert_array_equal(array, decode_image(rotated))


def test_the_batch_device_follows_the_mode():
    assert jpeg_batch_device("off", "cpu") is None
    assert jpeg_batch_device("auto", "cpu") is None  # auto: only when serving on CUDA
    assert jpeg_batch_device("on", "cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="auto, on, off"):
        jpeg_batch_device("yes", "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="nvJPEG needs CUDA")
def test_nvjpeg_matches_the_cpu_decoder_within_the_cuda_tolerance():
    assert jpeg_batch_device("auto", None) == torch.device("cuda")
    arrays = decode_jpegs(JPEGS, device="cuda", max_pixels=10**7)
    for array, data in zip(arrays, JPEGS, strict=True):
        _, high, mean = difference(array, decode_image(data))
        assert high <= CUDA_TOLERANCE.max_abs and mean <= CUDA_TOLERANCE.mean_abs, (high, mean)


FLAG_CASES = [([], None, "auto"), ([], "off", "off"), (["--gpu-decode", "on"], "off", "on")]  # argv, env, expected


@pytest.mark.parametrize(("argv", "env", "expected"), FLAG_CASES)
def test_the_serve_flag_and_its_env_var_reach_the_serving_config(monkeypatch, argv, env, expected):
    import argparse

    from services.commands import serve

    if env is None:
        monkeypatch.delenv("CVTASKS_GPU_DECODE", raising=False)
    else:
        monkeypatch.setenv("CVTASKS_GPU_DECODE", env)
    parser = argparse.ArgumentParser()
    serve.add_arguments(parser.add_subparsers().add_parser("serve"))
    serving, _ = serve.configs(parser.parse_args(["serve", "--task", "detection", *argv]))
    assert serving.gpu_decode == expected
