"""One thread owns a model; requests that arrive together are merged into batches.

The event loop never runs model code. Routes submit :class:`Job` objects and await
their futures. The worker thread takes the first waiting job, keeps collecting jobs for
``window_ms`` more milliseconds, groups them by :attr:`Job.group` and hands each group to
its handler in one call. A handler can therefore answer many requests with one batched
backward (reconstructions of many paths of the same image and rule, for instance).
The explorer runs two: the request worker, on the model, and the slow lane, on a copy of
it, for the jobs that take seconds (see :mod:`cnnscope.server.compute`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BatchWorker", "Failed", "Job"]

log = logging.getLogger(__name__)

Handler = Callable[[Hashable, Sequence[Any]], Sequence[Any]]


@dataclass(frozen=True)
class Failed:
    """A handler's answer for one job that failed while the others of its call succeeded."""

    error: Exception


@dataclass
class Job:
    """A unit of work for the worker.

    Attributes
    ----------
    kind
        Name of the handler that runs it.
    group
        Jobs of the same kind and group that wait together are handed to the handler in
        one call. Use a unique value for jobs that must run alone.
    payload
        What the handler needs.
    priority
        Lower runs first: a quick answer a client waits for overtakes queued bulk work
        (never the job that is running).
    future
        Resolved with the handler's answer for this job, or its exception.
    """

    kind: str
    group: Hashable
    payload: Any
    priority: int = 0
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


class BatchWorker:
    """A single worker thread that runs grouped jobs.

    Parameters
    ----------
    handlers
        ``{kind: handler(group, payloads) -> results}``; ``results[i]`` answers
        ``payloads[i]`` (a :class:`Failed` fails that job alone); an exception raised by
        the handler fails every job of the call.
    window_ms
        How long to wait for more jobs after the first one of a batch.
    max_batch
        Most jobs taken in one round.
    initializer
        Called first on the worker thread (e.g. to set its number of torch threads).
    name
        The thread's name (for logs and debuggers).

    Examples
    --------
    >>> worker = BatchWorker({"double": lambda group, xs: [2 * x for x in xs]})
    >>> worker.submit(Job("double", None, 21)).result()
    42
    >>> worker.close()
    """

    def __init__(
        self,
        handlers: dict[str, Handler],
        *,
        window_ms: float = 4.0,
        max_batch: int = 64,
        initializer: Callable[[], Any] | None = None,
        name: str = "cnnscope-worker",
    ):
        self.handlers = dict(handlers)
        self._initializer = initializer
        self.window = window_ms / 1000.0
        self.max_batch = max_batch
        self.rounds = 0
        self.jobs_done = 0
        self.busy = False  # a round is running
        self._queue: queue.PriorityQueue[tuple[int, int, Job | None]] = queue.PriorityQueue()
        self._seq = itertools.count()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> concurrent.futures.Future:
        """Queue ``job``; returns its future."""
        if job.kind not in self.handlers:
            raise KeyError(f"no handler for job kind {job.kind!r}")
        if not self._thread.is_alive():
            raise RuntimeError("the compute worker has stopped")
        self._queue.put((job.priority, next(self._seq), job))
        return job.future

    async def run(self, kind: str, group: Hashable, payload: Any, priority: int = 0) -> Any:
        """Submit a job and await its result from the event loop."""
        return await asyncio.wrap_future(self.submit(Job(kind, group, payload, priority)))

    @property
    def pending(self) -> int:
        """Jobs waiting in the queue."""
        return self._queue.qsize()

    def close(self, timeout: float = 5.0) -> None:
        """Cancel the queued jobs, let the running one finish, and stop the thread."""
        while True:
            try:
                _, _, job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.future.cancel()
        self._queue.put((-1, next(self._seq), None))
        self._thread.join(timeout)

    def _collect(self, first: Job) -> tuple[list[Job], bool]:
        batch, stop = [first], False
        deadline = time.monotonic() + self.window
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                item = (
                    self._queue.get(timeout=remaining)
                    if remaining > 0
                    else self._queue.get_nowait()
                )
            except queue.Empty:
                break
            job = item[2]
            if job is None:
                stop = True
                break
            batch.append(job)
        return batch, stop

    def _run(self) -> None:
        if self._initializer is not None:
            self._initializer()
        stop = False
        while not stop:
            first = self._queue.get()[2]
            if first is None:
                break
            self.busy = True
            batch, stop = self._collect(first)
            groups: dict[tuple[str, Hashable], list[Job]] = {}
            for job in sorted(batch, key=lambda j: j.priority):
                groups.setdefault((job.kind, job.group), []).append(job)
            for (kind, group), jobs in groups.items():
                self._dispatch(kind, group, jobs)
            self.rounds += 1
            self.busy = False

    def _dispatch(self, kind: str, group: Hashable, jobs: list[Job]) -> None:
        live = [j for j in jobs if j.future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            results = self.handlers[kind](group, [j.payload for j in live])
        except BaseException as exc:  # every failure reaches the awaiting request
            if not isinstance(exc, Exception):
                raise
            for job in live:
                job.future.set_exception(exc)
            return
        for job, result in zip(live, results):
            if isinstance(result, Failed):
                job.future.set_exception(result.error)
            else:
                job.future.set_result(result)
        self.jobs_done += len(live)
