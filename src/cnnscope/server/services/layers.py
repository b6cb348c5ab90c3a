"""Layer views: activation mosaics, channel orderings, 3D volumes.

Used by :mod:`cnnscope.server.routers.layers`. Activations come from the request worker
(the engine's shared forward); orderings, mosaics and volume figures are numpy/plotly
work done in the side pool, so the model's worker stays free for the tree. Every
argument is a checked reference (:mod:`cnnscope.server.refs`).
"""

from __future__ import annotations

import dataclasses
import gzip

import numpy as np
import torch

from ...render import png_bytes
from ...views import Ordering, layer_stats, order_channels, render_mosaic, volume_figure
from ...views.mosaic import DEFAULT_NORMALIZE
from ..compute import Compute, Replica
from ..refs import ImageRef, LayerRef, OrderingRef

__all__ = ["LayerService"]


class LayerService:
    """A layer's maps for one image, and the pictures made of them.

    Examples
    --------
    >>> import asyncio, tempfile
    >>> from cnnscope.models import load_model
    >>> from cnnscope.server.service import ExplorerService
    >>> from cnnscope.server.store import ImageStore
    >>> svc = ExplorerService(load_model(), ImageStore(tempfile.mkdtemp()))  # doctest: +SKIP
    >>> layer = svc.refs.maps_layer("blocks.5.expand_act")  # doctest: +SKIP
    >>> asyncio.run(svc.layer_views.maps(svc.refs.image("chelsea"), layer)).shape  # doctest: +SKIP
    torch.Size([240, 28, 28])
    """

    def __init__(self, compute: Compute):
        self.compute = compute

    async def maps(self, image: ImageRef, layer: LayerRef) -> torch.Tensor:
        """The float ``C x H x W`` activation of ``layer`` for an image (from the worker)."""
        core = self.compute

        def compute(lane: Replica) -> torch.Tensor:
            acts = lane.engine.forward(core.input(image.id)).activation(layer.name)
            return acts[0].detach().float().cpu().clone()

        return await core.call(("layer_maps", image.id, layer.name), compute)

    async def ordering(
        self, image: ImageRef, layer: LayerRef, ordering: OrderingRef
    ) -> Ordering | None:
        """The :class:`~cnnscope.views.Ordering` of a layer's channels (``None`` for ``none``)."""
        if ordering.order == "none":
            return None
        acts = await self.maps(image, layer)

        def compute() -> Ordering:
            found = order_channels(acts, ordering.order, **ordering.options)
            # keep the answer small: no principal image in the cached ordering
            small = {key: v for key, v in found.info.items() if not isinstance(v, np.ndarray)}
            return dataclasses.replace(found, info=small)

        key = ("layer_order", image.id, layer.name, *ordering.key)
        return await self.compute.in_side_pool(key, compute)

    async def mosaic(
        self,
        image: ImageRef,
        layer: LayerRef,
        ordering: OrderingRef,
        normalize: str = DEFAULT_NORMALIZE,
    ) -> tuple[bytes, dict]:
        """A layer's activation mosaic: its PNG and its geometry.

        The geometry is :meth:`cnnscope.views.Mosaic.to_dict` with, per tile, its display
        position, cluster, and the channel's max and mean activation.
        """
        acts = await self.maps(image, layer)
        order = await self.ordering(image, layer, ordering)

        def compute() -> tuple[bytes, dict]:
            mosaic = render_mosaic(acts, order, normalize, layer=layer.name)
            meta = mosaic.to_dict()
            stats = layer_stats(acts)
            groups = (
                order.group_of_position().tolist() if order is not None else [0] * len(mosaic.tiles)
            )
            for position, tile in enumerate(meta["tiles"]):
                tile["position"] = position
                tile["cluster"] = int(groups[position])
                tile["max"] = stats[tile["channel"]]["max"]
                tile["mean"] = stats[tile["channel"]]["mean"]
            return png_bytes(mosaic.image), meta

        key = ("layer_mosaic", image.id, layer.name, normalize, *ordering.key)
        return await self.compute.in_side_pool(key, compute)

    async def volume(self, image: ImageRef, layer: LayerRef, ordering: OrderingRef) -> bytes:
        """A layer's stacked maps as a plotly figure (:func:`cnnscope.views.volume_figure`).

        Returns the figure's JSON, gzip-compressed (these figures hold every slice: a few MB).
        """
        acts = await self.maps(image, layer)
        order = await self.ordering(image, layer, ordering)

        def compute() -> bytes:
            c, h, w = (int(v) for v in layer.info.shape)
            how = f", {ordering.order} order" if order is not None else ""
            fig = volume_figure(acts, order, title=f"{layer.name}: {c} maps of {h}x{w}{how}")
            return gzip.compress(fig.to_json().encode("utf-8"), compresslevel=5, mtime=0)

        key = ("layer_volume", image.id, layer.name, *ordering.key)
        return await self.compute.in_side_pool(key, compute)
