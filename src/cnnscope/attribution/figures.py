"""Figures of attribution maps: the styles of pytorch-cnn-visualizations, and seismic for LRP.

Every style takes a raw ``C x H x W`` map (C = 3 for pixel methods, 1 for CAM-like maps)
and returns an ``H x W x 3`` uint8 picture. They use the shared helpers of
:mod:`cnnscope.render`, so maps look the same in the CLI, the explorer and the docs.

=========  ===================================================================
colored    min-max of the signed map over all channels (pytorch-cnn-visualizations'
           ``_color``), after clipping at the ``100 - p`` and ``p`` percentiles
grayscale  ``sum_c |a|``, scaled from its min to its ``p``-th percentile, clipped
positive   ``max(a, 0) / max(a)``, the max taken as the ``p``-th percentile, clipped
negative   ``max(-a, 0) / -min(a)``, likewise
mask       the map in [0, 1] as grey (CAMs: min-max; pixel maps: grayscale)
heatmap    the mask through a colormap (``jet`` by default)
overlay    the heatmap blended over the picture the model saw (``alpha``)
seismic    ``sum_c a`` on a symmetric blue-white-red scale, ``0`` is white
masked     the picture the model saw weighted by the mask, the mask first smoothed by
           a Gaussian of 1.5 pixels: the image content the map points at, on black
=========  ===================================================================

``p`` is the ``percentile`` argument (99 by default): gradients have a few extreme
pixels that would leave a plain min-max picture grey or black. ``percentile=100`` gives
pytorch-cnn-visualizations' exact pictures.
"""

from __future__ import annotations

import numpy as np

from ..errors import CnnscopeError
from ..render import colorize, normalize
from ..render import overlay as blend

__all__ = ["STYLES", "heat", "masked", "render_map"]

STYLES: tuple[str, ...] = (
    "colored",
    "grayscale",
    "positive",
    "negative",
    "mask",
    "heatmap",
    "overlay",
    "seismic",
    "masked",
)

#: Gaussian sigma (pixels) of the mask of the ``masked`` style: a raw gradient's mask is
#: speckle that hides the image it should show.
MASK_SIGMA = 1.5


def _gray_rgb(values01: np.ndarray) -> np.ndarray:
    g = (np.clip(values01, 0, 1) * 255).round().astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=2)


def _hwc(maps: np.ndarray) -> np.ndarray:
    return np.transpose(maps, (1, 2, 0))


def grayscale(maps: np.ndarray, percentile: float = 99.0) -> np.ndarray:
    """``sum |a|`` over channels, min to P99, clipped (pytorch-cnn-visualizations'
    ``convert_to_grayscale``).

    Examples
    --------
    >>> grayscale(np.array([[[0.0, 1.0], [2.0, -100.0]]]), 50).round(2).tolist()
    [[0.0, 0.67], [1.0, 1.0]]
    """
    s = np.abs(maps).sum(0)
    lo, hi = float(s.min()), float(np.percentile(s, percentile))
    if hi <= lo:
        hi = float(s.max())
    return np.clip((s - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(s)


def heat(maps: np.ndarray, percentile: float = 99.0) -> np.ndarray:
    """The H x W map in [0, 1] that heatmaps and overlays show.

    One-channel maps (CAMs) are min-max scaled; pixel maps use :func:`grayscale`.

    Examples
    --------
    >>> heat(np.array([[[1.0, 3.0]]])).tolist()
    [[0.0, 1.0]]
    """
    if maps.shape[0] == 1:
        return normalize(maps[0], "minmax")
    return grayscale(maps, percentile)


def masked(picture: np.ndarray, maps: np.ndarray, percentile: float = 99.0) -> np.ndarray:
    """``picture`` (H x W x 3 uint8) weighted by the smoothed :func:`heat` of ``maps``.

    Examples
    --------
    >>> pic = np.full((8, 8, 3), 200, np.uint8)
    >>> m = np.zeros((3, 8, 8), np.float32); m[:, 4, 4] = 1.0
    >>> out = masked(pic, m)
    >>> int(out[4, 4, 0]), int(out[0, 0, 0]) <= 1  # bright where the map is, dark elsewhere
    (200, True)
    """
    import torch

    from ..render.filters import gaussian_blur

    soft = torch.from_numpy(np.ascontiguousarray(heat(maps, 100.0), np.float32))[None, None]
    mask = gaussian_blur(soft, MASK_SIGMA)[0, 0].numpy()
    top = float(np.percentile(mask, percentile))
    mask = np.clip(mask / top, 0, 1) if top > 0 else mask
    return (picture.astype(np.float32) * mask[..., None]).round().clip(0, 255).astype(np.uint8)


def render_map(
    maps: np.ndarray,
    style: str,
    picture: np.ndarray | None = None,
    cmap: str | None = None,
    alpha: float = 0.5,
    percentile: float | None = None,
) -> np.ndarray:
    """Render one raw ``C x H x W`` map in ``style`` as H x W x 3 uint8.

    ``percentile`` defaults to 99, and to 99.5 for ``seismic``.

    Examples
    --------
    >>> m = np.zeros((3, 4, 4), np.float32); m[0, 1, 1] = 1.0
    >>> render_map(m, "positive")[1, 1].tolist()
    [255, 0, 0]
    >>> render_map(m[:1], "heatmap").shape
    (4, 4, 3)
    """
    maps = np.nan_to_num(np.asarray(maps, dtype=np.float32))
    if maps.ndim == 2:
        maps = maps[None]
    if style not in STYLES:
        raise CnnscopeError(f"unknown style {style!r}: choose one of {', '.join(STYLES)}")
    if not 0.0 <= float(alpha) <= 1.0:
        raise CnnscopeError(f"alpha must be in [0, 1], got {alpha}")
    if percentile is None:
        percentile = 99.5 if style == "seismic" else 99.0
    if not 0.0 < float(percentile) <= 100.0:
        raise CnnscopeError(f"percentile must be in (0, 100], got {percentile}")
    if cmap is not None:
        from matplotlib import colormaps

        if cmap not in colormaps:
            raise CnnscopeError(f"unknown colormap {cmap!r} (any matplotlib colormap name)")
    one = maps.shape[0] == 1
    if style == "colored":
        lo, hi = np.percentile(maps, [100.0 - percentile, percentile])
        v = normalize(np.clip(maps, lo, hi), "minmax")
        return _gray_rgb(v[0]) if one else (v * 255).round().astype(np.uint8).transpose(1, 2, 0)
    if style == "grayscale":
        return _gray_rgb(grayscale(maps, percentile))
    if style in ("positive", "negative"):
        part = np.maximum(maps if style == "positive" else -maps, 0)
        top = float(np.percentile(part[part > 0], percentile)) if (part > 0).any() else 0.0
        v = np.clip(part / top, 0, 1) if top > 0 else part
        return _gray_rgb(v[0]) if one else (v * 255).round().astype(np.uint8).transpose(1, 2, 0)
    if style == "seismic":
        s = maps.sum(0)
        return colorize(normalize(s, "symmetric", percentile), cmap or "seismic")
    if style == "masked":
        if picture is None:
            raise CnnscopeError("the masked style needs the picture the model saw")
        return masked(picture, maps, percentile)
    h = heat(maps, percentile)
    if style == "mask":
        return _gray_rgb(h)
    if style == "heatmap":
        return colorize(h, cmap or "jet")
    if picture is None:
        raise CnnscopeError("the overlay style needs the picture the model saw")
    return blend(picture, h, cmap or "jet", float(alpha))
