"""What a batch job reads and writes on disk: the input listing, the job record, the manifest
(the journal of finished inputs) and atomic file writes.

Exactly once, even after SIGKILL: a task's per-image files are written under a temporary name
and renamed, *then* the input's line is appended to ``manifest.jsonl`` and fsynced. An input
is finished when, and only when, its manifest line is complete; a torn last line (the process
died while writing it) is dropped on the next run, which then redoes that input and overwrites
its files. The results files people read (``detections.jsonl``, ``captions.csv``, ...) are
rebuilt from the manifest at the end of every run, one row per input.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.files import atomic_write

MANIFEST = "manifest.jsonl"
JOB_FILE = "job.json"
ERRORS_FILE = "errors.jsonl"
IMAGE_PATTERNS = ("*.jpg", "*.jpeg", "*.png", "*.webp", "*.bmp", "*.tif", "*.tiff")


@dataclass(frozen=True)
class InputFile:
    """One input: its path and its key, the path relative to the input root in POSIX form."""

    path: Path
    key: str


def list_inputs(
    root: str | os.PathLike[str],
    *,
    patterns: Sequence[str] = IMAGE_PATTERNS,
    recursive: bool = False,
    exclude: Sequence[str | os.PathLike[str]] = (),
) -> list[InputFile]:
    """The files under ``root`` whose names match any of ``patterns`` (case-insensitive), sorted by
    key. Hidden files and folders, and the ``exclude`` folders (e.g. the job's own output), are
    skipped. ``root`` may also be a single file."""
    base = Path(root)
    if base.is_file():
        return [InputFile(base, base.name)]
    if not base.is_dir():
        raise FileNotFoundError(f"no such input folder: {base}")
    lowered = [p.lower() for p in patterns]
    skipped = {Path(e).resolve() for e in exclude}
    found: list[InputFile] = []
    for folder, dirs, files in os.walk(base):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if recursive and not d.startswith(".") and (here / d).resolve() not in skipped)
        for name in files:
            if not name.startswith(".") and any(fnmatch.fnmatchcase(name.lower(), p) for p in lowered):
                path = here / name
                found.append(InputFile(path, path.relative_to(base).as_posix()))
    return sorted(found, key=lambda f: f.key)


class Manifest:
    """``OUT/manifest.jsonl``: one JSON line per finished input, ``{"key", "status": "ok"|"failed",
    "row"|"error"}``; the last line for a key wins (a failed input is retried by the next run).

    ``OUT/job.json`` records what produced it (task, model, options): a re-run with other settings
    is refused unless ``force`` (which starts over) so one folder never mixes two jobs' results.
    One job at a time per folder: opening removes the temporary files a killed run left behind.
    """

    def __init__(self, out_dir: str | os.PathLike[str], job: dict[str, Any], *, force: bool = False) -> None:
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.path = self.out / MANIFEST
        job_path = self.out / JOB_FILE
        if force:
            self.path.unlink(missing_ok=True)
        elif job_path.is_file() and self.path.is_file():
            _check_same_job(json.loads(job_path.read_text()), job, self.out)
        atomic_write(job_path, json.dumps(job, indent=2, sort_keys=True) + "\n")
        for stale in self.out.rglob(".*.tmp"):  # half-written files of a run that was killed
            stale.unlink(missing_ok=True)
        self.records: dict[str, dict[str, Any]] = self._read()
        self._file = open(self.path, "ab")

    def _read(self) -> dict[str, dict[str, Any]]:
        """Complete lines only; a torn tail is cut off so the next append starts on a fresh line."""
        if not self.path.is_file():
            return {}
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(end)
        records: dict[str, dict[str, Any]] = {}
        for line in data[:end].splitlines():
            if line.strip():
                record = json.loads(line)
                records[record["key"]] = record
        return records

    def finished(self, key: str) -> bool:
        """True when ``key`` succeeded in an earlier run (failed inputs are tried again)."""
        record = self.records.get(key)
        return record is not None and record["status"] == "ok"

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        """Append and fsync: once this returns, those inputs count as finished."""
        records = list(records)
        lines = [json.dumps(r, sort_keys=True) + "\n" for r in records]
        if not lines:
            return
        self._file.write("".join(lines).encode())
        self._file.flush()
        os.fsync(self._file.fileno())
        for r in records:
            self.records[r["key"]] = r

    def rows(self) -> list[dict[str, Any]]:
        """Every successful input's row, sorted by key."""
        return [{"input": k, **r["row"]} for k, r in sorted(self.records.items()) if r["status"] == "ok"]

    def errors(self) -> list[dict[str, Any]]:
        return [{"input": k, "error": r["error"]} for k, r in sorted(self.records.items()) if r["status"] == "failed"]

    def close(self) -> None:
        self._file.close()


def _check_same_job(old: dict[str, Any], new: dict[str, Any], out: Path) -> None:
    differs = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if differs:
        detail = "; ".join(f"{k}: {old.get(k)!r} then, {new.get(k)!r} now" for k in differs)
        raise ValueError(
            f"{out} holds the results of another job ({detail}); pass --force to start over "
            f"there, or choose another --out"
        )


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> Path:
    return atomic_write(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    return atomic_write(path, buffer.getvalue())
