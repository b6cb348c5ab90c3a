"""Which of the explorer's threads run torch, with how many threads and at what priority.

PyTorch's CPU kernels run on OpenMP thread teams, one team per thread that calls torch.
With the GNU OpenMP runtime that PyTorch's Linux wheels use, once a process holds more
OpenMP threads than the machine has CPUs, every team stops spinning between parallel
regions and sleeps instead; a batch-1 backward is thousands of short regions, so it then
runs about 2x slower (5 reconstructions of EfficientNet-Lite0 on 2 cores: 230 ms with a
second team alive, 115 ms without). So the server keeps one multi-threaded team, the
model's worker thread's; the event loop's thread, the pool that draws pictures and the
lanes of long jobs (:func:`lane_thread`) run torch on one thread, which makes no team at
all. The lanes also run at a lower CPU priority, so that a request the worker answers gets
the cores it needs while a drill-up or a feature visualization runs beside it.

``torch.set_num_threads`` sets the calling thread's count and a process-wide one; a thread
takes the process-wide count at its first torch call unless it has made one since its own
setting. So each thread here pins its count at once (:func:`use_threads`): otherwise the
worker, set to 2 threads, ran on 1 as soon as a lane set 1 before the worker's first job.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import os
import threading

import torch

__all__ = [
    "lane_thread",
    "lower_priority",
    "main_thread_single",
    "single_threaded",
    "side_pool",
    "use_threads",
]

log = logging.getLogger(__name__)


@functools.cache
def _per_thread() -> bool:
    """Whether ``torch.set_num_threads`` acts on the calling thread only (OpenMP builds)."""
    return "parallel backend: OpenMP" in torch.__config__.parallel_info()


def use_threads(n: int) -> None:
    """Run this thread's torch calls on ``n`` threads, whatever other threads set later.

    Examples
    --------
    >>> import threading
    >>> seen = []
    >>> t = threading.Thread(target=lambda: (use_threads(1), seen.append(torch.get_num_threads())))
    >>> t.start(); t.join(); seen
    [1]
    """
    torch.set_num_threads(int(n))
    torch.get_num_threads()  # the thread's first call since: it keeps n from now on


def single_threaded() -> None:
    """Run this thread's torch calls on one thread (no OpenMP team of its own).

    Skipped where the setting is process-wide (a build on PyTorch's native thread pool):
    there it would take the model worker's threads away too.
    """
    if _per_thread():
        use_threads(1)


def main_thread_single() -> int:
    """Make the calling thread single-threaded; return the torch threads it had.

    For a process that serves (``cnnscope serve``): its main thread only loads the model and
    runs the event loop, and hands the returned count to the model's worker thread.
    """
    threads = torch.get_num_threads()
    single_threaded()
    return threads


def lower_priority(nice: int) -> None:
    """Lower the calling thread's CPU priority by ``nice`` (Linux: per thread; else skipped)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), int(nice))
    except (AttributeError, OSError, PermissionError):  # pragma: no cover - platform
        log.debug("could not lower the priority of thread %s", threading.current_thread().name)


def lane_thread(nice: int) -> None:
    """Set up a thread of long jobs: torch single-threaded, CPU priority lowered by ``nice``.

    Examples
    --------
    >>> import threading
    >>> t = threading.Thread(target=lane_thread, args=(5,)); t.start(); t.join()
    """
    lower_priority(nice)
    single_threaded()


def side_pool(max_workers: int = 4) -> concurrent.futures.ThreadPoolExecutor:
    """A thread pool for work beside the model (pictures, files), torch single-threaded."""
    return concurrent.futures.ThreadPoolExecutor(
        max_workers, thread_name_prefix="cnnscope-side", initializer=single_threaded
    )
