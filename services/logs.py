"""Structured logs: one JSON object per line, with the ``extra={...}`` fields of each call."""

from __future__ import annotations

import json
import logging
import sys
import time

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class _Fields(logging.Filter):
    def __init__(self, fields: dict[str, object]) -> None:
        super().__init__()
        self.fields = fields

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in self.fields.items():
            setattr(record, key, value)
        return True


def configure_logging(level: str = "info", *, json_lines: bool = True, fields: dict[str, object] | None = None) -> None:
    """Send cvtasks logs to stderr as JSON lines (or plain text) at ``level``; ``fields`` go on every
    line (a worker's ``{"worker": 1}``)."""
    handler = logging.StreamHandler(sys.stderr)
    if fields:
        handler.addFilter(_Fields(fields))
    prefix = "".join(f"{k}={v} " for k, v in (fields or {}).items())
    handler.setFormatter(
        JsonFormatter() if json_lines else logging.Formatter(f"%(levelname)s {prefix}%(name)s %(message)s")
    )
    root = logging.getLogger("cvtasks")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
