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
from PIL import Image, ImageMode, ImageOps, UnidentifiedImageError

from cnnscope.errors import ImageError

__all__ = [
    "IMAGE_EXTENSIONS",
    "IMAGE_FORMATS",
    "GalleryImage",
    "decoding_bytes",
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
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)

#: The only formats decoded: all by Pillow's own in-process decoders. Formats that make
#: Pillow run other programs (EPS and PostScript run Ghostscript) or that few users need
#: (DDS, ICNS, FITS, PSD...) are refused from their first bytes, before anything is decoded.
#: JPEG includes the multi-picture JPEGs (MPO) of cameras; PPM includes PGM and PBM.
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "PPM")
_ACCEPTED = "accepted: JPEG, PNG, WebP, BMP, GIF, TIFF, PPM"

#: Bytes per pixel that an 8-bit RGB photo takes to decode and turn upright: the default
#: budget of :func:`load_image` is what the largest photo it accepts takes.
RGB_BYTES_PER_PIXEL = 8
_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")
_BLOCK = 1 << 18  # values scaled at a time from high bit depths to 8 bits
_DECODER_BYTES = 16 << 20  # the decoders' own buffers, Python objects and the scaling blocks

ImageSource = str | os.PathLike | bytes | BinaryIO


def load_image(
    source: ImageSource, max_pixels: int = 64_000_000, *, max_bytes: int | None = None
) -> Image.Image:
    """Read an image as an RGB PIL image, upright and fully decoded.

    Only the formats of :data:`IMAGE_FORMATS` are decoded; the limits are checked from
    the header, before anything is decoded.

    Parameters
    ----------
    source
        A path, the encoded bytes, or a binary file object.
    max_pixels
        Largest ``width * height`` accepted.
    max_bytes
        Largest memory that decoding and converting to RGB may take, as estimated from
        the header by :func:`decoding_bytes` (default: what an 8-bit RGB photo of
        ``max_pixels`` takes, 8 bytes a pixel and 16 MB; 16-bit images cost more).

    Returns
    -------
    PIL.Image.Image
        Mode ``"RGB"``, with EXIF orientation applied, transparency composited on
        white and high bit depths scaled to 8 bits.

    Raises
    ------
    ImageError
        If the file is missing, not in an accepted format, truncated or too large.

    Example
    -------
    >>> buf = io.BytesIO()
    >>> Image.new("L", (4, 3), 200).save(buf, "PNG")
    >>> img = load_image(buf.getvalue())
    >>> img.mode, img.size, img.getpixel((0, 0))
    ('RGB', (4, 3), (200, 200, 200))
    """
    if max_bytes is None:
        max_bytes = RGB_BYTES_PER_PIXEL * max_pixels + _DECODER_BYTES
    name, fp = _open_source(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp, formats=IMAGE_FORMATS) as img:
                _check_size(img, name, max_pixels, max_bytes)
                img.load()
                _upright(img, name)
                return to_rgb(img)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning, MemoryError) as exc:
        raise ImageError(
            f"{name} is too large to decode safely: {exc or 'out of memory'}"
        ) from None
    except UnidentifiedImageError:
        raise ImageError(_unaccepted(name, fp)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ImageError(f"cannot read image {name}: {reason}") from None
    finally:
        if fp is not source:
            fp.close()


def _open_source(source: ImageSource) -> tuple[str, BinaryIO]:
    """A display name and a seekable binary file for ``source``."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<image bytes>", io.BytesIO(source)
    if isinstance(source, (str, os.PathLike)):
        if not Path(source).is_file():
            raise ImageError(f"image file not found: {source}")
        try:
            return str(source), open(source, "rb")
        except OSError as exc:
            raise ImageError(f"cannot open image {source}: {exc.strerror or exc}") from None
    return str(getattr(source, "name", "<image stream>")), source


def _check_size(img: Image.Image, name: str, max_pixels: int, max_bytes: int) -> None:
    """Refuse an image over the pixel or memory budget, from its header."""
    w, h = img.size
    if w * h > max_pixels:
        raise ImageError(f"{name} is too large: {w}x{h} = {w * h:,} pixels (limit {max_pixels:,})")
    need = decoding_bytes(img)
    if need > max_bytes:
        raise ImageError(
            f"{name} is too large to decode: {w}x{h} {img.mode} pixels need about "
            f"{_mb(need)} of memory (limit {_mb(max_bytes)})"
        )


def _mb(n: int) -> str:
    return f"{n / 2**20:,.0f} MB"


def decoding_bytes(img: Image.Image) -> int:
    """Peak memory that decoding an opened image and :func:`to_rgb` take (an estimate).

    From the header only: Pillow keeps a pixel in 1 byte (``1``, ``L``, ``P``), 2
    (``I;16``) or 4 (all other modes); turning it upright takes a second copy, and the
    conversion to RGB takes an RGB image (4 bytes a pixel) plus, for high bit depths, a
    NumPy copy and an 8-bit one, and for transparent images other than RGBA and LA, an
    RGBA copy; 16 MB more cover the decoders' own buffers.

    Example
    -------
    >>> mb = lambda img: decoding_bytes(img) // 2**20
    >>> mb(Image.new("RGB", (1000, 1000))), mb(Image.new("I;16", (1000, 1000)))
    (23, 25)
    """
    mode = img.mode
    try:
        info = ImageMode.getmode(mode)
        pixel = 4 if len(info.bands) > 1 else int(info.typestr[-1])
    except (KeyError, ValueError):
        pixel = 4
    if mode == "RGB":
        convert = 0
    elif mode.startswith("I") or mode == "F":
        convert = pixel + 6  # a NumPy copy, the 8-bit result, its L image and the RGB one
    elif mode in ("RGBA", "LA"):
        convert = 4  # the white RGB canvas it is pasted on
    elif mode in _ALPHA or (mode == "P" and "transparency" in img.info):
        convert = 8  # an RGBA copy and the canvas
    else:
        convert = 4  # the RGB image
    w, h = img.size
    return w * h * (pixel + max(pixel, convert)) + _DECODER_BYTES


def _unaccepted(name: str, fp: BinaryIO) -> str:
    """Why an image that no accepted decoder recognised was refused."""
    fmt = _sniff(fp)
    if fmt in IMAGE_FORMATS:
        return f"{name} is not an image cnnscope can read: a damaged or truncated {fmt} file"
    if fmt:
        return f"{name} looks like {fmt} data, a format cnnscope does not read ({_ACCEPTED})"
    return f"{name} is not an image in a format cnnscope reads ({_ACCEPTED})"


def _sniff(fp: BinaryIO) -> str | None:
    """The format Pillow recognises from the first 16 bytes, without opening anything."""
    try:
        fp.seek(0)
        prefix = fp.read(16)
    except (OSError, ValueError):
        return None
    Image.init()
    for fmt, (_, accept) in Image.OPEN.items():
        try:
            if accept is not None and accept(prefix):
                return fmt
        except Exception:  # a plugin's check on odd bytes: not that format
            continue
    return None


def _upright(img: Image.Image, name: str) -> None:
    """Apply the EXIF orientation in place; a broken EXIF block is ignored with a warning."""
    try:
        ImageOps.exif_transpose(img, in_place=True)
    except Exception as exc:  # malformed EXIF must not make a readable image unusable
        log.warning("ignoring unreadable EXIF orientation of %s: %s", name, exc)


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
    if img.mode in _ALPHA:
        if img.mode not in ("RGBA", "LA"):
            img = img.convert("RGBA")
        canvas = Image.new("RGB", img.size, (255, 255, 255))
        canvas.paste(img, mask=img)
        return canvas
    if img.mode.startswith("I") or img.mode == "F":
        return Image.fromarray(_to_uint8(np.asarray(img), img.mode)).convert("RGB")
    return img.convert("RGB")


def _to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    """Scale a high-bit-depth array to 8 bits, a block of rows at a time (little memory)."""
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if mode.startswith("I;16"):
        scale, offset = 1 / 257.0, 0.0
    elif mode == "F" and lo >= 0 and hi <= 1:
        scale, offset = 255.0, 0.0
    elif lo >= 0 and hi <= 255:
        scale, offset = 1.0, 0.0
    elif mode == "I" and lo >= 0 and hi <= 65535:
        scale, offset = 1 / 257.0, 0.0
    else:
        scale, offset = (255.0 / (hi - lo), lo) if hi > lo else (0.0, lo)
    out = np.empty(a.shape, dtype=np.uint8)
    rows = max(1, _BLOCK // max(a.shape[-1], 1))
    for r in range(0, a.shape[0], rows):
        block = a[r : r + rows].astype(np.float64)
        block -= offset
        block *= scale
        np.clip(np.round(block, out=block), 0, 255, out=block)
        out[r : r + rows] = block
    return out


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
