"""The explorer's images: the built-in gallery, a user folder, and uploads.

Every image has an id that is safe to put in a URL and never names a file by itself:

* built-in photos use their gallery name (``chelsea``);
* images of ``--gallery DIR`` use ``d-`` + 16 hex digits of the SHA-256 of their bytes;
* uploads use ``u-`` + 16 hex digits of the SHA-256 of the uploaded bytes, and live in
  ``DATA_DIR/uploads/<id>.jpg`` (JPEG uploads) or ``<id>.png`` (the others): decoded,
  shrunk to at most ``max_side`` pixels a side and re-encoded, so nothing the user sent
  is stored as is, and a photo takes about as much room as its JPEG.

The upload folder is bounded (``max_data_bytes`` for the whole data directory); partial
files that a killed server left behind (those of a process no longer running:
:func:`cnnscope.atomic.remove_stale_temps`) are removed when a store opens it.

Ids are checked against a strict pattern before anything else, so a name such as
``../../etc/passwd`` is refused without touching the file system.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..atomic import atomic_write, remove_stale_temps
from ..errors import CnnscopeError, ImageError
from ..images import gallery_images, iter_image_files, load_image
from ..vocabulary import Term, names

__all__ = [
    "BadRequestError",
    "DataDirFullError",
    "ImageRecord",
    "ImageStore",
    "NotFoundError",
    "SOURCES",
    "SOURCE_TERMS",
    "TooLargeError",
    "UploadTimeoutError",
]

log = logging.getLogger(__name__)

#: Where an image of the store comes from (:attr:`ImageRecord.source`), in the gallery's
#: order, with the title and help of its section.
SOURCE_TERMS: tuple[Term, ...] = (
    Term("builtin", "Built-in photos", "Ship with cnnscope; always available offline."),
    Term("folder", "Your folder", "From cnnscope serve --gallery DIR."),
    Term(
        "upload",
        "Uploaded",
        "Stored in the server's data directory under a hash of their bytes.",
    ),
)
SOURCES: tuple[str, ...] = names(SOURCE_TERMS)

#: What an image id looks like (the OpenAPI schema says so too).
ID_PATTERN = r"^(?:[a-z][a-z0-9_]{0,31}|[du]-[0-9a-f]{16})$"
_ID = re.compile(ID_PATTERN)
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._ -]+")
_STORED = (".jpg", ".png")  # JPEG uploads stay JPEG (already lossy); the others are PNG
_JPEG_QUALITY = 95


class NotFoundError(CnnscopeError):
    """Something named in a request does not exist (HTTP 404)."""


class BadRequestError(CnnscopeError):
    """A request is malformed (HTTP 400)."""


class TooLargeError(CnnscopeError):
    """An upload exceeds the configured size limit (HTTP 413)."""


class DataDirFullError(TooLargeError):
    """Storing an upload would take the data directory over its size limit (HTTP 413)."""


class UnsupportedImageError(CnnscopeError):
    """An upload is not an image that can be read (HTTP 415)."""


class UploadTimeoutError(CnnscopeError):
    """An upload's body did not arrive in time (HTTP 408)."""


@dataclass(frozen=True)
class ImageRecord:
    """One image of the gallery.

    Attributes
    ----------
    id
        URL-safe identifier (see the module docstring).
    name
        Display name (gallery name or file name).
    description
        A sentence about the image.
    source
        ``"builtin"``, ``"folder"`` or ``"upload"``.
    path
        The file holding it, or ``None`` for built-in photos.
    """

    id: str
    name: str
    description: str
    source: str
    path: Path | None = None


def check_id(image_id: str) -> str:
    """Return ``image_id`` if it has the shape of an id, else raise :class:`BadRequestError`.

    Examples
    --------
    >>> check_id("chelsea")
    'chelsea'
    >>> check_id("../etc/passwd")
    Traceback (most recent call last):
    ...
    cnnscope.server.store.BadRequestError: bad image id '../etc/passwd': ids look like chelsea or u-0123456789abcdef
    """
    if not isinstance(image_id, str) or not _ID.fullmatch(image_id):
        shown = image_id[:80] if isinstance(image_id, str) else image_id
        raise BadRequestError(
            f"bad image id {shown!r}: ids look like chelsea or u-0123456789abcdef"
        )
    return image_id


def safe_display_name(name: str | None, fallback: str) -> str:
    """A display name with no path parts or odd characters, at most 80 characters.

    Examples
    --------
    >>> safe_display_name("../../x/cat<script>.jpg", "upload")
    'catscript.jpg'
    """
    base = os.path.basename((name or "").replace("\\", "/"))
    clean = _SAFE_NAME.sub("", base).strip(" .")[:80]
    return clean or fallback


class ImageStore:
    """Find, add and load the explorer's images.

    Parameters
    ----------
    data_dir
        Folder the server may write to; uploads go to ``data_dir/uploads``.
    gallery_dir
        Optional folder of the user's own images (read only, scanned recursively).
    max_upload_bytes
        Largest accepted upload.
    max_pixels
        Largest accepted ``width * height`` of any image.
    max_side
        Longest side of a stored upload; larger ones are shrunk (keeping their shape).
    max_data_bytes
        Largest size of the whole data directory; an upload that would pass it is refused.

    Examples
    --------
    >>> import tempfile
    >>> store = ImageStore(tempfile.mkdtemp())
    >>> store.get("chelsea").source
    'builtin'
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        gallery_dir: str | os.PathLike | None = None,
        *,
        max_upload_bytes: int = 10 << 20,
        max_pixels: int = 40_000_000,
        max_side: int = 1024,
        max_data_bytes: int = 1 << 30,
    ):
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.upload_dir = self.data_dir / "uploads"
        self.upload_dir.mkdir(parents=True, exist_ok=True)
        self.gallery_dir = Path(gallery_dir).expanduser().resolve() if gallery_dir else None
        if self.gallery_dir is not None and not self.gallery_dir.is_dir():
            raise ImageError(f"gallery folder not found: {gallery_dir}")
        self.max_upload_bytes = int(max_upload_bytes)
        self.max_pixels = int(max_pixels)
        self.max_side = int(max_side)
        self.max_data_bytes = int(max_data_bytes)
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        remove_stale_temps(self.upload_dir)  # the partial files of a killed server
        self._builtin = {
            g.name: ImageRecord(g.name, g.name, g.description, "builtin") for g in gallery_images()
        }
        self._folder: dict[str, ImageRecord] = {}
        self._scan_folder()

    # -- listing -------------------------------------------------------------------------

    def _scan_folder(self) -> None:
        if self.gallery_dir is None:
            return
        found = {}
        for path in iter_image_files(self.gallery_dir):
            try:
                digest = _digest(path.read_bytes())
            except OSError as exc:
                log.warning("skipping unreadable gallery file %s: %s", path, exc)
                continue
            rel = path.relative_to(self.gallery_dir).as_posix()
            found[f"d-{digest}"] = ImageRecord(f"d-{digest}", path.name, rel, "folder", path)
        with self._lock:
            self._folder = found
        log.info("gallery folder %s: %d images", self.gallery_dir, len(found))

    def _uploads(self) -> list[ImageRecord]:
        records = []
        for meta in sorted(self.upload_dir.glob("u-*.json"), key=lambda p: p.stat().st_mtime):
            image_id = meta.stem
            stored = self._stored(image_id) if _ID.fullmatch(image_id) else None
            if stored is not None:
                records.append(self._upload_record(image_id, stored))
        return records

    def _stored(self, image_id: str) -> Path | None:
        """The file holding upload ``image_id``, or ``None``."""
        for suffix in _STORED:
            path = self.upload_dir / f"{image_id}{suffix}"
            if path.is_file():
                return path
        return None

    def _upload_record(self, image_id: str, stored: Path) -> ImageRecord:
        name = image_id
        try:
            info = json.loads((self.upload_dir / f"{image_id}.json").read_text("utf-8"))
            name = safe_display_name(str(info.get("name", "")), image_id)
        except (OSError, ValueError, AttributeError):
            pass
        return ImageRecord(image_id, name, "uploaded image", "upload", stored)

    def list(self) -> list[ImageRecord]:
        """Every image: built-in first, then the folder, then uploads (oldest first)."""
        with self._lock:
            folder = list(self._folder.values())
        return [*self._builtin.values(), *folder, *self._uploads()]

    # -- lookup --------------------------------------------------------------------------

    def get(self, image_id: str) -> ImageRecord:
        """The record of ``image_id``; :class:`NotFoundError` if there is none."""
        check_id(image_id)
        if image_id in self._builtin:
            return self._builtin[image_id]
        with self._lock:
            if image_id in self._folder:
                return self._folder[image_id]
        stored = self._stored(image_id) if image_id.startswith("u-") else None
        if stored is not None:
            return self._upload_record(image_id, stored)
        raise NotFoundError(f"unknown image {image_id!r}: see /api/images for the gallery")

    def load(self, image_id: str) -> Image.Image:
        """The image ``image_id`` as an RGB PIL image."""
        record = self.get(image_id)
        if record.source == "builtin" or record.path is None:  # only built-ins have no file
            from ..images import load_gallery_image

            return load_gallery_image(record.id)
        return load_image(record.path, max_pixels=self.max_pixels)

    # -- upload --------------------------------------------------------------------------

    def add(self, data: bytes, filename: str | None = None) -> tuple[ImageRecord, bool]:
        """Validate an uploaded image and store it, compactly, under its content hash.

        Returns
        -------
        tuple of (ImageRecord, bool)
            The record, and whether it is new (false when the same bytes came before).

        Raises
        ------
        TooLargeError
            If ``data`` exceeds ``max_upload_bytes`` or the image has too many pixels.
        DataDirFullError
            If storing it would take the data directory over ``max_data_bytes``.
        UnsupportedImageError
            If ``data`` is not an image Pillow can read.
        """
        if len(data) > self.max_upload_bytes:
            raise TooLargeError(self.too_large_message(len(data)))
        if not data:
            raise UnsupportedImageError("the upload is empty: send the bytes of an image file")
        try:
            image = load_image(bytes(data), max_pixels=self.max_pixels)
        except ImageError as exc:
            text = str(exc).replace("<image bytes>", "the upload")
            if "too large" in text:
                raise TooLargeError(text) from None
            raise UnsupportedImageError(text) from None  # load_image names the formats
        image_id = f"u-{_digest(data)}"
        meta = self.upload_dir / f"{image_id}.json"
        name = safe_display_name(filename, image_id)
        with self._write_lock:
            stored = self._stored(image_id)
            created = stored is None
            if stored is None:
                encoded, suffix = self._compact(image, jpeg=data.startswith(b"\xff\xd8\xff"))
                self._check_room(len(encoded))
                stored = self.upload_dir / f"{image_id}{suffix}"
                atomic_write(stored, encoded)
                log.info("stored upload %s (%s, %dx%d)", image_id, name, *image.size)
            if not meta.is_file():
                atomic_write(meta, json.dumps({"name": name}).encode("utf-8"))
        return self._upload_record(image_id, stored), created

    def _compact(self, image: Image.Image, jpeg: bool) -> tuple[bytes, str]:
        """``image`` shrunk to ``max_side`` and encoded: JPEG for a JPEG upload, else PNG."""
        if max(image.size) > self.max_side:
            image.thumbnail((self.max_side, self.max_side), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        if jpeg:
            image.save(buf, format="JPEG", quality=_JPEG_QUALITY)
            return buf.getvalue(), ".jpg"
        image.save(buf, format="PNG")
        return buf.getvalue(), ".png"

    def data_bytes(self) -> int:
        """The bytes held by the data directory (uploads and everything else it holds)."""
        total = 0
        for root, _dirs, files in os.walk(self.data_dir):
            for file in files:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(root, file)).st_size
        return total

    def _check_room(self, size: int) -> None:
        used = self.data_bytes()
        if used + size > self.max_data_bytes:
            raise DataDirFullError(
                f"the data directory is full ({used / (1 << 20):.0f} MB of "
                f"{self.max_data_bytes / (1 << 20):g} MB): delete uploads in "
                f"{self.upload_dir} or raise --max-data-mb"
            )

    def too_large_message(self, size: int | None = None) -> str:
        """The one-line message for an upload over the limit."""
        limit = self.max_upload_bytes / (1 << 20)
        got = f" ({size / (1 << 20):.1f} MB)" if size else ""
        return f"the upload is too large{got}: the limit is {limit:g} MB (--max-upload-mb)"


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]
