"""`cvtasks serve` in a subprocess, as the CLI tests use it: yields (process, address) once the
server says it is serving; its log goes to a file that is printed (and so shown by pytest) when
the test fails."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CLI = [sys.executable, "-m", "services.cli"]
ENV = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}


@contextmanager
def cli_server(task: str, model_store: Path, log_dir: Path, *extra: str) -> Iterator[tuple[subprocess.Popen, str]]:
    log_path = Path(log_dir) / f"serve-{task}.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen([*CLI, "serve", "--task", task, "--model-store", str(model_store),
                                 "--host", "127.0.0.1", "--port", "0", *extra],
                                stdout=subprocess.PIPE, stderr=log, text=True, env=ENV)
        try:
            line = proc.stdout.readline()  # printed once models are loaded, warmed up and health says SERVING
            assert f"serving {task} on" in line, f"the server did not start: {line!r}"
            yield proc, line.strip().rsplit(" ", 1)[-1]
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


def server_log(log_dir: Path, task: str) -> str:
    return (Path(log_dir) / f"serve-{task}.log").read_text()
