"""Serving many people: concurrent searches wait a few milliseconds for each other and are then encoded by one
`encode_queries` call per (mode, threshold, max_new_tokens), so the core's decision-split batching serves them
together. The queue is bounded (a full queue answers "busy" at once instead of piling up work), and one worker
thread makes every batched model call, under the model lock shared with the demo's other model calls.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

logger = logging.getLogger(__name__)


class BusyError(RuntimeError):
    """The queue of pending searches is full."""


@dataclass
class Job:
    """One query waiting to be encoded; `group` holds the arguments it can share a batch under."""

    item: Any
    group: tuple
    future: Future = field(default_factory=Future)
    queued_at: float = field(default_factory=time.perf_counter)


RunBatch = Callable[[tuple, list[Any]], Sequence[Any]]


class Batcher:
    """Collects jobs and calls `run(group, items)` once per group of a batch, in a single worker thread."""

    def __init__(self, run: RunBatch, max_batch: int = 16, wait_ms: float = 4.0, max_queue: int = 64):
        self.run = run
        self.max_batch = max_batch
        self.wait_s = wait_ms / 1000.0
        self.jobs: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self.batch_sizes: list[int] = []  # what each model call served, for the tests and the model panel
        self._thread = threading.Thread(target=self._loop, name="msolomon-batcher", daemon=True)
        self._thread.start()

    def submit(self, item: Any, group: tuple) -> Future:
        job = Job(item, group)
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            raise BusyError(f"the server is busy ({self.jobs.maxsize} searches waiting); try again in a moment") \
                from None
        return job.future

    def close(self) -> None:
        self.jobs.put(None)
        self._thread.join(timeout=5)

    def _collect(self, first: Job) -> list[Job]:
        batch = [first]
        deadline = time.perf_counter() + self.wait_s
        while len(batch) < self.max_batch:
            left = deadline - time.perf_counter()
            try:
                job = self.jobs.get(timeout=left) if left > 0 else self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:  # closing: finish this batch first
                self.jobs.put(None)
                break
            batch.append(job)
        return batch

    def _loop(self) -> None:
        while True:
            first = self.jobs.get()
            if first is None:
                return
            batch = self._collect(first)
            groups: dict[tuple, list[Job]] = {}
            for job in batch:
                groups.setdefault(job.group, []).append(job)
            for group, jobs in groups.items():
                self._serve(group, jobs)

    def _serve(self, group: tuple, jobs: list[Job]) -> None:
        try:
            results = list(self.run(group, [j.item for j in jobs]))
            self.batch_sizes.append(len(jobs))
        except Exception as err:  # one bad item must not fail the others: retry them one by one
            if len(jobs) == 1:
                jobs[0].future.set_exception(err)
                return
            logger.info("a batch of %d failed (%s); serving its items one at a time", len(jobs), err)
            for job in jobs:
                self._serve(group, [job])
            return
        for job, result in zip(jobs, results):
            job.future.set_result(result)
