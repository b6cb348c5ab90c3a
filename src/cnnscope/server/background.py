"""Long jobs beside the request worker: the default index and feature visualizations.

A job that takes tens of seconds (building the gallery's dataset index, optimising a
feature visualization) must never hold the :class:`~cnnscope.server.worker.BatchWorker`,
or every tree expansion queued behind it would wait. The :class:`BackgroundLane` runs such
jobs on a thread of its own, at a lower CPU priority, with its own copy of the model (the
engine records a forward with hooks on the module it runs, so two threads must never share
one module). Each job reports its progress, and stops at its next step when the server
shuts down, when it is dropped, or when nobody watched it for a while.

Which job runs: the one somebody watched last (a page asked for it or polled it), before
jobs nobody watches on the spot (the default index), which run in order. A waiting job
that outranks the running one runs *inside* the running job's next progress report (on
the same thread and model copy, between two of its steps) and the running one goes on
where it was afterwards, so no work is lost. A job that somebody is watching (watched in
the last ``recent_s`` seconds: a page polls its slot) is never overtaken; one that nobody
watches now (the page moved on to another unit, or the default index) is. Jobs that share a ``batch_key`` (feature visualizations of one
layer) and wait together run as one batch (``run_batch``), the best-ranked first.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import itertools
import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from ..models import LoadedModel
from .threads import lane_thread

__all__ = ["BackgroundLane", "Cancelled", "Task", "channels_last", "model_copy"]

log = logging.getLogger(__name__)


class Cancelled(Exception):
    """Raised inside a job's progress callback when the job must stop."""


def model_copy(model: LoadedModel) -> LoadedModel:
    """``model`` with a deep copy of its module, for a thread of its own.

    Make it while no other thread runs the module: a forward in progress has hooks on it,
    which a copy would take along.

    Examples
    --------
    >>> from cnnscope.models import load_model
    >>> model = load_model()
    >>> model_copy(model).module is model.module
    False
    """
    return dataclasses.replace(model, module=copy.deepcopy(model.module))


@contextlib.contextmanager
def channels_last(module: torch.nn.Module) -> Iterator[None]:
    """Keep ``module``'s 4-D weights channels-last meanwhile (faster convolutions on CPU).

    For a lane's own copy of the model only. A no-op if they are already (a job that runs
    inside another's progress report); restored afterwards.

    Examples
    --------
    >>> net = torch.nn.Conv2d(3, 4, 3)
    >>> with channels_last(net):
    ...     net.weight.is_contiguous(memory_format=torch.channels_last)
    True
    >>> net.weight.is_contiguous()
    True
    """
    weights = [p for p in module.parameters() if p.dim() == 4]
    if not weights or weights[0].is_contiguous(memory_format=torch.channels_last):
        yield
        return
    module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch stubs
    try:
        yield
    finally:
        module.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]  # torch stubs


@dataclass
class Task:
    """A background job and what a page may show of it.

    Attributes
    ----------
    name
        What it does, for logs and pages.
    state
        ``"queued"``, ``"running"``, ``"done"``, ``"failed"`` or ``"dropped"`` (taken out
        of the queue, or stopped, before it finished: see :meth:`BackgroundLane.drop`).
    done, total
        Progress in the job's own steps (``total`` is 0 until the job knows it).
    detail
        The error message of a failed job, the reason of a dropped one.
    result
        The job's return value once done.
    watch_s
        Drop the job when nobody called :meth:`watch` for this many seconds (``None``:
        never); checked before it starts and at each of its steps.
    batch_key, run_batch
        Waiting jobs of one ``batch_key`` run together: ``run_batch(model, tasks,
        progress)`` returns one result per task (the first task's ``run_batch`` runs).
    batch_size, started
        How many tasks ran in the batch this one ran in (0 until it runs); when it started
        (``time.monotonic()``; ``None`` until it runs).
    data
        What ``run_batch`` needs of this job (e.g. its unit).
    """

    name: str
    run: Callable[[LoadedModel, Callable[[int, int], None]], Any] | None = field(repr=False)
    state: str = "queued"
    done: int = 0
    total: int = 0
    detail: str | None = None
    result: Any = None
    watch_s: float | None = None
    watched: float = field(default_factory=time.monotonic, repr=False)
    finished: threading.Event = field(default_factory=threading.Event, repr=False)
    stop: str | None = field(default=None, repr=False)  # why it must stop at its next step
    batch_key: Hashable | None = None
    run_batch: Callable[[LoadedModel, list[Task], Callable[[int, int], None]], list] | None = field(
        default=None, repr=False
    )
    batch_size: int = 0
    started: float | None = None
    data: Any = None
    seq: int = field(default=0, repr=False)  # submission order

    @property
    def progress(self) -> float:
        """Fraction done, in [0, 1]."""
        if self.state == "done":
            return 1.0
        return min(0.99, self.done / self.total) if self.total else 0.0

    def watch(self) -> None:
        """Someone still waits for this job (a page polled its state)."""
        self.watched = time.monotonic()

    @property
    def unwatched(self) -> bool:
        """Whether nobody watched it for longer than ``watch_s``."""
        return self.watch_s is not None and time.monotonic() - self.watched > self.watch_s

    @property
    def rank(self) -> tuple:
        """Higher runs first: watched jobs, the last watched first; then the others in order."""
        return (1, self.watched) if self.watch_s is not None else (0, -self.seq)


class BackgroundLane:
    """One low-priority thread that runs long jobs in order, on a copy of the model.

    Parameters
    ----------
    model
        The server's model; the lane runs a deep copy of its module (made here, so make
        the lane while no other thread runs the model), never the module the request
        worker runs.
    nice
        How much lower the lane's CPU priority is (Linux niceness, best effort).
    max_batch
        Most jobs of one ``batch_key`` run together.
    max_depth
        Most jobs suspended at once by jobs that outrank them (each holds its state).
    recent_s
        A running job watched within this many seconds is not overtaken (its page still
        polls it; the explorer's pages poll every second).

    Examples
    --------
    >>> from cnnscope.models import load_model
    >>> lane = BackgroundLane(load_model())
    >>> task = lane.submit("count", lambda model, progress: model.name)
    >>> task.finished.wait(60) and (task.state, task.result)
    ('done', 'efficientnet_lite0')
    >>> lane.close()
    """

    def __init__(
        self,
        model: LoadedModel,
        nice: int = 10,
        max_batch: int = 4,
        max_depth: int = 3,
        recent_s: float = 3.0,
    ):
        self._copy = model_copy(model)
        self._nice = int(nice)
        self.max_batch = max(1, int(max_batch))
        self.max_depth = max(0, int(max_depth))
        self.recent_s = float(recent_s)
        self._running: list[list[Task]] = []  # the running batch, and those it suspended
        self._seq = itertools.count()
        self.batches = 0  # batches (runs) started
        self._queue: collections.deque[Task] = collections.deque()
        self._lock = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name="cnnscope-background", daemon=True)
        self._thread.start()

    def submit(
        self,
        name: str,
        run: Callable[[LoadedModel, Callable[[int, int], None]], Any] | None,
        *,
        watch_s: float | None = None,
        batch_key: Hashable | None = None,
        run_batch: Callable | None = None,
        data: Any = None,
    ) -> Task:
        """Queue ``run(model_copy, progress)``; return its :class:`Task` at once.

        With ``watch_s`` the job is dropped once nobody called :meth:`Task.watch` for that
        many seconds (before it starts, or at its next step). A job with a ``batch_key``
        runs as ``run_batch(model_copy, tasks, progress)`` (``run`` is not used: give
        ``None``), together with the jobs of that key waiting with it.
        """
        if (batch_key is None) != (run_batch is None) or (run is None) == (run_batch is None):
            raise ValueError("give run, or batch_key and run_batch")
        task = Task(name, run, watch_s=watch_s, batch_key=batch_key, run_batch=run_batch, data=data)
        task.seq = next(self._seq)
        with self._lock:
            self._queue.append(task)
            self._lock.notify()
        return task

    @property
    def queued(self) -> list[Task]:
        """The jobs waiting to run, oldest first."""
        with self._lock:
            return list(self._queue)

    def drop(self, task: Task, reason: str) -> None:
        """Take ``task`` out of the queue, or stop it at its next step if it runs.

        Its state becomes ``"dropped"`` with ``reason`` as its detail; a finished job is
        left as it is.
        """
        with self._lock:
            if task.state == "queued" and task in self._queue:
                self._queue.remove(task)
                self._finish(task, "dropped", reason)
            elif task.state == "running":
                task.stop = reason

    def close(self, timeout: float = 60.0) -> None:
        """Stop taking jobs and wait (at most ``timeout`` s) for the running one to stop.

        A job stops at its next progress report; the dataset index, for one, is resumable,
        so a build stopped here goes on from its last checkpoint at the next start.
        """
        with self._lock:
            self._closing = True
            while self._queue:
                self._finish(self._queue.popleft(), "failed", "the server is shutting down")
            self._lock.notify()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @staticmethod
    def _finish(task: Task, state: str, detail: str | None) -> None:
        task.state, task.detail = state, detail
        task.finished.set()

    @property
    def running(self) -> list[Task]:
        """The jobs running now (one batch) and those they suspended, newest first."""
        with self._lock:
            return [t for batch in reversed(self._running) for t in batch]

    def _take(self, outrank: list[Task] | None = None) -> list[Task] | None:
        """Pop the best-ranked waiting job and its batch (now ``"running"``); hold the lock.

        Unwatched waiting jobs are dropped first. With ``outrank`` (a running batch), only
        a watched job that ranks above every job of that batch, none of which was watched
        in the last ``recent_s`` seconds, is taken (else ``None``).
        """
        for task in [t for t in self._queue if t.unwatched]:
            self._queue.remove(task)
            reason = f"dropped before it started: nobody asked for it in {task.watch_s:g} s"
            self._finish(task, "dropped", reason)
        if not self._queue:
            return None
        head = max(self._queue, key=lambda t: t.rank)
        if outrank is not None and not self._outranks(head, outrank):
            return None
        batch = [head]
        if head.batch_key is not None:
            mates = [t for t in self._queue if t is not head and t.batch_key == head.batch_key]
            batch += sorted(mates, key=lambda t: t.rank, reverse=True)[: self.max_batch - 1]
        now = time.monotonic()
        for task in batch:
            self._queue.remove(task)
            task.state, task.batch_size, task.started = "running", len(batch), now
        return batch

    def _outranks(self, task: Task, running: list[Task]) -> bool:
        now = time.monotonic()
        idle = all(t.watch_s is None or now - t.watched > self.recent_s for t in running)
        return task.watch_s is not None and idle and all(task.rank > t.rank for t in running)

    def _next(self) -> list[Task] | None:
        """The next batch to run (one job, unless batched), or ``None`` when closing."""
        with self._lock:
            while True:
                while not self._queue and not self._closing:
                    self._lock.wait()
                if self._closing:
                    return None
                batch = self._take()
                if batch is not None:
                    return batch

    def _loop(self) -> None:
        lane_thread(self._nice)
        while (batch := self._next()) is not None:
            self._run(batch)

    def _overtake(self, running: list[Task]) -> None:
        """Run the waiting jobs that outrank ``running`` now, between two of its steps."""
        while len(self._running) <= self.max_depth and not self._closing:
            with self._lock:
                batch = self._take(outrank=running)
            if batch is None:
                return
            log.info("%s overtakes %s", batch[0].name, running[0].name)
            self._run(batch)

    def _run(self, batch: list[Task]) -> None:
        def progress(done: int, total: int) -> None:
            if self._closing:
                raise Cancelled(f"{batch[0].name}: the server is shutting down")
            for task in batch:
                if task.stop is None and task.unwatched:
                    task.stop = f"stopped: nobody asked for it in {task.watch_s:g} s"
            if all(task.stop is not None for task in batch):
                raise Cancelled(batch[0].stop)
            for task in batch:
                task.done, task.total = int(done), int(total)
            self._overtake(batch)

        self._running.append(batch)
        self.batches += 1
        try:
            head = batch[0]
            if head.run_batch is not None:
                results = list(head.run_batch(self._copy, batch, progress))
            elif head.run is not None:
                results = [head.run(self._copy, progress)]
            else:  # submit() refuses a task with neither
                raise RuntimeError(f"task {head.name!r} has nothing to run")
            for task, result in zip(batch, results, strict=True):
                task.result = result
                self._finish(task, "done", None)
        except Cancelled as exc:
            state = "failed" if self._closing else "dropped"
            for task in batch:
                self._finish(task, state, task.stop or str(exc))
            log.info("%s: %s", batch[0].name, exc)
        except Exception as exc:  # a failed job is shown in the page; the lane goes on
            detail = " ".join(str(exc).split()) or type(exc).__name__
            for task in batch:
                self._finish(task, "failed", detail)
            log.warning("background job %s failed: %s", batch[0].name, detail)
        finally:
            self._running.pop()
