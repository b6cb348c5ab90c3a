"""Long jobs beside the request worker: the default index and feature visualizations.

A job that takes tens of seconds (building the gallery's dataset index, optimising a
feature visualization) must never hold the :class:`~cnnscope.server.worker.BatchWorker`,
or every tree expansion queued behind it would wait. The :class:`BackgroundLane` runs such
jobs one at a time on a thread of its own, at a lower CPU priority, with its own copy of
the model (the engine records a forward with hooks on the module it runs, so two threads
must never share one module). Each job reports its progress, and stops at its next step
when the server shuts down, when it is dropped, or when nobody watched it for a while.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..models import LoadedModel
from .threads import lane_thread

__all__ = ["BackgroundLane", "Cancelled", "Task", "model_copy"]

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
    """

    name: str
    run: Callable[[LoadedModel, Callable[[int, int], None]], Any] = field(repr=False)
    state: str = "queued"
    done: int = 0
    total: int = 0
    detail: str | None = None
    result: Any = None
    watch_s: float | None = None
    watched: float = field(default_factory=time.monotonic, repr=False)
    finished: threading.Event = field(default_factory=threading.Event, repr=False)
    stop: str | None = field(default=None, repr=False)  # why it must stop at its next step

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

    Examples
    --------
    >>> from cnnscope.models import load_model
    >>> lane = BackgroundLane(load_model())
    >>> task = lane.submit("count", lambda model, progress: model.name)
    >>> task.finished.wait(60) and (task.state, task.result)
    ('done', 'efficientnet_lite0')
    >>> lane.close()
    """

    def __init__(self, model: LoadedModel, nice: int = 10):
        self._copy = model_copy(model)
        self._nice = int(nice)
        self._queue: collections.deque[Task] = collections.deque()
        self._lock = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name="cnnscope-background", daemon=True)
        self._thread.start()

    def submit(
        self,
        name: str,
        run: Callable[[LoadedModel, Callable[[int, int], None]], Any],
        *,
        watch_s: float | None = None,
    ) -> Task:
        """Queue ``run(model_copy, progress)``; return its :class:`Task` at once.

        With ``watch_s`` the job is dropped once nobody called :meth:`Task.watch` for that
        many seconds (before it starts, or at its next step).
        """
        task = Task(name, run, watch_s=watch_s)
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

    def _next(self) -> Task | None:
        """The next job to run (now ``"running"``), or ``None`` when closing."""
        with self._lock:
            while True:
                while not self._queue and not self._closing:
                    self._lock.wait()
                if self._closing:
                    return None
                task = self._queue.popleft()
                if task.unwatched:
                    reason = f"dropped before it started: nobody asked for it in {task.watch_s:g} s"
                    self._finish(task, "dropped", reason)
                    continue
                task.state = "running"
                return task

    def _loop(self) -> None:
        lane_thread(self._nice)
        while (task := self._next()) is not None:
            self._run(task)

    def _run(self, task: Task) -> None:
        def progress(done: int, total: int) -> None:
            if self._closing:
                raise Cancelled(f"{task.name}: the server is shutting down")
            if task.stop is None and task.unwatched:
                task.stop = f"stopped: nobody asked for it in {task.watch_s:g} s"
            if task.stop is not None:
                raise Cancelled(task.stop)
            task.done, task.total = int(done), int(total)

        try:
            task.result = task.run(self._copy, progress)
            self._finish(task, "done", None)
        except Cancelled as exc:
            state = "failed" if self._closing else "dropped"
            self._finish(task, state, str(exc))
            log.info("%s: %s", task.name, exc)
        except Exception as exc:  # a failed job is shown in the page; the lane goes on
            self._finish(task, "failed", " ".join(str(exc).split()) or type(exc).__name__)
            log.warning("background job %s failed: %s", task.name, task.detail)
