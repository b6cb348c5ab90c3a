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

__all__ = ["Transform", "compose", "fit", "jitter", "pad", "rotate", "scale", "standard_transforms"]

Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _pick(values: Sequence[float], gen: torch.Generator) -> float:
    i = int(torch.randint(len(values), (1,), generator=gen).item())
    return float(values[i])


def _check_widths(**widths: int) -> None:
    for name, v in widths.items():
        if v < 0:
            raise CnnscopeError(f"{name} must be >= 0, got {v}")


def _offsets(d: int, h: int, w: int, gen: torch.Generator) -> tuple[int, int]:
    """The random ``(dy, dx)`` of a jitter of ``d`` pixels on an ``h x w`` image (0, 0 when
    ``d`` is 0 or not smaller than the image)."""
    if d == 0 or d >= min(h, w):
        return 0, 0
    dy = int(torch.randint(d + 1, (1,), generator=gen).item())
    dx = int(torch.randint(d + 1, (1,), generator=gen).item())
    return dy, dx


def pad(width: int, mode: str = "constant") -> Transform:
    """Pad ``width`` pixels on each side (``constant`` pads with the mean colour).

    Examples
    --------
    >>> pad(2)(torch.ones(1, 3, 4, 4), torch.Generator()).shape
    torch.Size([1, 3, 8, 8])
    """
    _check_widths(pad=width)
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
    _check_widths(jitter=d)

    def apply(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        h, w = x.shape[-2:]
        if d == 0 or d >= min(h, w):
            return x
        dy, dx = _offsets(d, h, w, gen)
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


def _centre(excess: int) -> int:
    """Offset of a centred window in a larger (excess > 0) or smaller (< 0) image, as :func:`fit`."""
    return excess // 2 if excess >= 0 else -((-excess) // 2)


def fit(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Centre-crop, or pad with the mean colour (0), ``x`` to ``size`` (H, W).

    The offset of the centre is rounded down, as ``(larger - smaller) // 2``.

    Examples
    --------
    >>> fit(torch.ones(1, 1, 5, 3), (3, 5))[0, 0].tolist()
    [[0.0, 1.0, 1.0, 1.0, 0.0], [0.0, 1.0, 1.0, 1.0, 0.0], [0.0, 1.0, 1.0, 1.0, 0.0]]
    """
    h, w = x.shape[-2:]
    th, tw = size
    if h > th or w > tw:
        y0, x0 = max(0, (h - th) // 2), max(0, (w - tw) // 2)
        x = x[..., y0 : y0 + min(h, th), x0 : x0 + min(w, tw)]
        h, w = x.shape[-2:]
    if h < th or w < tw:
        top, left = (th - h) // 2, (tw - w) // 2
        x = F.pad(x, (left, tw - w - left, top, th - h - top))
    return x


def standard_transforms(
    pad_width: int = 0,
    jitter_px: int = 0,
    scales: Sequence[float] = (),
    angles: Sequence[float] = (),
    second_jitter: int = 0,
    pad_mode: str = "constant",
) -> Transform:
    """Pad, jitter, scale, rotate, jitter again, keeping the image's size.

    The result is the centre (H, W) of what the five steps in turn give (cropped, or
    padded with the mean colour), so the model always sees the size it would see
    without transforms (same cost, same activation grid). With constant padding the whole
    chain is one affine resampling (one ``grid_sample``, bilinear, outside = the mean
    colour) at a fraction of the cost of the steps in turn.

    Examples
    --------
    >>> t = standard_transforms(pad_width=4, jitter_px=4, scales=[1.0, 1.1], angles=[-5, 5])
    >>> t(torch.zeros(1, 3, 32, 40), torch.Generator().manual_seed(0)).shape
    torch.Size([1, 3, 32, 40])
    """
    _check_widths(pad=pad_width, jitter=jitter_px, jitter2=second_jitter)
    if not (pad_width or jitter_px or scales or angles or second_jitter):
        return compose([])
    if pad_mode != "constant":
        chain = compose(
            ([pad(pad_width, pad_mode)] if pad_width else [])
            + ([jitter(jitter_px)] if jitter_px else [])
            + ([scale(scales)] if scales else [])
            + ([rotate(angles)] if angles else [])
            + ([jitter(second_jitter)] if second_jitter else [])
        )

        def sequential(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
            return fit(chain(x, gen), (int(x.shape[-2]), int(x.shape[-1])))

        return sequential
    scales = [float(f) for f in scales]
    angles = [float(a) for a in angles]
    if scales and min(scales) <= 0:
        raise CnnscopeError(f"scale factors must be positive, got {scales}")

    def apply(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        h, w = x.shape[-2:]
        # Sizes and random draws, in the order of the steps in turn.
        hp, wp = h + 2 * pad_width, w + 2 * pad_width
        oy, ox = _offsets(jitter_px, hp, wp, gen)
        d1 = jitter_px if jitter_px < min(hp, wp) else 0
        hc, wc = hp - d1, wp - d1
        f = _pick(scales, gen) if scales else 1.0
        hs, ws = (max(1, int(round(hc * f))), max(1, int(round(wc * f)))) if f != 1.0 else (hc, wc)
        a = _pick(angles, gen) if angles else 0.0
        qy, qx = _offsets(second_jitter, hs, ws, gen)
        d2 = second_jitter if second_jitter < min(hs, ws) else 0
        # Their result is (hs - d2) x (ws - d2); keep its centre h x w.
        cy, cx = _centre(hs - d2 - h), _centre(ws - d2 - w)
        if f == 1.0 and a == 0.0:  # only shifts
            y0, x0 = oy + qy + cy - pad_width, ox + qx + cx - pad_width
            grow = max(0, -y0, -x0, y0 + h - x.shape[-2], x0 + w - x.shape[-1])
            if grow:
                x = F.pad(x, (grow,) * 4)
            return x[..., y0 + grow : y0 + grow + h, x0 + grow : x0 + grow + w]
        # Continuous coordinates (pixel i covers [i, i+1)), from the output back to the input.
        dt, dev = x.dtype, x.device
        ry = torch.arange(h, dtype=dt, device=dev) + 0.5 + qy + cy
        rx = torch.arange(w, dtype=dt, device=dev) + 0.5 + qx + cx
        ry, rx = torch.meshgrid(ry, rx, indexing="ij")  # in the rotated image (hs x ws)
        if a != 0.0:
            t = math.radians(a)
            c, s = math.cos(t), math.sin(t)
            ny, nx = 2 * ry / hs - 1, 2 * rx / ws - 1
            sx = c * nx - s * (hs / ws) * ny
            sy = s * (ws / hs) * nx + c * ny
            ry, rx = (sy + 1) * hs / 2, (sx + 1) * ws / 2
        iy = ry * (hc / hs) + oy - pad_width
        ix = rx * (wc / ws) + ox - pad_width
        grid = torch.stack((2 * ix / w - 1, 2 * iy / h - 1), dim=-1)
        grid = grid.unsqueeze(0).expand(x.shape[0], -1, -1, -1)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    return apply
