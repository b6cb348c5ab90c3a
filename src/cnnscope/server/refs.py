"""Validated references: what a request names, checked once against the model.

A route's dependencies (:mod:`cnnscope.server.routers.deps`) turn the text of a request
into these typed objects with :class:`References`; the services take them and never
check again. A reference is proof that its check passed: an :class:`ImageRef` names an
image of the store, a :class:`UnitRef` a unit that exists in its layer, a
:class:`TreePathRef` a path of such units, a :class:`LayerRef` a layer (with channel
maps, when it comes from :meth:`References.maps_layer`).

Unknown things are 404s (:class:`~cnnscope.server.store.NotFoundError`), malformed text
and values out of range for an option are 400s (:class:`~.store.BadRequestError`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..attribution import Method, get_method
from ..engine import LOGITS, LayerInfo, Unit
from ..errors import CnnscopeError, UnitSpecError, UnknownLayerError
from ..models import LoadedModel
from ..tree import Explorer, format_path, parse_path
from ..views import ORDER_METHODS
from ..views.ordering import NO_ORDER
from ..vocabulary import from_url_form, url_form
from .store import BadRequestError, ImageRecord, ImageStore, NotFoundError

__all__ = [
    "LAYER_ORDERS",
    "ClassRef",
    "ImageRef",
    "LayerRef",
    "OrderingRef",
    "References",
    "TreePathRef",
    "UnitRef",
]

#: Orderings of the layer views: ``none`` (the channel order,
#: :data:`cnnscope.views.ordering.NO_ORDER`) and the library's
#: (:data:`cnnscope.views.ORDER_METHODS`).
LAYER_ORDERS: tuple[str, ...] = (NO_ORDER.name, *ORDER_METHODS)


@dataclass(frozen=True)
class ImageRef:
    """An image of the store: its id and its record (name, source, ...)."""

    id: str
    record: ImageRecord = field(compare=False, repr=False)

    def __str__(self) -> str:
        return self.id


@dataclass(frozen=True)
class LayerRef:
    """A layer of the model, under its canonical name."""

    info: LayerInfo

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def url_name(self) -> str:
        """The name as URLs write it (``name#K`` -> ``name~K``)."""
        return url_form(self.info.name)


@dataclass(frozen=True)
class UnitRef:
    """A unit that exists: canonical layer, a channel of it, a position inside its maps."""

    unit: Unit
    info: LayerInfo

    @property
    def layer(self) -> str:
        return self.unit.layer

    @property
    def channel(self) -> int:
        return self.unit.channel

    @property
    def spatial(self) -> bool:
        """Whether the unit's layer has maps (``C x H x W``)."""
        return len(self.info.shape) == 3

    def at(self, pos: tuple[int, int] | None) -> UnitRef:
        """The same channel at ``pos`` (a position the model gave: no check)."""
        return UnitRef(Unit(self.unit.layer, self.unit.channel, pos), self.info)

    def __str__(self) -> str:
        return str(self.unit)


@dataclass(frozen=True)
class TreePathRef:
    """A tree path of units that exist, root first, with its canonical text."""

    units: tuple[Unit, ...]
    text: str

    @property
    def last(self) -> Unit:
        return self.units[-1]

    @classmethod
    def of(cls, units: tuple[Unit, ...]) -> TreePathRef:
        """The reference of checked ``units`` (e.g. a node the tree gave)."""
        return cls(tuple(units), format_path(tuple(units)))

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class ClassRef:
    """A class of the model: its index and label (from a name or an index)."""

    index: int
    label: str

    def __str__(self) -> str:
        return str(self.index)


@dataclass(frozen=True)
class OrderingRef:
    """A channel ordering of a layer view, its options checked against the layer."""

    order: str
    options: dict = field(default_factory=dict)

    @property
    def key(self) -> tuple:
        """A hashable form, for cache keys."""
        return (self.order, tuple(sorted(self.options.items())))


class References:
    """The checks of what requests name, for one model and one image store.

    Parameters
    ----------
    model
        The served model.
    store
        The image store.
    explorer
        The tree explorer of the model (its layer names and chain).
    layers
        ``{canonical name: LayerInfo}`` of every recorded layer.

    Examples
    --------
    >>> from cnnscope.models import load_model
    >>> from cnnscope.engine import Engine
    >>> import tempfile
    >>> model = load_model()
    >>> layers = {i.name: i for i in Engine.for_module(model.module).layers((224, 224))}
    >>> refs = References(model, ImageStore(tempfile.mkdtemp()), Explorer(model), layers)
    >>> str(refs.unit("blocks.15:120")), refs.path("classifier:285").text
    ('blocks.15:120', 'logits:285')
    """

    def __init__(
        self,
        model: LoadedModel,
        store: ImageStore,
        explorer: Explorer,
        layers: dict[str, LayerInfo],
    ):
        self.model = model
        self.store = store
        self.explorer = explorer
        self.layers = layers

    def image(self, image_id: str) -> ImageRef:
        """An image of the store (404 if unknown, 400 if not an id)."""
        return ImageRef(image_id, self.store.get(image_id))

    def layer_info(self, name: str) -> LayerInfo:
        """The layer called ``name``: canonical, ``NAME#K``/``NAME~K`` or the logits layer."""
        try:
            canonical = self.explorer.canonical(from_url_form(name))
        except UnknownLayerError as exc:
            raise NotFoundError(str(exc)) from None
        return self.layers[canonical]

    def layer(self, name: str) -> LayerRef:
        """Any layer of the model (404 if unknown)."""
        return LayerRef(self.layer_info(name))

    def maps_layer(self, name: str) -> LayerRef:
        """A layer with ``C x H x W`` maps: 404 if unknown, 400 without maps.

        Layers without maps (``logits``, ``flatten``) have no mosaic and no volume; the
        400 says where to find those that have.
        """
        info = self.layer_info(name)
        if info.name == LOGITS or len(info.shape) != 3:
            shape = "x".join(str(v) for v in info.shape)
            raise BadRequestError(
                f"layer {info.name!r} has shape {shape}, not channel maps C x H x W: "
                "pick a convolutional layer (see /api/images/{id}/layers)"
            )
        return LayerRef(info)

    def unit(self, text: str) -> UnitRef:
        """A unit ``LAYER:CHANNEL[@Y,X]`` checked against its layer."""
        try:
            unit = Unit.parse(from_url_form(text))
        except UnitSpecError as exc:
            raise BadRequestError(str(exc)) from None
        info = self.layer_info(unit.layer)
        unit = Unit(info.name, unit.channel, unit.pos)
        _check_in_layer(unit, info)
        return UnitRef(unit, info)

    def map_unit(self, text: str) -> UnitRef:
        """A unit of a layer with spatial maps (400 for one without)."""
        unit = self.unit(text)
        if not unit.spatial:
            raise BadRequestError(
                f"{unit.layer!r} has no spatial map (shape {list(unit.info.shape)})"
            )
        return unit

    def path(self, text: str) -> TreePathRef:
        """A tree path, each of its units checked against its layer."""
        try:
            path = parse_path(text)
        except UnitSpecError as exc:
            raise BadRequestError(str(exc)) from None
        checked = []
        for unit in path:
            info = self.layer_info(unit.layer)
            unit = Unit(info.name, unit.channel, unit.pos)
            _check_in_layer(unit, info)
            checked.append(unit)
        return TreePathRef.of(tuple(checked))

    def target(self, target: int | None) -> int | None:
        """A class index in range, or ``None`` for the top class."""
        n = self.model.num_classes or self.layers[LOGITS].shape[0]
        if target is not None and not 0 <= target < n:
            raise NotFoundError(f"unknown class {target}: classes are 0-{n - 1}")
        return target

    def class_ref(self, text: str) -> ClassRef:
        """A class by index or name (the model's labels): 404 with close names if unknown,
        400 if the name fits several classes.

        Examples
        --------
        >>> from cnnscope.models import load_model
        >>> refs = References(load_model(), None, None, {})
        >>> refs.class_ref("tabby")
        ClassRef(index=281, label='tabby, tabby cat')
        """
        try:
            index = self.model.class_index(text)
        except CnnscopeError as exc:
            text = " ".join(str(exc).split())
            raise (BadRequestError if "ambiguous" in text else NotFoundError)(text) from None
        return ClassRef(index, self.model.label(index))

    def method(self, name: str) -> Method:
        """An attribution method of the registry (aliases accepted); 404 if unknown."""
        try:
            return get_method(name)
        except CnnscopeError as exc:
            raise NotFoundError(f"unknown attribution method {name[:60]!r}: {exc}") from None

    def ordering(
        self, layer: LayerRef, order: str, k: int | None = None, row: int | None = None
    ) -> OrderingRef:
        """The options ``order`` uses, checked against ``layer`` (400 if out of range)."""
        if order not in LAYER_ORDERS:
            raise BadRequestError(
                f"unknown ordering {str(order)[:40]!r}: use {', '.join(LAYER_ORDERS)}"
            )
        channels, height = int(layer.info.shape[0]), int(layer.info.shape[1])
        opts: dict = {}
        if order in ("kmeans", "pca-slice") and row is not None:
            if not 0 <= row < height:
                raise BadRequestError(
                    f"row {row} is outside the maps of {layer.name!r} (0-{height - 1})"
                )
            opts["row"] = int(row)
        if order == "kmeans" and k is not None:
            if not 1 <= k <= channels:
                raise BadRequestError(f"k={k} clusters: {layer.name!r} has {channels} channels")
            opts["k"] = int(k)
        return OrderingRef(order, opts)


def _check_in_layer(unit: Unit, info: LayerInfo) -> None:
    """404 unless ``unit``'s channel and position exist in ``info``'s activation."""
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
