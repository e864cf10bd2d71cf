"""services/batching.py with a deterministic tiny handler (x -> 2x + 1) and, for overlapped batches,
a tiny prepare stage (x -> 10x) in real threads: the test is about batching."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from services.batching import DynamicBatcher
from services.errors import DeadlineExceededError, QueueFullError, UnavailableError


class Recorder:
    """x -> 2x + 1, recording every batch; ``gate`` (if set) holds the worker until released."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.batches: list[list[int]] = []
        self.gate = gate
        self.entered = threading.Event()

    def __call__(self, items: list[int]) -> list[int]:
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(10), "test gate never opened"
        self.batches.append(list(items))
        if any(i < 0 for i in items):
            raise ValueError("negative input")
        return [2 * i + 1 for i in items]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_concurrent_requests_are_batched_and_answered_in_place():
    async def main():
        rec = Recorder()
        batcher = DynamicBatcher(rec, max_batch_size=4, max_delay_s=0.05)
        await batcher.start()
        results = await asyncio.gather(*(batcher.submit(i) for i in range(10)))
        await batcher.stop()
        return rec, results

    rec, results = run(main())
    assert results == [2 * i + 1 for i in range(10)]
    assert all(len(b) <= 4 for b in rec.batches)
    assert len(rec.batches) < 10  # batching happened
    assert sorted(i for b in rec.batches for i in b) == list(range(10))


def test_queue_full_fails_at_once_while_accepted_requests_complete():
    async def main():
        gate = threading.Event()
        rec = Recorder(gate)
        batcher = DynamicBatcher(rec, max_batch_size=1, max_delay_s=0, max_queue_size=2)
        await batcher.start()
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.get_running_loop().run_in_executor(None, rec.entered.wait, 10)  # worker busy with 0
        queued = [asyncio.ensure_future(batcher.submit(i)) for i in (1, 2)]
        await asyncio.sleep(0)
        started = time.monotonic()
        with pytest.raises(QueueFullError, match="full"):
            await batcher.submit(3)
        refused_after = time.monotonic() - started
        gate.set()
        done = await asyncio.gather(first, *queued)
        await batcher.stop()
        return refused_after, done

    refused_after, done = run(main())
    assert refused_after < 0.5
    assert done == [1, 3, 5]


def test_expired_deadline_is_dropped_before_compute():
    async def main():
        gate = threading.Event()
        rec = Recorder(gate)
        batcher = DynamicBatcher(rec, max_batch_size=1, max_delay_s=0)
        await batcher.start()
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.get_running_loop().run_in_executor(None, rec.entered.wait, 10)
        late = asyncio.ensure_future(batcher.submit(7, deadline=time.monotonic() + 0.05))
        await asyncio.sleep(0.2)  # 7's deadline passes while 0 holds the worker
        gate.set()
        assert await first == 1
        with pytest.raises(DeadlineExceededError, match="deadline"):
            await late
        await batcher.stop()
        return rec

    rec = run(main())
    assert [7] not in rec.batches and all(7 not in b for b in rec.batches)


def test_cancelled_caller_is_dropped_before_compute():
    async def main():
        gate = threading.Event()
        rec = Recorder(gate)
        batcher = DynamicBatcher(rec, max_batch_size=1, max_delay_s=0)
        await batcher.start()
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.get_running_loop().run_in_executor(None, rec.entered.wait, 10)
        gone = asyncio.ensure_future(batcher.submit(9))
        await asyncio.sleep(0.01)
        gone.cancel()
        gate.set()
        assert await first == 1
        assert await batcher.submit(4) == 9
        await batcher.stop()
        return rec

    rec = run(main())
    assert all(9 not in b for b in rec.batches)


def test_an_item_that_breaks_the_model_fails_alone_and_its_batch_is_answered():
    async def main():
        rec = Recorder()
        batcher = DynamicBatcher(rec, max_batch_size=8, max_delay_s=0.05)
        await batcher.start()
        bad = await asyncio.gather(batcher.submit(1), batcher.submit(-1), batcher.submit(2), return_exceptions=True)
        good = await asyncio.gather(batcher.submit(3), batcher.submit(4))
        await batcher.stop()
        return bad, good

    bad, good = run(main())
    # The batch failed, so its items ran again one by one: only the bad one fails.
    assert bad[0] == 3 and isinstance(bad[1], ValueError) and bad[2] == 5
    assert good == [7, 9]


def test_wrong_output_count_fails_the_batch_clearly():
    async def main():
        batcher = DynamicBatcher(lambda items: items[:-1], max_batch_size=4, max_delay_s=0.05)
        await batcher.start()
        results = await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)
        await batcher.stop()
        return results

    for result in run(main()):
        assert isinstance(result, RuntimeError) and "outputs for" in str(result)


def test_stop_drains_queued_requests_then_refuses_new_ones():
    async def main():
        rec = Recorder()
        batcher = DynamicBatcher(rec, max_batch_size=2, max_delay_s=0.01)
        await batcher.start()
        pending = [asyncio.ensure_future(batcher.submit(i)) for i in range(6)]
        await asyncio.sleep(0)
        await batcher.stop(drain=True)
        with pytest.raises(UnavailableError):
            await batcher.submit(1)
        return await asyncio.gather(*pending)

    assert run(main()) == [1, 3, 5, 7, 9, 11]


def test_handler_runs_off_the_event_loop_under_inference_mode():
    import torch

    seen = {}

    def handler(items):
        seen["thread"] = threading.current_thread().name
        seen["inference"] = torch.is_inference_mode_enabled()
        return items

    async def main():
        batcher = DynamicBatcher(handler, name="m")
        await batcher.start()
        await batcher.submit(1)
        await batcher.stop()

    run(main())
    assert seen["thread"] != threading.main_thread().name and seen["inference"]


@pytest.mark.parametrize("kwargs", [{"max_batch_size": 0}, {"max_delay_s": -1}, {"max_queue_size": 0}])
def test_bad_constructor_arguments(kwargs):
    with pytest.raises(ValueError):
        DynamicBatcher(lambda x: x, **kwargs)


def test_stop_drains_a_request_still_waiting_for_batch_company():
    """A request taken off the queue but still gathering company must be answered, not dropped."""

    async def main():
        rec = Recorder()
        batcher = DynamicBatcher(rec, max_batch_size=8, max_delay_s=0.3)
        await batcher.start()
        waiting = asyncio.ensure_future(batcher.submit(5))
        await asyncio.sleep(0.05)  # the collector holds 5 and waits for more
        assert batcher.queue_depth == 0
        await batcher.stop(drain=True)
        return await waiting

    assert run(main()) == 11


def test_stop_without_drain_fails_a_gathering_request_with_unavailable():
    async def main():
        batcher = DynamicBatcher(Recorder(), max_batch_size=8, max_delay_s=5)
        await batcher.start()
        waiting = asyncio.ensure_future(batcher.submit(5))
        await asyncio.sleep(0.05)
        await batcher.stop(drain=False)
        with pytest.raises(UnavailableError, match="shutting down"):
            await waiting

    run(main())


def test_an_already_expired_deadline_is_refused_at_submit():
    async def main():
        rec = Recorder()
        batcher = DynamicBatcher(rec, max_delay_s=0)
        await batcher.start()
        with pytest.raises(DeadlineExceededError, match="before it was queued"):
            await batcher.submit(1, deadline=time.monotonic() - 1)
        assert await batcher.submit(2) == 5
        await batcher.stop()
        return rec

    assert run(main()).batches == [[2]]


def test_a_failing_on_batch_hook_does_not_stop_the_batcher():
    def hook(size, seconds):
        raise RuntimeError("metrics backend down")

    async def main():
        batcher = DynamicBatcher(Recorder(), max_delay_s=0, on_batch=hook)
        await batcher.start()
        first = await batcher.submit(1)
        second = await batcher.submit(2)
        await batcher.stop()
        return first, second

    assert run(main()) == (3, 5)


@pytest.mark.parametrize("prepare", [None, list], ids=["one stage", "overlapped"])
def test_a_crashed_collector_fails_its_waiters_instead_of_hanging(monkeypatch, prepare):
    async def main():
        batcher = DynamicBatcher(Recorder(), max_batch_size=4, max_delay_s=0.05, prepare=prepare)

        def broken(batch):
            raise AssertionError("bug in the collector")

        monkeypatch.setattr(batcher, "_live", broken)
        await batcher.start()
        with pytest.raises(UnavailableError, match="crashed"):
            await batcher.submit(1)
        with pytest.raises(UnavailableError):
            await batcher.submit(2)
        await batcher.stop()

    run(main())


def test_an_idle_model_runs_a_lone_request_at_once_and_a_busy_one_batches_what_queued():
    """The default policy (no max delay): the first request is not held for company; the ones
    that arrive while its batch computes form the next batch together."""

    async def main():
        gate = threading.Event()
        rec = Recorder(gate)
        batcher = DynamicBatcher(rec, max_batch_size=8)  # the default: max_delay_s=0
        await batcher.start()
        first = asyncio.ensure_future(batcher.submit(0))
        # the lone request reaches the model without waiting for a second one
        await asyncio.get_running_loop().run_in_executor(None, rec.entered.wait, 10)
        later = [asyncio.ensure_future(batcher.submit(i)) for i in (1, 2, 3)]  # arrive while 0 computes
        await asyncio.sleep(0.05)
        assert batcher.queue_depth == 3
        gate.set()
        results = await asyncio.gather(first, *later)
        await batcher.stop()
        return rec, results

    rec, results = run(main())
    assert rec.batches == [[0], [1, 2, 3]]
    assert results == [1, 3, 5, 7]


def test_requests_queued_together_share_one_batch_without_a_delay():
    async def main():
        rec = Recorder()
        batcher = DynamicBatcher(rec, max_batch_size=4)
        await batcher.start()
        results = await asyncio.gather(*(batcher.submit(i) for i in range(6)))  # queued in one loop turn
        await batcher.stop()
        return rec, results

    rec, results = run(main())
    assert rec.batches == [[0, 1, 2, 3], [4, 5]]
    assert results == [2 * i + 1 for i in range(6)]


# ----------------------------------------------------------------- overlapped batches (prepare)


class Staged:
    """prepare: x -> 10x (13 fails), then the Recorder; ``log`` lists each stage's calls in order."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.rec, self.log, self.threads = Recorder(gate), [], set()

    def prepare(self, items: list[int]) -> list[int]:
        self.log.append(("prepare", list(items)))
        self.threads.add(("prepare", threading.current_thread().name))
        if 13 in items:
            raise ValueError("13 cannot be prepared")
        return [10 * i for i in items]

    def handler(self, items: list[int]) -> list[int]:
        self.log.append(("compute", list(items)))
        self.threads.add(("compute", threading.current_thread().name))
        return self.rec(items)

    def batcher(self, **kwargs) -> DynamicBatcher:
        return DynamicBatcher(self.handler, prepare=self.prepare, **kwargs)

    async def computing(self) -> None:
        """Until the handler has been entered (it then waits at the gate)."""
        await asyncio.get_running_loop().run_in_executor(None, self.rec.entered.wait, 10)


async def until(condition) -> None:
    while not condition():
        await asyncio.sleep(0.002)


def test_the_next_batch_is_prepared_while_one_computes_and_answers_keep_their_order():
    async def main():
        gate, sizes = threading.Event(), []
        staged = Staged(gate)
        batcher = staged.batcher(max_batch_size=4, on_batch=lambda size, seconds: sizes.append(size))
        await batcher.start()
        first = asyncio.ensure_future(batcher.submit(0))
        await staged.computing()  # a lone request on an idle model runs at once
        later = [asyncio.ensure_future(batcher.submit(i)) for i in (1, 2, 3)]
        await until(lambda: ("prepare", [1, 2, 3]) in staged.log)
        assert not gate.is_set() and staged.rec.batches == []  # batch [0] is still in the handler
        gate.set()
        results = await asyncio.gather(first, *later)
        await batcher.stop()
        return staged, results, sizes

    staged, results, sizes = run(main())
    assert staged.log == [("prepare", [0]), ("compute", [0]), ("prepare", [1, 2, 3]), ("compute", [10, 20, 30])]
    assert results == [1, 21, 41, 61] and sizes == [1, 3]
    assert len({name for _, name in staged.threads}) == 2  # each stage in a thread of its own


def test_at_most_one_batch_is_prepared_ahead_and_the_rest_stays_queued():
    async def main():
        gate = threading.Event()
        staged = Staged(gate)
        batcher = staged.batcher(max_batch_size=2, max_queue_size=3)
        await batcher.start()
        first = asyncio.ensure_future(batcher.submit(0))
        await staged.computing()
        later = [asyncio.ensure_future(batcher.submit(i)) for i in (1, 2)]
        await until(lambda: ("prepare", [1, 2]) in staged.log)
        later += [asyncio.ensure_future(batcher.submit(i)) for i in (3, 4, 5)]
        await asyncio.sleep(0.02)  # the collector would take more now if it did
        assert batcher._queue.qsize() == 3 and len(staged.log) == 3
        assert batcher.queue_depth == 5  # the prepared batch waits for the model too
        with pytest.raises(QueueFullError):
            await batcher.submit(6)
        gate.set()
        results = await asyncio.gather(first, *later)
        await batcher.stop()
        return staged, results

    staged, results = run(main())
    assert staged.rec.batches == [[0], [10, 20], [30, 40], [50]]
    assert results == [20 * i + 1 for i in range(6)]


def test_an_item_that_fails_its_prepare_fails_alone():
    async def main():
        staged = Staged()
        batcher = staged.batcher(max_batch_size=8)
        await batcher.start()
        results = await asyncio.gather(*(batcher.submit(i) for i in (1, 13, 2)), return_exceptions=True)
        await batcher.stop()
        return staged, results

    staged, results = run(main())
    assert results[0] == 21 and results[2] == 41
    assert isinstance(results[1], ValueError) and "13 cannot be prepared" in str(results[1])
    assert staged.rec.batches == [[10, 20]]  # the others still computed together


@pytest.mark.parametrize("how", ["deadline", "cancel"])
def test_a_prepared_request_whose_caller_gave_up_is_not_computed(how):
    """A deadline passing, or a caller cancelling, while its batch sits prepared: dropped just
    before the model runs."""

    async def main():
        gate = threading.Event()
        staged = Staged(gate)
        batcher = staged.batcher(max_batch_size=4)
        await batcher.start()
        first = asyncio.ensure_future(batcher.submit(0))
        await staged.computing()
        deadline = time.monotonic() + 0.05 if how == "deadline" else None
        gone = asyncio.ensure_future(batcher.submit(7, deadline=deadline))
        await until(lambda: ("prepare", [7]) in staged.log)
        if how == "cancel":
            gone.cancel()
        else:
            await until(lambda: time.monotonic() > deadline)
        gate.set()
        assert await first == 1
        if how == "deadline":
            with pytest.raises(DeadlineExceededError, match="deadline passed"):
                await gone
        assert await batcher.submit(4) == 81
        await batcher.stop()
        return staged

    staged = run(main())
    assert staged.rec.batches == [[0], [40]]  # 7 was prepared (70) but never computed


@pytest.mark.parametrize("drain", [True, False])
def test_stop_loses_nothing_computing_prepared_or_queued(drain):
    """drain: every taken request is answered; no drain: each fails with UNAVAILABLE."""

    async def main():
        gate = threading.Event()
        staged = Staged(gate)
        batcher = staged.batcher(max_batch_size=2)
        await batcher.start()
        pending = [asyncio.ensure_future(batcher.submit(0))]
        await staged.computing()
        pending += [asyncio.ensure_future(batcher.submit(i)) for i in (1, 2, 3)]  # 1, 2 prepared; 3 queued
        await until(lambda: ("prepare", [1, 2]) in staged.log)
        if drain:
            stopping = asyncio.ensure_future(batcher.stop(drain=True))
            await asyncio.sleep(0.02)
            assert not stopping.done()  # it waits for the held requests
            gate.set()
            await stopping
        else:
            threading.Timer(0.1, gate.set).start()  # stop waits for the handler thread to return
            await batcher.stop(drain=False)
        return staged, await asyncio.gather(*pending, return_exceptions=True)

    staged, results = run(main())
    if drain:
        assert results == [1, 21, 41, 61] and staged.rec.batches == [[0], [10, 20], [30]]
    else:
        assert all(isinstance(r, UnavailableError) and "shutting down" in str(r) for r in results)
        assert staged.rec.batches == [[0]]
