"""The activation mosaic: every channel of a layer for one image, with channel numbers.

:func:`mosaic` returns the picture *and* the geometry of each tile, so that a viewer can
map a click back to its channel (:meth:`Mosaic.channel_at`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..errors import CnnscopeError
from ..render import colorize
from ..vocabulary import Term, names
from ._common import layer_maps
from .ordering import Ordering, as_ordering

__all__ = [
    "DEFAULT_NORMALIZE",
    "NORMALIZE_MODES",
    "NORMALIZE_TERMS",
    "Mosaic",
    "Tile",
    "draw_grid",
    "layer_activations",
    "layer_stats",
    "mosaic",
    "render_mosaic",
]

log = logging.getLogger(__name__)

#: ``joint``: one min/max over the whole layer; ``channel``: each map stretched alone.
NORMALIZE_TERMS: tuple[Term, ...] = (
    Term("joint", "Joint", "one colour scale for the whole layer"),
    Term("channel", "Per channel", "each map on its own scale"),
)
NORMALIZE_MODES: tuple[str, ...] = names(NORMALIZE_TERMS)
#: The scale a mosaic has unless told.
DEFAULT_NORMALIZE = "joint"

# Light tints that tell neighbouring clusters apart in the label strips.
_CLUSTER_TINTS = [
    (214, 228, 245),
    (253, 221, 190),
    (208, 238, 208),
    (247, 207, 207),
    (226, 214, 240),
    (232, 220, 210),
    (250, 220, 240),
    (225, 225, 225),
    (240, 240, 200),
    (200, 240, 245),
]


@dataclass(frozen=True)
class Tile:
    """Where channel ``channel`` is drawn: the map's box ``(x, y, w, h)`` in pixels."""

    channel: int
    x: int
    y: int
    w: int
    h: int

    def __iter__(self):
        return iter((self.channel, self.x, self.y, self.w, self.h))

    def contains(self, x: float, y: float) -> bool:
        """Whether pixel ``(x, y)`` of the mosaic lies in this tile's map."""
        return self.x <= x < self.x + self.w and self.y <= y < self.y + self.h


@dataclass
class Mosaic:
    """A rendered mosaic and what is needed to make it clickable.

    Attributes
    ----------
    image : numpy.ndarray
        ``H x W x 3`` uint8 picture.
    tiles : list of Tile
        One per channel, in display order: ``(channel, x, y, w, h)`` of the map (the
        label strip above it is not included).
    permutation : numpy.ndarray
        ``permutation[k]`` is the channel of tile ``k`` (identity without ordering).
    layer : str
        The layer shown.
    ordering : Ordering or None
        The ordering applied (with cluster separators), if any.
    vmin, vmax : numpy.ndarray
        Per tile, the activation values mapped to the ends of the colormap.
    cmap : str
        Matplotlib colormap name.
    """

    image: np.ndarray
    tiles: list[Tile]
    permutation: np.ndarray
    layer: str = ""
    ordering: Ordering | None = None
    vmin: np.ndarray = field(default_factory=lambda: np.zeros(0))
    vmax: np.ndarray = field(default_factory=lambda: np.zeros(0))
    cmap: str = "viridis"
    normalize: str = DEFAULT_NORMALIZE

    def channel_at(self, x: float, y: float) -> int | None:
        """The channel drawn at pixel ``(x, y)``, or ``None`` between tiles.

        Examples
        --------
        >>> m = render_mosaic(np.zeros((3, 4, 4)), labels=False)
        >>> t = m.tiles[2]
        >>> m.channel_at(t.x + 1, t.y + 1)
        2
        """
        for tile in self.tiles:
            if tile.contains(x, y):
                return tile.channel
        return None

    def to_dict(self) -> dict:
        """JSON-friendly geometry for a viewer (no pixels)."""
        height, width = self.image.shape[:2]
        return {
            "layer": self.layer,
            "width": int(width),
            "height": int(height),
            "normalize": self.normalize,
            "cmap": self.cmap,
            "tiles": [
                {
                    "channel": t.channel,
                    "x": t.x,
                    "y": t.y,
                    "w": t.w,
                    "h": t.h,
                    "vmin": float(self.vmin[k]),
                    "vmax": float(self.vmax[k]),
                }
                for k, t in enumerate(self.tiles)
            ],
            "permutation": self.permutation.tolist(),
            "ordering": self.ordering.to_dict() if self.ordering is not None else None,
        }


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed bitmap font
        return ImageFont.load_default()


def _layout(n: int, h: int, w: int, label_h: int, pad: int, aspect: float) -> int:
    """Number of columns that makes the mosaic closest to ``aspect`` (width / height)."""
    best, best_cost = 1, float("inf")
    for cols in range(1, n + 1):
        rows = math.ceil(n / cols)
        width = cols * (w + pad) + pad
        height = rows * (h + label_h + pad) + pad
        cost = abs(math.log(width / height / aspect)) + 0.02 * (rows * cols - n) / max(n, 1)
        if cost < best_cost:
            best, best_cost = cols, cost
    return best


def _tile_scale(h: int, w: int, n: int, min_tile: int, max_side: int, pad: int) -> float:
    side = max(h, w)
    scale = max(1.0, math.ceil(min_tile / side)) if side < min_tile else 1.0
    cols = math.ceil(math.sqrt(n))
    fit = (max_side / cols - pad) / side
    if scale > fit:
        scale = max(1.0, math.floor(fit)) if fit >= 1 else fit
    return scale


def draw_grid(
    tiles: list[np.ndarray],
    labels: list[str] | None = None,
    *,
    tints: list[tuple[int, int, int]] | None = None,
    marks: list[bool] | None = None,
    min_tile: int = 40,
    max_side: int = 2400,
    pad: int = 2,
    aspect: float = 4 / 3,
    title: str = "",
    outline: tuple[int, int, int] | None = None,
) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """Lay equally sized ``h x w x 3`` uint8 tiles out in a grid with a label strip above each.

    Small tiles are enlarged by an integer factor (nearest neighbour) to at least
    ``min_tile`` pixels, within about ``max_side`` pixels for the whole grid (large tiles
    are shrunk). ``tints`` colours each label strip, ``marks`` draws a red bar at the
    left of a strip (the start of a cluster), ``title`` adds a caption line on top and
    ``outline`` draws a one-pixel frame of that colour around each tile (inside the padding).

    Returns
    -------
    tuple
        The ``H x W x 3`` uint8 picture and each tile's ``(x, y, w, h)`` box.

    Examples
    --------
    >>> img, boxes = draw_grid([np.zeros((2, 2, 3), np.uint8)] * 3, ["0", "1", "2"])
    >>> len(boxes), boxes[0][2] >= 40
    (3, True)
    """
    if not tiles:
        raise CnnscopeError("nothing to draw")
    n = len(tiles)
    h, w = tiles[0].shape[:2]
    if any(t.shape[:2] != (h, w) for t in tiles):
        raise CnnscopeError("all tiles of a grid must have the same size")
    scale = _tile_scale(h, w, n, min_tile, max_side, pad)
    th, tw = max(1, round(h * scale)), max(1, round(w * scale))
    font_px = int(np.clip(tw // 4, 9, 14))
    font = _font(font_px)
    measure = ImageDraw.Draw(Image.new("L", (1, 1)))
    widest = max((measure.textlength(t, font=font) for t in labels), default=0) if labels else 0
    show_labels = bool(labels) and tw >= widest + 2
    label_h = font_px + 3 if show_labels else 0
    title_h = 0
    if title:
        title_font = _font(14)
        title_h = 22
    cols = _layout(n, th, tw, label_h, pad, aspect)
    rows = math.ceil(n / cols)
    width = cols * (tw + pad) + pad
    if title:
        width = max(width, int(measure.textlength(title, font=title_font)) + 12)
    height = title_h + rows * (th + label_h + pad) + pad
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((6, 3), title, fill=(0, 0, 0), font=title_font)
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.BOX
    boxes = []
    for k, tile in enumerate(tiles):
        r, c = divmod(k, cols)
        x0 = pad + c * (tw + pad)
        y0 = title_h + pad + r * (th + label_h + pad)
        img = Image.fromarray(np.asarray(tile, dtype=np.uint8))
        if (th, tw) != (h, w):
            img = img.resize((tw, th), resample)
        if show_labels and labels:
            tint = tints[k] if tints else (235, 235, 235)
            draw.rectangle([x0, y0, x0 + tw - 1, y0 + label_h - 1], fill=tint)
            draw.text((x0 + 2, y0 + 1), labels[k], fill=(0, 0, 0), font=font)
            if marks and marks[k]:
                draw.rectangle([x0, y0, x0 + 1, y0 + label_h - 1], fill=(200, 30, 30))
        canvas.paste(img, (x0, y0 + label_h))
        if outline is not None and pad >= 1:
            draw.rectangle([x0 - 1, y0 + label_h - 1, x0 + tw, y0 + label_h + th], outline=outline)
        boxes.append((x0, y0 + label_h, tw, th))
    return np.asarray(canvas), boxes


def render_mosaic(
    acts,
    ordering: Ordering | None = None,
    normalize: str = DEFAULT_NORMALIZE,
    cmap: str = "viridis",
    labels: bool = True,
    min_tile: int = 40,
    max_side: int = 2400,
    pad: int = 2,
    aspect: float = 4 / 3,
    layer: str = "",
    vrange: tuple[float, float] | None = None,
    title: str = "",
) -> Mosaic:
    """Draw ``C x H x W`` maps as a grid of tiles with their channel numbers.

    Parameters
    ----------
    acts : array or tensor
        ``C x H x W`` activations.
    ordering : Ordering, optional
        Display order; with cluster separators the label strips of each cluster get
        their own tint and the first tile of each new cluster a red mark.
    normalize : {"joint", "channel"}
        ``joint``: one min/max over all maps (maps are comparable); ``channel``: each
        map stretched to its own min/max (a constant map is drawn at the colormap's low end).
    cmap : str
        Matplotlib colormap (``gray`` gives the classic look).
    labels : bool
        Draw channel numbers in a strip above each tile (skipped when tiles are
        narrower than the numbers).
    min_tile, max_side : int
        Small maps are enlarged (by an integer factor, nearest neighbour) to at least
        ``min_tile`` pixels while the mosaic stays about ``max_side`` pixels at most
        (large maps are shrunk to fit).
    pad : int
        White pixels between tiles.
    aspect : float
        Preferred width / height of the whole mosaic.
    vrange : (float, float), optional
        Fixed values for the ends of the colormap (overrides ``normalize``), e.g. to
        draw several mosaics on one scale.
    title : str
        A caption line above the grid.

    Returns
    -------
    Mosaic

    Examples
    --------
    >>> m = render_mosaic(np.random.rand(6, 5, 5))
    >>> [t.channel for t in m.tiles]
    [0, 1, 2, 3, 4, 5]
    >>> m.image.dtype, m.image.ndim
    (dtype('uint8'), 3)
    """
    if hasattr(acts, "detach"):
        acts = acts.detach().float().cpu().numpy()
    a = np.asarray(acts, dtype=np.float32)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 3 or a.shape[0] < 1:
        raise CnnscopeError(f"a mosaic needs C x H x W maps, got shape {tuple(a.shape)}")
    if normalize not in NORMALIZE_MODES:
        raise CnnscopeError(f"unknown normalisation {normalize!r}: use joint or channel")
    n = a.shape[0]
    perm = ordering.permutation if ordering is not None else np.arange(n)
    if len(perm) != n:
        raise CnnscopeError(f"the ordering has {len(perm)} channels, the layer has {n}")
    if vrange is not None:
        lo, hi = np.full(n, float(vrange[0])), np.full(n, float(vrange[1]))
    elif normalize == "joint":
        lo, hi = np.full(n, float(a.min())), np.full(n, float(a.max()))
    else:
        lo = a.reshape(n, -1).min(axis=1).astype(np.float64)
        hi = a.reshape(n, -1).max(axis=1).astype(np.float64)
    tiles = []
    for ch in perm.tolist():
        span = hi[ch] - lo[ch]
        values = (a[ch] - lo[ch]) / span if span > 0 else np.zeros(a.shape[1:], np.float32)
        tiles.append(colorize(values, cmap))
    tints = marks = None
    if ordering is not None and ordering.separators:
        group = ordering.group_of_position()
        tints = [_CLUSTER_TINTS[g % len(_CLUSTER_TINTS)] for g in group]
        seps = set(ordering.separators)
        marks = [k in seps for k in range(n)]
    image, boxes = draw_grid(
        tiles,
        [str(c) for c in perm.tolist()] if labels else None,
        tints=tints,
        marks=marks,
        min_tile=min_tile,
        max_side=max_side,
        pad=pad,
        aspect=aspect,
        title=title,
    )
    return Mosaic(
        image=image,
        tiles=[Tile(int(ch), *box) for ch, box in zip(perm.tolist(), boxes)],
        permutation=np.asarray(perm, dtype=np.int64),
        layer=layer,
        ordering=ordering,
        vmin=lo[perm],
        vmax=hi[perm],
        cmap=cmap,
        normalize=normalize if vrange is None else "fixed",
    )


def mosaic(
    model,
    image_or_tensor,
    layer: str,
    order: str | Ordering | list[int] | None = None,
    normalize: str = DEFAULT_NORMALIZE,
    *,
    order_options: dict | None = None,
    **render_options,
) -> Mosaic:
    """All channels of ``layer`` for one image, as a mosaic with channel numbers.

    Parameters
    ----------
    model : LoadedModel or torch.nn.Module
        The network (a bare module needs a preprocessed tensor).
    image_or_tensor : PIL image, path, gallery name or tensor
        The image (``1 x 3 x H x W`` tensors are used as they are).
    layer : str
        Any addressable layer with channel maps (``blocks.4``, ``stem_act``, ``name#2``).
    order : {"kmeans", "pca-slice", "pca"}, Ordering, list of int, optional
        Channel ordering; by name it is computed on these activations with
        ``order_options`` (``k``, ``row``, ...).
    normalize : {"joint", "channel"}
        Joint or per-channel normalisation.
    **render_options
        Passed to :func:`render_mosaic` (``cmap``, ``labels``, ``min_tile`` ...).

    Returns
    -------
    Mosaic
        ``image``, ``tiles`` (``channel, x, y, w, h`` each) and ``permutation``.

    Examples
    --------
    >>> from cnnscope.models import load_model
    >>> model = load_model()
    >>> m = mosaic(model, "chelsea", "blocks.4", order="pca")
    >>> len(m.tiles), sorted(m.permutation.tolist()) == list(range(40))
    (40, True)
    """
    name, acts = layer_maps(model, image_or_tensor, layer)
    ordering = as_ordering(order, acts, len(acts), **(order_options or {}))
    return render_mosaic(acts, ordering, normalize, layer=name, **render_options)


def layer_activations(model, image_or_tensor, layer: str) -> tuple[str, torch.Tensor]:
    """The canonical name and float ``C x H x W`` activation of ``layer`` for one image.

    Goes through the engine's shared, cached forward (the first image of a batch is used).
    Raises a one-line ``UnknownLayerError`` (with suggestions) for a bad name, and a
    ``CnnscopeError`` for a layer without channel maps (``logits``).

    Examples
    --------
    >>> from cnnscope.models import load_model
    >>> name, acts = layer_activations(load_model(), "chelsea", "blocks.4")
    >>> name, tuple(acts.shape)
    ('blocks.4', (40, 28, 28))
    """
    return layer_maps(model, image_or_tensor, layer)


def layer_stats(acts: torch.Tensor | np.ndarray) -> list[dict]:
    """Per channel: its number, max and mean activation.

    Examples
    --------
    >>> layer_stats(np.array([[[1.0, 3.0]], [[0.0, 0.0]]]))
    [{'channel': 0, 'max': 3.0, 'mean': 2.0}, {'channel': 1, 'max': 0.0, 'mean': 0.0}]
    """
    if hasattr(acts, "detach"):
        acts = acts.detach().double().cpu().numpy()
    flat = np.asarray(acts, dtype=np.float64).reshape(len(acts), -1)
    return [
        {"channel": c, "max": float(flat[c].max()), "mean": float(flat[c].mean())}
        for c in range(len(flat))
    ]
