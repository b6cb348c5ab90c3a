"""Reading images safely, and a small gallery of photos that ship with installed packages."""

from __future__ import annotations

import difflib
import io
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cnnscope.errors import ImageError

__all__ = [
    "IMAGE_EXTENSIONS",
    "GalleryImage",
    "gallery",
    "gallery_images",
    "iter_image_files",
    "load_gallery_image",
    "load_image",
    "resolve_image",
    "to_rgb",
]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm"}
)
ImageSource = str | os.PathLike | bytes | BinaryIO


def load_image(source: ImageSource, max_pixels: int = 64_000_000) -> Image.Image:
    """Read an image as an RGB PIL image, upright and fully decoded.

    Parameters
    ----------
    source
        A path, the encoded bytes, or a binary file object; any format Pillow reads.
    max_pixels
        Largest ``width * height`` accepted; checked from the header before decoding.

    Returns
    -------
    PIL.Image.Image
        Mode ``"RGB"``, with EXIF orientation applied, transparency composited on
        white and high bit depths scaled to 8 bits.

    Raises
    ------
    ImageError
        If the file is missing, not an image, truncated or too large.

    Example
    -------
    >>> buf = io.BytesIO()
    >>> Image.new("L", (4, 3), 200).save(buf, "PNG")
    >>> img = load_image(buf.getvalue())
    >>> img.mode, img.size, img.getpixel((0, 0))
    ('RGB', (4, 3), (200, 200, 200))
    """
    if isinstance(source, (bytes, bytearray)):
        name, fp = "<image bytes>", io.BytesIO(source)
    elif isinstance(source, (str, os.PathLike)):
        name, fp = str(source), source
        if not Path(source).is_file():
            raise ImageError(f"image file not found: {name}")
    else:
        name, fp = str(getattr(source, "name", "<image stream>")), source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise ImageError(
                        f"{name} is too large: {w}x{h} = {w * h:,} pixels (limit {max_pixels:,})"
                    )
                img.load()
                return to_rgb(_upright(img, name))
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{name} is too large to decode safely: {exc}") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name} is not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"cannot read image {name}: {exc}") from None


def _upright(img: Image.Image, name: str) -> Image.Image:
    """Apply the EXIF orientation; a broken EXIF block is ignored with a warning."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception as exc:  # malformed EXIF must not make a readable image unusable
        log.warning("ignoring unreadable EXIF orientation of %s: %s", name, exc)
        return img.copy()


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB.

    Transparent pixels are composited on white; 16-bit and 32-bit integer images
    are scaled (65535 -> 255), float images are mapped from [0, 1] (or their own
    range when outside it).

    Example
    -------
    >>> to_rgb(Image.new("I;16", (2, 2), 65535)).getpixel((0, 0))
    (255, 255, 255)
    """
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if img.mode.startswith("I") or img.mode == "F":
        return Image.fromarray(_to_uint8(np.asarray(img), img.mode)).convert("RGB")
    return img.convert("RGB")


def _to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    a = a.astype(np.float64)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if mode.startswith("I;16"):
        a = a / 257.0
    elif mode == "F" and lo >= 0 and hi <= 1:
        a = a * 255.0
    elif lo >= 0 and hi <= 255:
        pass
    elif mode == "I" and lo >= 0 and hi <= 65535:
        a = a / 257.0
    else:
        a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
    return np.clip(np.round(a), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class GalleryImage:
    """A built-in example photo.

    Attributes
    ----------
    name
        Short name used on the command line (``chelsea``).
    description
        What the photo shows and where it comes from.
    loader
        Returns the photo as an RGB PIL image, offline.
    """

    name: str
    description: str
    loader: Callable[[], Image.Image]

    def load(self) -> Image.Image:
        """Load the photo as RGB."""
        try:
            return to_rgb(self.loader())
        except Exception as exc:
            raise ImageError(f"gallery image {self.name!r} is unavailable: {exc}") from None


def _skimage(func: str) -> Callable[[], Image.Image]:
    def load() -> Image.Image:
        import skimage.data

        data = getattr(skimage.data, func)()
        if isinstance(data, tuple):  # stereo pairs: take the left view
            data = data[0]
        return Image.fromarray(np.asarray(data))

    return load


def _sklearn(filename: str) -> Callable[[], Image.Image]:
    def load() -> Image.Image:
        from sklearn.datasets import load_sample_image

        return Image.fromarray(load_sample_image(filename))

    return load


_GALLERY = [
    GalleryImage("chelsea", "Chelsea the cat (scikit-image)", _skimage("chelsea")),
    GalleryImage("coffee", "a cup of coffee (scikit-image)", _skimage("coffee")),
    GalleryImage("astronaut", "astronaut Eileen Collins (scikit-image)", _skimage("astronaut")),
    GalleryImage("rocket", "a rocket on its launch pad (scikit-image)", _skimage("rocket")),
    GalleryImage(
        "motorcycle", "a motorcycle, left stereo view (scikit-image)", _skimage("stereo_motorcycle")
    ),
    GalleryImage("camera", "a cameraman, grey scale (scikit-image)", _skimage("camera")),
    GalleryImage("china", "a Chinese temple (scikit-learn)", _sklearn("china.jpg")),
    GalleryImage("flower", "a flower (scikit-learn)", _sklearn("flower.jpg")),
]


def gallery() -> dict[str, GalleryImage]:
    """The built-in photos by name.

    Example
    -------
    >>> "chelsea" in gallery()
    True
    """
    return {g.name: g for g in _GALLERY}


def gallery_images() -> list[GalleryImage]:
    """The built-in photos in display order.

    Example
    -------
    >>> [g.name for g in gallery_images()][:2]
    ['chelsea', 'coffee']
    """
    return list(_GALLERY)


def load_gallery_image(name: str) -> Image.Image:
    """Load a built-in photo by name (case-insensitive).

    Raises
    ------
    ImageError
        If there is no such photo; the message lists the closest names.

    Example
    -------
    >>> load_gallery_image("coffee").size
    (600, 400)
    """
    items = gallery()
    key = name.strip().lower()
    if key not in items:
        close = difflib.get_close_matches(key, list(items), n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ImageError(f"unknown gallery image {name!r}: {hint}(available: {', '.join(items)})")
    return items[key].load()


def resolve_image(spec: str, max_pixels: int = 64_000_000) -> tuple[str, Image.Image]:
    """Load an image given as a file path or a gallery name.

    An existing file wins over a gallery name of the same spelling.

    Returns
    -------
    tuple of (str, PIL.Image.Image)
        A display name (the gallery name or the file name) and the RGB image.

    Example
    -------
    >>> name, img = resolve_image("chelsea")
    >>> name, img.mode
    ('chelsea', 'RGB')
    """
    path = Path(spec).expanduser()
    if path.is_file():
        return path.name, load_image(path, max_pixels=max_pixels)
    if spec.strip().lower() in gallery():
        key = spec.strip().lower()
        return key, load_gallery_image(key)
    if path.suffix.lower() in IMAGE_EXTENSIONS or os.sep in spec or "/" in spec:
        raise ImageError(f"image file not found: {spec}")
    close = difflib.get_close_matches(spec.strip().lower(), list(gallery()), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ImageError(
        f"{spec!r} is neither an image file nor a gallery image{hint} "
        f"(gallery: {', '.join(gallery())})"
    )


def iter_image_files(directory: str | os.PathLike) -> Iterator[Path]:
    """Yield the image files under ``directory`` (recursively, sorted, hidden files skipped).

    Files are recognised by extension (see :data:`IMAGE_EXTENSIONS`).

    Example
    -------
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> (d / "b.JPG").touch(); (d / "a.png").touch(); (d / "notes.txt").touch()
    >>> [p.name for p in iter_image_files(d)]
    ['a.png', 'b.JPG']
    """
    root = Path(directory)
    if not root.is_dir():
        raise ImageError(f"image folder not found: {root}")
    files = [
        p
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    yield from sorted(files, key=lambda p: p.relative_to(root).as_posix())
