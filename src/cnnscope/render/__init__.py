"""Turn arrays into pictures: normalisation, colormaps, overlays, grids, PNG bytes.

Every client renders through these few functions, so a map looks the same in the
command line, the explorer and the docs.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

from .files import safe_file_name, save_gif

__all__ = [
    "colorize",
    "gradient_image",
    "grid",
    "normalize",
    "overlay",
    "png_bytes",
    "safe_file_name",
    "save_gif",
    "to_hwc",
]


def to_hwc(array) -> np.ndarray:
    """A CxHxW (or HxW) tensor or array as a float HxWxC (or HxW) numpy array."""
    if hasattr(array, "detach"):
        array = array.detach().float().cpu().numpy()
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(1, 2, 0)
    return array


def normalize(array: np.ndarray, mode: str = "minmax", percentile: float = 99.0) -> np.ndarray:
    """Map values to [0, 1].

    Parameters
    ----------
    array : numpy.ndarray
        Any real array.
    mode : {"minmax", "abs", "symmetric"}
        ``minmax``: (a - min) / (max - min). ``abs``: |a| / percentile(|a|), clipped.
        ``symmetric``: 0.5 + a / (2 percentile(|a|)), clipped, so that 0 maps to 0.5.
    percentile : float
        Percentile of |a| mapped to 1 by ``abs`` and ``symmetric``.

    Examples
    --------
    >>> normalize(np.array([1.0, 2.0, 3.0])).tolist()
    [0.0, 0.5, 1.0]
    >>> normalize(np.array([-2.0, 0.0, 2.0]), "symmetric", 100).tolist()
    [0.0, 0.5, 1.0]
    """
    a = np.asarray(array, dtype=np.float32)
    if mode == "minmax":
        lo, hi = float(a.min()), float(a.max())
        return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    scale = float(np.percentile(np.abs(a), percentile)) if a.size else 0.0
    if scale <= 0:
        scale = float(np.abs(a).max()) or 1.0
    if mode == "abs":
        return np.clip(np.abs(a) / scale, 0, 1)
    if mode == "symmetric":
        return np.clip(0.5 + a / (2 * scale), 0, 1)
    raise ValueError(f"unknown normalisation {mode!r}: use minmax, abs or symmetric")


def colorize(values01: np.ndarray, cmap: str = "jet") -> np.ndarray:
    """HxW values in [0, 1] -> HxWx3 uint8 through a matplotlib colormap."""
    from matplotlib import colormaps

    rgba = colormaps[cmap](np.clip(values01, 0, 1))
    return (rgba[..., :3] * 255).round().astype(np.uint8)


def overlay(
    image: np.ndarray, heat01: np.ndarray, cmap: str = "jet", alpha: float = 0.5
) -> np.ndarray:
    """Blend a [0, 1] heatmap (resized to the image) over an HxWx3 uint8 image."""
    image = np.asarray(image, dtype=np.uint8)
    h, w = image.shape[:2]
    if heat01.shape != (h, w):
        heat01 = resize_map(heat01, (h, w))
    heat = colorize(heat01, cmap).astype(np.float32)
    return (alpha * heat + (1 - alpha) * image).round().clip(0, 255).astype(np.uint8)


def resize_map(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an HxW float map to ``size`` (H, W)."""
    img = Image.fromarray(np.asarray(values, dtype=np.float32), mode="F")
    return np.asarray(img.resize((size[1], size[0]), Image.Resampling.BILINEAR), dtype=np.float32)


def gradient_image(grad, percentile: float = 99.0) -> np.ndarray:
    """A signed 3xHxW gradient as an RGB uint8 picture centred on grey.

    Each map is scaled by its own percentile of the nonzero |g|, so a reconstruction is
    readable at any depth of a tree path: deep paths neither vanish nor saturate, and the few
    pixels a low unit's gradient reaches are not scaled by the zeros around them.

    Examples
    --------
    >>> g = np.zeros((3, 8, 8), np.float32); g[:, 2:4, 2:4] = [[[1, 2], [3, 4]]]
    >>> img = gradient_image(g, percentile=100)
    >>> int(img[0, 0, 0]), int(img[3, 3, 0])  # zero is grey; the largest value is white
    (128, 255)
    """
    hwc = to_hwc(grad)
    mag = np.abs(hwc)
    support = mag[mag > 0]  # a low unit's gradient reaches a few pixels: scale on those
    scale = float(np.percentile(support, percentile)) if support.size else 1.0
    return (np.clip(0.5 + hwc / (2 * scale), 0, 1) * 255).round().astype(np.uint8)


def grid(
    images: Sequence[np.ndarray], cols: int | None = None, pad: int = 2, fill: int = 255
) -> np.ndarray:
    """Tile equally sized HxWx3 uint8 images into a grid (row-major)."""
    if not images:
        raise ValueError("no images to tile")
    n = len(images)
    cols = cols or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    h = max(i.shape[0] for i in images)
    w = max(i.shape[1] for i in images)
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), fill, np.uint8)
    for k, img in enumerate(images):
        r, c = divmod(k, cols)
        img = img if img.ndim == 3 else np.repeat(img[..., None], 3, axis=2)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        out[y : y + img.shape[0], x : x + img.shape[1]] = img
    return out


def png_bytes(image) -> bytes:
    """Encode an HxWx3 uint8 array (or a PIL image) as PNG bytes."""
    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image, dtype=np.uint8))
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    return buf.getvalue()
