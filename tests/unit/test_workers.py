"""The supervisor's model changes across workers (all or nothing, and what a client is told when
some workers fail), its replay for a worker that (re)joins, its health over all workers, and the
control channel they talk over. Workers are stand-ins that answer the control requests: what is
tested is the supervisor's protocol; tests/e2e/test_cli_workers.py runs real workers."""

from __future__ import annotations

import argparse
import asyncio
import socket

import pytest

from models.errors import ModelStoreError, UnknownModelError
from services.control import Channel, RemoteError
from services.errors import UnavailableError
from services.workers import Supervisor

LOAD = {"op": "load", "name": "m", "make_default": False}


class Worker:
    """A worker's control end: records what it was asked; fails prepare/commit when told to."""

    def __init__(self, prepare: Exception | None = None, commit: Exception | None = None) -> None:
        self.fail = {"prepare": prepare, "commit": commit}
        self.asked: list[tuple[str, dict]] = []
        self.told: list[dict] = []
        self.closed = False

    async def request(self, kind: str, **fields):
        self.asked.append((kind, fields))
        if self.fail.get(kind) is not None:
            raise self.fail[kind]
        return {"default_model": "m"} if kind == "commit" else None

    async def notify(self, kind: str, **fields) -> None:
        self.told.append({"kind": kind, **fields})

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.asked]


class Process:
    pid = 4242
    terminated = False

    def terminate(self) -> None:
        self.terminated = True


def supervisor(*workers: Worker) -> Supervisor:
    sup = Supervisor(argparse.Namespace(workers=len(workers), grace_s=1.0), "/nonexistent", {})
    for slot, worker in zip(sup.slots, workers):
        slot.channel, slot.process, slot.joined, slot.serving = worker, Process(), True, True
    return sup


def test_a_change_is_prepared_everywhere_then_committed_everywhere():
    workers = [Worker(), Worker(), Worker()]
    sup = supervisor(*workers)
    assert asyncio.run(sup.change(sup.slots[1], "load", "m", False)) == {"default_model": "m"}
    assert all(w.kinds() == ["prepare", "commit"] for w in workers)
    assert workers[0].asked[0] == ("prepare", {"txn": 1, **LOAD})
    assert sup.log == [LOAD]


def test_a_change_that_fails_in_one_worker_is_dropped_by_the_others_and_says_which():
    workers = [Worker(), Worker(prepare=ModelStoreError("m/config.json: out of memory in warm-up")), Worker()]
    sup = supervisor(*workers)
    with pytest.raises(ModelStoreError) as failed:
        asyncio.run(sup.change(sup.slots[0], "load", "m", False))
    assert str(failed.value) == (
        "m/config.json: out of memory in warm-up (worker 1; 1 of 3 workers failed, the others dropped "
        "what they had prepared: nothing changed)"
    )
    assert workers[0].kinds() == workers[2].kinds() == ["prepare", "abort"] and workers[1].kinds() == ["prepare"]
    assert sup.log == []  # a worker that restarts later does not replay it


def test_a_change_that_fails_everywhere_reads_as_in_one_process():
    error = UnknownModelError("model `m` is a detection model, not classification")
    sup = supervisor(Worker(prepare=error), Worker(prepare=error))
    with pytest.raises(UnknownModelError) as failed:
        asyncio.run(sup.change(sup.slots[0], "load", "m", False))
    assert str(failed.value) == "model `m` is a detection model, not classification"


def test_a_worker_that_goes_away_mid_change_fails_it_as_unavailable():
    workers = [Worker(), Worker(prepare=ConnectionError("the control connection closed"))]
    sup = supervisor(*workers)
    with pytest.raises(UnavailableError, match="UnloadModel m: worker 1 stopped during the change, so no worker"):
        asyncio.run(sup.change(sup.slots[0], "unload", "m", False))
    assert workers[0].kinds() == ["prepare", "abort"] and sup.log == []


def test_a_worker_that_fails_a_commit_is_restarted_and_the_change_stands():
    workers = [Worker(), Worker(commit=RuntimeError("boom"))]
    sup = supervisor(*workers)
    assert asyncio.run(sup.change(sup.slots[0], "load", "m", True)) == {"default_model": "m"}
    assert sup.slots[1].process.terminated and not sup.slots[0].process.terminated
    assert sup.log == [{**LOAD, "make_default": True}]  # replayed when worker 1 comes back


def test_a_worker_still_starting_cannot_make_a_change():
    sup = supervisor(Worker(), Worker())
    sup.slots[0].joined = False
    with pytest.raises(UnavailableError, match="still starting"):
        asyncio.run(sup.change(sup.slots[0], "load", "m", False))


def test_a_joining_worker_replays_every_change_in_order_before_it_counts():
    sup = supervisor(Worker(), Worker())
    sup.log = [LOAD, {"op": "unload", "name": "m", "make_default": False}]
    newcomer = Worker()
    slot = sup.slots[1]
    slot.channel, slot.joined = newcomer, False
    asyncio.run(sup.handle(slot, "join", {}))
    assert newcomer.asked == [("apply", change) for change in sup.log] and slot.joined


def test_health_is_serving_only_while_every_worker_is():
    workers = [Worker(), Worker()]
    sup = supervisor(*workers)
    asyncio.run(sup.handle(sup.slots[0], "state", {"serving": True}))
    assert workers[0].told[-1] == workers[1].told[-1] == {"kind": "peers", "serving": True}
    asyncio.run(sup.handle(sup.slots[1], "state", {"serving": False}))  # draining, or still loading
    assert workers[0].told[-1] == {"kind": "peers", "serving": False}
    sup.slots[1].channel.closed = True  # gone: not told, and not SERVING
    asyncio.run(sup.handle(sup.slots[0], "state", {"serving": True}))
    assert workers[0].told[-1] == {"kind": "peers", "serving": False} and len(workers[1].told) == 2


def test_the_control_channel_answers_both_ways_and_keeps_error_types():
    async def go() -> None:
        a_sock, b_sock = socket.socketpair()

        async def a_handles(kind, fields):
            if kind == "twice":
                return fields["x"] * 2
            raise UnknownModelError("Unknown model `x`")

        async def b_handles(kind, fields):  # answers while its own request to ``a`` waits on ``a``'s question
            return await b.request("twice", x=fields["x"] + 1)

        a = await Channel.over(a_sock, a_handles)
        b = await Channel.over(b_sock, b_handles)
        runs = [asyncio.ensure_future(a.run()), asyncio.ensure_future(b.run())]
        assert await a.request("relay", x=1) == 4
        with pytest.raises(UnknownModelError, match="Unknown model `x`"):
            await b.request("missing")
        b.writer.close()
        await asyncio.wait_for(asyncio.gather(*runs), 5)
        with pytest.raises(ConnectionError):
            await a.request("twice", x=1)

    asyncio.run(go())


def test_an_error_that_is_not_a_cvtasks_error_arrives_as_remote_error():
    from services.control import error_of

    assert isinstance(error_of("ModelStoreError", "x"), ModelStoreError)
    assert str(error_of("KeyError", "'a'")) == "KeyError: 'a'" and isinstance(error_of("KeyError", ""), RemoteError)
