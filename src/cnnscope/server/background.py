"""Long jobs beside the request worker: the default index and feature visualizations.

A job that takes tens of seconds (building the gallery's dataset index, optimising a
feature visualization) must never hold the :class:`~cnnscope.server.worker.BatchWorker`,
or every tree expansion queued behind it would wait. The :class:`BackgroundLane` runs such
jobs one at a time on a thread of its own, at a lower CPU priority, with its own copy of
the model (the engine records a forward with hooks on the module it runs, so two threads
must never share one module). Each job reports its progress, and stops at its next step
when the server shuts down.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..models import LoadedModel
from .threads import single_threaded

__all__ = ["BackgroundLane", "Cancelled", "Task"]

log = logging.getLogger(__name__)


class Cancelled(Exception):
    """Raised inside a job's progress callback when the lane is closing."""


@dataclass
class Task:
    """A background job and what a page may show of it.

    Attributes
    ----------
    name
        What it does, for logs and pages.
    state
        ``"queued"``, ``"running"``, ``"done"`` or ``"failed"``.
    done, total
        Progress in the job's own steps (``total`` is 0 until the job knows it).
    detail
        The error message of a failed job.
    result
        The job's return value once done.
    """

    name: str
    run: Callable[[LoadedModel, Callable[[int, int], None]], Any] = field(repr=False)
    state: str = "queued"
    done: int = 0
    total: int = 0
    detail: str | None = None
    result: Any = None
    finished: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def progress(self) -> float:
        """Fraction done, in [0, 1]."""
        if self.state == "done":
            return 1.0
        return min(0.99, self.done / self.total) if self.total else 0.0


class BackgroundLane:
    """One low-priority thread that runs long jobs in order, on a copy of the model.

    Parameters
    ----------
    model
        The server's model; the lane deep-copies its module on first use, so that it
        never runs the module the request worker runs.
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
        self._model = model
        self._copy: LoadedModel | None = None
        self._nice = int(nice)
        self._queue: queue.Queue[Task | None] = queue.Queue()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cnnscope-background", daemon=True)
        self._thread.start()

    def submit(
        self, name: str, run: Callable[[LoadedModel, Callable[[int, int], None]], Any]
    ) -> Task:
        """Queue ``run(model_copy, progress)``; return its :class:`Task` at once."""
        task = Task(name, run)
        self._queue.put(task)
        return task

    def close(self, timeout: float = 60.0) -> None:
        """Stop taking jobs and wait (at most ``timeout`` s) for the running one to stop.

        A job stops at its next progress report; the dataset index, for one, is resumable,
        so a build stopped here goes on from its last checkpoint at the next start.
        """
        self._closing.set()
        self._queue.put(None)
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _loop(self) -> None:
        _lower_priority(self._nice)
        single_threaded()
        while True:
            task = self._queue.get()
            if task is None or self._closing.is_set():
                if task is not None:
                    task.state, task.detail = "failed", "the server is shutting down"
                    task.finished.set()
                return
            self._run(task)

    def _run(self, task: Task) -> None:
        def progress(done: int, total: int) -> None:
            if self._closing.is_set():
                raise Cancelled(f"{task.name}: the server is shutting down")
            task.done, task.total = int(done), int(total)

        task.state = "running"
        try:
            task.result = task.run(self._model_copy(), progress)
            task.state = "done"
        except Cancelled as exc:
            task.state, task.detail = "failed", str(exc)
            log.info("%s", exc)
        except Exception as exc:  # a failed job is shown in the page; the lane goes on
            task.state = "failed"
            task.detail = " ".join(str(exc).split()) or type(exc).__name__
            log.warning("background job %s failed: %s", task.name, task.detail)
        finally:
            task.finished.set()

    def _model_copy(self) -> LoadedModel:
        if self._copy is None:
            self._copy = dataclasses.replace(self._model, module=copy.deepcopy(self._model.module))
        return self._copy


def _lower_priority(nice: int) -> None:
    """Lower this thread's CPU priority (Linux: per thread; elsewhere: skipped)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except (AttributeError, OSError, PermissionError):  # pragma: no cover - platform
        log.debug("could not lower the background lane's priority")
