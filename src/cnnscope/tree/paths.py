"""Tree paths: a root unit followed by one channel per lower chain layer.

A path is a tuple of :class:`~cnnscope.engine.Unit`, root first. Its text form joins the
units with ``/`` and writes a layer's call suffix ``#K`` as ``~K``, so that it can travel
in a URL unescaped: ``logits:285/blocks.15:120/blocks.11:33``.
"""

from __future__ import annotations

import re
import warnings

from ..engine import Unit
from ..errors import UnitSpecError
from ..vocabulary import from_url_form, url_form

__all__ = ["TreePath", "format_path", "parse_path"]

#: A tree path: units, root first.
TreePath = tuple[Unit, ...]

_MAX_DEPTH = 64
_SAFE = re.compile(r"^[A-Za-z0-9_.\-:@,~/#]+$")


def parse_path(text: str) -> TreePath:
    """Parse the text form of a path.

    Parameters
    ----------
    text : str
        Units joined by ``/``, root first; ``LAYER:CHANNEL`` or ``LAYER:CHANNEL@Y,X``.
        Only the root may carry a position. ``~K`` and ``#K`` both name a layer's K-th call.

    Returns
    -------
    TreePath
        The units, root first.

    Raises
    ------
    UnitSpecError
        On empty text, a bad unit, a position below the root, or a path too deep.

    Examples
    --------
    >>> parse_path("logits:285/blocks.15:120")
    (Unit(layer='logits', channel=285, pos=None), Unit(layer='blocks.15', channel=120, pos=None))
    >>> parse_path("shared~2:3")[0].layer
    'shared#2'
    """
    if not isinstance(text, str) or not text.strip():
        raise UnitSpecError("empty tree path: write ROOT/UNIT/..., e.g. logits:285/blocks.15:120")
    text = text.strip().strip("/")
    if not _SAFE.match(text):
        raise UnitSpecError(f"bad tree path {text[:80]!r}: unexpected characters")
    parts = text.split("/")
    if len(parts) > _MAX_DEPTH:
        raise UnitSpecError(f"tree path too deep ({len(parts)} > {_MAX_DEPTH} units)")
    units = []
    for i, part in enumerate(parts):
        if not part:
            raise UnitSpecError(f"bad tree path {text!r}: empty unit between '/'")
        unit = Unit.parse(from_url_form(part))
        if i and unit.pos is not None:
            raise UnitSpecError(
                f"bad tree path {text!r}: only the root may carry a position (@Y,X)"
            )
        units.append(unit)
    return tuple(units)


def format_path(path: TreePath) -> str:
    """The URL-safe text form of ``path`` (inverse of :func:`parse_path`).

    Examples
    --------
    >>> format_path((Unit("logits", 285), Unit("blocks.15", 120)))
    'logits:285/blocks.15:120'
    >>> format_path((Unit("shared#2", 3, (1, 2)),))
    'shared~2:3@1,2'
    """
    if not path:
        raise UnitSpecError("empty tree path")
    return "/".join(url_form(str(u)) for u in path)


def __getattr__(name: str):
    """``Path``, the old name of :data:`TreePath` (it shadowed :class:`pathlib.Path`)."""
    if name == "Path":
        warnings.warn(
            "cnnscope.tree Path is now TreePath (Path shadowed pathlib.Path)",
            DeprecationWarning,
            stacklevel=2,
        )
        return TreePath
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
