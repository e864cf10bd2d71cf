"""Reading image file headers without decoding pixels.

Used by models.preprocessing to refuse oversized images *before* a full decode (a 100-byte PNG
can claim 1,000,000 x 1,000,000 pixels), to spot truncated files that a decoder might accept
half-read, and to read the EXIF orientation tag. Pure Python over ``bytes``; every reader is
defensive: malformed headers give ``None`` (or "no orientation"), never an exception.

Formats: JPEG (SOF markers, EXIF in APP1), PNG (IHDR, IEND, eXIf), WebP (VP8, VP8L, VP8X,
EXIF chunk), BMP, TIFF (both byte orders, and BigTIFF), GIF (size only).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")

# JPEG markers with no length field: TEM, RST0-7, SOI, EOI.
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8), 0xD8, 0xD9})
# Start-of-frame markers carry the size; C4 (DHT), C8 (JPG) and CC (DAC) are not frames.
_JPEG_SOF = frozenset(set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC})
_JPEG_SOS, _JPEG_APP1 = 0xDA, 0xE1
_EXIF_PREFIX = b"Exif\x00\x00"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TIFF_ORIENTATION = 0x0112
_TIFF_WIDTH, _TIFF_HEIGHT = 256, 257
_TIFF_STRIPS = (273, 279)  # StripOffsets, StripByteCounts
_TIFF_TILES = (324, 325)  # TileOffsets, TileByteCounts
# TIFF field type -> struct code (SHORT, LONG, LONG8); other types are not sizes or offsets.
_TIFF_INT_TYPES = {3: "H", 4: "I", 16: "Q"}
_MAX_IFD_ENTRIES = 4096


def _safe(fn: Callable[..., T | None], *args: object) -> T | None:
    """Run a header reader; malformed or short data gives None instead of an exception."""
    try:
        return fn(*args)
    except (struct.error, IndexError, ValueError, OverflowError):
        return None


def detect_format(data: bytes) -> str | None:
    """The container format from the magic bytes: "jpeg", "png", "webp", "bmp", "tiff", "gif" or None."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == _PNG_SIGNATURE:
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:2] == b"BM":
        return "bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    return None


def probe_image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) in pixels as stored in the header (before any EXIF rotation), or None.

    Reads only the header: PNG, JPEG, WebP, BMP, TIFF, GIF. None for other or malformed data.
    """
    reader = _SIZE_READERS.get(detect_format(data) or "")
    size = _safe(reader, data) if reader else None
    if size is None or size[0] <= 0 or size[1] <= 0:
        return None
    return size


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation tag (1..8) of a JPEG, PNG or WebP file; 1 (upright) when absent or invalid.

    TIFF files are left to the decoder: their orientation tag is a TIFF tag, not EXIF.
    """
    reader = _EXIF_READERS.get(detect_format(data) or "")
    tiff = _safe(reader, data) if reader else None
    value = _safe(_tiff_orientation, tiff) if tiff else None
    return value if value is not None and 1 <= value <= 8 else 1


def truncation_problem(data: bytes) -> str | None:
    """Why the file looks cut short (e.g. "no EOI marker after the image data"), or None if it looks whole.

    Checks JPEG (EOI after the scan), PNG (IEND chunk), WebP (RIFF length), BMP (pixel array
    length) and TIFF (directory and strip/tile data inside the file). Other formats: None.
    """
    checker = _TRUNCATION_CHECKS.get(detect_format(data) or "")
    if checker is None:
        return None
    try:
        return checker(data)
    except (struct.error, IndexError, ValueError, OverflowError):
        return "the header ends early"


# --- JPEG -------------------------------------------------------------------------------------


def _jpeg_segments(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(marker, payload_start, payload_end) of each JPEG segment from SOI up to and including SOS."""
    pos, n = 2, len(data)
    while pos < n and data[pos] == 0xFF:
        while pos < n and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos + 1 > n:
            return
        marker = data[pos]
        pos += 1
        if marker in _JPEG_STANDALONE:
            if marker == 0xD9:
                return
            continue
        length = int.from_bytes(data[pos : pos + 2], "big")
        if length < 2:
            return
        yield marker, pos + 2, pos + length
        if marker == _JPEG_SOS:
            return
        pos += length


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    for marker, start, end in _jpeg_segments(data):
        if marker in _JPEG_SOF and end <= len(data) and end - start >= 5:
            height, width = struct.unpack_from(">HH", data, start + 1)
            return width, height
    return None


def jpeg_frame(data: bytes) -> tuple[str, int, int] | None:
    """(kind, sample precision in bits, colour components) of a JPEG's first frame, e.g.
    ("baseline", 8, 3) for an ordinary colour photo; kind is "baseline" (SOF0), "extended" (SOF1),
    "progressive" (SOF2) or "other" (lossless, hierarchical, arithmetic coding). None when the
    data is no JPEG or its header is malformed. Decoders that handle only common JPEGs (nvJPEG)
    check this first."""
    if detect_format(data) != "jpeg":
        return None
    for marker, start, end in _safe(lambda: list(_jpeg_segments(data))) or []:
        if marker in _JPEG_SOF and end <= len(data) and end - start >= 6:
            kind = {0xC0: "baseline", 0xC1: "extended", 0xC2: "progressive"}.get(marker, "other")
            return kind, data[start], data[start + 5]
    return None


def _jpeg_exif(data: bytes) -> bytes | None:
    for marker, start, end in _jpeg_segments(data):
        if marker == _JPEG_APP1 and data[start : start + 6] == _EXIF_PREFIX:
            return data[start + 6 : end]
    return None


def _jpeg_truncation(data: bytes) -> str | None:
    scan_start = None
    for marker, _, end in _jpeg_segments(data):
        if marker == _JPEG_SOS:
            scan_start = end
    if scan_start is None or scan_start > len(data):
        return "no image data (SOS segment) found: the file ends early or its header is corrupt"
    # Entropy-coded data never contains FF D9 (0xFF is stuffed as FF 00), so the first one is EOI.
    # Bytes after EOI are allowed (e.g. motion photos append a video).
    if data.find(b"\xff\xd9", scan_start) < 0:
        return "no EOI marker (FF D9) after the image data"
    return None


# --- PNG --------------------------------------------------------------------------------------


def _png_chunks(data: bytes) -> Iterator[tuple[bytes, int, int]]:
    """(type, data_start, data_end) of each whole PNG chunk, in order; stops at IEND or the end of data."""
    pos = 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 8 + length
        if end + 4 > len(data):  # chunk data + CRC cut off
            return
        yield kind, pos + 8, end
        if kind == b"IEND":
            return
        pos = end + 4


def _png_size(data: bytes) -> tuple[int, int] | None:
    if data[12:16] != b"IHDR":
        return None
    return struct.unpack_from(">II", data, 16)


def _png_exif(data: bytes) -> bytes | None:
    for kind, start, end in _png_chunks(data):
        if kind == b"eXIf":
            return data[start:end]
        if kind == b"IDAT":  # the spec puts eXIf before the image data
            return None
    return None


def _png_truncation(data: bytes) -> str | None:
    if any(kind == b"IEND" for kind, _, _ in _png_chunks(data)):
        return None
    return "no IEND chunk: the PNG stream ends early"


# --- WebP -------------------------------------------------------------------------------------


def _webp_chunks(data: bytes) -> Iterator[tuple[bytes, int, int]]:
    """(fourcc, payload_start, payload_end) of each RIFF chunk after the "WEBP" tag."""
    pos = 12
    while pos + 8 <= len(data):
        kind, size = struct.unpack_from("<4sI", data, pos)
        yield kind, pos + 8, min(pos + 8 + size, len(data))
        pos += 8 + size + (size & 1)  # chunks are padded to an even length


def _webp_size(data: bytes) -> tuple[int, int] | None:
    kind = data[12:16]
    if kind == b"VP8X":
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if kind == b"VP8L" and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if kind == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack_from("<HH", data, 26)
        return width & 0x3FFF, height & 0x3FFF
    return None


def _webp_exif(data: bytes) -> bytes | None:
    for kind, start, end in _webp_chunks(data):
        if kind == b"EXIF":
            payload = data[start:end]
            return payload[6:] if payload.startswith(_EXIF_PREFIX) else payload
    return None


def _webp_truncation(data: bytes) -> str | None:
    declared = struct.unpack_from("<I", data, 4)[0] + 8
    if len(data) < declared:
        return f"the RIFF header declares {declared} bytes but only {len(data)} arrived"
    return None


# --- BMP --------------------------------------------------------------------------------------


def _bmp_geometry(data: bytes) -> tuple[int, int, int, int]:
    """(width, height, bits_per_pixel, compression) from a BMP info header (core or Windows)."""
    header_size = struct.unpack_from("<I", data, 14)[0]
    if header_size == 12:  # BITMAPCOREHEADER
        width, height, _, bpp = struct.unpack_from("<HHHH", data, 18)
        return width, height, bpp, 0
    width, height, _, bpp, compression = struct.unpack_from("<iiHHI", data, 18)
    return width, abs(height), bpp, compression


def _bmp_size(data: bytes) -> tuple[int, int] | None:
    width, height, _, _ = _bmp_geometry(data)
    return width, height


def _bmp_truncation(data: bytes) -> str | None:
    width, height, bpp, compression = _bmp_geometry(data)
    if compression not in (0, 3, 6):  # RLE or embedded JPEG/PNG: length not known from the header
        return None
    pixel_offset = struct.unpack_from("<I", data, 10)[0]
    row_bytes = (width * bpp + 31) // 32 * 4
    needed = pixel_offset + row_bytes * height
    if len(data) < needed:
        return f"the pixel array needs {needed} bytes but the file has {len(data)}"
    return None


# --- TIFF -------------------------------------------------------------------------------------


def _tiff_layout(tiff: bytes) -> tuple[str, bool, int]:
    """(byte-order prefix, is_bigtiff, offset of IFD0) of a TIFF stream."""
    order = {b"II": "<", b"MM": ">"}.get(bytes(tiff[:2]))
    if order is None:
        raise ValueError("not a TIFF byte-order mark")
    version = struct.unpack_from(order + "H", tiff, 2)[0]
    if version == 42:
        return order, False, struct.unpack_from(order + "I", tiff, 4)[0]
    if version == 43:
        return order, True, struct.unpack_from(order + "Q", tiff, 8)[0]
    raise ValueError(f"not a TIFF version: {version}")


def _tiff_entries(tiff: bytes) -> dict[int, tuple[int, int, int]]:
    """IFD0 of a TIFF stream: tag -> (entry offset, field type, count)."""
    order, big, ifd = _tiff_layout(tiff)
    count_code, entry_size = ("Q", 20) if big else ("H", 12)
    count = struct.unpack_from(order + count_code, tiff, ifd)[0]
    first = ifd + struct.calcsize(count_code)
    entries = {}
    for i in range(min(count, _MAX_IFD_ENTRIES)):
        offset = first + i * entry_size
        tag, kind = struct.unpack_from(order + "HH", tiff, offset)
        n = struct.unpack_from(order + ("Q" if big else "I"), tiff, offset + 4)[0]
        entries[tag] = (offset, kind, n)
    return entries


def _tiff_values(tiff: bytes, entry: tuple[int, int, int]) -> list[int]:
    """The integer values of one IFD entry (inline or at the offset it points to)."""
    order, big, _ = _tiff_layout(tiff)
    offset, kind, count = entry
    code = _TIFF_INT_TYPES.get(kind)
    if code is None or count > len(tiff):
        raise ValueError(f"TIFF field (type {kind}, count {count}) is not a readable integer field")
    value_at = offset + (12 if big else 8)
    if count * struct.calcsize(code) > (8 if big else 4):
        value_at = struct.unpack_from(order + ("Q" if big else "I"), tiff, value_at)[0]
    return list(struct.unpack_from(f"{order}{count}{code}", tiff, value_at))


def _tiff_value(tiff: bytes, entry: tuple[int, int, int]) -> int:
    return _tiff_values(tiff, entry)[0]


def _tiff_orientation(tiff: bytes) -> int | None:
    entry = _tiff_entries(tiff).get(_TIFF_ORIENTATION)
    return _tiff_value(tiff, entry) if entry else None


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    entries = _tiff_entries(data)
    if _TIFF_WIDTH not in entries or _TIFF_HEIGHT not in entries:
        return None
    return _tiff_value(data, entries[_TIFF_WIDTH]), _tiff_value(data, entries[_TIFF_HEIGHT])


def _tiff_truncation(data: bytes) -> str | None:
    _, _, ifd = _tiff_layout(data)
    if ifd >= len(data):
        return f"the image directory is at byte {ifd} but the file has {len(data)} bytes"
    entries = _tiff_entries(data)
    for offsets_tag, counts_tag in (_TIFF_STRIPS, _TIFF_TILES):
        if offsets_tag in entries and counts_tag in entries:
            offsets = _tiff_values(data, entries[offsets_tag])
            counts = _tiff_values(data, entries[counts_tag])
            end = max((o + c for o, c in zip(offsets, counts, strict=False)), default=0)
            if end > len(data):
                return f"the pixel data runs to byte {end} but the file has {len(data)} bytes"
    return None


def _gif_size(data: bytes) -> tuple[int, int] | None:
    return struct.unpack_from("<HH", data, 6)


_SIZE_READERS: dict[str, Callable[[bytes], tuple[int, int] | None]] = {
    "jpeg": _jpeg_size,
    "png": _png_size,
    "webp": _webp_size,
    "bmp": _bmp_size,
    "tiff": _tiff_size,
    "gif": _gif_size,
}
_EXIF_READERS: dict[str, Callable[[bytes], bytes | None]] = {
    "jpeg": _jpeg_exif,
    "png": _png_exif,
    "webp": _webp_exif,
}
_TRUNCATION_CHECKS: dict[str, Callable[[bytes], str | None]] = {
    "jpeg": _jpeg_truncation,
    "png": _png_truncation,
    "webp": _webp_truncation,
    "bmp": _bmp_truncation,
    "tiff": _tiff_truncation,
}
