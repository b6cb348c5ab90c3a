"""Reading an index: a unit's top examples, its patches and its cached grid image."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..atomic import atomic_write
from ..engine import Field, Unit, find_layer, model_fingerprint
from ..engine.units import suggest
from ..errors import CnnscopeError, UnitSpecError, UnknownLayerError
from ..render import safe_file_name
from .bundle import MANIFEST, VERSION, IndexFormatError
from .folder import GRID_DIR
from .sources import Source
from .validate import read_index

__all__ = ["Example", "Index", "open_index"]

log = logging.getLogger(__name__)

#: Bump when the grid rendering changes, so that cached grids are redrawn.
GRID_VERSION = 1
#: Default side of a grid tile in pixels (k = 16: two 4 x 4 halves, 793 x 394 pixels).
DEFAULT_TILE = 96


@dataclass(frozen=True)
class Example:
    """One of a unit's top dataset examples.

    Attributes
    ----------
    rank : int
        1 for the strongest example.
    layer, channel : str, int
        The unit.
    image : str
        The item id (file path relative to the indexed folder, or gallery name, plus
        ``|recipe`` for an augmentation).
    image_index : int
        Position of the image in the index's sorted image table.
    path : Path or None
        The image file (``None`` for gallery photos).
    augmentation : str or None
        The augmentation recipe applied to the file, if any.
    position : tuple of int
        ``(y, x)`` of the unit's maximum in the feature map (``(0, 0)`` for vectors).
    activation : float
        The unit's strength there (:func:`cnnscope.engine.strengths`): its activation, or
        for an activation layer (ReLU6...) its pre-activation, which goes on past the clip.
    """

    rank: int
    layer: str
    channel: int
    image: str
    image_index: int
    path: Path | None
    augmentation: str | None
    position: tuple[int, int]
    activation: float

    @property
    def unit(self) -> Unit:
        """The unit at this example's position."""
        return Unit(self.layer, self.channel, self.position)

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return {
            "rank": self.rank,
            "image": self.image,
            "path": None if self.path is None else str(self.path),
            "augmentation": self.augmentation,
            "y": self.position[0],
            "x": self.position[1],
            "activation": self.activation,
        }


class Index:
    """An opened dataset index (read only). Use :func:`open_index`.

    Attributes
    ----------
    path : Path
        The index folder.
    manifest : dict
        The parsed ``index.json``.
    layers : list of str
        Indexed layers, in the order given at build time.
    top_k : int
        Examples kept per unit.
    source : Source
        Where the images come from.
    """

    def __init__(self, path: Path, manifest: dict, arrays: dict, ids: list[str], root=None):
        self.path = path
        self.manifest = manifest
        self._arrays = arrays
        self.top_k = int(manifest["top_k"])
        self._entries = {e["name"]: (i, e) for i, e in enumerate(manifest["layers"])}
        self.layers = [e["name"] for e in manifest["layers"]]
        self.source = Source.from_manifest(manifest["source"], root)
        self._ids = ids
        self._lock = threading.Lock()
        self._model = None

    def __repr__(self) -> str:
        return (
            f"Index({str(self.path)!r}, {len(self.layers)} layers, top_k={self.top_k}, "
            f"{self.manifest['images']['indexed']} images)"
        )

    # -- metadata -----------------------------------------------------------------------

    @property
    def images(self) -> list[str]:
        """Every image id, in table order (indexed and skipped)."""
        return self._ids

    @property
    def skipped(self) -> list[dict]:
        """Unreadable images: ``{"image": id, "reason": text}``."""
        return list(self.manifest.get("skipped", []))

    @property
    def preprocessing(self):
        """The :class:`~cnnscope.models.Preprocessing` the images were indexed with."""
        from ..models import Preprocessing

        return Preprocessing(**self.manifest["preprocessing"])

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the indexed arrays (changes whenever the index does)."""
        return self.manifest["arrays"]["sha256"]

    def layer_entry(self, layer: str) -> dict:
        """The manifest entry of ``layer`` (name, channels, shape, field)."""
        return self._entries[self._resolve_layer(layer)][1]

    def field(self, layer: str) -> Field | None:
        """The receptive field of ``layer``'s units (``None``: the whole image)."""
        f = self.layer_entry(layer)["field"]
        if f is None:
            return None
        return Field(tuple(f["size"]), tuple(f["stride"]), tuple(f["offset"]))

    def _resolve_layer(self, layer: str) -> str:
        found = find_layer(layer, self._entries)
        if found is not None:
            return found
        raise UnknownLayerError(
            f"layer {layer!r} is not in the index{suggest(layer, self.layers)} "
            f"(indexed: {', '.join(self.layers)})"
        )

    def unit(self, unit: Unit | str) -> Unit:
        """Check a unit against the index: canonical layer name, channel in range.

        A position (``@y,x``) is dropped: examples are per channel.
        """
        if not isinstance(unit, Unit):
            unit = Unit.parse(str(unit))
        layer = self._resolve_layer(unit.layer)
        channels = self._entries[layer][1]["channels"]
        if not 0 <= unit.channel < channels:
            raise UnitSpecError(
                f"unit {unit}: channel {unit.channel} out of range 0-{channels - 1} for {layer}"
            )
        return Unit(layer, unit.channel)

    # -- examples -----------------------------------------------------------------------

    def examples(self, unit: Unit | str) -> list[Example]:
        """The unit's top examples, strongest first (fewer than ``top_k`` if fewer images).

        Examples
        --------
        >>> ix = open_index("my-index")  # doctest: +SKIP
        >>> [(e.image, e.position, round(e.activation, 2)) for e in ix.examples("blocks.4:7")][:2]
        ... # doctest: +SKIP
        [('cats/01.jpg', (12, 3), 5.91), ('dogs/17.jpg', (4, 20), 5.63)]
        """
        unit = self.unit(unit)
        i = self._entries[unit.layer][0]
        act = self._arrays[f"L{i}_activation"][unit.channel]
        img = self._arrays[f"L{i}_image"][unit.channel]
        ys, xs = self._arrays[f"L{i}_y"][unit.channel], self._arrays[f"L{i}_x"][unit.channel]
        ids = self.images
        out = []
        for r in range(self.top_k):
            if img[r] < 0:
                break
            image_id = ids[int(img[r])]
            _, recipe = self.source.split(image_id)
            out.append(
                Example(
                    rank=r + 1,
                    layer=unit.layer,
                    channel=unit.channel,
                    image=image_id,
                    image_index=int(img[r]),
                    path=self.source.path(image_id),
                    augmentation=recipe,
                    position=(int(ys[r]), int(xs[r])),
                    activation=float(act[r]),
                )
            )
        return out

    def field_box(self, example: Example) -> tuple[int, int, int, int]:
        """The unit's receptive field at the example's position, ``(top, left, bottom, right)``.

        Inclusive, in pixels of the model input (the image after the index's resizing and
        cropping: ``index.preprocessing.geometry(index.load_image(example))``); it may
        extend past the image.
        """
        from .patches import field_box

        size = tuple(self.manifest["preprocessing"]["input_size"])
        return field_box(self.field(example.layer), *example.position, size)

    def load_image(self, example: Example | str) -> Image.Image:
        """The RGB image of an example (or image id), augmentation applied.

        Raises
        ------
        ImageError
            If the file is gone or unreadable.
        """
        image_id = example.image if isinstance(example, Example) else str(example)
        return self.source.load(image_id)

    # -- models, patches and grids -------------------------------------------------------

    def check_model(self, model) -> None:
        """Raise :class:`CnnscopeError` unless ``model`` is the one the index was built with."""
        expected = self.manifest["model"]["fingerprint"]
        if model_fingerprint(model.module) != expected:
            raise CnnscopeError(
                f"the index {self.path} was built with another model "
                f"({self.manifest['model']['name']}, weights {expected[:12]}); pass that model"
            )

    def load_model(self):
        """Load the model the index was built with, if it is a built-in one; cached.

        The manifest only names the model: a built-in name (with an optional weights file,
        read as tensors only) is loaded; anything else (``package.module:callable``, a
        TorchScript file) would run code named by a file, so the caller must pass it.

        Raises
        ------
        CnnscopeError
            If the index was built with another model than a built-in one.
        """
        with self._lock:
            if self._model is None:
                from ..models import builtin_name, load_model

                info = self.manifest["model"]
                spec = info.get("spec") or {}
                name = spec.get("model") or info["name"]
                builtin = builtin_name(name)
                if builtin is None:
                    weights = f" --weights {spec['weights']}" if spec.get("weights") else ""
                    raise CnnscopeError(
                        f"the index {self.path} was built with model {name}; "
                        f"pass --model {name}{weights}"
                    )
                pre = self.manifest["preprocessing"]
                model = load_model(
                    builtin,
                    spec.get("weights"),
                    input_size=pre["input_size"],
                    mean=pre["mean"],
                    std=pre["std"],
                    resize=pre["resize"],
                    scale=pre["scale"],
                )
                self.check_model(model)
                self._model = model
            return self._model

    def patches(self, unit: Unit | str, model=None, rule: str = "guided") -> list:
        """Patches of every example: field and support crops and the reconstruction.

        See :func:`cnnscope.index.patches.compute_patches`.
        """
        from .patches import compute_patches

        model = model if model is not None else self.load_model()
        self.check_model(model)
        return compute_patches(self, self.unit(unit), model, rule=rule)

    def _grid_file(self, unit: Unit, model, crop: str, tile: int, rule: str) -> Path:
        key = hashlib.sha256(
            f"{GRID_VERSION}|{self.fingerprint}|{model_fingerprint(model.module)}|{crop}|{tile}|"
            f"{rule}".encode()
        ).hexdigest()[:16]
        # the layer's number keeps two names that file names spell alike (a#2, a_2) apart
        folder = f"L{self._entries[unit.layer][0]}-{safe_file_name(unit.layer)}"
        return self.path / GRID_DIR / key / folder / f"{unit.channel}.png"

    def _grid(self, unit, model, crop: str, tile: int, rule: str, need_file: bool):
        """``(image or None, cached file or None)``; renders and caches on a miss."""
        from ..render import png_bytes
        from .patches import render_grid

        unit = self.unit(unit)
        model = model if model is not None else self.load_model()
        self.check_model(model)
        if crop not in ("support", "field"):
            raise CnnscopeError(f"unknown crop {crop!r}: use support or field")
        if not 8 <= int(tile) <= 1024:
            raise CnnscopeError(f"tile size must be 8-1024 pixels, got {tile}")
        target = self._grid_file(unit, model, crop, int(tile), rule)
        if target.is_file():
            return None, target
        image = render_grid(self.patches(unit, model, rule), self.top_k, crop, int(tile))
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(target, png_bytes(image))
        except OSError as exc:
            if need_file:
                raise CnnscopeError(f"cannot cache grids under {self.path}: {exc}") from None
            log.info("grid not cached (%s)", exc)
            return image, None
        return image, target

    def grid_path(
        self,
        unit: Unit | str,
        model=None,
        crop: str = "support",
        tile: int = DEFAULT_TILE,
        rule: str = "guided",
    ) -> Path:
        """The unit's grid PNG (``image patches | reconstructions``), rendered if not cached.

        Parameters
        ----------
        unit : Unit or str
            ``LAYER:CHANNEL``.
        model : LoadedModel, optional
            The model the index was built with (default: loaded from the manifest).
        crop : {"support", "field"}
            Crop each example to the support of its reconstruction (cnn_treevis's way) or
            to the unit's receptive field.
        tile : int
            Side of each tile in pixels.
        rule : str
            Backward rule of the reconstruction.

        Examples
        --------
        >>> open_index("my-index").grid_path("blocks.4:7")  # doctest: +SKIP
        PosixPath('my-index/grids/3f0c.../blocks.4/7.png')
        """
        return self._grid(unit, model, crop, tile, rule, need_file=True)[1]

    def grid(
        self,
        unit: Unit | str,
        model=None,
        crop: str = "support",
        tile: int = DEFAULT_TILE,
        rule: str = "guided",
    ) -> np.ndarray:
        """The unit's grid image as an ``H x W x 3`` uint8 array (cached on disk).

        Left half: the examples' image patches; right half: their reconstructions, in the
        same places, ``ceil(sqrt(k))`` per row, strongest first. A read-only index is
        rendered without caching.

        Examples
        --------
        >>> open_index("my-index").grid("blocks.4:7").shape  # doctest: +SKIP
        (394, 793, 3)
        """
        image, path = self._grid(unit, model, crop, tile, rule, need_file=False)
        if image is not None:
            return image
        from ..images import load_image  # the one safe reader (formats, sizes)

        return np.array(load_image(path))

    def examples_png(self, unit: Unit | str, model=None) -> bytes:
        """The unit's grid as PNG bytes (for the explorer)."""
        return self.grid_path(unit, model).read_bytes()


def open_index(path: str | os.PathLike, root: str | os.PathLike | None = None) -> Index:
    """Open an index folder written by :func:`~cnnscope.index.build_index`.

    Parameters
    ----------
    path
        The index folder (or its ``index.json``).
    root
        Where the indexed image folder is now, if it moved.

    Raises
    ------
    IndexFormatError
        If ``path`` is not a complete cnnscope index, is damaged, too new, or written
        by an older cnnscope (format 1, before units were ranked by strength).

    Examples
    --------
    >>> ix = open_index("my-index")  # doctest: +SKIP
    >>> ix.layers, ix.top_k  # doctest: +SKIP
    (['blocks.4', 'head_act'], 16)
    """
    path = Path(path).expanduser()
    if path.name == MANIFEST and path.is_file():
        path = path.parent
    if not path.exists():
        raise IndexFormatError(f"index not found: {path}")
    if not path.is_dir() or not (path / MANIFEST).is_file():
        hint = (
            " (a build there is unfinished: rerun cnnscope index)"
            if (path / ".building").is_dir()
            else ""
        )
        raise IndexFormatError(f"{path} is not a cnnscope index (no {MANIFEST}){hint}")
    meta, arrays, ids = read_index(path)
    if meta["version"] < VERSION:
        raise IndexFormatError(
            f"{path} has index format {meta['version']}, from an older cnnscope that ranked "
            f"clipped units by their clipped value: rebuild it (cnnscope index ... --out {path})"
        )
    return Index(path.resolve(), meta, arrays, ids, root)
