"""``/api/images/{id}/layers``: a layer's activation mosaic, channel orderings and 3D volume.

The layer views of :mod:`cnnscope.views` for the explorer: every channel of a layer as
one tile of a mosaic (with each tile's box, so the page can make it clickable), the
channel orderings (k-means or PCA on a row slice, PCA over whole maps) with their
permutation, and the stacked maps as a plotly figure. plotly.js itself is served from
the installed ``plotly`` Python package at ``/vendor/plotly.min.js`` (no CDN).

A layer's K-th call (``name#K``) is written ``name~K`` in URLs.
"""

from __future__ import annotations

import gzip
import hashlib
import threading
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal, TypeAlias
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, Field

from ...engine import INPUT, LOGITS
from ...views import NORMALIZE_MODES
from ...vocabulary import url_form
from ..refs import LAYER_ORDERS, ImageRef, LayerRef, OrderingRef, References
from ..service import ExplorerService
from ..services.models import DEFAULTS
from .deps import (
    ERRORS,
    Responses,
    checked_model,
    image_ref,
    layer_url,
    maps_layer_ref,
    references,
    service,
)
from .images import CACHE, PNG

router = APIRouter(tags=["layers"], responses=ERRORS)

# The choices are the library's lists (views.ORDER_METHODS, views.NORMALIZE_MODES).
if TYPE_CHECKING:
    Order: TypeAlias = str
    Normalize: TypeAlias = str
else:
    Order = Literal[LAYER_ORDERS]
    Normalize = Literal[NORMALIZE_MODES]

OrderQuery = Query(DEFAULTS["order"], description="channel ordering: see /api/vocabulary orders")
KQuery = Query(
    None, ge=1, le=4096, description=f"k-means clusters (default {DEFAULTS['clusters']})"
)
RowQuery = Query(None, ge=0, le=100_000, description="row of the slice (default: the middle)")


@dataclass
class OrderingQuery:
    """The channel ordering of a mosaic or volume (shared query parameters)."""

    order: Order = OrderQuery
    k: int | None = KQuery
    row: int | None = RowQuery


NormalizeQuery = Query(
    DEFAULTS["normalize"], description="colour scale: see /api/vocabulary normalizations"
)


def ordering_ref(
    layer: LayerRef = Depends(maps_layer_ref),
    q: OrderingQuery = Depends(),
    refs: References = Depends(references),
) -> OrderingRef:
    """The ordering of ``?order=&k=&row=``, checked against the layer (400 out of range)."""
    return refs.ordering(layer, q.order, q.k, q.row)


FIGURE: Responses = {200: {"content": {"application/json": {}}, "description": "a plotly figure"}}

#: plotly.js never changes for one installed plotly: the browser may keep it for a year.
VENDOR_CACHE = {"Cache-Control": "public, max-age=31536000, immutable"}


# ---------------------------------------------------------------------------- schemas


class LayerViewInfo(BaseModel):
    name: str = Field(description="canonical name (a layer's call K is name#K)")
    url_name: str = Field(description="the name as written in URLs (# becomes ~)")
    kind: str = Field(description="module type, e.g. ReLU6")
    shape: list[int] = Field(description="activation shape without the batch: C[, H, W]")
    channels: int
    maps: bool = Field(description="whether the layer has C x H x W maps (mosaic and volume)")
    in_chain: bool = Field(description="whether the layer is one of the tree's chain layers")
    tree: bool = Field(description="whether a unit of this layer can root a tree")


class LayersOut(BaseModel):
    image: str
    default: str = Field(description="the layer the page shows first")
    orders: list[str]
    normalize: list[str]
    plotly_js: str = Field(description="URL of plotly.js, served from the plotly package")
    layers: list[LayerViewInfo] = Field(
        description="chain layers first (top first), then the others in execution order"
    )


class MosaicTile(BaseModel):
    position: int = Field(description="display position (index into the permutation)")
    channel: int
    x: int = Field(description="left of the map in the mosaic PNG, in pixels")
    y: int = Field(description="top of the map (below the label strip), in pixels")
    w: int
    h: int
    max: float = Field(description="the channel's largest activation")
    mean: float = Field(description="the channel's mean activation")
    vmin: float = Field(description="activation drawn at the colormap's low end")
    vmax: float = Field(description="activation drawn at the colormap's high end")
    cluster: int = Field(description="cluster number in display order (0 without clusters)")


class OrderingOut(BaseModel):
    method: str
    permutation: list[int]
    separators: list[int] = Field(description="positions where a new cluster starts")
    row: int | None = Field(None, description="row of the slice (slice methods)")
    k: int | None = Field(None, description="clusters found (k-means)")
    sizes: list[int] | None = Field(None, description="cluster sizes (k-means)")
    explained_variance: float | None = Field(None, description="share of the first PC (PCA)")


class MosaicOut(BaseModel):
    image: str
    layer: str
    url_name: str
    kind: str
    shape: list[int]
    order: str
    normalize: str
    cmap: str
    width: int = Field(description="width of the mosaic PNG in pixels")
    height: int
    png: str = Field(description="URL of the mosaic PNG")
    volume: str = Field(description="URL of the 3D volume figure with the same ordering")
    tree: bool = Field(description="whether a unit of this layer can root a tree")
    permutation: list[int] = Field(description="permutation[k] is the channel shown at tile k")
    separators: list[int] = Field(description="tile positions where a new cluster starts")
    ordering: OrderingOut | None
    tiles: list[MosaicTile]


# ---------------------------------------------------------------------------- helpers


def _layer_view(svc: ExplorerService, info) -> LayerViewInfo:
    maps = len(info.shape) == 3 and info.name != LOGITS
    return LayerViewInfo(
        name=info.name,
        url_name=url_form(info.name),
        kind=info.kind,
        shape=[int(v) for v in info.shape],
        channels=int(info.shape[0]) if info.shape else 1,
        maps=maps,
        in_chain=info.name in svc.chain,
        tree=info.name != INPUT,
    )


def default_layer(svc: ExplorerService) -> str:
    """The middle chain layer with maps (a few hundred channels of moderate size)."""
    spatial = [name for name in svc.chain if name != LOGITS and len(svc.layers[name].shape) == 3]
    if spatial:
        return spatial[len(spatial) // 2]
    return next(name for name, info in svc.layers.items() if len(info.shape) == 3 and name != INPUT)


class _PlotlyJs:
    """plotly.js from the installed package, read once, with its gzip form and ETag."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value: tuple[bytes, bytes, str] | None = None

    def get(self) -> tuple[bytes, bytes, str]:
        with self._lock:
            if self._value is None:
                from ...views import plotly_js

                raw = plotly_js().encode("utf-8")
                etag = '"' + hashlib.sha256(raw).hexdigest()[:20] + '"'
                self._value = (raw, gzip.compress(raw, compresslevel=6, mtime=0), etag)
            return self._value


PLOTLY = _PlotlyJs()


def plotly_version() -> str:
    """The installed plotly's version (for a cache-busting query on plotly.js)."""
    import plotly

    return str(plotly.__version__)


def _gzip_response(request: Request, body: bytes, media_type: str, headers: dict) -> Response:
    """``body`` (gzip bytes) as it is for clients that accept gzip, else decompressed."""
    accepts = "gzip" in request.headers.get("accept-encoding", "").lower()
    headers = {**headers, "Vary": "Accept-Encoding"}
    if accepts:
        return Response(
            body, media_type=media_type, headers={**headers, "Content-Encoding": "gzip"}
        )
    return Response(gzip.decompress(body), media_type=media_type, headers=headers)


# ---------------------------------------------------------------------------- routes


@router.get("/api/images/{image_id}/layers", response_model=LayersOut, summary="Layers with maps")
def layers(
    _model: str = Depends(checked_model),
    image: ImageRef = Depends(image_ref),
    svc: ExplorerService = Depends(service),
) -> LayersOut:
    """Every layer of the model (kind, shape), for the layer views of an image.

    Chain layers come first (top first); ``maps`` tells which layers have ``C x H x W``
    maps, the only ones with a mosaic and a volume.
    """
    chain = [svc.layers[name] for name in svc.chain if name in svc.layers]
    rest = [info for name, info in svc.layers.items() if name not in svc.chain]
    return LayersOut(
        image=image.id,
        default=default_layer(svc),
        orders=list(LAYER_ORDERS),
        normalize=list(NORMALIZE_MODES),
        plotly_js=f"/vendor/plotly.min.js?v={quote(plotly_version())}",
        layers=[_layer_view(svc, info) for info in chain + rest],
    )


@router.get(
    "/api/images/{image_id}/layers/{layer}/mosaic",
    response_model=MosaicOut,
    summary="A layer's activation mosaic",
)
async def mosaic(
    model: str = Depends(checked_model),
    image: ImageRef = Depends(image_ref),
    layer: LayerRef = Depends(maps_layer_ref),
    ordering: OrderingRef = Depends(ordering_ref),
    q: OrderingQuery = Depends(),
    normalize: Normalize = NormalizeQuery,
    svc: ExplorerService = Depends(service),
) -> MosaicOut:
    """Every channel of ``layer`` as one tile: each tile's box in the PNG, its channel,
    max and mean, and the ordering's permutation and cluster separators.

    ``order``: ``kmeans`` (k-means on row ``row``, ``k`` clusters), ``pca-slice`` (PCA on
    row ``row``), ``pca`` (PCA over whole maps) or ``none``.
    """
    _, meta = await svc.layer_views.mosaic(image, layer, ordering, normalize)
    info = layer.info
    params = {**asdict(q), "normalize": normalize, "model": model}
    order, k, row = q.order, q.k, q.row
    found = meta["ordering"]
    return MosaicOut(
        image=image.id,
        layer=info.name,
        url_name=layer.url_name,
        kind=info.kind,
        shape=[int(v) for v in info.shape],
        order=order,
        normalize=normalize,
        cmap=meta["cmap"],
        width=meta["width"],
        height=meta["height"],
        png=layer_url(image.id, info.name, "mosaic.png", **params),
        volume=layer_url(image.id, info.name, "volume", order=order, k=k, row=row, model=model),
        tree=info.name != INPUT,
        permutation=meta["permutation"],
        separators=found["separators"] if found else [],
        ordering=OrderingOut(**found) if found else None,
        tiles=[MosaicTile(**tile) for tile in meta["tiles"]],
    )


@router.get(
    "/api/images/{image_id}/layers/{layer}/mosaic.png",
    responses=PNG,
    summary="A layer's activation mosaic (PNG)",
)
async def mosaic_png(
    _model: str = Depends(checked_model),
    image: ImageRef = Depends(image_ref),
    layer: LayerRef = Depends(maps_layer_ref),
    ordering: OrderingRef = Depends(ordering_ref),
    normalize: Normalize = NormalizeQuery,
    svc: ExplorerService = Depends(service),
) -> Response:
    """The mosaic picture: channel numbers above the tiles; with k-means, each cluster's
    label strips in their own tint and a red mark where a cluster starts."""
    png, _ = await svc.layer_views.mosaic(image, layer, ordering, normalize)
    return Response(png, media_type="image/png", headers=CACHE)


@router.get(
    "/api/images/{image_id}/layers/{layer}/volume",
    responses=FIGURE,
    summary="A layer's maps as a 3D volume (plotly figure)",
)
async def volume(
    request: Request,
    _model: str = Depends(checked_model),
    image: ImageRef = Depends(image_ref),
    layer: LayerRef = Depends(maps_layer_ref),
    ordering: OrderingRef = Depends(ordering_ref),
    svc: ExplorerService = Depends(service),
) -> Response:
    """The stacked maps in display order as a plotly figure (``data``, ``layout``,
    ``frames``): the volume rendering with the selected slice, the slice at full
    resolution, and a slider through the slices. Draw it with plotly.js from
    ``/vendor/plotly.min.js``."""
    body = await svc.layer_views.volume(image, layer, ordering)
    return _gzip_response(request, body, "application/json", CACHE)


@router.get("/vendor/plotly.min.js", include_in_schema=False)
def plotly_script(request: Request) -> Response:
    """plotly.js as shipped inside the installed ``plotly`` package (never a CDN)."""
    raw, packed, etag = PLOTLY.get()
    headers = {**VENDOR_CACHE, "ETag": etag}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    accepts = "gzip" in request.headers.get("accept-encoding", "").lower()
    headers["Vary"] = "Accept-Encoding"
    if accepts:
        headers["Content-Encoding"] = "gzip"
    return Response(packed if accepts else raw, media_type="text/javascript", headers=headers)
