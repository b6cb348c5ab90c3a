"""What an index is built from: a folder of images or the built-in gallery, optionally augmented.

Every image the index sees is an *item* with a stable string id:

* a folder file: its path relative to the folder, in POSIX form (``cats/01.jpg``);
* a gallery photo: its gallery name (``chelsea``);
* with augmentation, each of those once per recipe: ``cats/01.jpg|crop45-3x3-r1c2+flip``.

Items are processed and numbered in sorted id order, which every rank of every run
computes the same way. Augmentation recipes are deterministic (no random numbers), so an
item can be rebuilt from its id alone, e.g. to crop patches long after indexing.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from ..errors import CnnscopeError, ImageError
from ..images import gallery, iter_image_files, load_gallery_image, load_image

__all__ = ["AUGMENTATIONS", "Item", "Source", "apply_recipe"]

log = logging.getLogger(__name__)


def _recipes() -> list[str]:
    base = ["full", "pad70"]
    for scale, n in ((70, 2), (45, 3)):
        base += [f"crop{scale}-{n}x{n}-r{r}c{c}" for r in range(n) for c in range(n)]
    return [v for b in base for v in (b, f"{b}+flip")]


#: Deterministic augmentations, in order: the whole image (``full``), the whole image
#: shrunk to 70 % of a grey square (``pad70``, a zoomed-out scale), square crops of 70 % and 45 % of
#: the shorter side on 2x2 and 3x3 grids (zoomed-in scales), each also mirrored (``+flip``).
AUGMENTATIONS: tuple[str, ...] = tuple(_recipes())
_CROP = re.compile(r"^crop(\d{1,3})-(\d{1,2})x(\d{1,2})-r(\d{1,2})c(\d{1,2})$")


def apply_recipe(image: Image.Image, recipe: str) -> Image.Image:
    """Apply one augmentation recipe (see :data:`AUGMENTATIONS`) to an RGB image.

    Examples
    --------
    >>> img = Image.new("RGB", (200, 100))
    >>> apply_recipe(img, "crop45-3x3-r2c2+flip").size
    (45, 45)
    >>> apply_recipe(img, "pad70").size
    (286, 286)
    """
    base, plus, flip = recipe.partition("+")
    if plus and flip != "flip":
        raise ImageError(f"unknown augmentation {recipe!r}")
    w, h = image.size
    if base == "full":
        out = image
    elif base.startswith("pad") and base[3:].isdigit() and 0 < int(base[3:]) <= 100:
        side = max(1, round(max(w, h) * 100 / int(base[3:])))
        out = Image.new("RGB", (side, side), (127, 127, 127))
        out.paste(image, ((side - w) // 2, (side - h) // 2))
    else:
        m = _CROP.match(base)
        if not m:
            raise ImageError(f"unknown augmentation {recipe!r}")
        scale, rows, cols, r, c = (int(g) for g in m.groups())
        if not (0 < scale <= 100 and r < rows and c < cols):
            raise ImageError(f"bad augmentation {recipe!r}")
        side = max(1, round(min(w, h) * scale / 100))
        top = round(r * (h - side) / (rows - 1)) if rows > 1 else (h - side) // 2
        left = round(c * (w - side) / (cols - 1)) if cols > 1 else (w - side) // 2
        out = image.crop((left, top, left + side, top + side))
    return ImageOps.mirror(out) if flip else out


@dataclass(frozen=True)
class Item:
    """One image of a source: its id and the fingerprint that tells whether it changed."""

    id: str
    size: int = 0
    mtime_ns: int = 0


@functools.lru_cache(maxsize=4)
def _decoded(path: str, size: int, mtime_ns: int) -> Image.Image:
    return load_image(path)


@functools.lru_cache(maxsize=8)
def _gallery_photo(name: str) -> Image.Image:
    return load_gallery_image(name)


class Source:
    """A folder of images (recursive) or the built-in gallery (``root=None``).

    Parameters
    ----------
    root : path or None
        The folder; ``None`` for the built-in gallery.
    augment : bool
        Also index every augmentation of every image (see :data:`AUGMENTATIONS`).

    Examples
    --------
    >>> src = Source(None, augment=True)
    >>> items = src.scan()
    >>> len(items) == len(gallery()) * len(AUGMENTATIONS), items[0].id
    (True, 'astronaut|crop45-3x3-r0c0')
    >>> src.load(items[0].id).size
    (230, 230)
    """

    def __init__(self, root: str | os.PathLike | None = None, augment: bool = False):
        self.root = None if root is None else Path(root).expanduser().resolve()
        self.augment = bool(augment)
        if self.root is not None and not self.root.is_dir():
            if self.root.exists():
                raise ImageError(f"{root} is not a folder: give a folder of images")
            raise ImageError(f"image folder not found: {root}")

    @property
    def kind(self) -> str:
        """``folder`` or ``gallery``."""
        return "gallery" if self.root is None else "folder"

    def describe(self) -> dict:
        """The manifest entry for this source."""
        return {
            "kind": self.kind,
            "root": None if self.root is None else str(self.root),
            "augment": self.augment,
            "augmentations": list(AUGMENTATIONS) if self.augment else [],
        }

    @classmethod
    def from_manifest(cls, entry: dict, root: str | os.PathLike | None = None) -> Source:
        """Rebuild a source from its manifest entry (``root`` overrides a moved folder)."""
        src = cls.__new__(cls)
        where = root if root is not None else entry.get("root")
        src.root = None if where is None else Path(where).expanduser()
        src.augment = bool(entry.get("augment", False))
        return src

    def scan(self, exclude: str | os.PathLike | None = None) -> list[Item]:
        """Every item, sorted by id. Files under ``exclude`` (the index itself) are left out."""
        if self.root is None:
            bases = [Item(name) for name in sorted(gallery())]
        else:
            skip = Path(exclude).resolve() if exclude is not None else None
            bases = []
            for path in iter_image_files(self.root):
                if skip is not None and (path == skip or skip in path.parents):
                    continue
                try:
                    st = path.stat()
                except OSError as exc:  # vanished or unreadable: it shows up as skipped
                    log.warning("cannot stat %s: %s", path, exc)
                    st = None
                rel = path.relative_to(self.root).as_posix()
                bases.append(Item(rel, st.st_size if st else -1, st.st_mtime_ns if st else -1))
        if not self.augment:
            return sorted(bases, key=lambda it: it.id)
        items = [Item(f"{b.id}|{r}", b.size, b.mtime_ns) for b in bases for r in AUGMENTATIONS]
        return sorted(items, key=lambda it: it.id)

    def split(self, item_id: str) -> tuple[str, str | None]:
        """``(base id, recipe or None)`` of an item id."""
        if self.augment:
            base, _, recipe = item_id.rpartition("|")
            return base, recipe
        return item_id, None

    def path(self, item_id: str) -> Path | None:
        """The file behind an item (``None`` for gallery photos)."""
        if self.root is None:
            return None
        return self.root / self.split(item_id)[0]

    def load(self, item_id: str, item: Item | None = None) -> Image.Image:
        """The RGB image of an item, augmentation applied.

        Raises
        ------
        ImageError
            If the file cannot be read or the id is not valid for this source.
        """
        base, recipe = self.split(item_id)
        if self.root is None:
            image = _gallery_photo(base)
        else:
            path = self.root / base
            if ".." in Path(base).parts or Path(base).is_absolute():
                raise ImageError(f"bad image id {item_id!r}")
            if item is None:
                image = load_image(path)
            else:  # augmented items of one file come in a row: decode it once
                image = _decoded(str(path), item.size, item.mtime_ns)
        return apply_recipe(image, recipe) if recipe else image


def check_source(source) -> Source:
    """A :class:`Source` from what the caller gave (a Source, a folder, or None)."""
    if isinstance(source, Source):
        return source
    if source is None:
        return Source(None, augment=True)
    if isinstance(source, (str, os.PathLike)):
        return Source(source)
    raise CnnscopeError(f"bad image source {source!r}: give a folder or None for the gallery")
