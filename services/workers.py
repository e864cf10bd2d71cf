"""``cvtasks serve --workers N``: N serving processes (services/worker.py) on the same ports, and
this supervisor, which holds what must be one across them.

- Ports: the supervisor binds each port first (port 0 picks one here, once) with SO_REUSEPORT and
  without listening, and passes the number on; every worker listens on it with SO_REUSEPORT, so
  the kernel spreads connections over the workers. Its bound socket holds the port while workers
  restart.
- Model changes: a worker checks a LoadModel/UnloadModel, then asks the supervisor, which, one
  change at a time, asks every joined worker to ``prepare`` it (load and warm up; or check an
  unload), then to ``commit`` it when all succeeded, else to ``abort`` it (nothing changes and the
  client gets the first failure, saying which worker). A committed change is logged in order; a
  worker that (re)starts replays the log before it joins, and one that fails a commit is restarted
  so that it does. A worker that is restarting while a change is made gets it by that replay.
- Health: a worker reports its own SERVING; the supervisor tells every worker whether all N are
  SERVING, and a worker's health says SERVING only then.
- Metrics: workers write prometheus_client multiprocess files into a private folder; the
  supervisor's ``--metrics-port`` serves their sum.
- SIGTERM/SIGINT: every worker gets SIGTERM and drains (``--grace-s``); the supervisor exits when all have.
- A worker that exits is logged and restarted (after 1 s, doubling while it keeps dying within a
  minute of its start, up to 30 s); one that exits before the server first became SERVING stops
  the server instead (exit code 1: its log says why).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from services.control import Channel
from services.errors import UnavailableError
from services.worker import ENV_ARGS, ENV_FD, ENV_INDEX

log = logging.getLogger("cvtasks.workers")

RESTART_S, MAX_RESTART_S, STABLE_S = 1.0, 30.0, 60.0


def reserve_port(host: str, port: int, flag: str) -> socket.socket:
    """A socket bound to ``host:port`` with SO_REUSEPORT that never listens: it holds the port (0: a
    free one, read ``getsockname()``) for workers that listen on it with SO_REUSEPORT."""
    family = socket.getaddrinfo(host or "0.0.0.0", port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"could not bind {host}:{port} ({exc}); choose another {flag} or 0 for any free port") from exc
    return sock


@dataclass
class Slot:
    """Worker ``index``: its current process and control channel, and what it has said."""

    index: int
    process: asyncio.subprocess.Process | None = None
    channel: Channel | None = None
    joined: bool = False  # replayed the change log: changes now reach it
    serving: bool = False
    started: float = 0.0  # time.monotonic() of the last start
    quick_exits: int = 0  # exits within STABLE_S of a start, in a row
    tasks: list[asyncio.Task] = field(default_factory=list)

    @property
    def live(self) -> bool:
        return self.channel is not None and not self.channel.closed and self.process is not None


class Supervisor:
    """Starts, watches and stops the workers; answers their join, state and change requests."""

    def __init__(self, args: argparse.Namespace, metrics_dir: str, worker_args: dict[str, Any]) -> None:
        self.count, self.grace_s, self.metrics_dir = args.workers, args.grace_s, metrics_dir
        self.worker_args = json.dumps(worker_args)
        self.slots = [Slot(i) for i in range(self.count)]
        self.log: list[dict[str, Any]] = []  # committed changes, in order
        self.lock = asyncio.Lock()  # one change (or join) at a time
        self.all_serving = asyncio.Event()
        self.stop = asyncio.Event()
        self.stopping = False
        self.failure: str | None = None
        self._txn = itertools.count(1)

    # ---------------------------------------------------------------- processes

    async def start(self, slot: Slot) -> None:
        mine, theirs = socket.socketpair()
        env = {
            **os.environ,
            ENV_INDEX: str(slot.index),
            ENV_FD: str(theirs.fileno()),
            ENV_ARGS: self.worker_args,
            "PROMETHEUS_MULTIPROC_DIR": self.metrics_dir,
        }
        slot.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.worker",
            pass_fds=[theirs.fileno()],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=sys.stderr.fileno(),  # stdout is the supervisor's announcements alone
        )
        theirs.close()
        slot.started, slot.joined, slot.serving = time.monotonic(), False, False
        slot.channel = await Channel.over(mine, lambda kind, fields: self.handle(slot, kind, fields))
        slot.tasks = [asyncio.ensure_future(slot.channel.run()), asyncio.ensure_future(self.watch(slot))]
        log.info("worker started", extra={"worker": slot.index, "pid": slot.process.pid})

    async def watch(self, slot: Slot) -> None:
        """Wait for the worker to exit; restart it unless the server is stopping."""
        process = slot.process
        code = await process.wait()
        slot.joined = slot.serving = False
        with contextlib.suppress(Exception):
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(process.pid, self.metrics_dir)  # its live gauges leave the sums
        await self.broadcast()
        if self.stopping:
            log.info("worker stopped", extra={"worker": slot.index, "pid": process.pid, "code": code})
            return
        if not self.all_serving.is_set():  # never SERVING yet: a setting or model that cannot serve
            reason = f"worker {slot.index} exited with code {code} while starting; its log above says why"
            self.failure = self.failure or reason
            self.stop.set()
            return
        slot.quick_exits = slot.quick_exits + 1 if time.monotonic() - slot.started < STABLE_S else 0
        delay = min(RESTART_S * 2 ** max(0, slot.quick_exits - 1), MAX_RESTART_S)
        log.warning(
            "worker exited; restarting it",
            extra={"worker": slot.index, "pid": process.pid, "code": code, "restart_in_s": delay},
        )
        await asyncio.sleep(delay)
        if not self.stopping:
            await self.start(slot)

    async def shutdown(self) -> None:
        """SIGTERM to every worker (each drains within --grace-s), SIGKILL to any still running long after."""
        if self.stopping:
            return
        self.stopping = True
        running = [s.process for s in self.slots if s.process is not None and s.process.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in running)), self.grace_s + 30)
        except TimeoutError:
            for process in running:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            log.error("workers did not stop within the grace period; killed them")
        await asyncio.gather(*(t for s in self.slots for t in s.tasks), return_exceptions=True)

    # ---------------------------------------------------------------- what workers ask

    async def handle(self, slot: Slot, kind: str, fields: dict[str, Any]) -> Any:
        if kind == "state":
            slot.serving = bool(fields["serving"])
            await self.broadcast()
            return None
        if kind == "join":
            async with self.lock:
                for change in self.log:  # a failure fails the worker's start: it exits and is restarted
                    await slot.channel.request("apply", **change)
                slot.joined = True
            return None
        if kind == "change":
            return await self.change(slot, fields["op"], fields["name"], bool(fields["make_default"]))
        raise ValueError(f"unknown control message {kind!r}")

    async def broadcast(self) -> None:
        """Tell every live worker whether all N are SERVING."""
        serving = all(s.live and s.joined and s.serving for s in self.slots)
        if serving:
            self.all_serving.set()
        for slot in self.slots:
            if slot.live:
                with contextlib.suppress(ConnectionError, OSError):
                    await slot.channel.notify("peers", serving=serving)

    async def change(self, asker: Slot, op: str, name: str, make_default: bool) -> dict[str, Any]:
        """Apply a model change in every joined worker, or in none; returns ``asker``'s commit result."""
        change = {"op": op, "name": name, "make_default": make_default}
        if not asker.joined:
            raise UnavailableError("this worker is still starting; retry once the server is SERVING")
        async with self.lock:
            members = [s for s in self.slots if s.live and s.joined]
            txn = next(self._txn)
            prepared = await asyncio.gather(
                *(s.channel.request("prepare", txn=txn, **change) for s in members), return_exceptions=True
            )
            failed = [(s, r) for s, r in zip(members, prepared) if isinstance(r, BaseException)]
            if failed:
                ready = [s for s, r in zip(members, prepared) if not isinstance(r, BaseException)]
                await asyncio.gather(*(s.channel.request("abort", txn=txn) for s in ready), return_exceptions=True)
                raise self._failure(change, len(members), failed)
            self.log.append(change)
            done = await asyncio.gather(
                *(s.channel.request("commit", txn=txn) for s in members), return_exceptions=True
            )
        answer = None
        for slot, result in zip(members, done):
            if isinstance(result, BaseException):
                log.error(
                    "worker failed to apply a committed model change; restarting it to replay every change",
                    extra={"worker": slot.index, "change": change, "error": str(result)},
                )
                with contextlib.suppress(ProcessLookupError):
                    slot.process.terminate()
            elif slot is asker:
                answer = result
        log.info(
            "model change applied in every worker",
            extra={"op": op, "model": name, "make_default": make_default, "workers": len(members)},
        )
        if answer is None:
            raise UnavailableError(
                f"{name}: the change is made in the other workers; the one that took this call failed to "
                "apply it and restarts with it; retry once the server is SERVING again"
            )
        return answer

    def _failure(self, change: dict[str, Any], members: int, failed: list[tuple[Slot, BaseException]]) -> Exception:
        """The error a client gets for a change that failed in some workers (and so in none)."""
        slot, exc = failed[0]
        rpc = "LoadModel" if change["op"] == "load" else "UnloadModel"
        if isinstance(exc, ConnectionError):
            return UnavailableError(
                f"{rpc} {change['name']}: worker {slot.index} stopped during the change, so no worker made it; "
                "retry once the server is SERVING again"
            )
        if len(failed) == members:  # failed everywhere (a broken model folder): the error one process gives
            return exc
        return type(exc)(
            f"{exc} (worker {slot.index}; {len(failed)} of {members} workers failed, the others dropped "
            "what they had prepared: nothing changed)"
        )


def _worker_args(args: argparse.Namespace, ports: dict[str, int]) -> dict[str, Any]:
    """The arguments each worker serves with: the chosen ports; metrics are the supervisor's."""
    values = {k: v for k, v in vars(args).items() if k != "run"}
    return {**values, **ports, "metrics_port": None}


async def _supervise(args: argparse.Namespace) -> int:
    from services.commands.serve import announcers, configs
    from services.metrics_http import start_metrics_endpoint

    _, config = configs(args)  # fails here, before any worker starts, on a bad setting
    held = {"port": reserve_port(args.host, args.port, "--port")}
    for name in ("http_port", "health_port"):
        if getattr(args, name) is not None:
            held[name] = reserve_port(args.host, getattr(args, name), "--" + name.replace("_", "-"))
    ports = {name: sock.getsockname()[1] for name, sock in held.items()}
    metrics_dir = tempfile.mkdtemp(prefix="cvtasks-metrics-")
    supervisor = Supervisor(args, metrics_dir, _worker_args(args, ports))
    announce = announcers(args, bool(config.security.tls_cert))
    endpoint = None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, supervisor.stop.set)
    try:
        if args.metrics_port is not None:
            from prometheus_client import CollectorRegistry, multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=metrics_dir)
            host = config.host if args.metrics_host is None else args.metrics_host
            endpoint = start_metrics_endpoint(registry, args.metrics_port, host, config.security)
            announce["on_metrics"](endpoint.url)
        for slot in supervisor.slots:
            await supervisor.start(slot)
        serving = asyncio.ensure_future(supervisor.all_serving.wait())
        stopped = asyncio.ensure_future(supervisor.stop.wait())
        await asyncio.wait([serving, stopped], return_when=asyncio.FIRST_COMPLETED)
        if supervisor.all_serving.is_set() and not supervisor.stop.is_set():
            for name, what in (("http_port", "on_http"), ("health_port", "on_health")):
                if name in ports:
                    announce[what](ports[name])
            log.info("serving", extra={"port": ports["port"], "workers": args.workers})
            announce["on_ready"](ports["port"])
        await stopped
        serving.cancel()
        log.info("stopping", extra={"grace_s": args.grace_s, "workers": args.workers})
    finally:
        await supervisor.shutdown()
        if endpoint is not None:
            await asyncio.to_thread(endpoint.close)
        for sock in held.values():
            sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
    if supervisor.failure is not None:
        log.error("server did not start", extra={"reason": supervisor.failure})
        print(f"cvtasks serve: error: {supervisor.failure}", file=sys.stderr)
        return 1
    log.info("stopped")
    return 0


def supervise(args: argparse.Namespace) -> int:
    """Run ``args.workers`` workers of ``cvtasks serve args`` until SIGTERM/SIGINT; the exit code."""
    return asyncio.run(_supervise(args))
