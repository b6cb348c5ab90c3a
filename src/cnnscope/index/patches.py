"""Patches of dataset examples: receptive-field crops, reconstruction-support crops, grids.

For each example of a unit (an image and the position of the unit's maximum):

* the **field crop**: the unit's theoretical receptive field at that position
  (:meth:`cnnscope.engine.Field.box`), padded where it runs off the image;
* the **support crop** (cnn_treevis's way): the tight bounding box of the pixels where the
  unit's guided reconstruction is non-zero, ``max_c |r_c| > 0``. The seed decoded rows and
  columns with the height for both axes, which is only right for square inputs; here the
  rows come from axis 0 and the columns from axis 1. An empty support falls back to the
  field box (the seed fell back to a feature-map coordinate);
* the **reconstruction** itself: the gradient at the input of a one-hot seed at the
  unit's position, backpropagated under the guided rule (one backward for a whole chunk
  of examples, one image per batch row). The seed is the engine's
  (:func:`cnnscope.engine.unit_seed`): below the unit's activation, so that a ReLU6 unit
  saturated at 6 is not drawn as a flat grey tile.

The grid shows the crops in ``ceil(sqrt(k))`` columns, strongest first: image patches on
the left, reconstructions (signed, centred on grey) on the right, as in the seed.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..engine import Engine, Field, Unit, recorded_layers, strength_at, unit_seed
from ..errors import CnnscopeError
from ..render import gradient_image, grid

__all__ = [
    "Patch",
    "compute_patches",
    "crop",
    "field_box",
    "render_grid",
    "support_box",
]

log = logging.getLogger(__name__)

Box = tuple[int, int, int, int]  # top, left, bottom, right (inclusive)
#: Grey level of the parts of a crop that lie outside the image.
OUTSIDE = 48
_GAP = 5


def field_box(field: Field | None, y: int, x: int, input_size: tuple[int, int]) -> Box:
    """The receptive field of unit ``(y, x)`` as an inclusive integer box (may leave the image).

    ``None`` (a global field, e.g. after pooling) gives the whole image.

    Examples
    --------
    >>> field_box(Field((3, 3), (2, 2), (1.0, 1.0)), 0, 2, (8, 8))
    (0, 4, 2, 6)
    >>> field_box(None, 0, 0, (8, 10))
    (0, 0, 7, 9)
    """
    if field is None:
        return 0, 0, int(input_size[0]) - 1, int(input_size[1]) - 1
    top, left, bottom, right = field.box(int(y), int(x))
    return math.floor(top), math.floor(left), math.ceil(bottom), math.ceil(right)


def support_box(reconstruction: np.ndarray, fallback: Box) -> Box:
    """Tight box of the pixels where ``max_c |r_c| > 0`` (``reconstruction`` is 3 x H x W).

    Examples
    --------
    >>> r = np.zeros((3, 4, 9)); r[1, 3, 7] = -0.5; r[0, 1, 2] = 2.0
    >>> support_box(r, (0, 0, 3, 8))  # rows 1..3, columns 2..7 (a non-square input)
    (1, 2, 3, 7)
    >>> support_box(np.zeros((3, 4, 9)), (0, 0, 1, 1))
    (0, 0, 1, 1)
    """
    m = np.abs(np.asarray(reconstruction)).max(axis=0)
    nz = m > 0
    if not nz.any():
        return fallback
    rows = np.flatnonzero(nz.any(axis=1))
    cols = np.flatnonzero(nz.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]), int(cols[-1])


def crop(image: np.ndarray, box: Box, fill: float = OUTSIDE) -> np.ndarray:
    """Cut ``box`` out of an ``H x W [x C]`` array, padding with ``fill`` outside the image.

    Examples
    --------
    >>> a = np.arange(12).reshape(3, 4)
    >>> crop(a, (-1, 2, 1, 4), fill=-1).tolist()
    [[-1, -1, -1], [2, 3, -1], [6, 7, -1]]
    """
    top, left, bottom, right = box
    h, w = image.shape[:2]
    out = np.full((bottom - top + 1, right - left + 1, *image.shape[2:]), fill, image.dtype)
    y0, x0, y1, x1 = max(top, 0), max(left, 0), min(bottom, h - 1), min(right, w - 1)
    if y0 <= y1 and x0 <= x1:
        out[y0 - top : y1 - top + 1, x0 - left : x1 - left + 1] = image[y0 : y1 + 1, x0 : x1 + 1]
    return out


@dataclass
class Patch:
    """One example with its view of the image, its two boxes and its reconstruction.

    Attributes
    ----------
    example : Example
        The example.
    image : numpy.ndarray or None
        The model's view of the image (``H x W x 3`` uint8, after resizing and cropping);
        ``None`` when the image could not be read any more.
    field_box, support_box : tuple of int
        ``(top, left, bottom, right)``, inclusive, in the model's input pixels.
    reconstruction : numpy.ndarray or None
        ``3 x H x W`` float32 gradient at the input.
    activation : float
        The unit's strength at the example's position (:func:`cnnscope.engine.strengths`:
        its pre-activation for an activation layer), recomputed now (it matches the
        indexed value up to batch-size rounding).
    error : str or None
        Why the image is missing.
    """

    example: object
    image: np.ndarray | None
    field_box: Box
    support_box: Box
    reconstruction: np.ndarray | None
    activation: float
    error: str | None = None

    def field_crop(self) -> np.ndarray:
        """The image cut to the receptive field."""
        return crop(self._image(), self.field_box)

    def support_crop(self) -> np.ndarray:
        """The image cut to the reconstruction's support."""
        return crop(self._image(), self.support_box)

    def reconstruction_crop(self, which: str = "support") -> np.ndarray:
        """The reconstruction cut to a box, as a picture centred on grey (``h x w x 3`` uint8)."""
        box = self.support_box if which == "support" else self.field_box
        if self.reconstruction is None:
            raise CnnscopeError(f"example {self.example} has no picture: {self.error}")
        return gradient_image(crop(self.reconstruction.transpose(1, 2, 0), box, 0.0))

    def _image(self) -> np.ndarray:
        if self.image is None:
            raise CnnscopeError(f"example {self.example} has no picture: {self.error}")
        return self.image


def compute_patches(index, unit: Unit, model, rule: str = "guided", chunk: int = 8) -> list[Patch]:
    """Patches of the unit's examples (see the module docstring), strongest first.

    Parameters
    ----------
    index : Index
        The opened index.
    unit : Unit
        A unit of the index (checked by :meth:`Index.unit`).
    model : LoadedModel
        The model the index was built with.
    rule : str
        Backward rule of the reconstruction (``guided`` as in the seed).
    chunk : int
        Examples per forward/backward.

    Examples
    --------
    >>> p = compute_patches(ix, Unit("blocks.4", 7), model)[0]  # doctest: +SKIP
    >>> p.support_crop().shape  # doctest: +SKIP
    (61, 58, 3)
    """
    examples = index.examples(unit)
    pre = index.preprocessing
    size = (int(pre.input_size[0]), int(pre.input_size[1]))
    field = index.field(unit.layer)
    engine = Engine.for_module(model.module)
    recorded = recorded_layers(engine, [unit.layer], size)
    patches: list[Patch] = []
    for start in range(0, len(examples), chunk):
        part = examples[start : start + chunk]
        views: list[np.ndarray | None] = []
        inputs: list[torch.Tensor] = []
        errors: list[str | None] = []
        for ex in part:
            try:
                image = index.load_image(ex)
                views.append(np.asarray(pre.geometry(image), np.uint8))
                inputs.append(pre(image))
                errors.append(None)
            except CnnscopeError as exc:
                log.warning("example %s of %s: %s", ex.image, unit, exc)
                views.append(None)
                inputs.append(torch.zeros(1, 3, *size))
                errors.append(str(exc))
        x = torch.cat(inputs)
        fwd = engine.forward(x, cache=False, layers=recorded, grad=True)
        positions = [ex.position for ex in part]
        values = strength_at(fwd, unit.layer, unit.channel, positions)
        at, seed = unit_seed(fwd, unit.layer, unit.channel, positions)
        grads = fwd.grad(at, seed, to="input", rule=rule).float().cpu().numpy()
        for i, ex in enumerate(part):
            fbox = field_box(field, ex.position[0], ex.position[1], size)
            if views[i] is None:
                patches.append(Patch(ex, None, fbox, fbox, None, float("nan"), errors[i]))
                continue
            clipped = (
                max(fbox[0], 0),
                max(fbox[1], 0),
                min(fbox[2], size[0] - 1),
                min(fbox[3], size[1] - 1),
            )
            patches.append(
                Patch(
                    example=ex,
                    image=views[i],
                    field_box=fbox,
                    support_box=support_box(grads[i], clipped),
                    reconstruction=grads[i],
                    activation=float(values[i]),
                )
            )
    return patches


def _fit(tile_image: np.ndarray, tile: int) -> np.ndarray:
    """Scale an image to fit a ``tile x tile`` square (aspect kept) and centre it on black."""
    h, w = tile_image.shape[:2]
    scale = tile / max(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    if scale >= 2:
        resample = Image.Resampling.NEAREST  # small fields: show the pixels
    elif scale >= 1:
        resample = Image.Resampling.BICUBIC
    else:
        resample = Image.Resampling.LANCZOS
    img = Image.fromarray(np.ascontiguousarray(tile_image)).resize((nw, nh), resample)
    out = np.zeros((tile, tile, 3), np.uint8)
    y, x = (tile - nh) // 2, (tile - nw) // 2
    out[y : y + nh, x : x + nw] = np.asarray(img)
    return out


def _missing(tile: int) -> np.ndarray:
    out = np.full((tile, tile, 3), 24, np.uint8)
    idx = np.arange(tile)
    out[idx, idx] = out[idx, tile - 1 - idx] = (160, 40, 40)
    return out


def render_grid(
    patches: list[Patch], k: int, crop_by: str = "support", tile: int = 96
) -> np.ndarray:
    """The grid ``[image patches | 5 px gap | reconstructions]`` as ``H x W x 3`` uint8.

    Both halves have ``ceil(sqrt(k))`` columns; slots without an example stay black, and an
    image that can no longer be read shows a red cross.

    Examples
    --------
    >>> render_grid([], k=4, tile=8).shape
    (22, 49, 3)
    """
    cols = max(1, math.ceil(math.sqrt(k)))
    blank = np.zeros((tile, tile, 3), np.uint8)
    left, right = [], []
    for slot in range(k):
        p = patches[slot] if slot < len(patches) else None
        if p is None:
            left.append(blank)
            right.append(blank)
        elif p.image is None:
            left.append(_missing(tile))
            right.append(_missing(tile))
        else:
            box = p.support_box if crop_by == "support" else p.field_box
            left.append(_fit(crop(p.image, box), tile))
            right.append(_fit(p.reconstruction_crop(crop_by), tile))
    a = grid(left, cols=cols, pad=2, fill=0)
    b = grid(right, cols=cols, pad=2, fill=0)
    gap = np.zeros((a.shape[0], _GAP, 3), np.uint8)
    return np.concatenate([a, gap, b], axis=1)
