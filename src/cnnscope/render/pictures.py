"""Pictures made from pictures: zooms, crops, receptive-field patches, activation tints.

The explorer serves these; they are plain functions of arrays and PNG bytes, with no
model in sight, so that any client (a notebook, the CLI, the server) draws the same
thing.

Examples
--------
>>> import numpy as np
>>> view = np.zeros((8, 8, 3), np.uint8)
>>> activation_tint(view, np.ones((2, 2), np.float32)).shape
(8, 8, 3)
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from . import colorize, png_bytes, resize_map

__all__ = [
    "activation_tint",
    "crop_to_support",
    "field_patch",
    "matplotlib_writes_inside",
    "png_array",
    "zoom_picture",
    "zoom_png",
]

Box = tuple[int, int, int, int]


def png_array(png: bytes) -> np.ndarray:
    """The RGB pixels (H x W x 3 uint8) of an encoded picture.

    Examples
    --------
    >>> png_array(png_bytes(np.full((2, 3, 3), 7, np.uint8))).shape
    (2, 3, 3)
    """
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def zoom_picture(picture: np.ndarray, box: Box | None) -> np.ndarray:
    """``picture`` (H x W x 3 uint8) cropped to ``box`` (top, left, bottom, right;
    bottom and right excluded) and scaled back to H x W; ``None`` keeps it as it is.

    Examples
    --------
    >>> pic = np.zeros((8, 8, 3), np.uint8); pic[2:4, 2:4] = 255
    >>> zoom_picture(pic, (2, 2, 4, 4)).min(), zoom_picture(pic, None) is pic
    (np.uint8(255), True)
    """
    if box is None:
        return picture
    top, left, bottom, right = box
    h, w = picture.shape[:2]
    crop = Image.fromarray(np.ascontiguousarray(picture[top:bottom, left:right]))
    return np.asarray(crop.resize((w, h), Image.Resampling.BICUBIC))


def zoom_png(png: bytes, box: Box | None) -> bytes:
    """:func:`zoom_picture` of an encoded picture (e.g. a reconstruction zoomed on the box
    of :meth:`cnnscope.tree.Explorer.focus`); ``None`` returns ``png`` itself.

    Examples
    --------
    >>> a = np.zeros((8, 8, 3), np.uint8); a[0:2, 0:2] = 200
    >>> int(png_array(zoom_png(png_bytes(a), (0, 0, 2, 2))).min())
    200
    >>> zoom_png(b"not even a png", None)
    b'not even a png'
    """
    if box is None:
        return png
    return png_bytes(zoom_picture(png_array(png), box))


def crop_to_support(png: bytes, pad: float = 0.35, min_size: int = 16) -> bytes:
    """Zoom a reconstruction on where it differs from its grey background.

    The box is the support of ``|picture - background| > 6`` (any channel), made square,
    padded by ``pad`` of its size, at least ``min_size`` pixels, kept inside the image and
    scaled back to the full size. A picture whose support is most of the image is
    returned as it is.

    Examples
    --------
    >>> a = np.full((64, 64, 3), 128, np.uint8); a[30:33, 40:42] = 255
    >>> out = png_array(crop_to_support(png_bytes(a)))
    >>> out.shape, int((out > 200).any(axis=2).sum()) > 12  # the 6-pixel spot got bigger
    ((64, 64, 3), True)
    """
    img = png_array(png)
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


def field_patch(view: np.ndarray, box: Box, side: int) -> np.ndarray:
    """``view`` cut to ``box`` (top, left, bottom, right, all inclusive; clipped to the
    image), scaled to ``side`` pixels on its longer side.

    Fields of ``side / 2`` pixels or fewer are scaled up by a whole factor with nearest
    neighbours (each input pixel stays a sharp square); larger ones with Lanczos. A box
    wholly beside the image gives the whole image.

    Examples
    --------
    >>> view = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    >>> field_patch(view, (-1, 1, 1, 2), 8).shape  # rows 0-1, cols 1-2
    (8, 8, 3)
    >>> bool((field_patch(view, (0, 0, 0, 0), 4) == view[0, 0]).all())  # one pixel, 4x4
    True
    """
    h, w = view.shape[:2]
    top, left, bottom, right = box
    top, left, bottom, right = max(top, 0), max(left, 0), min(bottom, h - 1), min(right, w - 1)
    if top > bottom or left > right:
        top, left, bottom, right = 0, 0, h - 1, w - 1  # a field beside the image
    patch = np.ascontiguousarray(view[top : bottom + 1, left : right + 1])
    ph, pw = patch.shape[:2]
    scale = side / max(ph, pw)
    if scale >= 2:
        factor = int(scale)
        size, resample = (pw * factor, ph * factor), Image.Resampling.NEAREST
    else:
        size = (max(1, round(pw * scale)), max(1, round(ph * scale)))
        resample = Image.Resampling.LANCZOS
    return np.asarray(Image.fromarray(patch).resize(size, resample))


def activation_tint(view: np.ndarray, amap: np.ndarray, cmap: str = "magma") -> np.ndarray:
    """Where a unit fires over the image: ``view`` (H x W x 3 uint8) tinted by ``amap``.

    ``amap`` (h x w, any size) is scaled by its maximum (negative values count as 0; an
    all-negative map tints nothing), resized to the view and blended as ``0.35 * view +
    0.65 * colormap``.

    Examples
    --------
    >>> view = np.full((4, 4, 3), 100, np.uint8)
    >>> hot = activation_tint(view, np.array([[0.0, 1.0], [0.0, 0.0]]))
    >>> bool(hot[0, 3].sum() > hot[3, 0].sum())  # the firing corner is brighter
    True
    """
    amap = np.asarray(amap, np.float32)
    peak = float(amap.max())
    heat = np.clip(amap / peak, 0, 1) if peak > 0 else np.zeros_like(amap)
    heat = resize_map(heat, view.shape[:2])
    tinted = (0.35 * view + 0.65 * colorize(heat, cmap)).round().clip(0, 255)
    return tinted.astype(np.uint8)


def matplotlib_writes_inside(folder: str | os.PathLike) -> None:
    """Give matplotlib (colormaps of the maps it draws) its config folder inside ``folder``.

    Without ``MPLCONFIGDIR`` matplotlib creates ``~/.config/matplotlib`` (and a font cache)
    on its first import; a server that writes only in its data directory calls this
    first. A folder the user chose is kept, and a matplotlib already imported has read
    the variable already: both are left alone.

    Examples
    --------
    >>> import os
    >>> before = os.environ.get("MPLCONFIGDIR")
    >>> matplotlib_writes_inside("/tmp/somewhere")
    >>> os.environ.get("MPLCONFIGDIR") in (before, "/tmp/somewhere/matplotlib")
    True
    >>> if before is None:
    ...     _ = os.environ.pop("MPLCONFIGDIR", None)
    """
    if "matplotlib" not in sys.modules and not os.environ.get("MPLCONFIGDIR"):
        os.environ["MPLCONFIGDIR"] = str(Path(folder) / "matplotlib")
