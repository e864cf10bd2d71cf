"""One worker process of ``cvtasks serve --workers N``: started by the supervisor (services/workers.py)
as ``python -m services.worker``, never by hand.

It serves as a single ``cvtasks serve`` process does, on the ports the supervisor reserved (shared
through SO_REUSEPORT), with three differences, all through its control channel (services/control.py):

- LoadModel/UnloadModel are checked here, then handed to the supervisor, which applies them in
  every worker in two steps (``prepare`` everywhere, then ``commit`` everywhere, or ``abort``);
- health says SERVING only while this worker is SERVING and the supervisor says every worker is
  (``peers``);
- metrics go to prometheus_client's multiprocess files (``ServingMetrics(shared=True)``).

When the control connection ends (the supervisor is gone) the worker drains and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import socket
import sys
from typing import Any

from models.errors import InvalidInputError
from services.models import Change, ModelServicer
from services.server import Readiness

ENV_INDEX = "CVTASKS_WORKER_INDEX"  # this worker's index, 0..N-1
ENV_FD = "CVTASKS_WORKER_FD"  # its end of the control socketpair
ENV_ARGS = "CVTASKS_WORKER_ARGS"  # the serve arguments as JSON, ports already chosen by the supervisor
PUBLISH_S = 0.5  # how often the scrape-time gauges (queue depth, GPU memory) are written for the supervisor


class WorkerCluster:
    """This worker's side of model changes and health (``services.models.Cluster``)."""

    def __init__(self, index: int, models: ModelServicer, readiness: Readiness) -> None:
        self.index, self.models, self.readiness = index, models, readiness
        self.channel: Any = None  # the control Channel, once connected
        self._pending: dict[int, Change] = {}  # prepared changes by transaction id

    async def change(self, op: str, name: str, make_default: bool) -> dict[str, Any]:
        """Apply a change this worker checked in every worker, or fail with nothing changed."""
        return await self.channel.request("change", op=op, name=name, make_default=make_default)

    async def handle(self, kind: str, fields: dict[str, Any]) -> Any:
        """What the supervisor asks of this worker."""
        if kind == "peers":
            await self.readiness.update(peers=fields["serving"])
            return None
        if kind == "prepare":
            change = await self.models.prepare(fields["op"], fields["name"], fields["make_default"])
            self._pending[fields["txn"]] = change
            return None
        if kind == "commit":
            return await self._pending.pop(fields["txn"]).commit()
        if kind == "abort":
            if (change := self._pending.pop(fields["txn"], None)) is not None:
                await change.abort()
            return None
        if kind == "apply":  # a change made before this worker (re)started, replayed when it joins
            change = await self.models.prepare(fields["op"], fields["name"], fields["make_default"])
            return await change.commit()
        raise InvalidInputError(f"unknown control message {kind!r}")


def _threads(args: argparse.Namespace) -> None:
    """N workers on a CPU share its cores: cores / N torch threads each, unless OMP_NUM_THREADS says."""
    if "OMP_NUM_THREADS" not in os.environ:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.workers))


async def _publish(metrics: Any) -> None:
    while True:
        metrics.publish()
        await asyncio.sleep(PUBLISH_S)


async def serve_worker(index: int, sock: socket.socket, args: argparse.Namespace) -> None:
    from services.app import build_app, run_app
    from services.commands.serve import configs
    from services.control import Channel
    from services.metrics import ServingMetrics

    serving, config = configs(args)
    config = dataclasses.replace(config, reuse_port=True)
    metrics = ServingMetrics(shared=True)
    app = build_app(
        args.task, args.model_store, serving, models=args.models, default_model=args.default_model, metrics=metrics
    )
    app.readiness.peers = False  # until the supervisor says every worker is SERVING
    cluster = WorkerCluster(index, app.models, app.readiness)
    cluster.channel = channel = await Channel.over(sock, cluster.handle)
    app.models.cluster = cluster
    stop = asyncio.Event()
    reader = asyncio.ensure_future(channel.run())
    reader.add_done_callback(lambda _: stop.set())  # the supervisor is gone: drain and exit
    publisher = asyncio.ensure_future(_publish(metrics))
    notes: set[asyncio.Task] = set()

    def on_serving(serving: bool) -> None:
        task = asyncio.ensure_future(channel.notify("state", serving=serving))
        notes.add(task)
        task.add_done_callback(notes.discard)

    async def join() -> None:
        await channel.request("join")

    app.join = join
    try:
        await run_app(app, config, stop_event=stop, on_serving=on_serving)
    finally:
        publisher.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*notes)
        channel.writer.close()
        with contextlib.suppress(BaseException):
            await reader


def main() -> int:
    from services.logs import configure_logging

    index = int(os.environ[ENV_INDEX])
    sock = socket.socket(fileno=int(os.environ[ENV_FD]))
    args = argparse.Namespace(**json.loads(os.environ[ENV_ARGS]))
    configure_logging(args.log_level, json_lines=not args.plain_logs, fields={"worker": index})
    _threads(args)
    asyncio.run(serve_worker(index, sock, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
