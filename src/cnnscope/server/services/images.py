"""Per-image answers: the picture as the model sees it, predictions, overview, maps.

Used by :mod:`cnnscope.server.routers.images`. Every argument is a checked reference
(:mod:`cnnscope.server.refs`): nothing is validated here.
"""

from __future__ import annotations

import io

from PIL import Image

from ...attribution import Method, attribute
from ...render import gradient_image, png_bytes
from ...render.pictures import activation_tint
from ..compute import Compute, Replica
from ..refs import ImageRef, LayerRef, UnitRef

__all__ = ["ImageService"]


class ImageService:
    """Answers about one image; see :class:`~cnnscope.server.compute.Compute`.

    Examples
    --------
    >>> import asyncio, tempfile
    >>> from cnnscope.models import load_model
    >>> from cnnscope.server.service import ExplorerService
    >>> from cnnscope.server.store import ImageStore
    >>> svc = ExplorerService(load_model(), ImageStore(tempfile.mkdtemp()))  # doctest: +SKIP
    >>> chelsea = svc.refs.image("chelsea")  # doctest: +SKIP
    >>> asyncio.run(svc.images.predictions(chelsea))[0]["label"]  # doctest: +SKIP
    'Egyptian cat'
    """

    def __init__(self, compute: Compute):
        self.compute = compute

    async def input_png(self, image: ImageRef) -> bytes:
        """The image as the model sees it (resized and cropped), as PNG."""
        core = self.compute

        def make() -> bytes:
            return png_bytes(core.model.preprocess_config.geometry(core.store.load(image.id)))

        return await core.in_side_pool(("input", image.id), make)

    async def thumbnail(self, image: ImageRef, size: int = 320) -> bytes:
        """A JPEG thumbnail of the original image."""
        core = self.compute

        def make() -> bytes:
            picture = core.store.load(image.id)
            picture.thumbnail((size, size), Image.Resampling.LANCZOS)
            buf = io.BytesIO()
            picture.save(buf, format="JPEG", quality=85)
            return buf.getvalue()

        return await core.in_side_pool(("thumb", image.id, size), make)

    async def predictions(self, image: ImageRef, k: int = 5) -> list[dict]:
        """Top ``k`` classes: index, label, probability."""
        core = self.compute
        return await core.call(
            ("pred", image.id, k),
            lambda lane: lane.explorer.predictions(core.input(image.id), k=k),
        )

    async def overview(self, image: ImageRef, per_layer: int = 8) -> list[dict]:
        """Per chain layer, the strongest units (:func:`~cnnscope.engine.strongest_units`):
        ``[{layer, units:[{unit, score}]}]``."""
        core = self.compute

        def compute(lane: Replica) -> list[dict]:
            return lane.explorer.overview(core.input(image.id), per_layer=per_layer)

        return await core.call(("overview", image.id, per_layer), compute)

    async def attribution(
        self,
        image: ImageRef,
        method: Method,
        target: int | None = None,
        layer: LayerRef | None = None,
        style: str | None = None,
    ) -> tuple[bytes, int]:
        """An attribution map over the model's view of the image; PNG and the target class.

        ``style`` is a rendering of :data:`cnnscope.attribution.STYLES` (default: the
        method's own). Methods of many passes (``Method.slow``) run on the slow lane.
        """
        core = self.compute
        layer_name = layer.name if layer is not None else None

        def compute(lane: Replica) -> tuple[bytes, int]:
            x = core.input(image.id)
            cls = target
            if cls is None:
                cls = int(lane.explorer.predictions(x, k=1)[0]["index"])
            result = attribute(lane.model, x[0], method=method.name, target=cls, layer=layer_name)
            if style is not None:
                return png_bytes(result.render(style)), cls
            if result.kind == "pixel" and method.style == "colored":
                # min-max "colored" washes out; draw it like the tree's reconstructions
                return png_bytes(gradient_image(result.tensor)), cls
            return png_bytes(result.render()), cls

        key = ("attr", image.id, method.name, target, layer_name, style)
        return await core.call(key, compute, slow=method.slow)

    async def activation(self, image: ImageRef, unit: UnitRef) -> bytes:
        """A unit's activation map over the image, as PNG (a unit of a layer with maps:
        :meth:`~cnnscope.server.refs.References.map_unit`)."""
        core = self.compute

        def compute(lane: Replica) -> bytes:
            x = core.input(image.id)
            acts = lane.engine.forward(x).activation(unit.layer)[0, unit.channel]
            view = core.model.preprocess_config.to_uint8(x)
            return png_bytes(activation_tint(view, acts.float().cpu().numpy()))

        return await core.call(("act", image.id, str(unit)), compute)
