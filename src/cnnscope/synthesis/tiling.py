"""Overlapping windows of the model's input size, updated in checkerboard order (cnn-vis).

Along one axis of length ``L`` with windows of length ``l``, the window starts are
``round(linspace(0, L - l, n))`` for the smallest ``n`` such that the windows cover
the axis without gaps, and no window overlaps its second neighbour. Each pixel is
therefore inside 1 or 2 windows per axis, and 1, 2 or 4 windows in the image. The 2-D
windows (regions) are split into an *even* and an *odd* set like the squares of a
checkerboard: region ``(i, j)`` (row ``i``, column ``j``) is even when ``i % 2 == j % 2``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import CnnscopeError

__all__ = ["Region", "Tiling", "best_ranges", "check_ranges", "ranges", "tiling"]

Range = tuple[int, int]


@dataclass(frozen=True)
class Region:
    """One window: rows ``y0:y1``, columns ``x0:x1``, and its place in the grid."""

    y0: int
    y1: int
    x0: int
    x1: int
    row: int
    col: int

    @property
    def key(self) -> tuple[int, int, int, int]:
        """The window's bounds, used to key its optimizer state."""
        return (self.y0, self.y1, self.x0, self.x1)

    @property
    def slices(self) -> tuple[slice, slice]:
        """``(rows, columns)`` slices of the window."""
        return slice(self.y0, self.y1), slice(self.x0, self.x1)


def ranges(length: int, window: int, n: int) -> list[Range]:
    """``n`` windows of ``window`` pixels spread evenly over ``length`` pixels.

    Examples
    --------
    >>> ranges(10, 4, 3)
    [(0, 4), (3, 7), (6, 10)]
    """
    starts = np.round(np.linspace(0, length - window, n)).astype(int)
    return [(int(s), int(s) + window) for s in starts]


def check_ranges(rs: list[Range], length: int) -> bool:
    """Whether windows cover ``[0, length)`` gaplessly, with no overlap of second neighbours.

    Examples
    --------
    >>> check_ranges([(0, 4), (3, 7), (6, 10)], 10)
    True
    >>> check_ranges([(0, 6), (2, 8), (4, 10)], 10)
    False
    """
    if not rs or rs[0][0] != 0 or rs[-1][1] != length:
        return False
    starts = [s for s, _ in rs]
    if len(set(starts)) != len(starts):
        return False
    for i in range(len(rs) - 1):
        if rs[i][1] < rs[i + 1][0]:  # gap
            return False
    for i in range(len(rs) - 2):
        if rs[i][1] >= rs[i + 2][0]:  # overlaps its second neighbour
            return False
    return True


def best_ranges(length: int, window: int) -> list[Range]:
    """The fewest evenly spread windows that pass :func:`check_ranges`.

    A window longer than the axis is shrunk to the axis.

    Examples
    --------
    >>> best_ranges(500, 224)
    [(0, 224), (138, 362), (276, 500)]
    """
    if length < 1 or window < 1:
        raise CnnscopeError(f"bad tiling: axis of {length} px with windows of {window} px")
    window = min(window, length)
    for n in range(1, 100_000):
        rs = ranges(length, window, n)
        if check_ranges(rs, length):
            return rs
    raise CnnscopeError(f"no tiling of {length} px with windows of {window} px")


@dataclass(frozen=True)
class Tiling:
    """The regions of an image, split in checkerboard order, and each pixel's coverage."""

    size: tuple[int, int]
    window: tuple[int, int]
    even: tuple[Region, ...]
    odd: tuple[Region, ...]

    @property
    def regions(self) -> tuple[Region, ...]:
        """All regions, even then odd."""
        return self.even + self.odd

    def coverage(self) -> torch.Tensor:
        """How many regions contain each pixel (H x W, values 1, 2 or 4)."""
        count = torch.zeros(self.size, dtype=torch.int64)
        for r in self.regions:
            count[r.slices] += 1
        return count

    def pixel_learning_rates(self) -> torch.Tensor:
        """``1 / coverage`` per pixel (cnn-vis ``--use_pixel_learning_rates``)."""
        return 1.0 / self.coverage().to(torch.float32)


def tiling(size: tuple[int, int], window: tuple[int, int]) -> Tiling:
    """Tile an image of ``size`` (H, W) with windows of ``window`` (H, W).

    Examples
    --------
    >>> t = tiling((300, 500), (224, 224))
    >>> len(t.even), len(t.odd), sorted(set(t.coverage().flatten().tolist()))
    (3, 3, [1, 2, 4])
    """
    h, w = size
    ys = best_ranges(h, window[0])
    xs = best_ranges(w, window[1])
    even: list[Region] = []
    odd: list[Region] = []
    for i, (x0, x1) in enumerate(xs):
        for j, (y0, y1) in enumerate(ys):
            region = Region(y0, y1, x0, x1, j, i)
            (even if i % 2 == j % 2 else odd).append(region)
    win = (min(window[0], h), min(window[1], w))
    return Tiling((h, w), win, tuple(even), tuple(odd))
