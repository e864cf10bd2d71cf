"""`cvtasks serve` in a subprocess, as the CLI tests use it: yields (process, address) once the
server says it is serving; its log goes to a file that is printed (and so shown by pytest) when
the test fails. The server runs with PYTHONFAULTHANDLER=1, so a crash leaves its stack in the log;
the address is a services.launch.ServerAddress (``metrics_url`` with --metrics-port, ``http_url``
with --http-port)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from services.launch import ServerAddress

CLI = [sys.executable, "-m", "services.cli"]
ENV = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}


def _name(task: str | Sequence[str]) -> str:
    return task if isinstance(task, str) else "-".join(task)


@contextmanager
def cli_server(
    task: str | Sequence[str], model_store: Path, log_dir: Path, *extra: str
) -> Iterator[tuple[subprocess.Popen, ServerAddress]]:
    tasks = [task] if isinstance(task, str) else list(task)
    log_path = Path(log_dir) / f"serve-{_name(task)}.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [
                *CLI,
                "serve",
                *(a for t in tasks for a in ("--task", t)),
                "--model-store",
                str(model_store),
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env={**ENV, "PYTHONFAULTHANDLER": "1"},
        )
        try:
            metrics_url = http_url = None
            line = proc.stdout.readline()  # "serving" once models are loaded, warmed up and health says SERVING
            while line.startswith(("cvtasks: metrics on ", "cvtasks: health on ", "cvtasks: HTTP on ")):
                if "metrics on" in line:
                    metrics_url = line.split(" on ", 1)[1].strip()
                if "HTTP on" in line:
                    http_url = line.split(" on ", 1)[1].split()[0]
                line = proc.stdout.readline()
            assert f"serving {', '.join(tasks)} on" in line, f"the server did not start: {line!r}"
            address = ServerAddress(line.strip().rsplit(" ", 1)[-1])
            address.metrics_url, address.http_url = metrics_url, http_url
            yield proc, address
        except BaseException:
            print(f"--- server log {log_path} ---\n{log_path.read_text()}")
            raise
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def server_log(log_dir: Path, task: str | Sequence[str]) -> str:
    return (Path(log_dir) / f"serve-{_name(task)}.log").read_text()
