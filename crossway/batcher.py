"""Micro-batching: requests that arrive close together are decoded in one model call.

Worker threads (one by default) make the model calls. `submit` puts a job in a bounded queue (refused at once when
full) and waits for its result up to a deadline. A worker takes the oldest job, lets it wait until `wait_s` after
its arrival for more jobs with the same decoding options, decodes them together (at most `max_inputs` inputs per
call) and hands each job its own slice of the outputs. Jobs that arrive while a call runs wait in the queue, so
the next call starts at once with all of them (the batch fills while the previous one decodes). With several
workers (one per model process: crossway.model_process), calls run side by side.

Greedy and beam search are padding-invariant (tested), so a batched
request gets exactly the outputs it would get alone; seeded sampling depends on the batch, so sampling jobs
are never merged.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field


class QueueFull(Exception):
    """The queue holds `max_queue` jobs already."""


class DeadlineExceeded(Exception):
    """The job did not finish before its deadline."""


@dataclass
class Job:
    inputs: list
    key: Hashable  # jobs with equal keys may share a model call
    deadline: float  # time.monotonic() seconds
    arrived: float = field(default_factory=time.monotonic)
    future: Future = field(default_factory=Future)
    released: bool = False  # its queue slot is free again


@dataclass
class BatcherStats:
    submitted: int = 0
    completed: int = 0
    rejected_full: int = 0
    expired: int = 0  # deadline passed (before or during decoding)
    calls: int = 0  # model calls
    inputs_decoded: int = 0


class MicroBatcher:
    """`run(inputs, key) -> outputs` is called on the worker thread with the concatenated inputs of the jobs
    that share `key`; it must return one output per input, in order."""

    def __init__(self, run: Callable[[list, Hashable], list], max_queue: int = 64, max_inputs: int = 64,
                 wait_s: float = 0.005, workers: int = 1):
        """`run` is called from `workers` threads at once when workers > 1."""
        if max_queue < 1 or max_inputs < 1 or wait_s < 0 or workers < 1:
            raise ValueError("need max_queue >= 1, max_inputs >= 1, wait_s >= 0 and workers >= 1")
        self.run, self.max_queue, self.max_inputs, self.wait_s = run, max_queue, max_inputs, wait_s
        self.stats = BatcherStats()
        self._jobs: deque[Job] = deque()
        self._pending = 0  # jobs queued or decoding whose caller still waits: what the queue bound counts
        self._cv = threading.Condition()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"crossway-batcher-{i}", daemon=True)
                         for i in range(workers)]
        for t in self._threads:
            t.start()

    @property
    def pending(self) -> int:
        return self._pending

    async def submit(self, inputs: list, key: Hashable, timeout_s: float) -> list:
        """The outputs for `inputs`. Raises QueueFull at once, or DeadlineExceeded after `timeout_s`; either way
        the job's queue slot is free when this returns."""
        return await self.wait(self.put(inputs, key, timeout_s), timeout_s)

    async def wait(self, job: Job, timeout_s: float) -> list:
        """The outputs of a job `put` in the queue (see `submit`)."""
        try:
            return await asyncio.wait_for(asyncio.wrap_future(job.future), timeout=timeout_s)
        except TimeoutError:
            self._expire(job)
            raise DeadlineExceeded(f"no result within {timeout_s:g} s") from None
        except asyncio.CancelledError:
            self._expire(job)
            task = asyncio.current_task()
            if job.future.cancelled() and (task is None or task.cancelling() == 0):
                # not this task's cancellation (the client did not go away): a worker found the job past its
                # deadline before this task's own timer fired
                raise DeadlineExceeded(f"no result within {timeout_s:g} s") from None
            raise  # the client went away

    def put(self, inputs: list, key: Hashable, timeout_s: float) -> Job:
        job = Job(list(inputs), key, time.monotonic() + timeout_s)
        with self._cv:
            if self._closed:
                raise QueueFull("the batcher is closed")
            if self._pending >= self.max_queue:
                self.stats.rejected_full += 1
                raise QueueFull(f"{self._pending} requests are queued or running (the limit is {self.max_queue})")
            self._pending += 1
            self.stats.submitted += 1
            self._jobs.append(job)
            self._cv.notify_all()  # an idle worker, or the one waiting for its batch to fill
        return job

    def _expire(self, job: Job) -> None:
        with self._cv:
            job.future.cancel()  # a job not started yet is skipped by the worker
            if job in self._jobs:
                self._jobs.remove(job)
            self._release(job, expired=True)

    def _release(self, job: Job, expired: bool) -> None:
        """Free the job's queue slot once (call under the lock)."""
        if not job.released:
            job.released = True
            self._pending -= 1
            if expired:
                self.stats.expired += 1
            else:
                self.stats.completed += 1

    def close(self, timeout: float | None = None) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        until = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            t.join(None if until is None else max(0.0, until - time.monotonic()))

    # --- worker -----------------------------------------------------------------------------------------
    def _take(self) -> list[Job] | None:
        """Block until there is work; return the jobs of one model call (None when closed and empty)."""
        with self._cv:
            while not self._jobs and not self._closed:
                self._cv.wait()
            if not self._jobs:
                return None
            first = self._jobs[0]
            batch_until = first.arrived + self.wait_s  # a job that queued during the previous call waits no more
            while True:  # wait a little for jobs that can join the first one
                n = sum(len(j.inputs) for j in self._jobs if j.key == first.key)
                left = batch_until - time.monotonic()
                if n >= self.max_inputs or left <= 0 or self._closed:
                    break
                self._cv.wait(left)
            taken, size = [], 0
            for job in list(self._jobs):
                if job.key != first.key:
                    continue
                if taken and size + len(job.inputs) > self.max_inputs:
                    break
                self._jobs.remove(job)
                taken.append(job)
                size += len(job.inputs)
            now = time.monotonic()
            live = []
            for job in taken:
                if job.deadline <= now or not job.future.set_running_or_notify_cancel():
                    job.future.cancel()
                    self._release(job, expired=True)
                else:
                    live.append(job)
            return live

    def _work(self) -> None:
        while True:
            jobs = self._take()
            if jobs is None:
                return
            if not jobs:
                continue
            inputs = [x for job in jobs for x in job.inputs]
            try:
                outputs = self.run(inputs, jobs[0].key)
                if len(outputs) != len(inputs):
                    raise RuntimeError(f"run returned {len(outputs)} outputs for {len(inputs)} inputs")
            except BaseException as e:  # noqa: BLE001 - every waiting caller gets the error
                with self._cv:
                    for job in jobs:  # the slot is free before the caller wakes up
                        self._release(job, expired=False)
                        job.future.set_exception(e)
                continue
            with self._cv:
                self.stats.calls += 1
                self.stats.inputs_decoded += len(inputs)
                i = 0
                for job in jobs:
                    self._release(job, expired=False)
                    job.future.set_result(outputs[i:i + len(job.inputs)])
                    i += len(job.inputs)
