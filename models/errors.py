"""Domain errors raised by model code.

Transport-free: the serving layer (services/errors.py) maps each class to exactly one
gRPC status, so model code never needs to know about gRPC.
"""

from __future__ import annotations

from collections.abc import Iterable

QUOTE_CHARS = 64  # the most of one client-given string an error message repeats
QUOTE_ITEMS = 8  # the most client-given strings of a list an error message repeats


def shown(value: str | Iterable[str]) -> str:
    """A client-given string, or list of strings, as an error message quotes it: each string cut to
    QUOTE_CHARS characters (saying how long it was), a list cut to QUOTE_ITEMS strings (saying how many
    more). A 1 MiB model name must not come back in full: the status message travels in the response
    metadata, which grpc limits to a few KiB."""
    if isinstance(value, str):
        return value if len(value) <= QUOTE_CHARS else f"{value[:QUOTE_CHARS]}... ({len(value)} characters)"
    values = list(value)
    head = ", ".join(repr(shown(v)) for v in values[:QUOTE_ITEMS])
    more = f", ... {len(values) - QUOTE_ITEMS} more" if len(values) > QUOTE_ITEMS else ""
    return f"[{head}{more}]"


class CvtasksError(Exception):
    """Base class of every error cvtasks raises on purpose."""


class InvalidInputError(CvtasksError, ValueError):
    """The caller sent something unusable (bad image, bad option value). Maps to INVALID_ARGUMENT."""


class DecodeError(InvalidInputError):
    """Bytes that are not a decodable image: empty, truncated, corrupt or of an unsupported format."""


class ImageTooLargeError(DecodeError):
    """The image has more pixels than the configured limit (decompression-bomb guard)."""


class UnknownModelError(CvtasksError, KeyError):
    """A name that is not in a registry or model store. Maps to NOT_FOUND.

    The message lists the names that do exist, so the caller can fix the request.
    """

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0]) if self.args else "unknown model"


class ModelStoreError(CvtasksError, ValueError):
    """A stored model folder is broken (unreadable or inconsistent config.json, weights that do not
    fit it, a model that fails its warm-up run). Maps to FAILED_PRECONDITION: the request was fine,
    the store must be fixed. The message names the file relative to the store (``folder/config.json``),
    never an absolute path, and says what to fix."""


class DatasetError(CvtasksError, ValueError):
    """A dataset file is malformed (e.g. a degenerate box); the message names the record."""
