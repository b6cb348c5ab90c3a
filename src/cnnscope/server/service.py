"""The explorer's service layer: validation, caching, batching; no HTTP and no maths.

Routes call the ``async`` methods of :class:`ExplorerService`. Each method checks its
arguments on the event loop (cheap, and a bad name never reaches the model), looks the
answer up in a bounded cache, joins an identical computation already under way, or
submits a job to a :class:`~cnnscope.server.worker.BatchWorker`. Three threads run the
model, each on a module of its own (the engine hooks the module it runs):

- the **request worker** answers what a page waits for in milliseconds (children,
  reconstructions, predictions, maps); reconstructions of the same image, rule and gain
  that wait together go through :meth:`cnnscope.tree.Explorer.reconstructions` as one
  batched backward;
- the **slow lane** runs what a client waits for but takes seconds (drill-up, edge
  faithfulness, many-pass attribution methods such as Score-CAM, dataset-example grids),
  so that it never holds the request worker: a tree expansion asked for meanwhile is
  answered at once;
- the **background lane** (:class:`~cnnscope.server.background.BackgroundLane`) runs what
  nobody waits for on the spot: the default index and feature visualizations.

Both lanes run torch single-threaded at a lower CPU priority (:mod:`.threads`).

Everything is keyed by image id (a content hash or a built-in name) and arguments, never
by user or session, so clients cannot see or disturb each other's state.
"""

from __future__ import annotations

import asyncio
import functools
import io
import logging
import os
import re
import sys
import threading
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..engine import LOGITS, Engine, LayerInfo, Unit
from ..errors import CnnscopeError, UnitSpecError, UnknownLayerError
from ..models import LoadedModel
from ..render import colorize, gradient_image, normalize, overlay, png_bytes, resize_map
from ..tree import Explorer, format_path, parse_path, render_gradient, zoom_picture
from .background import BackgroundLane, Task, channels_last, model_copy
from .cache import LRUCache
from .store import BadRequestError, ImageStore, NotFoundError
from .threads import lane_thread, side_pool, use_threads
from .worker import BatchWorker, Failed

__all__ = ["ExplorerService", "RULES", "GAINS", "SCORINGS", "SIGNS"]

log = logging.getLogger(__name__)

RULES = ("gradient", "deconvnet", "guided", "guided_neg")
GAINS = ("auto", "fixed", "none")
SCORINGS = ("path", "local")
SIGNS = ("pos", "neg")

#: Attribution methods computed here while the attribution package is absent.
FALLBACK_METHODS = {"grad_cam": "Grad-CAM", "guided_backprop": "Guided backprop"}

#: The picker's order (first: the default); titles come from the registry (``Method.title``).
METHOD_ORDER = (
    "grad_cam",
    "guided_backprop",
    "guided_grad_cam",
    "gradient",
    "gradient_x_input",
    "guided_x_input",
    "deconvnet",
    "guided_neg",
    "grad_cam_pp",
    "xgrad_cam",
    "hires_cam",
    "layer_cam",
    "eigen_cam",
    "lrp",
    "integrated_gradients",
    "guided_ig",
    "smoothgrad",
    "smoothgrad_sq",
    "vargrad",
    "score_cam",
    "ablation_cam",
)

#: Niceness of the slow lane's thread (the background lane's is 10): while a drill-up runs,
#: the request worker keeps most of the CPU.
SLOW_NICE = 5


@dataclass(frozen=True)
class _Replica:
    """A model with its engine and tree explorer: what one thread runs."""

    model: LoadedModel
    engine: Engine
    explorer: Explorer

    @classmethod
    def copy_of(cls, model: LoadedModel, chain: Sequence[str], cache_bytes: int) -> _Replica:
        """A deep copy of ``model`` for another thread, with its own forward cache."""
        model = model_copy(model)
        engine = Engine.for_module(model.module)
        engine.cache_bytes = int(cache_bytes)
        return cls(model, engine, Explorer(model, chain=list(chain)))


try:  # feature synthesis: render visualizations in the background when it is there
    from ..synthesis.api import QUICK_VISUALIZATION, visualization_stem
    from ..synthesis.api import unit_visualizations as _unit_visualizations
except ImportError:  # pragma: no cover - depends on what is installed
    _unit_visualizations, visualization_stem = None, None
    QUICK_VISUALIZATION = {"steps": 48, "size": 128}

try:  # the attribution package is written in parallel; use it when it is there
    from ..attribution import METHODS as _ATTRIBUTION_METHODS
    from ..attribution import attribute as _attribute
    from ..attribution import get_method as _get_method
except ImportError:  # pragma: no cover - depends on what is installed
    _ATTRIBUTION_METHODS, _attribute, _get_method = None, None, None


def _is_slow(method: str) -> bool:
    """Whether a method runs many passes (the registry's ``Method.slow``): the slow lane."""
    found = _ATTRIBUTION_METHODS.get(method) if _ATTRIBUTION_METHODS is not None else None
    return bool(found and found.slow)


class ExplorerService:
    """Everything the explorer computes, for one model.

    Parameters
    ----------
    model
        The loaded model (one per server).
    store
        Where images come from.
    chain
        Layer names of the tree, top first (default: the model's default chain).
    cache_mb
        Memory bound of the engine's cache of recorded forwards (per-image state); the
        slow lane's copy of the model has a cache of its own, a quarter of this (it keeps
        at least the forward of the image it works on).
    results_mb
        Memory bound of the cache of finished answers (PNGs, JSON-ready lists).
    window_ms
        How long the worker waits for more requests to merge into one batch.
    max_batch
        Most reconstructions in one batched backward.
    index
        Path of a dataset index for the examples of each unit.
    default_index
        Without ``index``, build the gallery's default index in the background (once;
        kept in ``index_dir``) and use it when ready.
    index_dir
        Where the default index lives (default: the one ``cnnscope index`` builds).
    index_images
        A folder of the user's images: without ``index``, build the default index from it
        instead of the gallery (``cnnscope serve --examples-from DIR``).
    threads
        Torch threads of the model's worker thread (default: the constructing thread's);
        every other thread of the service runs torch single-threaded (see
        :mod:`cnnscope.server.threads`).
    visualization_queue
        Most feature visualizations waiting in the background lane; asking for one more
        drops the oldest waiting one. The one asked for or polled last runs first (it
        overtakes a running one that nobody polls now), with up to 3 waiting ones of its
        layer in one batch (:class:`~cnnscope.server.background.BackgroundLane`).
    visualization_watch_s
        A feature visualization nobody polled for this many seconds is dropped (before it
        starts, or at its next step); the page polls every second while it shows the slot.

    Examples
    --------
    >>> import asyncio, tempfile
    >>> from cnnscope.models import load_model
    >>> service = ExplorerService(load_model(), ImageStore(tempfile.mkdtemp()))
    >>> asyncio.run(service.predictions("chelsea"))[0]["label"]  # doctest: +SKIP
    'tabby'
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
        index: str | None = None,
        default_index: bool = False,
        index_dir: str | os.PathLike | None = None,
        index_images: str | os.PathLike | None = None,
        data_dir: str | os.PathLike | None = None,
        synthesis_steps: int = QUICK_VISUALIZATION["steps"],
        synthesis_size: int = QUICK_VISUALIZATION["size"],
        threads: int | None = None,
        visualization_queue: int = 8,
        visualization_watch_s: float = 20.0,
    ):
        self.model = model
        self.store = store
        self.engine = Engine.for_module(model.module)
        self.engine.cache_bytes = int(cache_mb * (1 << 20))
        self.input_size = tuple(model.preprocess_config.input_size)
        self.explorer = Explorer(model, chain=list(chain) if chain else None)
        self.chain = [str(name) for name in self.explorer.chain]
        self.layers: dict[str, LayerInfo] = {
            info.name: info for info in self.engine.layers(self.input_size)
        }
        self.index_path = index
        self.synthesis_steps = int(synthesis_steps)
        self.synthesis_size = int(synthesis_size)
        self._vis_dir = Path(data_dir or store.data_dir) / "visualizations" / _slug(model.name)
        _matplotlib_writes_inside(Path(data_dir or store.data_dir))
        self._vis_jobs: dict[str, Task] = {}  # unit -> its rendering in the background lane
        self._vis_lock = threading.Lock()
        self.visualization_queue = max(1, int(visualization_queue))
        self.visualization_watch_s = float(visualization_watch_s)
        # the lanes' copies of the model are made here, before any thread runs it
        self.background = BackgroundLane(model)
        self._main = _Replica(model, self.engine, self.explorer)
        self._slow = _Replica.copy_of(model, self.chain, self.engine.cache_bytes // 4)
        self._index = _open_index(index) if index else None
        self._index_task: Task | None = None
        if index is None and (default_index or index_images):
            self._index_task = self.background.submit(
                "default index", self._default_index(index_dir, index_images)
            )
        self.max_batch = int(max_batch)
        self.results = LRUCache(int(results_mb * (1 << 20)), sizeof=_sizeof)
        h, w = self.input_size
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

    async def _off_loop(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` beside the model: in the side pool, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._side, fn, *args)

    # -- what the model offers -----------------------------------------------------------

    @property
    def attribution_methods(self) -> dict[str, str]:
        """``{method id: display name}`` of the attribution picker (slow ones marked)."""
        if _ATTRIBUTION_METHODS is None:
            return dict(FALLBACK_METHODS)
        names = [n for n in METHOD_ORDER if n in _ATTRIBUTION_METHODS]
        names += sorted(set(_ATTRIBUTION_METHODS) - set(names))
        return {
            n: _ATTRIBUTION_METHODS[n].title + (" (slow)" if _ATTRIBUTION_METHODS[n].slow else "")
            for n in names
        }

    def attribution_method(self, method: str) -> str:
        """The registry name of ``method`` (aliases accepted); 404 if unknown."""
        if _get_method is not None:
            try:
                return _get_method(method).name
            except CnnscopeError as exc:
                raise NotFoundError(f"unknown attribution method {method[:60]!r}: {exc}") from None
        if method not in FALLBACK_METHODS:
            raise NotFoundError(
                f"unknown attribution method {method[:60]!r}: use {', '.join(FALLBACK_METHODS)}"
            )
        return method

    @property
    def index_available(self) -> bool:
        """Whether a dataset index is loaded (dataset examples per unit)."""
        return self._index is not None

    @property
    def synthesis_available(self) -> bool:
        """Whether feature visualizations can be computed (the synthesis package)."""
        return _unit_visualizations is not None

    def layer_info(self, name: str) -> LayerInfo:
        """The layer called ``name`` (canonical name, ``NAME#K``, or the logits layer)."""
        try:
            canonical = self.explorer.canonical(name)
        except UnknownLayerError as exc:
            raise NotFoundError(str(exc)) from None
        return self.layers[canonical]

    def chain_below(self, layer: str) -> str | None:
        """The chain layer under ``layer`` (``None`` at the bottom)."""
        return self.explorer.below(self.layer_info(layer).name)

    def chain_above(self, layer: str) -> str | None:
        """The chain layer over ``layer`` (``None`` at the top)."""
        return self.explorer.above(self.layer_info(layer).name)

    def in_chain(self, layer: str) -> bool:
        """Whether ``layer`` is one of the tree's layers."""
        return self.layer_info(layer).name in self.chain

    def is_class_layer(self, layer: str) -> bool:
        """Whether units of ``layer`` are the class scores."""
        return layer in (LOGITS, self.model.logits_layer)

    # -- argument checks (on the event loop, before any compute) -------------------------

    def check_unit(self, text: str) -> Unit:
        """Parse a unit and check its layer, channel and position against the model."""
        try:
            unit = Unit.parse(str(text).replace("~", "#"))
        except UnitSpecError as exc:
            raise BadRequestError(str(exc)) from None
        info = self.layer_info(unit.layer)
        unit = Unit(info.name, unit.channel, unit.pos)
        self._check_in_layer(unit, info)
        return unit

    def _check_in_layer(self, unit: Unit, info: LayerInfo) -> None:
        channels = info.shape[0] if info.shape else 1
        if unit.channel >= channels:
            raise NotFoundError(
                f"unknown unit {unit}: layer {info.name!r} has channels 0-{channels - 1}"
            )
        if unit.pos is not None:
            if len(info.shape) != 3:
                raise NotFoundError(f"unknown unit {unit}: layer {info.name!r} has no spatial map")
            h, w = info.shape[1:]
            if not (unit.pos[0] < h and unit.pos[1] < w):
                raise NotFoundError(
                    f"unknown unit {unit}: positions of {info.name!r} are 0-{h - 1}, 0-{w - 1}"
                )

    def check_path(self, text: str) -> tuple[tuple[Unit, ...], str]:
        """Parse and check a tree path; returns it and its canonical text."""
        try:
            path = parse_path(text)
        except UnitSpecError as exc:
            raise BadRequestError(str(exc)) from None
        checked = []
        for unit in path:
            info = self.layer_info(unit.layer)
            unit = Unit(info.name, unit.channel, unit.pos)
            self._check_in_layer(unit, info)
            checked.append(unit)
        return tuple(checked), format_path(tuple(checked))

    def check_target(self, target: int | None) -> int | None:
        """A class index in range, or ``None`` for the top class."""
        n = self.model.num_classes or self.layers[LOGITS].shape[0]
        if target is not None and not 0 <= target < n:
            raise NotFoundError(f"unknown class {target}: classes are 0-{n - 1}")
        return target

    # -- caching and single flight -------------------------------------------------------

    async def _once(self, key: Hashable, compute: Callable[[], Awaitable[Any]]) -> Any:
        """The cached answer for ``key``, or join/start the one computation of it."""
        hit = self.results.get(key)
        if hit is not None:
            return hit
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(compute())
            self._inflight[key] = task
            task.add_done_callback(lambda t, k=key: self._finish(k, t))
        return await asyncio.shield(task)

    def _finish(self, key: Hashable, task: asyncio.Future) -> None:
        self._inflight.pop(key, None)
        if not task.cancelled() and task.exception() is None:
            self.results.put(key, task.result())

    async def _call(
        self, key: Hashable, fn: Callable[[_Replica], Any], *, slow: bool = False
    ) -> Any:
        """``fn(replica)``, once per ``key``: on the request worker, or with ``slow`` on the
        slow lane (its own copy of the model), so that it never holds the request worker."""
        worker, replica = (self.slow, self._slow) if slow else (self.worker, self._main)
        job = functools.partial(fn, replica)
        return await self._once(key, lambda: worker.run("call", object(), job))

    def _run_calls(self, _group, fns: Sequence[Callable[[], Any]]) -> list[Any]:
        out = []
        for fn in fns:
            try:
                out.append(fn())
            except Exception as exc:  # reported to the one request that asked
                out.append(Failed(exc))
        return out

    def _input(self, image_id: str) -> torch.Tensor:
        """The model input of an image (runs on the worker)."""
        x = self._inputs.get(image_id)
        if x is None:
            x = self.explorer.input(self.store.load(image_id))
            self._inputs.put(image_id, x)
        return x

    # -- images --------------------------------------------------------------------------

    async def input_png(self, image_id: str) -> bytes:
        """The image as the model sees it (resized and cropped), as PNG."""
        self.store.get(image_id)

        def make() -> bytes:
            image = self.model.preprocess_config.geometry(self.store.load(image_id))
            return png_bytes(image)

        return await self._once(("input", image_id), lambda: self._off_loop(make))

    async def thumbnail(self, image_id: str, size: int = 320) -> bytes:
        """A JPEG thumbnail of the original image."""
        self.store.get(image_id)

        def make() -> bytes:
            image = self.store.load(image_id)
            image.thumbnail((size, size), Image.Resampling.LANCZOS)
            buf = io.BytesIO()
            image.save(buf, format="JPEG", quality=85)
            return buf.getvalue()

        return await self._once(("thumb", image_id, size), lambda: self._off_loop(make))

    # -- model answers -------------------------------------------------------------------

    async def predictions(self, image_id: str, k: int = 5) -> list[dict]:
        """Top ``k`` classes: index, label, probability."""
        self.store.get(image_id)
        return await self._call(
            ("pred", image_id, k),
            lambda lane: lane.explorer.predictions(self._input(image_id), k=k),
        )

    async def overview(self, image_id: str, per_layer: int = 8) -> list[dict]:
        """Per chain layer, the strongest units (:func:`~cnnscope.engine.strongest_units`):
        ``[{layer, units:[{unit, score}]}]``."""
        self.store.get(image_id)

        def compute(lane: _Replica) -> list[dict]:
            return lane.explorer.overview(self._input(image_id), per_layer=per_layer)

        return await self._call(("overview", image_id, per_layer), compute)

    async def children(
        self,
        image_id: str,
        path: str,
        *,
        k: int = 5,
        rule: str = "guided",
        scoring: str = "path",
        gain: str = "auto",
        sign: str = "pos",
        prefetch: bool = True,
    ) -> list[dict]:
        """The top ``k`` children of the last unit of ``path`` in the next chain layer.

        With ``prefetch`` their reconstructions are queued at once (one batched backward),
        so the images the page asks for next are already on their way.
        """
        self.store.get(image_id)
        units, canonical = self.check_path(path)
        options = {"k": k, "rule": rule, "scoring": scoring, "gain": gain, "sign": sign}

        def compute(lane: _Replica) -> list[dict]:
            nodes = lane.explorer.children(self._input(image_id), units, **options)
            return [_node_dict(n) for n in nodes]

        key = ("children", image_id, canonical, k, rule, scoring, gain, sign)
        nodes = await self._call(key, compute)
        if prefetch and nodes:
            drawn = "seed" if scoring == "seed" else "path"
            self.prefetch(image_id, [n["path"] for n in nodes], rule, gain, drawn)
        return nodes

    async def parents(
        self, image_id: str, unit: str, *, k: int = 5, rule: str = "guided"
    ) -> list[dict]:
        """The units of the chain layer above ``unit`` that it feeds most (drill up).

        One backward per unit of the layer above (seconds): on the slow lane.
        """
        self.store.get(image_id)
        parsed = self.check_unit(unit)

        def compute(lane: _Replica) -> list[dict]:
            return [
                _node_dict(n)
                for n in lane.explorer.parents(self._input(image_id), parsed, k=k, rule=rule)
            ]

        key = ("parents", image_id, str(parsed), k, rule)
        nodes = await self._call(key, compute, slow=True)
        if nodes:  # each parent is shown as a root of its own
            self.prefetch(image_id, [n["path"].split("/")[0] for n in nodes], rule, "auto")
        return nodes

    async def faithfulness(self, image_id: str, path: str, **options) -> dict:
        """How much the node drops when its shown children are zeroed, against random ones.

        ``options`` are those of :meth:`children` (which children are shown).
        """
        units, canonical = self.check_path(path)
        nodes = await self.children(image_id, path, **options, prefetch=False)

        if not nodes:
            raise BadRequestError(f"{units[-1]} is at the bottom of the chain: it has no children")
        kids = [Unit.parse(n["unit"]) for n in nodes]

        def compute(lane: _Replica) -> dict:
            rule, scoring = options.get("rule", "guided"), options.get("scoring", "path")
            x = self._input(image_id)
            result = lane.explorer.faithfulness(x, units, kids, rule=rule, scoring=scoring)
            keys = ("drop", "random_drop", "random_std", "value", "zeroed", "random_zeroed")
            return {**{k: float(result[k]) for k in keys}, "measure": result["measure"]}

        key = ("faith", image_id, canonical, *sorted(options.items()))
        result = await self._call(key, compute, slow=True)  # a batched forward of 9 rows
        return {**result, "children": [n["unit"] for n in nodes]}

    async def reconstruction(
        self,
        image_id: str,
        path: str,
        rule: str = "guided",
        gain: str = "auto",
        crop: str = "none",
        scoring: str = "path",
    ) -> bytes:
        """The path-conditioned reconstruction of ``path`` as PNG (batched with its peers).

        ``crop="support"`` zooms on the part of the image the gradient reaches (for units of
        low layers, whose receptive field is a few pixels of a 224-pixel picture).
        """
        self.store.get(image_id)
        units, canonical = self.check_path(path)
        scoring = "seed" if scoring == "seed" else "path"  # local nodes are drawn on their path
        png = await self._recon(image_id, canonical, rule, gain, scoring)
        if crop == "none":
            return png
        key = ("crop", crop, image_id, canonical, rule, gain, scoring)
        if crop == "support":
            return await self._once(key, lambda: self._off_loop(crop_to_support, png))
        box = await self._call(
            ("focus", image_id, canonical, rule, gain, scoring),
            lambda lane: lane.explorer.focus(self._input(image_id), units, rule, gain, scoring),
        )
        return await self._once(key, lambda: self._off_loop(zoom_png, png, box))

    def _recon(
        self, image_id: str, canonical: str, rule: str, gain: str, scoring: str = "path"
    ) -> Awaitable[bytes]:
        key = ("recon", image_id, canonical, rule, gain, scoring)
        group = (image_id, rule, gain, scoring)

        async def compute() -> bytes:
            # the worker only backpropagates; the picture is drawn and encoded in the thread
            # pool, so the model's thread goes on with the next batch meanwhile
            grad = await self.worker.run("recon", group, canonical, priority=1)
            return await self._off_loop(lambda: png_bytes(render_gradient(grad)))

        return self._once(key, compute)

    def prefetch(
        self, image_id: str, paths: Sequence[str], rule: str, gain: str, scoring: str = "path"
    ) -> None:
        """Start computing reconstructions that will be asked for soon (no waiting)."""
        for path in paths:
            key = ("recon", image_id, path, rule, gain, scoring)
            if self.results.get(key) is None and key not in self._inflight:
                task = asyncio.ensure_future(self._recon(image_id, path, rule, gain, scoring))
                task.add_done_callback(_quiet)

    def _run_recons(self, group, paths: Sequence[str]) -> list[Any]:
        """Worker: input gradients of many paths of one image, rule and gain, batched."""
        image_id, rule, gain, scoring = group
        try:
            x = self._input(image_id)
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

    # -- attribution and activations -----------------------------------------------------

    def default_cam_layer(self) -> str:
        """The model's default CAM layer (:func:`cnnscope.engine.structure.default_cam_layer`)."""
        from ..engine.structure import default_cam_layer

        return default_cam_layer(self.engine, self.input_size)

    async def attribution(
        self,
        image_id: str,
        method: str,
        target: int | None = None,
        layer: str | None = None,
        style: str | None = None,
    ) -> tuple[bytes, int]:
        """An attribution map over the model's view of the image; PNG and the target class.

        ``style`` is a rendering of :data:`cnnscope.attribution.STYLES` (default: the
        method's own). Methods of many passes (``Method.slow``) run on the slow lane.
        """
        self.store.get(image_id)
        method = self.attribution_method(method)
        self.check_target(target)
        if layer:
            self.layer_info(layer)  # a 404 for an unknown layer, before any compute

        def compute(lane: _Replica) -> tuple[bytes, int]:
            x = self._input(image_id)
            cls = target
            if cls is None:
                cls = int(lane.explorer.predictions(x, k=1)[0]["index"])
            if _attribute is not None:
                result = _attribute(lane.model, x[0], method=method, target=cls, layer=layer)
                if style is not None:
                    return png_bytes(result.render(style)), cls
                if result.kind == "pixel" and _ATTRIBUTION_METHODS[method].style == "colored":
                    # min-max "colored" washes out; draw it like the tree's reconstructions
                    return png_bytes(gradient_image(result.tensor)), cls
                return png_bytes(result.render()), cls
            return png_bytes(self._fallback_attribution(lane, x, method, cls, layer)), cls

        key = ("attr", image_id, method, target, layer, style)
        return await self._call(key, compute, slow=_is_slow(method))

    def _fallback_attribution(
        self, lane: _Replica, x: torch.Tensor, method: str, cls: int, layer: str | None
    ) -> np.ndarray:
        """Guided backprop or Grad-CAM from the engine, until the attribution package exists."""
        fwd = lane.engine.forward(x)
        seed = torch.zeros_like(fwd.activation(LOGITS))
        seed[0, cls] = 1.0
        view = self.model.preprocess_config.to_uint8(x)
        if method == "guided_backprop":
            grad = fwd.grad(LOGITS, seed, to="input", rule="guided")[0]
            return (normalize(grad.permute(1, 2, 0).cpu().numpy(), "symmetric", 99.5) * 255).astype(
                np.uint8
            )
        name = layer or self.default_cam_layer()
        acts = fwd.activation(name)[0].float()
        grads = fwd.grad(LOGITS, seed, to=name, rule="gradient")[0].float()
        if acts.dim() != 3:
            raise BadRequestError(
                f"Grad-CAM needs a spatial layer; {name!r} has shape {tuple(acts.shape)}"
            )
        cam = torch.relu((grads.mean(dim=(1, 2), keepdim=True) * acts).sum(0)).cpu().numpy()
        return overlay(view, normalize(cam), cmap="jet", alpha=0.5)

    async def activation(self, image_id: str, unit: str) -> bytes:
        """A unit's activation map over the image, as PNG."""
        self.store.get(image_id)
        parsed = self.check_unit(unit)
        info = self.layers[parsed.layer]
        if len(info.shape) != 3:
            raise BadRequestError(f"{parsed.layer!r} has no spatial map (shape {list(info.shape)})")

        def compute(lane: _Replica) -> bytes:
            x = self._input(image_id)
            amap = (
                lane.engine.forward(x)
                .activation(parsed.layer)[0, parsed.channel]
                .float()
                .cpu()
                .numpy()
            )
            view = self.model.preprocess_config.to_uint8(x)
            peak = float(amap.max())
            heat = np.clip(amap / peak, 0, 1) if peak > 0 else np.zeros_like(amap)
            heat = resize_map(heat, view.shape[:2])
            tinted = (0.35 * view + 0.65 * colorize(heat, "magma")).round().clip(0, 255)
            return png_bytes(tinted.astype(np.uint8))

        return await self._call(("act", image_id, str(parsed)), compute)

    # -- dataset examples (the index) and feature visualizations, built in the background --

    def _default_index(self, index_dir: str | os.PathLike | None, images=None) -> Callable:
        def build(model: LoadedModel, progress: Callable[[int, int], None]):
            from ..index import ensure_default_index

            # workers=0: no DataLoader processes forked from this threaded server (a fork
            # can inherit a held lock and hang); the gallery's pictures are made in memory
            path = ensure_default_index(
                model, index_dir, progress=progress, workers=0, source=images
            )
            self._index = _open_index(str(path))
            self.index_path = str(path)
            log.info("default dataset index ready: %s", path)
            return path

        return build

    def index_state(self) -> dict:
        """``{"state": "ready"|"building"|"failed"|"none", "done", "total", "detail"}``.

        ``done`` and ``total`` count images while the default index is being built.
        """
        task = self._index_task
        if self._index is not None:
            return {
                "state": "ready",
                "done": 0,
                "total": 0,
                "detail": self.index_path,
                **_index_summary(self._index),
            }
        if task is None:
            hint = (
                f"the index {self.index_path} could not be opened"
                if self.index_path
                else "start the server with --index INDEX (see cnnscope index)"
            )
            return {"state": "none", "done": 0, "total": 0, "detail": hint}
        state = {"queued": "building", "running": "building"}.get(task.state, task.state)
        if state == "done":  # finished but not opened: an index the package cannot read
            state = "failed"
        return {"state": state, "done": task.done, "total": task.total, "detail": task.detail}

    async def examples(self, unit: str) -> bytes:
        """A unit's top dataset examples as PNG (404 while there is no index).

        The grid (:meth:`cnnscope.index.Index.grid`'s picture: image patches, then their
        reconstructions) is rendered on the slow lane and kept in memory: the server never
        writes into the index's folder, which may be read-only or shared.
        """
        parsed = self.check_unit(unit)
        index, _ = self._examples_index(parsed)
        channel = Unit(parsed.layer, parsed.channel)

        def compute(lane: _Replica) -> bytes:
            from ..index.patches import render_grid

            patches = index.patches(channel, model=lane.model)
            return png_bytes(render_grid(patches, index.top_k))

        key = ("examples", index.fingerprint, str(channel))
        return await self._call(key, compute, slow=True)

    # -- a unit's dataset examples one by one: list, field patches, open as an image -----
    # Used by routers/units.py (the unit page's example cards). The list comes from the
    # index's arrays; a patch is the example image cut to the unit's receptive field (in
    # the thread pool, not on the model's worker); "open" stores the example image
    # (augmentation applied) like an upload, so that its tree can be explored from the
    # example's position. URLs are built by the router.

    #: Longest side of an example's patch PNG (small fields are scaled up by whole pixels).
    EXAMPLE_PATCH_SIDE = 128

    def _examples_index(self, parsed: Unit):
        """``(index, unit)``: the loaded index and ``parsed`` as a unit of it (404 if none)."""
        index = self._index
        if index is None:
            state = self.index_state()
            if state["state"] == "building":
                done, total = state["done"], state["total"]
                raise NotFoundError(
                    f"index building: the dataset examples of {parsed} are ready when the "
                    f"gallery index is ({done}/{total or '?'} images done)"
                )
            raise NotFoundError(
                f"no index: dataset examples of {parsed} need one ({state['detail']})"
            )
        try:
            return index, index.unit(Unit(parsed.layer, parsed.channel))
        except CnnscopeError as exc:
            raise NotFoundError(f"no examples of {parsed} in the index: {exc}") from None

    async def _index_examples(self, unit: str):
        """``(index, canonical unit, its examples)``; the index must be of this model."""
        parsed = self.check_unit(unit)
        index, indexed = self._examples_index(parsed)

        def same_model() -> bool:
            index.check_model(self.model)  # CnnscopeError (400): built with other weights
            return True

        await self._once(("examples_model", index.fingerprint), lambda: self._off_loop(same_model))
        examples = await self._once(
            ("examples_of", index.fingerprint, str(indexed)),
            lambda: self._off_loop(index.examples, indexed),
        )
        return index, Unit(parsed.layer, parsed.channel), examples

    async def _index_example(self, unit: str, rank: int):
        """``(index, canonical unit, example)`` of ``rank`` (1 = strongest); 404 if none."""
        index, parsed, examples = await self._index_examples(unit)
        n = len(examples)
        if not isinstance(rank, int) or not 1 <= rank <= n:
            if n == 0:
                raise NotFoundError(f"{parsed} has no dataset examples in the index")
            raise NotFoundError(f"{parsed} has {n} dataset examples: rank {rank} is not in 1-{n}")
        return index, parsed, examples[rank - 1]

    @staticmethod
    def _example_name(example) -> str:
        """Display name of an example's image: the gallery name or the file name."""
        base = example.image
        if example.augmentation is not None:
            base = base[: -len(example.augmentation) - 1]  # drop "|recipe"
        return base.rsplit("/", 1)[-1]

    def _example_image(self, index, example, unit: Unit) -> Image.Image:
        """The example's RGB image, augmentation applied (runs in a thread)."""
        try:
            return index.load_image(example)
        except CnnscopeError as exc:
            raise NotFoundError(
                f"example {example.rank} of {unit}: its image {example.image!r} cannot be "
                f"read any more ({exc})"
            ) from None

    def _example_unit(self, parsed: Unit, example) -> Unit:
        """The unit at the example's position (no position on a layer without maps)."""
        spatial = len(self.layers[parsed.layer].shape) == 3
        return Unit(parsed.layer, parsed.channel, example.position if spatial else None)

    async def example_list(self, unit: str) -> list[dict]:
        """A unit's top dataset examples, strongest first (404 while there is no index).

        Each is ``{rank, unit, image, id, augmentation, y, x, activation}``: ``unit`` is
        the unit at the example's position, ``image`` the display name (gallery name or
        file name), ``id`` the index's item id.
        """
        _, parsed, examples = await self._index_examples(unit)
        out = []
        for ex in examples:
            value = float(ex.activation)
            out.append(
                {
                    "rank": ex.rank,
                    "unit": str(self._example_unit(parsed, ex)),
                    "image": self._example_name(ex),
                    "id": ex.image,
                    "augmentation": ex.augmentation,
                    "y": int(ex.position[0]),
                    "x": int(ex.position[1]),
                    "activation": value if np.isfinite(value) else None,
                }
            )
        return out

    @staticmethod
    def field_patch(view: np.ndarray, box: tuple[int, int, int, int], side: int) -> np.ndarray:
        """``view`` cut to ``box`` (inclusive, clipped to the image), scaled to ``side``.

        Fields of ``side / 2`` pixels or fewer are scaled up by a whole factor with nearest
        neighbours (each input pixel stays a sharp square); larger ones with Lanczos.

        Examples
        --------
        >>> view = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
        >>> ExplorerService.field_patch(view, (-1, 1, 1, 2), 8).shape  # rows 0-1, cols 1-2
        (8, 8, 3)
        """
        from ..index.patches import crop

        h, w = view.shape[:2]
        top, left, bottom, right = box
        clipped = (max(top, 0), max(left, 0), min(bottom, h - 1), min(right, w - 1))
        if clipped[0] > clipped[2] or clipped[1] > clipped[3]:
            clipped = (0, 0, h - 1, w - 1)  # a field beside the image: show the image
        patch = np.ascontiguousarray(crop(view, clipped))
        ph, pw = patch.shape[:2]
        scale = side / max(ph, pw)
        if scale >= 2:
            factor = int(scale)
            size, resample = (pw * factor, ph * factor), Image.Resampling.NEAREST
        else:
            size = (max(1, round(pw * scale)), max(1, round(ph * scale)))
            resample = Image.Resampling.LANCZOS
        return np.asarray(Image.fromarray(patch).resize(size, resample))

    async def example_patch(self, unit: str, rank: int) -> bytes:
        """PNG of an example's image cut to the unit's receptive field at its position."""
        index, parsed, ex = await self._index_example(unit, rank)

        def make() -> bytes:
            image = self._example_image(index, ex, parsed)
            view = np.asarray(index.preprocessing.geometry(image), np.uint8)
            return png_bytes(self.field_patch(view, index.field_box(ex), self.EXAMPLE_PATCH_SIDE))

        key = ("example_patch", index.fingerprint, str(parsed), rank)
        return await self._once(key, lambda: self._off_loop(make))

    async def open_example(self, unit: str, rank: int) -> dict:
        """Put an example's image (augmentation applied) in the image store.

        Returns ``{"image": id, "name", "created", "unit", "path"}``: ``path`` is the tree
        path rooted at the unit at the example's position. An un-augmented photo of the
        built-in gallery is its gallery image; any other is stored as PNG under the hash
        of its bytes (``u-...``), named like ``chelsea crop45-3x3-r0c1``.
        """
        from .store import TooLargeError

        index, parsed, ex = await self._index_example(unit, rank)
        root = self._example_unit(parsed, ex)
        _, path = self.check_path(format_path((root,)))
        name = self._example_name(ex)
        if ex.augmentation:
            name = f"{name} ({ex.augmentation.replace('+', ' ')})"

        def store() -> tuple[str, str, bool]:
            if index.source.kind == "gallery" and ex.augmentation in (None, "full"):
                try:
                    record = self.store.get(self._example_name(ex))
                    if record.source == "builtin":
                        return record.id, record.name, False
                except CnnscopeError:
                    pass
            image = self._example_image(index, ex, parsed)
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            try:
                record, created = self.store.add(buf.getvalue(), filename=name)
            except TooLargeError as exc:
                raise TooLargeError(
                    f"example {rank} of {parsed}: its image is too large to open ({exc})"
                ) from None
            return record.id, record.name, created

        image_id, stored_name, created = await self._off_loop(store)
        return {
            "image": image_id,
            "name": stored_name,
            "created": created,
            "unit": str(root),
            "path": path,
        }

    def _vis_file(self, unit: Unit) -> Path | None:
        """The unit's rendered PNG: its job's, else the newest of its name in the cache."""
        task = self._vis_jobs.get(str(unit))
        if task is not None and task.state == "done" and Path(task.result).exists():
            return Path(task.result)
        found = sorted(
            self._vis_dir.glob(f"{visualization_stem(unit)}-{'?' * 16}.png"),
            key=lambda p: p.stat().st_mtime,
        )
        return found[-1] if found else None

    def visualization_state(self, unit: str) -> dict:
        """``{"unit", "state": "done"|"running"|"queued"|"failed"|"none", "progress", "detail"}``.

        Asking counts as waiting for it (see ``visualization_watch_s``). A rendering that
        was dropped is ``none`` again, with the reason as its detail: POST to queue it anew.
        """
        parsed = self.check_unit(unit)
        key = str(parsed)
        task = self._vis_jobs.get(key)
        if task is not None:
            task.watch()
        if task is not None and task.state in ("queued", "running"):
            return {"unit": key, "state": task.state, "progress": task.progress, "detail": None}
        if self._vis_file(parsed) is not None:
            return {"unit": key, "state": "done", "progress": 1.0, "detail": None}
        if task is not None and task.state in ("failed", "dropped"):
            state = "failed" if task.state == "failed" else "none"
            return {"unit": key, "state": state, "progress": 0.0, "detail": task.detail}
        return {"unit": key, "state": "none", "progress": 0.0, "detail": None}

    async def visualization(self, unit: str) -> bytes:
        """A unit's feature visualization PNG, if rendered (else 404 ``not computed yet``)."""
        state = self.visualization_state(unit)
        if state["state"] == "done":
            path = self._vis_file(self.check_unit(unit))
            return await self._off_loop(path.read_bytes)
        if not self.synthesis_available:
            raise NotFoundError(
                f"not computed yet: no feature visualization of {state['unit']} "
                "(feature synthesis is not available in this version)"
            )
        if state["state"] in ("queued", "running"):
            raise NotFoundError(
                f"not computed yet: rendering {state['unit']}, {state['progress']:.0%} done"
            )
        if state["state"] == "failed":
            raise NotFoundError(f"not computed yet: rendering failed: {state['detail']}")
        raise NotFoundError(
            f"not computed yet: POST to this URL to render {state['unit']} "
            f"({self.synthesis_steps} optimisation steps in the background)"
        )

    def start_visualization(self, unit: str) -> dict:
        """Queue the rendering of a unit's feature visualization (background lane, once).

        At most ``visualization_queue`` renderings wait: a new one drops the oldest waiting
        one, and one that nobody polls for ``visualization_watch_s`` seconds is dropped.
        """
        if not self.synthesis_available:
            raise NotFoundError("feature synthesis is not available in this version")
        parsed = self.check_unit(unit)
        with self._vis_lock:  # sync routes run in a thread pool: one check-and-queue at once
            state = self.visualization_state(unit)
            if state["state"] in ("done", "running", "queued"):
                return state
            self._make_room_for_a_visualization()
            self._vis_jobs.pop(str(parsed), None)  # the newest job goes last
            self._vis_jobs[str(parsed)] = self.background.submit(
                f"visualization of {parsed}",
                None,
                watch_s=self.visualization_watch_s,
                batch_key=("visualization", parsed.layer),
                run_batch=self._render_visualizations,
                data=parsed,
            )
        return self.visualization_state(unit)

    def _make_room_for_a_visualization(self) -> None:
        """Drop waiting renderings (unwatched ones, then the oldest) so one more fits."""
        waiting = [t for t in self._vis_jobs.values() if t.state == "queued"]
        waiting.sort(key=lambda t: not t.unwatched)  # stable: unwatched first, then oldest
        reason = (
            f"dropped from the queue: newer feature visualizations were asked for "
            f"(at most {self.visualization_queue} wait)"
        )
        for task in waiting[: max(0, len(waiting) - self.visualization_queue + 1)]:
            self.background.drop(task, reason)
        finished = [key for key, t in self._vis_jobs.items() if t.finished.is_set()]
        for key in finished[: max(0, len(finished) - 256)]:  # keep the table bounded
            del self._vis_jobs[key]

    def _render_visualizations(
        self, model: LoadedModel, tasks: list[Task], progress: Callable[[int, int], None]
    ) -> list[Path]:
        """Render the units of ``tasks`` (one layer) in one batch, on the lane's model copy."""
        with channels_last(model.module):
            return _unit_visualizations(
                model,
                [task.data for task in tasks],
                self._vis_dir,
                steps=self.synthesis_steps,
                size=self.synthesis_size,
                progress=progress,
            )

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
            "slow_cache_bytes": self._slow.engine.cached_bytes(),
            "slow_cache_limit": self._slow.engine.cache_bytes,
            "background_queued": len(self.background.queued),
            "background_running": len(self.background.running),
        }

    # -- layer views: activation mosaics, channel orderings, 3D volumes ------------------
    # Used by routers/layers.py. Activations come from the worker (the engine's shared
    # forward); orderings, mosaics and volume figures are numpy/plotly work done in the
    # thread pool, so the model's worker stays free for the tree.

    #: Orderings of the layer views (``none`` keeps the channel order).
    LAYER_ORDERS = ("none", "kmeans", "pca-slice", "pca")

    def check_layer_maps(self, layer: str) -> LayerInfo:
        """The layer ``layer`` (``~K`` or ``#K`` for a call) if it has ``C x H x W`` maps.

        An unknown layer is a 404; a layer without spatial maps (``logits``, ``flatten``)
        is a 400 that says which layers have maps.
        """
        info = self.layer_info(str(layer).replace("~", "#"))
        if info.name == LOGITS or len(info.shape) != 3:
            shape = "x".join(str(v) for v in info.shape)
            raise BadRequestError(
                f"layer {info.name!r} has shape {shape}, not channel maps C x H x W: "
                "pick a convolutional layer (see /api/images/{id}/layers)"
            )
        return info

    def _layer_order_options(
        self, info: LayerInfo, order: str, k: int | None, row: int | None
    ) -> dict:
        """The options that ``order`` uses, checked against the layer (400 if out of range)."""
        if order not in self.LAYER_ORDERS:
            raise BadRequestError(
                f"unknown ordering {str(order)[:40]!r}: use {', '.join(self.LAYER_ORDERS)}"
            )
        channels, height = int(info.shape[0]), int(info.shape[1])
        opts: dict = {}
        if order in ("kmeans", "pca-slice") and row is not None:
            if not 0 <= row < height:
                raise BadRequestError(
                    f"row {row} is outside the maps of {info.name!r} (0-{height - 1})"
                )
            opts["row"] = int(row)
        if order == "kmeans" and k is not None:
            if not 1 <= k <= channels:
                raise BadRequestError(f"k={k} clusters: {info.name!r} has {channels} channels")
            opts["k"] = int(k)
        return opts

    async def layer_maps(self, image_id: str, layer: str) -> torch.Tensor:
        """The float ``C x H x W`` activation of ``layer`` for an image (from the worker)."""
        self.store.get(image_id)
        info = self.check_layer_maps(layer)

        def compute(lane: _Replica) -> torch.Tensor:
            acts = lane.engine.forward(self._input(image_id)).activation(info.name)
            return acts[0].detach().float().cpu().clone()

        return await self._call(("layer_maps", image_id, info.name), compute)

    async def layer_ordering(
        self,
        image_id: str,
        layer: str,
        order: str = "none",
        *,
        k: int | None = None,
        row: int | None = None,
    ):
        """The :class:`~cnnscope.views.Ordering` of a layer's channels (``None`` for ``none``)."""
        self.store.get(image_id)
        info = self.check_layer_maps(layer)
        opts = self._layer_order_options(info, order, k, row)
        if order == "none":
            return None
        acts = await self.layer_maps(image_id, info.name)

        def compute():
            import dataclasses

            from ..views import order_channels

            ordering = order_channels(acts, order, **opts)
            # keep the answer small: no principal image in the cached ordering
            info_small = {
                key: v for key, v in ordering.info.items() if not isinstance(v, np.ndarray)
            }
            return dataclasses.replace(ordering, info=info_small)

        key = ("layer_order", image_id, info.name, order, tuple(sorted(opts.items())))
        return await self._once(key, lambda: self._off_loop(compute))

    async def layer_mosaic(
        self,
        image_id: str,
        layer: str,
        order: str = "none",
        normalize: str = "joint",
        *,
        k: int | None = None,
        row: int | None = None,
    ) -> tuple[bytes, dict]:
        """A layer's activation mosaic: its PNG and its geometry.

        The geometry is :meth:`cnnscope.views.Mosaic.to_dict` with, per tile, its display
        position, cluster, and the channel's max and mean activation.
        """
        from ..views import NORMALIZE_MODES

        self.store.get(image_id)
        info = self.check_layer_maps(layer)
        opts = self._layer_order_options(info, order, k, row)
        if normalize not in NORMALIZE_MODES:
            raise BadRequestError(
                f"unknown normalisation {str(normalize)[:40]!r}: use {', '.join(NORMALIZE_MODES)}"
            )
        acts = await self.layer_maps(image_id, info.name)
        ordering = await self.layer_ordering(image_id, info.name, order, **opts)

        def compute() -> tuple[bytes, dict]:
            from ..views import layer_stats, render_mosaic

            mosaic = render_mosaic(acts, ordering, normalize, layer=info.name)
            meta = mosaic.to_dict()
            stats = layer_stats(acts)
            groups = (
                ordering.group_of_position().tolist()
                if ordering is not None
                else [0] * len(mosaic.tiles)
            )
            for position, tile in enumerate(meta["tiles"]):
                tile["position"] = position
                tile["cluster"] = int(groups[position])
                tile["max"] = stats[tile["channel"]]["max"]
                tile["mean"] = stats[tile["channel"]]["mean"]
            return png_bytes(mosaic.image), meta

        key = ("layer_mosaic", image_id, info.name, order, normalize, tuple(sorted(opts.items())))
        return await self._once(key, lambda: self._off_loop(compute))

    async def layer_volume(
        self,
        image_id: str,
        layer: str,
        order: str = "none",
        *,
        k: int | None = None,
        row: int | None = None,
    ) -> bytes:
        """A layer's stacked maps as a plotly figure (:func:`cnnscope.views.volume_figure`).

        Returns the figure's JSON, gzip-compressed (these figures hold every slice: a few MB).
        """
        self.store.get(image_id)
        info = self.check_layer_maps(layer)
        opts = self._layer_order_options(info, order, k, row)
        acts = await self.layer_maps(image_id, info.name)
        ordering = await self.layer_ordering(image_id, info.name, order, **opts)

        def compute() -> bytes:
            import gzip

            from ..views import volume_figure

            c, h, w = (int(v) for v in info.shape)
            how = f", {order} order" if ordering is not None else ""
            fig = volume_figure(acts, ordering, title=f"{info.name}: {c} maps of {h}x{w}{how}")
            return gzip.compress(fig.to_json().encode("utf-8"), compresslevel=5, mtime=0)

        key = ("layer_volume", image_id, info.name, order, tuple(sorted(opts.items())))
        return await self._once(key, lambda: self._off_loop(compute))


def zoom_png(png: bytes, box: tuple[int, int, int, int] | None) -> bytes:
    """A reconstruction zoomed on ``box`` (:meth:`Explorer.focus`), or as it is."""
    if box is None:
        return png
    return png_bytes(zoom_picture(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")), box))


def crop_to_support(png: bytes, pad: float = 0.35, min_size: int = 16) -> bytes:
    """Zoom a reconstruction on where it differs from its grey background.

    The box is the support of ``|picture - background| > 6`` (any channel), made square,
    padded by ``pad`` of its size, at least ``min_size`` pixels, kept inside the image and
    scaled back to the full size. A picture whose support is most of the image is
    returned as it is.

    Examples
    --------
    >>> a = np.full((64, 64, 3), 128, np.uint8); a[30:33, 40:42] = 255
    >>> out = np.asarray(Image.open(io.BytesIO(crop_to_support(png_bytes(a)))))
    >>> out.shape, int((out > 200).any(axis=2).sum()) > 12  # the 6-pixel spot got bigger
    ((64, 64, 3), True)
    """
    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    h, w = img.shape[:2]
    background = np.median(img.reshape(-1, 3), axis=0)
    mask = (np.abs(img.astype(np.int16) - background).max(axis=2)) > 6
    if not mask.any():
        return png
    ys, xs = np.nonzero(mask)
    top, bottom, left, right = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    side = max(bottom - top, right - left)
    side = int(min(max(side * (1 + 2 * pad), min_size), h, w))
    if side >= 0.8 * min(h, w):
        return png
    cy, cx = (top + bottom) / 2, (left + right) / 2
    y0 = int(np.clip(round(cy - side / 2), 0, h - side))
    x0 = int(np.clip(round(cx - side / 2), 0, w - side))
    box = Image.fromarray(img[y0 : y0 + side, x0 : x0 + side])
    return png_bytes(box.resize((w, h), Image.Resampling.LANCZOS))


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[:60] or "model"


def _matplotlib_writes_inside(folder: Path) -> None:
    """Give matplotlib (colormaps of the maps it draws) its config folder inside ``folder``.

    Without ``MPLCONFIGDIR`` matplotlib creates ``~/.config/matplotlib`` (and a font cache)
    on its first import; the server writes only in its data directory. A folder the user
    chose is kept, and a matplotlib already imported has read the variable already.
    """
    if "matplotlib" not in sys.modules and not os.environ.get("MPLCONFIGDIR"):
        os.environ["MPLCONFIGDIR"] = str(folder / "matplotlib")


def _index_summary(index) -> dict:
    """What an index covers, for the page to say plainly: images, photos, source, layers."""
    skipped = {s.get("image") for s in index.skipped}
    ids = [i for i in index.images if i not in skipped]
    root = index.source.root
    return {
        "images": len(ids),
        "photos": len({i.split("|")[0] for i in ids}),
        "source": "gallery" if root is None else str(root),
        "layers": list(index.layers),
    }


def _open_index(path: str):
    """Open a dataset index with the index package (``None`` if it is not installed)."""
    try:
        from ..index import open_index
    except ImportError:
        log.warning("--index %s ignored: the dataset index package is not available", path)
        return None
    index = open_index(path)  # a bad index is the user's error: one line, exit status 2
    log.info("dataset examples from %s", index)
    return index


def _node_dict(node) -> dict:
    unit = node.unit if isinstance(node.unit, Unit) else Unit.parse(str(node.unit))
    path = node.path if isinstance(node.path, str) else format_path(tuple(node.path))
    return {
        "unit": str(unit),
        "layer": unit.layer,
        "channel": unit.channel,
        "weight": float(node.weight),
        "sign": str(getattr(node, "sign", "pos")),
        "share": getattr(node, "share", None),
        "path": path,
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


def error_is_user(exc: BaseException) -> bool:
    """Whether ``exc`` is the user's fault (a 4xx) rather than a server bug."""
    return isinstance(exc, CnnscopeError)
