"""Serving many people: concurrent searches wait a few milliseconds for each other and are then encoded by one
`encode_queries` call per (mode, threshold, max_new_tokens), so the core's decision-split batching serves them
together. The queue is bounded (a full queue answers "busy" at once instead of piling up work), and one worker
thread makes every batched model call, under the model lock shared with the demo's other model calls.
"""
from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

logger = logging.getLogger(__name__)


class ModelLock:
    """The model's lock, with searches before background work. `with lock:` is a search's model call (a batch, a
    decode step, a comparison); `with lock.background():` is background work done chunk by chunk (indexing a
    corpus, warming the baselines, an evaluation run from the page), which waits while any search waits for the
    model or a streamed generation is under way between its steps. Without it, a generation taking the lock once
    per token would wait for a whole indexing chunk at every token."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._held = False
        self._waiting = 0  # searches waiting for the model
        self._working = 0  # streamed generations under way (between their model calls)

    def __enter__(self) -> "ModelLock":
        with self._cond:
            self._waiting += 1
            while self._held:
                self._cond.wait()
            self._waiting -= 1
            self._held = True
        return self

    def __exit__(self, *exc: Any) -> None:
        with self._cond:
            self._held = False
            self._cond.notify_all()

    @contextlib.contextmanager
    def background(self) -> Iterator[None]:
        with self._cond:
            while self._held or self._waiting or self._working:
                self._cond.wait()
            self._held = True
        try:
            yield
        finally:
            self.__exit__()

    def working(self, on: bool) -> None:
        """A streamed generation starts (True) or ends (False): background work waits for all to end."""
        with self._cond:
            self._working += 1 if on else -1
            self._cond.notify_all()


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


def gather(jobs: queue.Queue, batch: list[Job], deadline: float, max_batch: int) -> bool:
    """Add to `batch` the jobs that arrive before `deadline` (those already waiting, when it has passed), up to
    `max_batch`; True when the closing mark (None) was taken."""
    while len(batch) < max_batch:
        left = deadline - time.perf_counter()
        try:
            job = jobs.get(timeout=left) if left > 0 else jobs.get_nowait()
        except queue.Empty:
            return False
        if job is None:
            return True
        batch.append(job)
    return False


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
        if gather(self.jobs, batch, time.perf_counter() + self.wait_s, self.max_batch):
            self.jobs.put(None)  # closing: finish this batch first
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


Events = Iterator[list[tuple[int, Any]]]  # per model call, (row, step) events; a step with `.final` ends its row
OpenBatch = Callable[[tuple, list[Any]], Events]


@dataclass
class _Running:
    """One batch of streamed searches being generated: its event iterator, its jobs and which rows finished."""

    group: tuple
    items: list[tuple[Any, queue.Queue]]
    events: Events
    finished: list[bool]
    started: bool = False

    @property
    def sinks(self) -> list[queue.Queue]:
        return [sink for _, sink in self.items]


def _raising(err: Exception) -> Events:
    raise err
    yield  # a generator: raises on its first step, like a batch whose model call fails


class StreamScheduler:
    """Streams many visitors' searches at once, one model call at a time: searches that arrive while others are
    being written do not wait for them to finish; between two decode steps they start as a batch of their own
    (their decision comes after one prefill), and every running batch then advances one step per round. Each
    model call takes `lock` (shared with the demo's other model calls), so nothing else waits a whole generation
    either. `open(group, items)` starts a batch (`MSolomon.stream_queries`); jobs are (item, queue) pairs and each
    visitor's queue receives their own steps, an exception, or (after the final step) nothing more."""

    def __init__(self, open_batch: OpenBatch, lock: threading.Lock, max_batch: int = 16, wait_ms: float = 4.0,
                 max_queue: int = 64):
        self.open = open_batch
        self.lock = lock
        self.max_batch = max_batch
        self.wait_s = wait_ms / 1000.0
        self.jobs: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self.batch_sizes: list[int] = []  # searches in each batch opened, for the tests and the bench
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name="msolomon-streams", daemon=True)
        self._thread.start()

    def submit(self, item: Any, sink: queue.Queue, group: tuple) -> None:
        try:
            self.jobs.put_nowait(Job((item, sink), group))
        except queue.Full:
            raise BusyError(f"the server is busy ({self.jobs.maxsize} searches waiting); try again in a moment") \
                from None

    def close(self) -> None:
        self.jobs.put(None)
        self._thread.join(timeout=5)

    def _take(self, idle: bool) -> list[Job]:
        """Idle: wait for a first search, then the batching window for others. Busy: whatever is waiting now."""
        batch: list[Job] = []
        if idle:
            first = self.jobs.get()
            if first is None:
                self._closing = True
                return []
            batch.append(first)
            deadline = time.perf_counter() + self.wait_s
        else:
            deadline = 0.0
        if gather(self.jobs, batch, deadline, self.max_batch):
            self._closing = True
        return batch

    def _loop(self) -> None:
        running: list[_Running] = []
        signal = getattr(self.lock, "working", None)  # a ModelLock: background work waits while streams run
        working = False
        while not (self._closing and not running):
            if not self._closing:
                groups: dict[tuple, list[Job]] = {}
                for job in self._take(idle=not running):
                    groups.setdefault(job.group, []).append(job)
                for group, jobs in groups.items():
                    running.append(self._start(group, [j.item for j in jobs]))
            if running and not working and signal is not None:
                signal(True)
                working = True
            for run in list(running):
                running.remove(run)
                running += self._advance(run)
            if not running and working:
                signal(False)
                working = False

    def _start(self, group: tuple, items: list[tuple[Any, queue.Queue]]) -> _Running:
        self.batch_sizes.append(len(items))
        try:
            events = self.open(group, [item for item, _ in items])
        except Exception as err:  # noqa: BLE001 - met again on the first step, where failures are handled
            events = _raising(err)
        return _Running(group, items, events, [False] * len(items))

    def _advance(self, run: _Running) -> list[_Running]:
        """One model call of a running batch; returns what runs on: the batch itself until it is done. A batch
        that fails on its first call is split, each search started alone (a bad query fails only itself); a later
        failure reaches every visitor of the batch still waiting."""
        try:
            with self.lock:
                events = next(run.events)
        except StopIteration:
            for sink, done in zip(run.sinks, run.finished):
                if not done:  # cannot happen with stream_queries; never leave a visitor waiting
                    sink.put(RuntimeError("the search ended without a result"))
            return []
        except Exception as err:  # noqa: BLE001 - handed to the visitors, who see it as a message
            if not run.started and len(run.items) > 1:
                logger.info("a streamed batch of %d failed (%s); starting its searches one at a time",
                            len(run.items), err)
                return [self._start(run.group, [item]) for item in run.items]
            for sink, done in zip(run.sinks, run.finished):
                if not done:
                    sink.put(err)
            return []
        run.started = True
        for row, step in events:
            run.items[row][1].put(step)
            if getattr(step, "final", False):
                run.finished[row] = True
        return [] if all(run.finished) else [run]
