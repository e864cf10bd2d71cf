"""The one shared OpenCV/albumentations module: decode, resize, normalise, box formats, augmentations.

Training and serving both call these functions, so what a model sees cannot drift between them.
Header probing lives in models/image_header.py and box formats in models/boxes.py; both are
re-exported here, so callers import everything from this module.

Images are numpy arrays, RGB, uint8, shape (H, W, 3), unless a docstring says otherwise.
Decoding rules (``decode_image`` and ``image_from_pixels``):

- formats: JPEG, PNG, WebP, BMP, TIFF (recognised by magic bytes, not by a file name);
- 16-bit samples are *scaled* to 8 bits (``round(v / 257)``: 65535 -> 255), float samples are
  taken as [0, 1] and scaled by 255;
- grayscale becomes three equal channels;
- alpha is composited on black (``rgb * alpha / 255``), so fully transparent pixels are black
  whatever colour they hide; an all-opaque alpha channel is simply dropped;
- the EXIF orientation tag (JPEG APP1, PNG eXIf, WebP EXIF) is applied explicitly: pixels come
  back upright. TIFF orientation tags are left to the decoder;
- the pixel limit is checked from the header before the pixels are decoded, and again after;
- files that are cut short (JPEG without EOI, PNG without IEND, short WebP/BMP/TIFF) are refused
  even if a decoder could return a partial image.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # never phone home at import

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from models.boxes import BOX_FORMATS, clip_boxes, convert_boxes  # noqa: E402
from models.errors import DecodeError, ImageTooLargeError, InvalidInputError  # noqa: E402
from models.image_header import (  # noqa: E402
    detect_format,
    exif_orientation,
    probe_image_size,
    truncation_problem,
)

__all__ = [
    "DEFAULT_MAX_PIXELS", "IMAGENET_MEAN", "IMAGENET_STD", "SUPPORTED_FORMATS", "BOX_FORMATS",
    "probe_image_size", "decode_image", "check_encoded", "finish_decoded", "image_from_pixels",
    "read_image", "encode_image",
    "apply_exif_orientation", "to_tensor", "resize_keep_aspect", "letterbox", "normalize",
    "TransformMeta", "InferenceTransform", "convert_boxes", "clip_boxes",
    "detection_train_transform", "detection_eval_transform", "segmentation_train_transform",
    "seed_augmentations_in_worker",
]  # fmt: skip

DEFAULT_MAX_PIXELS = 50_000_000
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SUPPORTED_FORMATS = ("JPEG", "PNG", "WebP", "BMP", "TIFF")
_DECODABLE = frozenset({"jpeg", "png", "webp", "bmp", "tiff"})
_SUPPORTED_TEXT = "supported formats: JPEG, PNG, WebP, BMP, TIFF"
_ALBU_BOX_FORMATS = ("pascal_voc", "coco", "yolo", "albumentations")

# --- decoding ---------------------------------------------------------------------------------


def _check_max_pixels(max_pixels: int) -> None:
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels <= 0:
        raise ValueError(f"max_pixels must be a positive int, got {max_pixels!r}")


def _check_pixel_count(width: int, height: int, max_pixels: int) -> None:
    """Raise ImageTooLargeError when width * height exceeds max_pixels."""
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"image is {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,}; "
            "downscale it before sending, or raise the max_pixels limit"
        )


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Scale 8/16-bit integer or [0, 1] float samples to uint8 (16-bit: round(v / 257))."""
    if pixels.dtype == np.uint8:
        return pixels
    if pixels.dtype == np.uint16:
        return ((pixels.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if pixels.dtype in (np.float32, np.float64):
        return np.rint(np.clip(np.nan_to_num(pixels), 0.0, 1.0) * 255.0).astype(np.uint8)
    raise DecodeError(f"unsupported sample type {pixels.dtype}: send 8- or 16-bit images ({_SUPPORTED_TEXT})")


def _composite_on_black(color: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """color (H, W, C) uint8 times alpha (H, W) / 255, rounded; an all-opaque alpha is just dropped."""
    if alpha.min() == 255:
        return np.ascontiguousarray(color)
    weighted = color.astype(np.uint16) * alpha[..., None].astype(np.uint16) + 127
    return (weighted // 255).astype(np.uint8)


def _to_rgb(pixels: np.ndarray, *, bgr: bool) -> np.ndarray:
    """(H, W), (H, W, 1|2|3|4) 8/16-bit/float pixels -> RGB uint8 (H, W, 3). ``bgr``: colour order is BGR(A)."""
    image = _to_uint8(pixels)
    if image.ndim == 2:
        image = image[..., None]
    channels = image.shape[2] if image.ndim == 3 else 0
    if channels in (1, 2):  # gray, gray + alpha
        gray = image[..., :1] if channels == 1 else _composite_on_black(image[..., :1], image[..., 1])
        return np.ascontiguousarray(np.repeat(gray, 3, axis=2))
    if channels not in (3, 4):
        raise DecodeError(f"unsupported image layout {pixels.shape}: expected 1, 2, 3 or 4 channels")
    color = image[..., 2::-1] if bgr else image[..., :3]
    if channels == 4:
        return _composite_on_black(color, image[..., 3])
    return np.ascontiguousarray(color)


def apply_exif_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """Turn pixels stored with EXIF ``orientation`` (1..8) upright, e.g. 6 -> rotate 90 degrees clockwise."""
    ops = {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],  # mirrored horizontally
        3: lambda a: a[::-1, ::-1],  # rotated 180
        4: lambda a: a[::-1],  # mirrored vertically
        5: lambda a: np.swapaxes(a, 0, 1),  # transposed
        6: lambda a: np.rot90(a, k=-1),  # needs 90 clockwise
        7: lambda a: np.swapaxes(a, 0, 1)[::-1, ::-1],  # transversed
        8: lambda a: np.rot90(a, k=1),  # needs 90 counter-clockwise
    }
    if orientation not in ops:
        raise ValueError(f"EXIF orientation must be 1..8, got {orientation!r}")
    return np.ascontiguousarray(ops[orientation](image))


def _as_bytes(data: bytes | bytearray | memoryview) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise InvalidInputError(f"image data must be bytes, got {type(data).__name__}")


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Encoded JPEG/PNG/WebP/BMP/TIFF bytes -> upright RGB uint8 (H, W, 3). See the module docstring.

    Raises:
        DecodeError: empty, unknown format, truncated or corrupt data (the message lists the formats).
        ImageTooLargeError: more than ``max_pixels`` pixels (checked from the header first).
    """
    data = _as_bytes(data)
    fmt = check_encoded(data, max_pixels=max_pixels)
    try:
        # IMREAD_UNCHANGED keeps depth and alpha and ignores EXIF; orientation is applied below.
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise DecodeError(f"cannot decode the {fmt.upper()} image: {exc}; {_SUPPORTED_TEXT}") from exc
    if pixels is None or pixels.size == 0:
        raise DecodeError(f"cannot decode the {fmt.upper()} image: corrupt or unsupported variant; {_SUPPORTED_TEXT}")
    return finish_decoded(_to_rgb(pixels, bgr=True), data, max_pixels=max_pixels)


def check_encoded(data: bytes, *, max_pixels: int) -> str:
    """The checks ``decode_image`` makes before decoding, for every decoder (the batched JPEG one
    too): not empty, a supported format (by magic bytes), the header's size within ``max_pixels``,
    not cut short. Returns the format ("jpeg", "png", ...); raises what ``decode_image`` raises."""
    _check_max_pixels(max_pixels)
    if not data:
        raise DecodeError(f"the image is empty (0 bytes); {_SUPPORTED_TEXT}")
    fmt = detect_format(data)
    if fmt not in _DECODABLE:
        what = f"{fmt.upper()} is not supported" if fmt else "unrecognised image format"
        raise DecodeError(f"{what} (first bytes {data[:8].hex(' ')}); {_SUPPORTED_TEXT}")
    size = probe_image_size(data)
    if size is not None:
        _check_pixel_count(*size, max_pixels)
    problem = truncation_problem(data)
    if problem is not None:
        raise DecodeError(f"truncated {fmt.upper()} image: {problem}; send the complete file ({_SUPPORTED_TEXT})")
    return fmt


def finish_decoded(rgb: np.ndarray, data: bytes, *, max_pixels: int) -> np.ndarray:
    """What every decoder does after decoding ``data`` to RGB uint8 (H, W, 3): the pixel limit
    checked again on the decoded size, then the EXIF orientation applied (pixels come back upright)."""
    _check_pixel_count(rgb.shape[1], rgb.shape[0], max_pixels)
    return apply_exif_orientation(rgb, exif_orientation(data))


def image_from_pixels(
    data: bytes, *, height: int, width: int, channels: int, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Raw uint8 HWC bytes (channels 1 = gray, 3 = RGB, 4 = RGBA) -> RGB uint8 (H, W, 3), a new array.

    Raises InvalidInputError for bad dimensions or a byte count other than height * width * channels,
    ImageTooLargeError above ``max_pixels``.
    """
    _check_max_pixels(max_pixels)
    data = _as_bytes(data)
    if channels not in (1, 3, 4):
        raise InvalidInputError(f"raw image channels must be 1 (gray), 3 (RGB) or 4 (RGBA), got {channels}")
    if height <= 0 or width <= 0:
        raise InvalidInputError(f"raw image height and width must be positive, got {height}x{width}")
    _check_pixel_count(width, height, max_pixels)
    expected = height * width * channels
    if len(data) != expected:
        raise InvalidInputError(
            f"raw image data has {len(data)} bytes, expected height*width*channels = "
            f"{height}*{width}*{channels} = {expected} (uint8, HWC order)"
        )
    pixels = np.frombuffer(data, np.uint8).reshape(height, width, channels)
    rgb = _to_rgb(pixels, bgr=False)
    return rgb if rgb.flags.writeable else rgb.copy()  # never a view of the caller's buffer


def read_image(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read and decode an image file -> RGB uint8 (H, W, 3). DecodeError messages name the path.

    OSError (e.g. FileNotFoundError) propagates unchanged.
    """
    data = Path(path).read_bytes()
    try:
        return decode_image(data, max_pixels=max_pixels)
    except DecodeError as exc:
        raise type(exc)(f"{path}: {exc}") from exc


def encode_image(image_rgb: np.ndarray, fmt: str = "png", *, quality: int = 95) -> bytes:
    """RGB uint8 (H, W, 3) or gray (H, W) or (H, W, 1) -> encoded bytes. fmt: "png", "jpeg"/"jpg" or "webp".

    ``quality`` (1..100) applies to JPEG and WebP.
    """
    fmt = fmt.lower().lstrip(".")
    params = {
        "png": [],
        "jpeg": [cv2.IMWRITE_JPEG_QUALITY, quality],
        "jpg": [cv2.IMWRITE_JPEG_QUALITY, quality],
        "webp": [cv2.IMWRITE_WEBP_QUALITY, quality],
    }
    if fmt not in params:
        raise InvalidInputError(f"cannot encode to {fmt!r}: choose png, jpeg or webp")
    if not 1 <= quality <= 100:
        raise InvalidInputError(f"quality must be in 1..100, got {quality}")
    is_gray_or_rgb = image_rgb.ndim == 2 or (image_rgb.ndim == 3 and image_rgb.shape[2] in (1, 3))
    if image_rgb.dtype != np.uint8 or not is_gray_or_rgb:
        raise InvalidInputError(
            "encode_image needs uint8 (H, W, 3) RGB or (H, W) / (H, W, 1) gray, "
            f"got {image_rgb.dtype} {image_rgb.shape}"
        )
    if image_rgb.ndim == 3 and image_rgb.shape[2] == 1:
        image_rgb = image_rgb[..., 0]
    pixels = image_rgb if image_rgb.ndim == 2 else cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
    ok, buffer = cv2.imencode("." + fmt, pixels, params[fmt])
    if not ok:
        raise InvalidInputError(f"OpenCV could not encode a {image_rgb.shape} image as {fmt}")
    return buffer.tobytes()


# --- geometry and tensors ---------------------------------------------------------------------


def _check_rgb(image: np.ndarray, what: str) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise InvalidInputError(f"{what} needs an RGB uint8 (H, W, 3) array, got {got}")


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> float32 tensor (3, H, W) in [0, 1], contiguous, sharing no memory."""
    _check_rgb(image, "to_tensor")
    chw = np.ascontiguousarray(image.transpose(2, 0, 1))
    return torch.from_numpy(chw).to(torch.float32).div_(255.0)


def resize_keep_aspect(
    image: np.ndarray, *, max_size: int, upscale: bool = False, interpolation: int | None = None
) -> tuple[np.ndarray, float]:
    """Resize (H, W[, C]) so its longest side is <= max_size, keeping the aspect ratio.

    Returns (resized, scale) with output pixel = input pixel * scale. Images already small enough
    come back unchanged with scale 1.0 unless ``upscale`` (then the longest side == max_size).
    ``interpolation`` defaults to INTER_AREA when shrinking and INTER_LINEAR when enlarging;
    pass cv2.INTER_NEAREST for label masks.
    """
    if not isinstance(max_size, int) or max_size <= 0:
        raise ValueError(f"max_size must be a positive int, got {max_size!r}")
    height, width = image.shape[:2]
    longest = max(height, width)
    if longest == max_size or (longest < max_size and not upscale):
        return image, 1.0
    scale = max_size / longest
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))  # cv2 wants (w, h)
    if interpolation is None:
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, new_size, interpolation=interpolation), scale


def center_crop_resize(image: np.ndarray, *, size: int) -> np.ndarray:
    """The largest centred square of (H, W[, C]), resized to size x size (area interpolation when
    shrinking, linear when enlarging): what a fixed-size generator is trained on."""
    if not isinstance(size, int) or size <= 0:
        raise ValueError(f"size must be a positive int, got {size!r}")
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = image[top : top + side, left : left + side]
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    out = cv2.resize(square, (size, size), interpolation=interpolation) if side != size else square.copy()
    return out[..., None] if out.ndim < image.ndim else out


def letterbox_geometry(
    shape: tuple[int, int], *, size: int | tuple[int, int]
) -> tuple[float, tuple[int, int], tuple[int, int]]:
    """Where ``letterbox`` puts an image of ``shape`` (height, width): (scale, (new_w, new_h),
    (pad_x, pad_y)); the image fills ``[pad_y : pad_y + new_h, pad_x : pad_x + new_w]``."""
    target_h, target_w = (size, size) if isinstance(size, int) else size
    if target_h <= 0 or target_w <= 0:
        raise ValueError(f"letterbox size must be positive, got {size!r}")
    height, width = shape
    scale = min(target_w / width, target_h / height)
    new_w = min(target_w, max(1, round(width * scale)))
    new_h = min(target_h, max(1, round(height * scale)))
    return scale, (new_w, new_h), ((target_w - new_w) // 2, (target_h - new_h) // 2)


def letterbox(
    image: np.ndarray, *, size: int | tuple[int, int], fill: int | Sequence[int] = 0
) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Scale (H, W[, C]) to fit ``size`` keeping the aspect ratio, then pad (centred) with ``fill``.

    ``size`` is an int (square) or (height, width). Returns (out, scale, (pad_x, pad_y)):
    a point (x, y) of the input lands at (x * scale + pad_x, y * scale + pad_y).
    """
    target_h, target_w = (size, size) if isinstance(size, int) else size
    scale, (new_w, new_h), (pad_x, pad_y) = letterbox_geometry(image.shape[:2], size=size)
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    if resized.ndim < image.ndim:  # cv2 drops a trailing channel axis of size 1
        resized = resized[..., None]
    out = np.empty((target_h, target_w, *image.shape[2:]), dtype=image.dtype)
    out[...] = np.asarray(fill, dtype=image.dtype)
    out[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = resized
    return out, scale, (pad_x, pad_y)


def normalize(image: np.ndarray, *, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(H, W, C) image with values in [0, 255] -> float32 (H, W, C): (x / 255 - mean) / std per channel."""
    mean_a = np.asarray(mean, dtype=np.float32)
    std_a = np.asarray(std, dtype=np.float32)
    channels = image.shape[2] if image.ndim == 3 else 1
    if mean_a.shape != (channels,) or std_a.shape != (channels,):
        raise ValueError(f"mean and std need {channels} values (one per channel), got {list(mean)} and {list(std)}")
    if np.any(std_a <= 0):
        raise ValueError(f"std values must be > 0, got {list(std)}")
    return (image.astype(np.float32) / 255.0 - mean_a) / std_a


@dataclass(frozen=True)
class TransformMeta:
    """How InferenceTransform changed an image; sizes are (height, width) in pixels.

    Model outputs cover ``padded_size``; the image occupies the top-left ``resized_size`` of it,
    and output coordinates / ``scale`` are input coordinates.
    """

    original_size: tuple[int, int]
    resized_size: tuple[int, int]
    padded_size: tuple[int, int]
    scale: float


@dataclass(frozen=True)
class InferenceTransform:
    """RGB uint8 (H, W, 3) -> (normalised float32 tensor (3, H', W'), TransformMeta).

    Steps: shrink so the longest side <= ``max_size`` (None: keep the size), normalise with
    ``mean``/``std`` (per channel, on [0, 1] values), pad bottom/right with zeros (= the mean
    colour) up to a multiple of ``pad_to_multiple`` (None: no padding), e.g. 32 for U-Net.
    """

    max_size: int | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    pad_to_multiple: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_size", "pad_to_multiple"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean and std need 3 values (R, G, B), got {self.mean} and {self.std}")
        if min(self.std) <= 0:
            raise ValueError(f"std values must be > 0, got {self.std}")

    def __call__(self, image: np.ndarray) -> tuple[torch.Tensor, TransformMeta]:
        _check_rgb(image, "InferenceTransform")
        original = image.shape[:2]
        scale = 1.0
        if self.max_size is not None:
            image, scale = resize_keep_aspect(image, max_size=self.max_size)
        height, width = image.shape[:2]
        chw = np.ascontiguousarray(normalize(image, mean=self.mean, std=self.std).transpose(2, 0, 1))
        tensor = torch.from_numpy(chw)
        if self.pad_to_multiple:
            m = self.pad_to_multiple
            pad_h, pad_w = -height % m, -width % m
            tensor = torch.nn.functional.pad(tensor, (0, pad_w, 0, pad_h))
        meta = TransformMeta(original, (height, width), tuple(tensor.shape[1:]), scale)  # type: ignore[arg-type]
        return tensor, meta


# --- training augmentations (albumentations 2.0.8) --------------------------------------------


def _check_augment_args(size: int, hflip_p: float, scale: tuple[float, float], color_jitter: float) -> None:
    if not isinstance(size, int) or size <= 0:
        raise ValueError(f"size must be a positive int (output side in pixels), got {size!r}")
    if not 0.0 <= hflip_p <= 1.0:
        raise ValueError(f"hflip_p is a probability in [0, 1], got {hflip_p}")
    if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
        raise ValueError(f"scale must be (low, high) with 0 < low <= high, e.g. (0.75, 1.25), got {scale}")
    if color_jitter < 0:
        raise ValueError(f"color_jitter must be >= 0 (0 disables it), got {color_jitter}")


def _random_geometry(size: int, scale: tuple[float, float], hflip_p: float, mask_fill: int) -> list[A.BasicTransform]:
    """Fit the longest side to ``size``, rescale by a random factor in ``scale``, pad and crop to size x size."""
    return [
        A.LongestMaxSize(max_size=size, mask_interpolation=cv2.INTER_NEAREST, p=1.0),
        A.RandomScale(scale_limit=(scale[0] - 1.0, scale[1] - 1.0), mask_interpolation=cv2.INTER_NEAREST, p=1.0),
        A.PadIfNeeded(
            min_height=size,
            min_width=size,
            position="random",
            border_mode=cv2.BORDER_CONSTANT,
            fill=0,
            fill_mask=mask_fill,
        ),
        A.RandomCrop(height=size, width=size, p=1.0),
        A.HorizontalFlip(p=hflip_p),
    ]


def _color(color_jitter: float) -> list[A.BasicTransform]:
    """Brightness/contrast/saturation jitter; hue is left alone because class names may be colours."""
    if color_jitter == 0:
        return []
    c = color_jitter
    return [A.ColorJitter(brightness=c, contrast=c, saturation=c, hue=0.0, p=0.8)]


def _bbox_params(bbox_format: str, min_visibility: float) -> A.BboxParams:
    if bbox_format not in _ALBU_BOX_FORMATS:
        raise ValueError(f"unknown bbox_format {bbox_format!r}; choose one of {', '.join(_ALBU_BOX_FORMATS)}")
    if not 0.0 <= min_visibility <= 1.0:
        raise ValueError(f"min_visibility is a fraction in [0, 1], got {min_visibility}")
    return A.BboxParams(
        format=bbox_format,
        label_fields=["labels"],
        min_visibility=min_visibility,
        clip=True,
        filter_invalid_bboxes=True,
    )


def detection_train_transform(
    *,
    size: int,
    bbox_format: str = "pascal_voc",
    hflip_p: float = 0.5,
    scale: tuple[float, float] = (0.75, 1.25),
    color_jitter: float = 0.2,
    min_visibility: float = 0.3,
    seed: int | None = None,
) -> A.Compose:
    """Box-aware training augmentation; output images are exactly size x size RGB uint8.

    Call ``t(image=rgb, bboxes=boxes (N, 4) in bbox_format, labels=labels (N,))`` -> dict with
    "image", "bboxes", "labels". Boxes are clipped to the image; boxes with less than
    ``min_visibility`` of their area left after a crop are dropped together with their label.
    ``seed`` makes the random sequence reproducible. Pass labels as an int numpy array to get
    one back (albumentations returns a plain list of ints as floats).
    """
    _check_augment_args(size, hflip_p, scale, color_jitter)
    transforms = _random_geometry(size, scale, hflip_p, mask_fill=0) + _color(color_jitter)
    return A.Compose(transforms, bbox_params=_bbox_params(bbox_format, min_visibility), seed=seed)


def detection_eval_transform(*, size: int, bbox_format: str = "pascal_voc") -> A.Compose:
    """Deterministic: fit the longest side to ``size``, pad bottom/right with black to size x size.

    Input coordinates = output coordinates / scale, with scale = size / max(H, W) (the short side
    is rounded to whole pixels, so its scale differs slightly). Boxes are kept.
    """
    _check_augment_args(size, 0.0, (1.0, 1.0), 0.0)
    transforms = [
        A.LongestMaxSize(max_size=size, p=1.0),
        A.PadIfNeeded(min_height=size, min_width=size, position="top_left", border_mode=cv2.BORDER_CONSTANT, fill=0),
    ]
    return A.Compose(transforms, bbox_params=_bbox_params(bbox_format, 0.0))


def segmentation_train_transform(
    *,
    size: int,
    hflip_p: float = 0.5,
    scale: tuple[float, float] = (0.75, 1.25),
    color_jitter: float = 0.2,
    mask_fill: int = 0,
    seed: int | None = None,
) -> A.Compose:
    """Mask-aware training augmentation: the same geometry for image and mask, nearest for the mask.

    Call ``t(image=rgb, mask=labels (H, W) uint8)`` -> dict with "image" (size, size, 3) and
    "mask" (size, size). Padding is black in the image and ``mask_fill`` (e.g. 0 = background,
    or an ignore index) in the mask.
    """
    _check_augment_args(size, hflip_p, scale, color_jitter)
    transforms = _random_geometry(size, scale, hflip_p, mask_fill=mask_fill) + _color(color_jitter)
    return A.Compose(transforms, seed=seed)


def _shrink_only(
    size: int, scale: tuple[float, float], hflip_p: float, color_jitter: float, seed: int | None, what: str
):
    _check_augment_args(size, hflip_p, scale, color_jitter)
    if scale[1] > 1.0:
        raise ValueError(f"{what} augmentation only shrinks (scale <= 1, or objects get cropped away), got {scale}")
    return A.Compose(_random_geometry(size, scale, hflip_p, mask_fill=0) + _color(color_jitter), seed=seed)


def caption_train_transform(
    *, size: int, scale: tuple[float, float] = (0.7, 1.0), color_jitter: float = 0.2, seed: int | None = None
) -> A.Compose:
    """Caption-preserving training augmentation: fit to ``size``, shrink by a random factor in
    ``scale`` (<= 1, so nothing is cropped away and every object the caption names stays), place
    at a random position on black, jitter brightness/contrast/saturation (never hue: captions name
    colours). No flips: captions say left and right. ``t(image=rgb)["image"]`` is size x size RGB.
    """
    return _shrink_only(size, scale, 0.0, color_jitter, seed, "caption")


def classification_train_transform(
    *,
    size: int,
    hflip_p: float = 0.5,
    scale: tuple[float, float] = (0.7, 1.0),
    color_jitter: float = 0.2,
    seed: int | None = None,
) -> A.Compose:
    """Label-preserving training augmentation for classifiers: as caption_train_transform (the
    object is never cropped away, hue never changes), with horizontal flips."""
    return _shrink_only(size, scale, hflip_p, color_jitter, seed, "classification")


def seed_augmentations_in_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: give each worker's augmentation its own random stream.

    albumentations 2.0.8 keeps its random state inside Compose, so forked DataLoader workers would
    otherwise all apply the same "random" augmentations. This reseeds ``dataset.transform`` (when it
    has ``set_random_seed``) from torch's per-worker, per-epoch seed.
    """
    info = torch.utils.data.get_worker_info()
    transform = getattr(info.dataset, "transform", None) if info is not None else None
    if info is not None and hasattr(transform, "set_random_seed"):
        transform.set_random_seed(info.seed % 2**32)
