"""Random, differentiable image transforms applied before each forward pass (Lucid style).

Each transform maps an image batch (N x 3 x H x W, working units) to another and draws
its randomness from a ``torch.Generator``, so a seeded run is repeatable. The whole
batch gets the same draw in one step. Gradients flow back through every transform.

* ``pad(p)``: add ``p`` pixels on each side (``constant`` 0 = the mean colour, or ``reflect``).
* ``jitter(d)``: crop ``d`` pixels in total from each axis at a random offset.
* ``scale(factors)``: bilinear resize by a factor drawn from ``factors``.
* ``rotate(angles)``: rotate by an angle (degrees) drawn from ``angles``, about the centre.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ..errors import CnnscopeError

__all__ = ["Transform", "compose", "jitter", "pad", "rotate", "scale", "standard_transforms"]

Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _pick(values: Sequence[float], gen: torch.Generator) -> float:
    i = int(torch.randint(len(values), (1,), generator=gen).item())
    return float(values[i])


def pad(width: int, mode: str = "constant") -> Transform:
    """Pad ``width`` pixels on each side (``constant`` pads with the mean colour).

    Examples
    --------
    >>> pad(2)(torch.ones(1, 3, 4, 4), torch.Generator()).shape
    torch.Size([1, 3, 8, 8])
    """
    if width < 0:
        raise CnnscopeError(f"pad must be >= 0, got {width}")
    if mode not in ("constant", "reflect", "replicate"):
        raise CnnscopeError(f"unknown pad mode {mode!r}: choose constant, reflect or replicate")

    def apply(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if width == 0:
            return x
        m = mode if (mode == "constant" or min(x.shape[-2:]) > width) else "replicate"
        return F.pad(x, (width,) * 4, mode=m)

    return apply


def jitter(d: int) -> Transform:
    """Random crop removing ``d`` pixels in total from each axis.

    Examples
    --------
    >>> jitter(3)(torch.ones(1, 3, 10, 12), torch.Generator()).shape
    torch.Size([1, 3, 7, 9])
    """
    if d < 0:
        raise CnnscopeError(f"jitter must be >= 0, got {d}")

    def apply(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        h, w = x.shape[-2:]
        if d == 0 or d >= min(h, w):
            return x
        dy = int(torch.randint(d + 1, (1,), generator=gen).item())
        dx = int(torch.randint(d + 1, (1,), generator=gen).item())
        return x[..., dy : h - d + dy, dx : w - d + dx]

    return apply


def scale(factors: Sequence[float]) -> Transform:
    """Bilinear resize by a random factor from ``factors``.

    Examples
    --------
    >>> scale([2.0])(torch.ones(1, 3, 5, 6), torch.Generator()).shape
    torch.Size([1, 3, 10, 12])
    """
    factors = [float(f) for f in factors]
    if not factors or min(factors) <= 0:
        raise CnnscopeError(f"scale factors must be positive, got {factors}")

    def apply(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        f = _pick(factors, gen)
        if f == 1.0:
            return x
        h, w = x.shape[-2:]
        size = (max(1, int(round(h * f))), max(1, int(round(w * f))))
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    return apply


def rotate(angles: Sequence[float]) -> Transform:
    """Rotate about the centre by a random angle (degrees) from ``angles`` (bilinear).

    Corners that come from outside the image get the mean colour (0).

    Examples
    --------
    >>> x = torch.arange(9.0).view(1, 1, 3, 3).expand(1, 3, 3, 3)
    >>> rotate([90.0])(x, torch.Generator())[0, 0].round().tolist()
    [[2.0, 5.0, 8.0], [1.0, 4.0, 7.0], [0.0, 3.0, 6.0]]
    """
    angles = [float(a) for a in angles]
    if not angles:
        raise CnnscopeError("rotate needs at least one angle")

    def apply(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        a = _pick(angles, gen)
        if a == 0.0:
            return x
        n, _, h, w = x.shape
        t = math.radians(a)
        c, s = math.cos(t), math.sin(t)
        # Normalised coordinates differ in scale per axis on non-square images.
        theta = torch.tensor(
            [[c, -s * h / w, 0.0], [s * w / h, c, 0.0]], dtype=x.dtype, device=x.device
        )
        grid = F.affine_grid(theta.expand(n, 2, 3), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    return apply


def compose(transforms: Sequence[Transform]) -> Transform:
    """Apply ``transforms`` in order.

    Examples
    --------
    >>> t = compose([pad(1), jitter(2)])
    >>> t(torch.ones(1, 3, 4, 4), torch.Generator()).shape
    torch.Size([1, 3, 4, 4])
    """
    transforms = list(transforms)

    def apply(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        for t in transforms:
            x = t(x, gen)
        return x

    return apply


def standard_transforms(
    pad_width: int = 0,
    jitter_px: int = 0,
    scales: Sequence[float] = (),
    angles: Sequence[float] = (),
    second_jitter: int = 0,
    pad_mode: str = "constant",
) -> Transform:
    """Pad, jitter, scale, rotate, jitter again: the usual robustness chain.

    Examples
    --------
    >>> t = standard_transforms(pad_width=4, jitter_px=4, scales=[1.0, 1.1], angles=[-5, 5])
    >>> t(torch.zeros(1, 3, 32, 32), torch.Generator().manual_seed(0)).shape[1]
    3
    """
    chain: list[Transform] = []
    if pad_width:
        chain.append(pad(pad_width, pad_mode))
    if jitter_px:
        chain.append(jitter(jitter_px))
    if scales:
        chain.append(scale(scales))
    if angles:
        chain.append(rotate(angles))
    if second_jitter:
        chain.append(jitter(second_jitter))
    return compose(chain)
