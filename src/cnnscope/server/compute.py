"""The explorer's compute core: where the model runs, what is cached, what is merged.

:class:`Compute` owns one model and three threads that run it, each on a module of its
own (the engine hooks the module it runs):

- the **request worker** answers what a page waits for in milliseconds (children,
  reconstructions, predictions, maps); reconstructions of the same image, rule and gain
  that wait together go through :meth:`cnnscope.tree.Explorer.input_gradients` as one
  batched backward;
- the **slow lane** runs what a client waits for but takes seconds (drill-up, edge
  faithfulness, many-pass attribution methods such as Score-CAM, dataset-example grids),
  so that it never holds the request worker: a tree expansion asked for meanwhile is
  answered at once;
- the **background lane** (:class:`~cnnscope.server.background.BackgroundLane`) runs what
  nobody waits for on the spot: the default index and feature visualizations.

Both lanes run torch single-threaded at a lower CPU priority (:mod:`.threads`); pictures
are drawn and encoded in a side pool, off the event loop and off the model's threads.

Every answer is cached by its key (image id and arguments, never a user or session), and
a request for an answer under way joins it (:meth:`Compute.once`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..engine import Engine, LayerInfo
from ..models import LoadedModel
from ..render import png_bytes
from ..tree import Explorer, parse_path, render_gradient
from .background import BackgroundLane, model_copy
from .cache import LRUCache
from .store import ImageStore
from .threads import lane_thread, side_pool, use_threads
from .worker import BatchWorker, Failed

__all__ = ["SLOW_NICE", "Compute", "Replica"]

log = logging.getLogger(__name__)

#: Niceness of the slow lane's thread (the background lane's is 10): while a drill-up runs,
#: the request worker keeps most of the CPU.
SLOW_NICE = 5


@dataclass(frozen=True)
class Replica:
    """A model with its engine and tree explorer: what one thread runs."""

    model: LoadedModel
    engine: Engine
    explorer: Explorer

    @classmethod
    def copy_of(cls, model: LoadedModel, chain: Sequence[str], cache_bytes: int) -> Replica:
        """A deep copy of ``model`` for another thread, with its own forward cache."""
        model = model_copy(model)
        engine = Engine.for_module(model.module)
        engine.cache_bytes = int(cache_bytes)
        return cls(model, engine, Explorer(model, chain=list(chain)))


class Compute:
    """The model's threads, the caches and single flight, for one model.

    Parameters
    ----------
    model
        The loaded model (one per server).
    store
        Where images come from.
    chain
        Layer names of the tree, top first (default: the model's default chain).
    cache_mb
        Memory bound of the engine's cache of recorded forwards; the slow lane's copy of
        the model has a cache of its own, a quarter of this.
    results_mb
        Memory bound of the cache of finished answers (PNGs, JSON-ready lists).
    window_ms
        How long the worker waits for more requests to merge into one batch.
    max_batch
        Most reconstructions in one batched backward.
    threads
        Torch threads of the request worker (default: the constructing thread's).

    Examples
    --------
    >>> import asyncio, tempfile
    >>> from cnnscope.models import load_model
    >>> core = Compute(load_model(), ImageStore(tempfile.mkdtemp()))  # doctest: +SKIP
    >>> asyncio.run(core.once("answer", lambda: asyncio.sleep(0, 42)))  # doctest: +SKIP
    42
    """

    def __init__(
        self,
        model: LoadedModel,
        store: ImageStore,
        *,
        chain: Sequence[str] | None = None,
        cache_mb: float = 1024,
        results_mb: float = 128,
        window_ms: float = 4.0,
        max_batch: int = 16,
        threads: int | None = None,
    ):
        self.model = model
        self.store = store
        self.engine = Engine.for_module(model.module)
        self.engine.cache_bytes = int(cache_mb * (1 << 20))
        h, w = model.preprocess_config.input_size
        self.input_size: tuple[int, int] = (int(h), int(w))
        self.explorer = Explorer(model, chain=list(chain) if chain else None)
        self.chain = [str(name) for name in self.explorer.chain]
        self.layers: dict[str, LayerInfo] = {
            info.name: info for info in self.engine.layers(self.input_size)
        }
        # the lanes' copies of the model are made here, before any thread runs it
        self.background = BackgroundLane(model)
        self.main = Replica(model, self.engine, self.explorer)
        self.slow_replica = Replica.copy_of(model, self.chain, self.engine.cache_bytes // 4)
        self.max_batch = int(max_batch)
        self.results = LRUCache(int(results_mb * (1 << 20)), sizeof=_sizeof)
        self._inputs = LRUCache(64 * 3 * h * w * 4, sizeof=_sizeof)
        self._inflight: dict[Hashable, asyncio.Future] = {}
        self.recon_batches = 0  # batched backwards run for reconstructions
        self.recon_paths = 0  # reconstructions computed
        self._side = side_pool()
        self.worker = BatchWorker(
            {"call": self._run_calls, "recon": self._run_recons},
            window_ms=window_ms,
            max_batch=self.max_batch,
            initializer=functools.partial(use_threads, threads or torch.get_num_threads()),
        )
        self.slow = BatchWorker(
            {"call": self._run_calls},
            window_ms=0,
            max_batch=1,
            initializer=functools.partial(lane_thread, SLOW_NICE),
            name="cnnscope-slow",
        )

    def close(self) -> None:
        """Stop the worker thread, the slow and background lanes and the side pool."""
        self.worker.close()
        self.slow.close()
        self.background.close()
        self._side.shutdown(wait=False, cancel_futures=True)

    async def off_loop(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` beside the model: in the side pool, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._side, fn, *args)

    # -- caching and single flight -------------------------------------------------------

    async def once(self, key: Hashable, compute: Callable[[], Awaitable[Any]]) -> Any:
        """The cached answer for ``key``, or join/start the one computation of it."""
        hit = self.results.get(key)
        if hit is not None:
            return hit
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(compute())
            self._inflight[key] = task
            task.add_done_callback(functools.partial(self._finish, key))
        return await asyncio.shield(task)

    def _finish(self, key: Hashable, task: asyncio.Future) -> None:
        self._inflight.pop(key, None)
        if not task.cancelled() and task.exception() is None:
            self.results.put(key, task.result())

    async def call(self, key: Hashable, fn: Callable[[Replica], Any], *, slow: bool = False) -> Any:
        """``fn(replica)``, once per ``key``: on the request worker, or with ``slow`` on the
        slow lane (its own copy of the model), so that it never holds the request worker."""
        worker, replica = (self.slow, self.slow_replica) if slow else (self.worker, self.main)
        job = functools.partial(fn, replica)

        def run() -> Awaitable[Any]:
            return worker.run("call", object(), job)

        return await self.once(key, run)

    async def in_side_pool(self, key: Hashable, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` once per ``key``, in the side pool (pictures, orderings)."""
        return await self.once(key, lambda: self.off_loop(fn, *args))

    def _run_calls(self, _group, fns: Sequence[Callable[[], Any]]) -> list[Any]:
        out = []
        for fn in fns:
            try:
                out.append(fn())
            except Exception as exc:  # reported to the one request that asked
                out.append(Failed(exc))
        return out

    def input(self, image_id: str) -> torch.Tensor:
        """The model input of an image (runs on a model's thread)."""
        x = self._inputs.get(image_id)
        if x is None:
            x = self.explorer.input(self.store.load(image_id))
            self._inputs.put(image_id, x)
        return x

    # -- reconstructions: batched on the request worker ----------------------------------

    def reconstruction(
        self, image_id: str, path: str, rule: str, gain: str, scoring: str = "path"
    ) -> Awaitable[bytes]:
        """The PNG of a checked path's reconstruction (``path`` in its canonical text)."""
        key = ("recon", image_id, path, rule, gain, scoring)
        group = (image_id, rule, gain, scoring)

        async def compute() -> bytes:
            # the worker only backpropagates; the picture is drawn and encoded in the side
            # pool, so the model's thread goes on with the next batch meanwhile
            grad = await self.worker.run("recon", group, path, priority=1)
            return await self.off_loop(lambda: png_bytes(render_gradient(grad)))

        return self.once(key, compute)

    def prefetch(
        self, image_id: str, paths: Sequence[str], rule: str, gain: str, scoring: str = "path"
    ) -> None:
        """Start computing reconstructions that will be asked for soon (no waiting)."""
        for path in paths:
            key = ("recon", image_id, path, rule, gain, scoring)
            if self.results.get(key) is None and key not in self._inflight:
                task = asyncio.ensure_future(
                    self.reconstruction(image_id, path, rule, gain, scoring)
                )
                task.add_done_callback(_quiet)

    def _run_recons(self, group, paths: Sequence[str]) -> list[Any]:
        """Worker: input gradients of many paths of one image, rule and gain, batched."""
        image_id, rule, gain, scoring = group
        try:
            x = self.input(image_id)
        except Exception as exc:
            return [Failed(exc)] * len(paths)
        unique = list(dict.fromkeys(paths))
        done: dict[str, Any] = {}
        for start in range(0, len(unique), self.max_batch):
            chunk = unique[start : start + self.max_batch]
            try:
                grads = self.explorer.input_gradients(
                    x, [parse_path(p) for p in chunk], rule=rule, gain=gain, scoring=scoring
                )
                self.recon_batches += 1
                self.recon_paths += len(chunk)
                done.update(zip(chunk, grads))
            except Exception:  # find which path failed; the others still get answers
                for p in chunk:
                    try:
                        one = self.explorer.input_gradients(x, [parse_path(p)], rule, gain, scoring)
                        done[p] = one[0]
                    except Exception as exc:
                        done[p] = Failed(exc)
        return [done[p] for p in paths]

    def stats(self) -> dict:
        """Cache and worker counters."""
        return {
            "engine_cache_bytes": self.engine.cached_bytes(),
            "engine_cache_limit": self.engine.cache_bytes,
            "results_bytes": self.results.nbytes,
            "results_entries": len(self.results),
            "results_hits": self.results.hits,
            "results_misses": self.results.misses,
            "inflight": len(self._inflight),
            "recon_batches": self.recon_batches,
            "recon_paths": self.recon_paths,
            "worker_rounds": self.worker.rounds,
            "worker_jobs": self.worker.jobs_done,
            "slow_jobs": self.slow.jobs_done,
            "slow_pending": self.slow.pending,
            "slow_busy": self.slow.busy,
            "slow_cache_bytes": self.slow_replica.engine.cached_bytes(),
            "slow_cache_limit": self.slow_replica.engine.cache_bytes,
            "background_queued": len(self.background.queued),
            "background_running": len(self.background.running),
        }


def _sizeof(value: Any) -> int:
    if isinstance(value, (bytes, bytearray)):
        return len(value) + 64
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size() + 64
    if isinstance(value, tuple) and value and isinstance(value[0], bytes):
        return len(value[0]) + 64
    return 2048


def _quiet(task: asyncio.Future) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.debug("prefetch failed: %s", task.exception())
