"""The tree's pictures: an input gradient as an image, zoomed to a node's focus."""

from __future__ import annotations

import numpy as np
import torch

from ..render import gradient_image
from ..render.pictures import zoom_picture

__all__ = ["MIN_FOCUS", "focus_box", "render_gradient", "zoom_picture"]

#: Smallest side of a focus box, in input pixels (a few cells of a low layer).
MIN_FOCUS = 48


def focus_box(peak: tuple[int, int], grid: tuple[int, int], size: tuple[int, int]):
    """The square pixel box over the 3 x 3 grid cells around ``peak`` (row, col).

    ``grid`` is the map's (rows, cols), ``size`` the input's (H, W); the box is
    ``(top, left, bottom, right)``, at least :data:`MIN_FOCUS` pixels wide.

    Examples
    --------
    >>> focus_box((0, 2), (7, 7), (224, 224))
    (0, 32, 96, 128)
    """
    (gh, gw), (h, w) = grid, size
    cy, cx = (peak[0] + 0.5) * h / gh, (peak[1] + 0.5) * w / gw
    side = int(round(min(max(3 * h / gh, 3 * w / gw, MIN_FOCUS), h, w)))
    y0 = int(np.clip(round(cy - side / 2), 0, h - side))
    x0 = int(np.clip(round(cx - side / 2), 0, w - side))
    return y0, x0, y0 + side, x0 + side


def render_gradient(grad: torch.Tensor) -> np.ndarray:
    """An input gradient (3 x H x W) as the tree's picture (H x W x 3 uint8).

    Examples
    --------
    >>> render_gradient(torch.randn(3, 4, 5)).shape
    (4, 5, 3)
    """
    return gradient_image(grad)
