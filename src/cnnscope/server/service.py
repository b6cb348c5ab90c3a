"""The explorer's services for one model, wired together: no HTTP and no maths.

:class:`ExplorerService` builds the compute core (:class:`~.compute.Compute`: the
model's threads, caches and single flight), the checks of what requests name
(:class:`~.refs.References`) and one service per router:

=================  =====================================  ===========================
attribute          service                                router
=================  =====================================  ===========================
``images``         :class:`~.services.images.ImageService`  ``/api/images/{id}/...``
``tree``           :class:`~.services.tree.TreeService`     children, parents, ...
``units``          :class:`~.services.units.UnitService`    ``/api/units/{unit}/...``
``layer_views``    :class:`~.services.layers.LayerService`  ``/api/images/{id}/layers``
``index``          :class:`~.services.index.IndexService`   ``/api/index``
``graphs``         :class:`~.services.graphs.GraphService`  ``/api/graphs``
=================  =====================================  ===========================

Routes check their arguments once, in their dependencies (:mod:`.routers.deps`), and
hand the references to a service. Everything is keyed by image id (a content hash or a
built-in name) and arguments, never by user or session, so clients cannot see or
disturb each other's state.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..engine import LOGITS
from ..models import LoadedModel
from ..render.files import safe_file_name
from ..render.pictures import matplotlib_writes_inside
from .compute import Compute
from .refs import LAYER_ORDERS, References
from .services.graphs import GraphService
from .services.images import ImageService
from .services.index import IndexService
from .services.layers import LayerService
from .services.tree import TreeService
from .services.units import QUICK_VISUALIZATION, UnitService
from .store import ImageStore

__all__ = ["ExplorerService", "LAYER_ORDERS"]


class ExplorerService:
    """Everything the explorer computes, for one model.

    Parameters
    ----------
    model, store, chain, cache_mb, results_mb, window_ms, max_batch, threads
        The compute core's (:class:`~cnnscope.server.compute.Compute`): the model, its
        image store, the tree's chain, memory bounds, batching and torch threads.
    index, default_index, index_dir, index_images
        The dataset index (:class:`~cnnscope.server.services.index.IndexService`): a
        given one, or the default one built in the background.
    data_dir
        Where feature visualizations are kept (default: the store's data directory).
    synthesis_steps, synthesis_size
        Optimisation steps and picture size of feature visualizations.
    visualization_queue
        Most feature visualizations waiting in the background lane; asking for one more
        drops the oldest waiting one. The one asked for or polled last runs first (it
        overtakes a running one that nobody polls now), with up to 3 waiting ones of its
        layer in one batch (:class:`~cnnscope.server.background.BackgroundLane`).
    visualization_watch_s
        A feature visualization nobody polled for this many seconds is dropped (before it
        starts, or at its next step); the page polls every second while it shows the slot.
    graphs_dir
        The folder of class graphs (:class:`~.services.graphs.GraphService`; default:
        ``data_dir/graphs``).

    Examples
    --------
    >>> import asyncio, tempfile
    >>> from cnnscope.models import load_model
    >>> service = ExplorerService(load_model(), ImageStore(tempfile.mkdtemp()))
    >>> image = service.refs.image("chelsea")
    >>> asyncio.run(service.images.predictions(image))[0]["label"]  # doctest: +SKIP
    'Egyptian cat'
    >>> service.close()
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
        graphs_dir: str | os.PathLike | None = None,
    ):
        data = Path(data_dir or store.data_dir)
        matplotlib_writes_inside(data)
        self.compute = core = Compute(
            model,
            store,
            chain=chain,
            cache_mb=cache_mb,
            results_mb=results_mb,
            window_ms=window_ms,
            max_batch=max_batch,
            threads=threads,
        )
        self.model, self.store = model, store
        self.engine, self.explorer = core.engine, core.explorer
        self.input_size, self.chain, self.layers = core.input_size, core.chain, core.layers
        self.refs = References(model, store, core.explorer, core.layers)
        self.index = IndexService(
            core.background,
            index,
            default_index=default_index,
            index_dir=index_dir,
            index_images=index_images,
        )
        self.images = ImageService(core)
        self.tree = TreeService(core)
        self.layer_views = LayerService(core)
        self.units = UnitService(
            core,
            self.index,
            data / "visualizations" / safe_file_name(model.name, "model", max_len=60),
            synthesis_steps=synthesis_steps,
            synthesis_size=synthesis_size,
            visualization_queue=visualization_queue,
            visualization_watch_s=visualization_watch_s,
        )
        self.graphs = GraphService(
            model, store, core.background, graphs_dir or data / "graphs", self.index
        )

    # the compute core's threads and counters, as the tests and benchmarks read them
    @property
    def worker(self):
        return self.compute.worker

    @property
    def slow(self):
        return self.compute.slow

    @property
    def background(self):
        return self.compute.background

    @property
    def recon_batches(self) -> int:
        return self.compute.recon_batches

    @property
    def recon_paths(self) -> int:
        return self.compute.recon_paths

    def close(self) -> None:
        """Stop the worker thread, the slow and background lanes and the side pool."""
        self.compute.close()

    def stats(self) -> dict:
        """Cache and worker counters."""
        return self.compute.stats()

    # -- what the model offers (read by the routers) -------------------------------------

    def is_class_layer(self, layer: str) -> bool:
        """Whether units of ``layer`` (a canonical name) are the class scores."""
        return layer in (LOGITS, self.model.logits_layer)

    def chain_below(self, layer: str) -> str | None:
        """The chain layer under ``layer`` (a canonical name; ``None`` at the bottom)."""
        return self.explorer.below(layer)

    def chain_above(self, layer: str) -> str | None:
        """The chain layer over ``layer`` (a canonical name; ``None`` at the top)."""
        return self.explorer.above(layer)
