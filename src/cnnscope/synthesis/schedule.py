"""Sizes of a multiscale run (cnn-vis ``--initial_size``/``--final_size``/``--num_sizes``)."""

from __future__ import annotations

import re

import numpy as np

from ..errors import CnnscopeError

__all__ = ["RESIZE_TYPES", "parse_size", "size_sequence"]

RESIZE_TYPES = ("geometric", "linear")

_MULT = re.compile(r"^x(?P<f>\d+(?:\.\d*)?|\.\d+)$")
_ABS = re.compile(r"^(?P<h>\d+)x(?P<w>\d+)$")


def parse_size(spec: str | None, base: tuple[int, int]) -> tuple[int, int]:
    """Turn ``None``, ``xF`` or ``HxW`` into a size (H, W).

    ``None`` is the base size; ``xF`` is ``int(F * base)`` per axis; ``HxW`` is absolute.

    Examples
    --------
    >>> parse_size(None, (224, 224)), parse_size("x0.5", (100, 300)), parse_size("270x480", (1, 1))
    ((224, 224), (50, 150), (270, 480))
    """
    if spec is None or str(spec).strip() == "":
        return (int(base[0]), int(base[1]))
    text = str(spec).strip().lower()
    m = _MULT.match(text)
    if m:
        f = float(m["f"])
        size = (int(f * base[0]), int(f * base[1]))
    else:
        m = _ABS.match(text)
        if not m:
            raise CnnscopeError(f"bad size {spec!r}: write xF (e.g. x0.5) or HxW (e.g. 270x480)")
        size = (int(m["h"]), int(m["w"]))
    if min(size) < 1:
        raise CnnscopeError(f"size {spec!r} gives an empty image {size[0]}x{size[1]}")
    return size


def size_sequence(
    initial: tuple[int, int], final: tuple[int, int], num: int, kind: str = "geometric"
) -> list[tuple[int, int]]:
    """``num`` sizes from ``initial`` to ``final``, spaced geometrically or linearly.

    Examples
    --------
    >>> size_sequence((100, 200), (400, 800), 3)
    [(100, 200), (200, 400), (400, 800)]
    >>> size_sequence((100, 200), (400, 800), 3, "linear")
    [(100, 200), (250, 500), (400, 800)]
    """
    if num < 1:
        raise CnnscopeError(f"the number of sizes must be >= 1, got {num}")
    if kind not in RESIZE_TYPES:
        raise CnnscopeError(f"unknown resize type {kind!r}: choose geometric or linear")
    if num == 1:
        return [(int(initial[0]), int(initial[1]))]
    out = []
    for axis in range(2):
        a, b = float(initial[axis]), float(final[axis])
        if kind == "geometric":
            vals = np.logspace(np.log10(a), np.log10(b), num)
        else:
            vals = np.linspace(a, b, num)
        out.append([int(round(v)) for v in vals])
    return list(zip(out[0], out[1]))
