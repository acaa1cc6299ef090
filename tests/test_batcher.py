"""The micro-batcher: merging, splitting, bounds, deadlines and errors, with a plain function as the model."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from crossway.batcher import DeadlineExceeded, MicroBatcher, QueueFull


class Recorder:
    """Doubles each input; records every call; can block until released (`entered`: a call has started)."""

    def __init__(self, delay: float = 0.0):
        self.calls: list[tuple[list, object]] = []
        self.delay, self.gate, self.entered = delay, threading.Event(), threading.Event()
        self.gate.set()

    def __call__(self, inputs, key):
        self.entered.set()
        self.gate.wait()
        time.sleep(self.delay)
        self.calls.append((list(inputs), key))
        return [2 * x for x in inputs]


async def _gather(batcher, jobs, timeout=5.0):
    return await asyncio.gather(*(batcher.submit(xs, key, timeout) for xs, key in jobs), return_exceptions=True)


def test_concurrent_jobs_share_a_call_and_get_their_own_outputs():
    run = Recorder()
    # the worker waits up to wait_s for jobs to join the first, and stops waiting once max_inputs (all six
    # inputs) are there: a generous wait that costs nothing when the jobs arrive together, as they do here
    b = MicroBatcher(run, max_queue=16, max_inputs=6, wait_s=5.0)
    outs = asyncio.run(_gather(b, [([1, 2], "k"), ([3], "k"), ([4, 5, 6], "k")]))
    assert outs == [[2, 4], [6], [8, 10, 12]]
    assert len(run.calls) == 1 and sorted(run.calls[0][0]) == [1, 2, 3, 4, 5, 6]
    assert b.stats.calls == 1 and b.stats.completed == 3 and b.pending == 0
    b.close()


def test_different_keys_are_never_merged_and_max_inputs_splits():
    run = Recorder()
    b = MicroBatcher(run, max_queue=16, max_inputs=3, wait_s=0.1)
    outs = asyncio.run(_gather(b, [([1], "a"), ([2], "b"), ([3, 4], "a"), ([5, 6], "a")]))
    assert outs == [[2], [4], [6, 8], [10, 12]]
    for inputs, key in run.calls:
        assert len(inputs) <= 3
        assert all((x in (1, 3, 4, 5, 6)) == (key == "a") for x in inputs)
    assert len(run.calls) >= 3  # "a" needs two calls of <= 3 inputs, "b" its own
    b.close()


def test_full_queue_refuses_at_once_and_frees_slots():
    run = Recorder()
    run.gate.clear()  # the model is stuck until released
    b = MicroBatcher(run, max_queue=2, max_inputs=10, wait_s=0.0)

    async def scenario():
        first = [asyncio.ensure_future(b.submit([i], i, 5.0)) for i in range(2)]
        await asyncio.sleep(0.05)
        t0 = time.monotonic()
        with pytest.raises(QueueFull):
            await b.submit([9], 9, 5.0)
        refused_in = time.monotonic() - t0
        run.gate.set()
        done = await asyncio.gather(*first)
        again = await b.submit([7], 7, 5.0)  # slots are free again
        return refused_in, done, again

    refused_in, done, again = asyncio.run(scenario())
    # refused at once: a submit that waited for a slot instead would end in DeadlineExceeded after its 5 s
    assert refused_in < 1.0 and done == [[0], [2]] and again == [14]
    assert b.stats.rejected_full == 1 and b.pending == 0
    b.close()


def test_deadline_frees_the_slot_and_a_queued_job_never_runs():
    run = Recorder()
    run.gate.clear()
    b = MicroBatcher(run, max_queue=2, max_inputs=1, wait_s=0.0)

    async def scenario():
        stuck = asyncio.ensure_future(b.submit([1], "k", 30.0))  # taken by the worker, blocked in run
        await asyncio.to_thread(run.entered.wait, 30)
        t0 = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            await b.submit([2], "k", 0.1)  # queued behind it; expires
        waited = time.monotonic() - t0
        pending_after = b.pending
        run.gate.set()
        return waited, pending_after, await stuck

    waited, pending_after, first = asyncio.run(scenario())
    # not before the deadline, and well before the stuck job could have finished (it never does until released)
    assert 0.09 < waited < 5.0 and pending_after == 1 and first == [2]
    time.sleep(0.2)  # time for the worker to (wrongly) take the expired job
    assert [c[0] for c in run.calls] == [[1]]  # the expired job never reached the model
    assert b.stats.expired == 1 and b.pending == 0
    b.close()


def test_a_job_the_worker_expires_is_a_deadline_not_a_cancellation():
    """The race: a worker takes a job already past its deadline (and cancels it) before the waiting task's own
    timer fires. The caller must see DeadlineExceeded (a 504), not the cancellation (a 500)."""
    run = Recorder()
    b = MicroBatcher(run, max_queue=2, max_inputs=1, wait_s=0.0)

    async def scenario():
        job = b.put([1], "k", 0.0)  # due at once: the worker cancels it when it takes it
        await asyncio.to_thread(lambda: time.sleep(0.2))
        assert job.future.cancelled()
        with pytest.raises(DeadlineExceeded):
            await b.wait(job, 30.0)

    asyncio.run(scenario())
    assert run.calls == [] and b.pending == 0 and b.stats.expired == 1
    b.close()


def test_an_error_reaches_every_job_of_the_call():
    def boom(inputs, key):
        raise RuntimeError("model failed")

    b = MicroBatcher(boom, max_queue=8, max_inputs=10, wait_s=0.05)
    outs = asyncio.run(_gather(b, [([1], "k"), ([2], "k")]))
    assert all(isinstance(o, RuntimeError) for o in outs) and b.pending == 0
    b.close()


def test_wrong_output_count_is_an_error_not_a_silent_mismatch():
    b = MicroBatcher(lambda inputs, key: inputs[:-1], max_queue=8, max_inputs=10, wait_s=0.0)
    (out,) = asyncio.run(_gather(b, [([1, 2], "k")]))
    assert isinstance(out, RuntimeError) and "1 outputs for 2 inputs" in str(out)
    b.close()
