"""Atomic file writes, shared by the model store, training runs and batch jobs.

A file is written under a temporary name in its folder and renamed over the target, so a reader
(or a re-run after a crash) sees the old file or the whole new one, never a part. The temporary
file gets the permissions a plain ``open()`` gives (0666 minus the umask, applied by the kernel
when the temporary file is created), not mkstemp's owner-only 0600: a model store written by
training must be readable by the serving container's user. The umask is never read or changed
(os.umask can only be read by setting it), so writer threads do not race other threads that
create files.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path


def _create_temporary(target: Path) -> tuple[Path, int]:
    """A new empty file ``.<name>.<random>.tmp`` beside ``target``, and the permission bits it was
    created with (0666 minus the umask)."""
    while True:
        tmp = target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        try:
            return tmp, stat.S_IMODE(os.fstat(fd).st_mode)
        finally:
            os.close(fd)


def atomic_write_with(path: str | os.PathLike[str], write: Callable[[str], None]) -> Path:
    """``write(temporary_path)`` then rename it to ``path`` (parent folders are created)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp, mode = _create_temporary(target)
    try:
        write(str(tmp))
        os.chmod(tmp, mode)  # a writer may recreate the file with its own permissions (safetensors: 0600)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def atomic_write(path: str | os.PathLike[str], data: bytes | str) -> Path:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` atomically; returns the path."""
    payload = data.encode() if isinstance(data, str) else data
    return atomic_write_with(path, lambda tmp: Path(tmp).write_bytes(payload))
