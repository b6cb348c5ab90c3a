"""Which of the explorer's threads run torch, and with how many threads each.

PyTorch's CPU kernels run on OpenMP thread teams, one team per thread that calls torch.
With the GNU OpenMP runtime that PyTorch's Linux wheels use, once a process holds more
OpenMP threads than the machine has CPUs, every team stops spinning between parallel
regions and sleeps instead; a batch-1 backward is thousands of short regions, so it then
runs about 2x slower (5 reconstructions of EfficientNet-Lite0 on 2 cores: 230 ms with a
second team alive, 115 ms without). So the server keeps one multi-threaded team, the
model's worker thread's; the event loop's thread, the pool that draws pictures and the
background lane run torch on one thread, which makes no team at all.
"""

from __future__ import annotations

import concurrent.futures
import functools

import torch

__all__ = ["main_thread_single", "single_threaded", "side_pool"]


@functools.cache
def _per_thread() -> bool:
    """Whether ``torch.set_num_threads`` acts on the calling thread only (OpenMP builds)."""
    return "parallel backend: OpenMP" in torch.__config__.parallel_info()


def single_threaded() -> None:
    """Run this thread's torch calls on one thread (no OpenMP team of its own).

    Skipped where the setting is process-wide (a build on PyTorch's native thread pool):
    there it would take the model worker's threads away too.
    """
    if _per_thread():
        torch.set_num_threads(1)


def main_thread_single() -> int:
    """Make the calling thread single-threaded; return the torch threads it had.

    For a process that serves (``cnnscope serve``): its main thread only loads the model and
    runs the event loop, and hands the returned count to the model's worker thread.
    """
    threads = torch.get_num_threads()
    single_threaded()
    return threads


def side_pool(max_workers: int = 4) -> concurrent.futures.ThreadPoolExecutor:
    """A thread pool for work beside the model (pictures, files), torch single-threaded."""
    return concurrent.futures.ThreadPoolExecutor(
        max_workers, thread_name_prefix="cnnscope-side", initializer=single_threaded
    )
