"""models/preprocessing.py and models/image_header.py: decoding, geometry, boxes, augmentations.

Every image is built here (cv2.imencode, hand-built EXIF / PNG chunks / TIFF headers), no fixtures.
"""

from __future__ import annotations

import os
import struct
import types
import zlib

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from models import preprocessing as pp  # noqa: E402
from models.errors import DecodeError, ImageTooLargeError, InvalidInputError  # noqa: E402
from models.image_header import detect_format, exif_orientation, probe_image_size  # noqa: E402

# --- builders ---------------------------------------------------------------------------------


def quadrants(height: int = 30, width: int = 40) -> np.ndarray:
    """RGB uint8 with four flat colours (red, green, blue, white): survives lossy codecs, shows orientation."""
    img = np.zeros((height, width, 3), np.uint8)
    h, w = height // 2, width // 2
    img[:h, :w] = (255, 0, 0)
    img[:h, w:] = (0, 255, 0)
    img[h:, :w] = (0, 0, 255)
    img[h:, w:] = (255, 255, 255)
    return img


def noise(height: int = 30, width: int = 40, channels: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)


def cv_encode(pixels: np.ndarray, ext: str, params: list[int] | None = None) -> bytes:
    """Encode pixels exactly as given (OpenCV channel order: BGR / BGRA)."""
    ok, buf = cv2.imencode(ext, pixels, params or [])
    assert ok
    return buf.tobytes()


def encode_rgb(img: np.ndarray, ext: str, params: list[int] | None = None) -> bytes:
    """Encode an RGB (or RGBA) image, converting to OpenCV's BGR(A) order first."""
    code = cv2.COLOR_RGBA2BGRA if img.ndim == 3 and img.shape[2] == 4 else cv2.COLOR_RGB2BGR
    return cv_encode(cv2.cvtColor(img, code), ext, params)


def exif_tiff(orientation: int, byte_order: str = "MM") -> bytes:
    """A minimal TIFF stream (EXIF payload) whose IFD0 holds one Orientation (0x0112) SHORT."""
    e = ">" if byte_order == "MM" else "<"
    header = byte_order.encode() + struct.pack(e + "HI", 42, 8)
    ifd = struct.pack(e + "H", 1) + struct.pack(e + "HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(e + "I", 0)
    return header + ifd


def jpeg_with_exif(jpeg: bytes, orientation: int, byte_order: str = "MM") -> bytes:
    """Insert an APP1 "Exif" segment right after SOI."""
    payload = b"Exif\x00\x00" + exif_tiff(orientation, byte_order)
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return jpeg[:2] + app1 + jpeg[2:]


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_with_exif(png: bytes, orientation: int) -> bytes:
    """Insert an eXIf chunk right after IHDR (8-byte signature + 25-byte IHDR chunk)."""
    return png[:33] + png_chunk(b"eXIf", exif_tiff(orientation)) + png[33:]


def tiff_header(width: int, height: int, byte_order: str, *, big: bool = False) -> bytes:
    """A TIFF/BigTIFF header whose IFD0 has ImageWidth (LONG) and ImageLength (SHORT); no pixel data."""
    e = ">" if byte_order == "MM" else "<"
    if big:
        head = byte_order.encode() + struct.pack(e + "HHHQ", 43, 8, 0, 16)
        entries = struct.pack(e + "HHQII", 256, 4, 1, width, 0) + struct.pack(e + "HHQHHI", 257, 3, 1, height, 0, 0)
        return head + struct.pack(e + "Q", 2) + entries + struct.pack(e + "Q", 0)
    head = byte_order.encode() + struct.pack(e + "HI", 42, 8)
    entries = struct.pack(e + "HHII", 256, 4, 1, width) + struct.pack(e + "HHIHH", 257, 3, 1, height, 0)
    return head + struct.pack(e + "H", 2) + entries + struct.pack(e + "I", 0)


def png_header_only(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)


# One 40x30 encoding per format and variant; (bytes, exact) where exact = lossless.
FORMATS = {
    "png": (".png", [], True),
    "jpeg": (".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95], False),
    "jpeg_progressive": (".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1], False),
    "webp_lossless": (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101], True),  # VP8L
    "webp_lossy": (".webp", [cv2.IMWRITE_WEBP_QUALITY, 90], False),  # VP8
    "bmp": (".bmp", [], True),
    "tiff": (".tiff", [], True),
}


# --- decode: every format ---------------------------------------------------------------------


@pytest.mark.parametrize("name", FORMATS)
def test_decode_round_trips_each_format(name):
    ext, params, exact = FORMATS[name]
    img = quadrants() if not exact else noise()
    out = pp.decode_image(encode_rgb(img, ext, params))
    assert out.dtype == np.uint8 and out.shape == (30, 40, 3) and out.flags.c_contiguous
    if exact:
        np.testing.assert_array_equal(out, img)
    else:  # lossy: colours (and so RGB order) still right
        assert np.abs(out.astype(int) - img).mean() < 15  # chroma subsampling blurs the edges


@pytest.mark.parametrize("ext", [".png", ".tiff"])
def test_16_bit_is_scaled_not_clipped(ext):
    values = np.array([0, 257, 1000, 25700, 40000, 65535], np.uint16)
    rgb16 = np.repeat(values.reshape(1, 6, 1), 3, axis=2)
    rgb16[..., 0] = 65535  # red channel full on, to catch channel-order mistakes
    out = pp.decode_image(cv_encode(rgb16[..., ::-1].copy(), ext))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, :, 1], [0, 1, 4, 100, 156, 255])  # round(v / 257)
    assert (out[0, :, 0] == 255).all()


def test_rgba_png_is_composited_on_black():
    img = np.zeros((2, 3, 4), np.uint8)
    img[..., :3] = (200, 100, 50)
    img[..., 3] = [[255, 0, 128], [255, 255, 255]]
    out = pp.decode_image(encode_rgb(img, ".png"))
    assert out.shape == (2, 3, 3)
    np.testing.assert_array_equal(out[0, 0], (200, 100, 50))  # opaque: unchanged
    np.testing.assert_array_equal(out[0, 1], (0, 0, 0))  # transparent: black, hidden colour gone
    np.testing.assert_array_equal(out[0, 2], (100, 50, 25))  # half: 200*128/255 = 100.4 -> 100


def test_opaque_rgba_webp_keeps_colours():
    img = np.dstack([noise(8, 8), np.full((8, 8), 255, np.uint8)])
    out = pp.decode_image(encode_rgb(img, ".webp", [cv2.IMWRITE_WEBP_QUALITY, 101]))
    np.testing.assert_array_equal(out, img[..., :3])


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp", ".tiff"])
def test_grayscale_becomes_three_equal_channels(ext):
    gray = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (10, 1))
    out = pp.decode_image(cv_encode(gray, ext))
    assert out.shape == (10, 25, 3)
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    assert np.abs(out[..., 0].astype(int) - gray).max() <= (6 if ext == ".jpg" else 0)


# --- EXIF orientation -------------------------------------------------------------------------


@pytest.mark.parametrize("byte_order", ["MM", "II"])
def test_jpeg_exif_orientation_6_is_rotated_clockwise(byte_order):
    jpeg = encode_rgb(quadrants(30, 40), ".jpg")
    data = jpeg_with_exif(jpeg, 6, byte_order)
    assert exif_orientation(data) == 6
    out = pp.decode_image(data)
    assert out.shape == (40, 30, 3)  # H and W swapped
    # Rotating 90 degrees clockwise puts the top-left (red) quadrant at the top right
    # and the bottom-left (blue) quadrant at the top left.
    assert np.abs(out[5, 25].astype(int) - (255, 0, 0)).max() < 20
    assert np.abs(out[5, 5].astype(int) - (0, 0, 255)).max() < 20
    assert np.abs(out[35, 5].astype(int) - (255, 255, 255)).max() < 20


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_matches_opencv(orientation):
    data = jpeg_with_exif(encode_rgb(noise(12, 20), ".jpg"), orientation)
    reference = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(pp.decode_image(data), reference)


def test_png_exif_chunk_orientation_applied():
    img = noise(6, 10)
    out = pp.decode_image(png_with_exif(encode_rgb(img, ".png"), 8))
    np.testing.assert_array_equal(out, np.rot90(img, k=1))  # 8: rotate 90 counter-clockwise


def test_malformed_exif_is_ignored():
    jpeg = encode_rgb(quadrants(), ".jpg")
    bad = b"Exif\x00\x00XX\x00\x2a\xff\xff"
    data = jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(bad) + 2) + bad + jpeg[2:]
    assert exif_orientation(data) == 1
    assert pp.decode_image(data).shape == (30, 40, 3)


def test_apply_exif_orientation_rejects_bad_value():
    with pytest.raises(ValueError, match="1..8"):
        pp.apply_exif_orientation(noise(2, 2), 9)


# --- raw pixels -------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_image_from_pixels(channels):
    pixels = noise(5, 7, channels)
    if channels == 4:
        pixels[..., 3] = 255
    out = pp.image_from_pixels(pixels.tobytes(), height=5, width=7, channels=channels)
    expected = np.repeat(pixels, 3, axis=2) if channels == 1 else pixels[..., :3]
    np.testing.assert_array_equal(out, expected)
    assert out.flags.writeable and out.shape == (5, 7, 3)


def test_image_from_pixels_wrong_length_says_expected_and_got():
    with pytest.raises(InvalidInputError, match=r"has 100 bytes, expected .* = 105"):
        pp.image_from_pixels(bytes(100), height=5, width=7, channels=3)


@pytest.mark.parametrize("kwargs", [dict(height=5, width=7, channels=2), dict(height=0, width=7, channels=3)])
def test_image_from_pixels_bad_shape(kwargs):
    with pytest.raises(InvalidInputError):
        pp.image_from_pixels(bytes(0), **kwargs)


def test_image_from_pixels_pixel_limit():
    with pytest.raises(ImageTooLargeError, match="over the limit"):
        pp.image_from_pixels(bytes(300), height=10, width=10, channels=3, max_pixels=99)


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, match",
    [
        (b"", "empty"),
        (np.random.default_rng(1).bytes(2000), "unrecognised image format"),
        (cv_encode(noise(), ".gif"), "GIF is not supported"),
        (b"\x89PNG\r\n\x1a\n" + bytes(100), "PNG"),  # right magic, corrupt body
    ],
    ids=["empty", "garbage", "gif", "corrupt_png"],
)
def test_undecodable_bytes_raise_decode_error_listing_formats(data, match):
    with pytest.raises(DecodeError, match=match) as err:
        pp.decode_image(data)
    assert "JPEG, PNG, WebP, BMP, TIFF" in str(err.value)
    assert not isinstance(err.value, ImageTooLargeError)


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_files_are_refused(name, keep):
    ext, params, _ = FORMATS[name]
    data = encode_rgb(noise(), ext, params)
    with pytest.raises(DecodeError, match="truncated"):
        pp.decode_image(data[: int(len(data) * keep)])


def test_jpeg_missing_only_eoi_is_truncated():
    data = encode_rgb(quadrants(), ".jpg")
    assert data.endswith(b"\xff\xd9")
    with pytest.raises(DecodeError, match="EOI"):
        pp.decode_image(data[:-2])


def test_png_missing_only_iend_is_truncated():
    data = encode_rgb(quadrants(), ".png")
    with pytest.raises(DecodeError, match="IEND"):
        pp.decode_image(data[:-12])


def test_bytes_after_jpeg_eoi_are_allowed():
    data = encode_rgb(quadrants(), ".jpg") + b"trailing video or padding"
    assert pp.decode_image(data).shape == (30, 40, 3)


def test_bytearray_and_memoryview_accepted():
    data = encode_rgb(noise(), ".png")
    np.testing.assert_array_equal(pp.decode_image(bytearray(data)), pp.decode_image(memoryview(data)))


# --- pixel limit ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FORMATS)
def test_pixel_limit_checked_from_header_before_decoding(name, monkeypatch):
    ext, params, _ = FORMATS[name]
    data = encode_rgb(noise(), ext, params)

    def no_decode(*args, **kwargs):
        raise AssertionError("the header check should have refused the image before decoding")

    monkeypatch.setattr(pp.cv2, "imdecode", no_decode)
    with pytest.raises(ImageTooLargeError, match="40x30 = 1,200 pixels, over the limit of 1,199"):
        pp.decode_image(data, max_pixels=1199)


def test_decompression_bomb_header_refused():
    with pytest.raises(ImageTooLargeError):
        pp.decode_image(png_header_only(100_000, 100_000))


def test_pixel_limit_checked_after_decode_when_header_unreadable(monkeypatch):
    monkeypatch.setattr(pp, "probe_image_size", lambda data: None)
    with pytest.raises(ImageTooLargeError):
        pp.decode_image(encode_rgb(noise(), ".png"), max_pixels=1199)
    assert pp.decode_image(encode_rgb(noise(), ".png"), max_pixels=1200).shape == (30, 40, 3)


def test_max_pixels_must_be_positive():
    with pytest.raises(ValueError, match="max_pixels"):
        pp.decode_image(b"x", max_pixels=0)


# --- header probing ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", FORMATS)
def test_probe_size_of_each_encoded_format(name):
    ext, params, _ = FORMATS[name]
    assert probe_image_size(encode_rgb(noise(31, 47), ext, params)) == (47, 31)


@pytest.mark.parametrize(
    "data, expected_format",
    [
        (cv_encode(noise(31, 47), ".gif"), "gif"),
        (cv_encode(noise(31, 47, 4), ".webp", [cv2.IMWRITE_WEBP_QUALITY, 80]), "webp"),  # VP8X (alpha)
        (cv_encode(noise(31, 47)[..., 0], ".bmp"), "bmp"),  # 8-bit palette BMP
        (tiff_header(47, 31, "II"), "tiff"),
        (tiff_header(47, 31, "MM"), "tiff"),
        (tiff_header(47, 31, "II", big=True), "tiff"),
        (tiff_header(47, 31, "MM", big=True), "tiff"),
        (png_header_only(47, 31), "png"),
    ],
    ids=["gif", "webp_vp8x", "bmp_gray", "tiff_le", "tiff_be", "bigtiff_le", "bigtiff_be", "png_header"],
)
def test_probe_size_of_header_variants(data, expected_format):
    assert detect_format(data) == expected_format
    assert probe_image_size(data) == (47, 31)


def test_alpha_webp_fixture_really_is_vp8x():
    data = cv_encode(noise(31, 47, 4), ".webp", [cv2.IMWRITE_WEBP_QUALITY, 80])
    assert data[12:16] == b"VP8X"


def test_probe_top_down_bmp_height_is_positive():
    data = bytearray(cv_encode(noise(31, 47), ".bmp"))
    data[22:26] = struct.pack("<i", -31)  # negative height = rows stored top-down
    assert probe_image_size(bytes(data)) == (47, 31)


@pytest.mark.parametrize(
    "data", [b"", b"hello world", b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"MM\x00*"]
)
def test_probe_returns_none_for_unknown_or_short_data(data):
    assert probe_image_size(data) is None


# --- read / encode ----------------------------------------------------------------------------


def test_read_image_and_error_names_the_path(tmp_path):
    good = tmp_path / "good.png"
    good.write_bytes(encode_rgb(noise(), ".png"))
    np.testing.assert_array_equal(pp.read_image(good), noise())
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(DecodeError, match="bad.jpg"):
        pp.read_image(bad)
    with pytest.raises(ImageTooLargeError, match="good.png"):
        pp.read_image(good, max_pixels=10)
    with pytest.raises(FileNotFoundError):
        pp.read_image(tmp_path / "missing.png")


@pytest.mark.parametrize("fmt", ["png", "jpeg", "jpg", "webp"])
def test_encode_image_round_trip(fmt):
    img = quadrants()
    data = pp.encode_image(img, fmt)
    assert detect_format(data) == {"jpg": "jpeg"}.get(fmt, fmt)
    assert np.abs(pp.decode_image(data).astype(int) - img).mean() < (0.01 if fmt == "png" else 15)


def test_encode_image_takes_gray_with_or_without_a_channel_axis():
    gray = quadrants()[..., 0]
    assert pp.encode_image(gray[..., None], "png") == pp.encode_image(gray, "png")


def test_encode_image_rejects_bad_arguments():
    with pytest.raises(InvalidInputError, match="png, jpeg or webp"):
        pp.encode_image(quadrants(), "gif")
    with pytest.raises(InvalidInputError, match="quality"):
        pp.encode_image(quadrants(), "jpeg", quality=0)
    with pytest.raises(InvalidInputError, match="uint8"):
        pp.encode_image(quadrants().astype(np.float32), "png")


# --- tensors and geometry ---------------------------------------------------------------------


def test_to_tensor():
    img = noise(4, 5)
    t = pp.to_tensor(img)
    assert t.dtype == torch.float32 and t.shape == (3, 4, 5) and t.is_contiguous()
    assert torch.allclose(t[:, 1, 2], torch.tensor(img[1, 2], dtype=torch.float32) / 255)
    assert 0.0 <= t.min() and t.max() <= 1.0
    with pytest.raises(InvalidInputError, match=r"\(H, W, 3\)"):
        pp.to_tensor(img.astype(np.float32))


def test_resize_keep_aspect():
    img = noise(100, 200)
    out, scale = pp.resize_keep_aspect(img, max_size=50)
    assert out.shape == (25, 50, 3) and scale == 0.25
    same, scale = pp.resize_keep_aspect(img, max_size=300)
    assert same is img and scale == 1.0
    up, scale = pp.resize_keep_aspect(img, max_size=400, upscale=True)
    assert up.shape == (200, 400, 3) and scale == 2.0
    mask = np.zeros((100, 200), np.uint8)
    mask[:, 100:] = 3
    small, _ = pp.resize_keep_aspect(mask, max_size=50, interpolation=cv2.INTER_NEAREST)
    assert set(np.unique(small)) == {0, 3}


def test_letterbox_scales_centres_and_pads():
    img = np.full((50, 100, 3), 200, np.uint8)
    out, scale, (pad_x, pad_y) = pp.letterbox(img, size=64, fill=7)
    assert out.shape == (64, 64, 3) and scale == 0.64 and (pad_x, pad_y) == (0, 16)
    assert (out[:16] == 7).all() and (out[48:] == 7).all() and (out[16:48] == 200).all()
    tall, scale, pads = pp.letterbox(img, size=(100, 50), fill=(1, 2, 3))  # (height, width)
    assert tall.shape == (100, 50, 3) and scale == 0.5 and pads == (0, 37)
    np.testing.assert_array_equal(tall[0, 0], (1, 2, 3))


def test_normalize():
    img = np.array([[[255, 0, 51]]], np.uint8)
    out = pp.normalize(img, mean=(0.5, 0.5, 0.2), std=(0.5, 0.25, 0.1))
    assert out.dtype == np.float32 and out.shape == (1, 1, 3)
    np.testing.assert_allclose(out[0, 0], [1.0, -2.0, 0.0], atol=1e-6)
    with pytest.raises(ValueError, match="3 values"):
        pp.normalize(img, mean=(0.5,), std=(0.5,))
    with pytest.raises(ValueError, match="> 0"):
        pp.normalize(img, mean=(0, 0, 0), std=(1, 0, 1))


def test_inference_transform_resizes_normalises_and_pads():
    transform = pp.InferenceTransform(max_size=50, pad_to_multiple=32)
    img = np.full((100, 70, 3), 128, np.uint8)
    tensor, meta = transform(img)
    assert tensor.dtype == torch.float32 and tensor.shape == (3, 64, 64)
    assert meta == pp.TransformMeta(original_size=(100, 70), resized_size=(50, 35), padded_size=(64, 64), scale=0.5)
    expected = (128 / 255 - np.array(pp.IMAGENET_MEAN)) / np.array(pp.IMAGENET_STD)
    np.testing.assert_allclose(tensor[:, 10, 10].numpy(), expected, atol=1e-5)
    assert (tensor[:, 50:, :] == 0).all() and (tensor[:, :, 35:] == 0).all()


def test_inference_transform_identity_defaults_and_validation():
    tensor, meta = pp.InferenceTransform(mean=[0, 0, 0], std=[1, 1, 1])(noise(9, 11))
    assert tensor.shape == (3, 9, 11) and meta.scale == 1.0
    torch.testing.assert_close(tensor, pp.to_tensor(noise(9, 11)))
    for bad in (dict(max_size=0), dict(pad_to_multiple=-2), dict(mean=(0.5,)), dict(std=(1, 0, 1))):
        with pytest.raises(ValueError):
            pp.InferenceTransform(**bad)


# --- boxes ------------------------------------------------------------------------------------

VOC = np.array([[10, 20, 50, 60], [0, 0, 200, 100]], float)
W, H = 200, 100


def test_convert_boxes_known_values():
    coco = pp.convert_boxes(VOC, src="pascal_voc", dst="coco", width=W, height=H)
    np.testing.assert_allclose(coco, [[10, 20, 40, 40], [0, 0, 200, 100]])
    yolo = pp.convert_boxes(VOC, src="pascal_voc", dst="yolo", width=W, height=H)
    np.testing.assert_allclose(yolo, [[0.15, 0.4, 0.2, 0.4], [0.5, 0.5, 1.0, 1.0]])


@pytest.mark.parametrize("src", pp.BOX_FORMATS)
@pytest.mark.parametrize("dst", pp.BOX_FORMATS)
def test_convert_boxes_round_trip(src, dst):
    boxes = pp.convert_boxes(VOC, src="pascal_voc", dst=src, width=W, height=H)
    there = pp.convert_boxes(boxes, src=src, dst=dst, width=W, height=H)
    back = pp.convert_boxes(there, src=dst, dst="pascal_voc", width=W, height=H)
    np.testing.assert_allclose(back, VOC, atol=1e-9)
    assert not np.shares_memory(there, boxes)


def test_convert_boxes_errors_and_empty():
    assert pp.convert_boxes([], src="coco", dst="yolo", width=W, height=H).shape == (0, 4)
    with pytest.raises(ValueError, match="pascal_voc, coco, yolo"):
        pp.convert_boxes(VOC, src="xywh", dst="coco", width=W, height=H)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        pp.convert_boxes(np.zeros((2, 3)), src="coco", dst="yolo", width=W, height=H)


def test_clip_boxes():
    clipped = pp.clip_boxes(np.array([[-5, -5, 250, 50], [10, 10, 20, 20]]), width=W, height=H)
    np.testing.assert_array_equal(clipped, [[0, 0, 200, 50], [10, 10, 20, 20]])


# --- augmentations ----------------------------------------------------------------------------


def pixel_box(mask: np.ndarray) -> np.ndarray | None:
    """pascal_voc box (x1, y1, x2, y2) around the True pixels of a (H, W) mask, or None."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], float)


def two_rectangles() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 60x90 black image with a red (label 1) and a green (label 2) filled rectangle, and their boxes."""
    img = np.zeros((60, 90, 3), np.uint8)
    img[10:30, 5:35] = (255, 0, 0)
    img[25:55, 50:80] = (0, 255, 0)
    return img, np.array([[5, 10, 35, 30], [50, 25, 80, 55]], float), np.array([1, 2], np.int64)


@pytest.mark.parametrize("bbox_format", ["pascal_voc", "coco"])
def test_detection_augmentation_keeps_boxes_on_their_rectangles(bbox_format):
    img, boxes, labels = two_rectangles()
    boxes_in = pp.convert_boxes(boxes, src="pascal_voc", dst=bbox_format, width=90, height=60)
    transform = pp.detection_train_transform(size=64, bbox_format=bbox_format, color_jitter=0.0, seed=3)
    kept = 0
    for _ in range(25):
        out = transform(image=img, bboxes=boxes_in, labels=labels)
        assert out["image"].shape == (64, 64, 3) and out["image"].dtype == np.uint8
        assert len(out["bboxes"]) == len(out["labels"])
        out_boxes = pp.convert_boxes(np.asarray(out["bboxes"]), src=bbox_format, dst="pascal_voc", width=64, height=64)
        for box, label in zip(out_boxes, out["labels"], strict=True):
            channel = 0 if label == 1 else 1  # the label must still sit on its own colour
            visible = pixel_box((out["image"][..., channel] > 127) & (out["image"][..., 2 - channel * 2] < 127))
            assert visible is not None
            np.testing.assert_allclose(box, visible, atol=2.0)
            assert ((0 <= box) & (box <= 64)).all()
            kept += 1
    assert kept >= 25  # most boxes survive the default scale range


def test_detection_augmentation_flip_is_exact():
    img, boxes, labels = two_rectangles()
    square = np.zeros((90, 90, 3), np.uint8)
    square[:60] = img
    transform = pp.detection_train_transform(size=90, hflip_p=1.0, scale=(1.0, 1.0), color_jitter=0.0)
    out = transform(image=square, bboxes=boxes, labels=labels)
    np.testing.assert_array_equal(out["image"], square[:, ::-1])
    np.testing.assert_allclose(out["bboxes"], [[55, 10, 85, 30], [10, 25, 40, 55]], atol=1e-4)
    np.testing.assert_array_equal(out["labels"], [1, 2])


def test_detection_augmentation_drops_boxes_mostly_cut_away():
    img = np.zeros((64, 64, 3), np.uint8)
    img[0:24, 0:24] = 255
    transform = pp.detection_train_transform(
        size=64, scale=(2.0, 2.0), hflip_p=0.0, color_jitter=0.0, min_visibility=0.3, seed=0
    )
    seen = set()
    for _ in range(40):  # x2 zoom, then a random 64x64 crop of the 128x128 image
        out = transform(image=img, bboxes=np.array([[0, 0, 24, 24]], float), labels=np.array([1]))
        visible_fraction = (out["image"][..., 0] > 127).sum() / (48 * 48)  # the box is 48x48 after x2
        if 0.2 < visible_fraction < 0.4:
            continue  # too close to the threshold for pixel counting to decide
        assert len(out["bboxes"]) == (1 if visible_fraction >= 0.4 else 0), visible_fraction
        seen.add(len(out["bboxes"]))
    assert seen == {0, 1}  # both outcomes happened


def test_detection_augmentation_clips_out_of_range_boxes():
    transform = pp.detection_train_transform(size=32, hflip_p=0.0, scale=(1.0, 1.0), color_jitter=0.0)
    out = transform(image=np.zeros((32, 32, 3), np.uint8), bboxes=np.array([[-4.0, -4.0, 40.0, 16.0]]), labels=[7])
    np.testing.assert_allclose(out["bboxes"], [[0, 0, 32, 16]], atol=1e-4)


def test_detection_augmentation_is_reproducible_with_seed():
    img, boxes, labels = two_rectangles()
    a = pp.detection_train_transform(size=48, seed=11)(image=img, bboxes=boxes, labels=labels)
    b = pp.detection_train_transform(size=48, seed=11)(image=img, bboxes=boxes, labels=labels)
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["bboxes"], b["bboxes"])


def test_detection_eval_transform_fits_and_pads():
    img, boxes, labels = two_rectangles()  # 90 wide x 60 high -> 64 x 43 (rounded), then padded
    out = pp.detection_eval_transform(size=64)(image=img, bboxes=boxes, labels=labels)
    assert out["image"].shape == (64, 64, 3)
    np.testing.assert_allclose(out["bboxes"], boxes * (64 / 90, 43 / 60, 64 / 90, 43 / 60), atol=1e-3)
    np.testing.assert_array_equal(out["labels"], labels)
    assert (out["image"][43:] == 0).all() and out["image"][:43].any()  # padding at the bottom only


def test_segmentation_augmentation_moves_mask_with_image():
    mask = np.zeros((60, 90), np.uint8)
    mask[10:30, 5:35] = 1
    mask[25:55, 50:80] = 2
    img = np.zeros((60, 90, 3), np.uint8)
    img[mask == 1] = (255, 255, 255)
    img[mask == 2] = (0, 0, 255)
    transform = pp.segmentation_train_transform(size=64, color_jitter=0.0, seed=5)
    for _ in range(10):
        out = transform(image=img, mask=mask)
        out_img, out_mask = out["image"], out["mask"]
        assert out_img.shape == (64, 64, 3) and out_mask.shape == (64, 64)
        assert set(np.unique(out_mask)) <= {0, 1, 2}  # nearest: no blended labels
        predicted = np.where(out_img[..., 0] > 127, 1, np.where(out_img[..., 2] > 127, 2, 0))
        assert (predicted == out_mask).mean() > 0.95


def test_segmentation_mask_fill_used_for_padding():
    transform = pp.segmentation_train_transform(size=64, scale=(0.5, 0.5), color_jitter=0.0, mask_fill=255)
    out = transform(image=np.full((64, 64, 3), 9, np.uint8), mask=np.ones((64, 64), np.uint8))
    padded = out["mask"] == 255
    assert padded.mean() == pytest.approx(0.75, abs=0.02)  # a 32x32 image inside 64x64
    assert (out["image"][padded] == 0).all() and (out["image"][~padded] == 9).all()


def test_worker_init_reseeds_each_workers_transform(monkeypatch):
    img, boxes, labels = two_rectangles()

    class Dataset:
        transform = pp.detection_train_transform(size=48, seed=0)

    outputs = []
    for worker_seed in (100, 101):
        info = types.SimpleNamespace(id=0, num_workers=2, seed=worker_seed, dataset=Dataset)
        monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda info=info: info)
        pp.seed_augmentations_in_worker(0)
        outputs.append(Dataset.transform(image=img, bboxes=boxes, labels=labels)["image"])
        pp.seed_augmentations_in_worker(0)  # same worker seed -> same stream
        again = Dataset.transform(image=img, bboxes=boxes, labels=labels)["image"]
        np.testing.assert_array_equal(outputs[-1], again)
    assert not np.array_equal(outputs[0], outputs[1])


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(size=0),
        dict(size=32, hflip_p=1.5),
        dict(size=32, scale=(1.2, 0.8)),
        dict(size=32, color_jitter=-0.1),
        dict(size=32, bbox_format="xyxy"),
        dict(size=32, min_visibility=2.0),
    ],
)
def test_augmentation_arguments_validated(kwargs):
    with pytest.raises(ValueError):
        pp.detection_train_transform(**kwargs)
