"""Timing helpers shared by the benchmark scripts (``python bench/NAME.py`` puts this
folder on ``sys.path``, so a script imports it as ``timing``)."""

from __future__ import annotations

import statistics
import time


def seconds(fn) -> float:
    """Wall seconds of one call of ``fn``."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each function, run in turn ``repeats`` times after a warm-up."""
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(seconds(fn))
    return {k: statistics.median(v) for k, v in times.items()}
