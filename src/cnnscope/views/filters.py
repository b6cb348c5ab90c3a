"""First-layer filters as an RGB grid."""

from __future__ import annotations

import numpy as np

from ..errors import CnnscopeError
from ._common import conv_weight, first_conv, module_of
from .mosaic import Mosaic, Tile, draw_grid

__all__ = ["filter_grid"]


def filter_grid(
    model, layer: str | None = None, normalize: str = "joint", *, min_tile: int = 48
) -> Mosaic:
    """The filters of the first conv layer (or ``layer``) as a grid of RGB pictures.

    Weights are shown around mid-grey: ``0.5 + w / (2 max|w|)``, with ``max|w|`` over
    all filters (``joint``) or per filter (``filter``), so zero is grey, positive
    weights on the red channel are red, and so on. A layer with one input channel is
    shown in grey; other layers must have 3 input channels.

    Returns
    -------
    Mosaic
        ``tiles`` give each filter's box (``channel`` is the filter number).

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))
    >>> m = filter_grid(net)
    >>> [t.channel for t in m.tiles]
    [0, 1, 2, 3]
    """
    module = module_of(model)
    layer = layer or first_conv(module)
    w = conv_weight(module, layer).detach().cpu().double().numpy()
    f, c = w.shape[:2]
    if c not in (1, 3):
        raise CnnscopeError(
            f"layer {layer!r} has {c} input channels: only 1- or 3-channel filters are pictures"
        )
    if normalize == "joint":
        peak = np.full(f, np.abs(w).max())
    elif normalize == "filter":
        peak = np.abs(w.reshape(f, -1)).max(axis=1)
    else:
        raise CnnscopeError(f"unknown normalisation {normalize!r}: use joint or filter")
    peak[peak == 0] = 1.0
    tiles = []
    for k in range(f):
        rgb = 0.5 + w[k] / (2 * peak[k])  # C x kh x kw
        rgb = np.repeat(rgb, 3, axis=0) if c == 1 else rgb
        tiles.append(np.rint(np.clip(rgb.transpose(1, 2, 0), 0, 1) * 255).astype(np.uint8))
    image, boxes = draw_grid(tiles, [str(k) for k in range(f)], min_tile=min_tile)
    return Mosaic(
        image=image,
        tiles=[Tile(k, *box) for k, box in enumerate(boxes)],
        permutation=np.arange(f),
        layer=layer,
        vmin=-peak,
        vmax=peak,
        cmap="rgb",
        normalize=normalize,
    )
