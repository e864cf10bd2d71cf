"""Atomic file writes, shared by the model store and batch jobs.

A file is written under a temporary name in its folder and renamed over the target, so a reader
(or a re-run after a crash) sees the old file or the whole new one, never a part. The file gets
the permissions a plain ``open()`` would give (0666 minus the umask), not mkstemp's owner-only
0600: a model store written by training must be readable by the serving container's user.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_with(path: str | os.PathLike[str], write: Callable[[str], None]) -> Path:
    """``write(temporary_path)`` then rename it to ``path`` (parent folders are created)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _default_mode())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def atomic_write(path: str | os.PathLike[str], data: bytes | str) -> Path:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` atomically; returns the path."""
    payload = data.encode() if isinstance(data, str) else data
    return atomic_write_with(path, lambda tmp: Path(tmp).write_bytes(payload))
