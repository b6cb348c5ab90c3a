"""Input coercion: what the caller gives (pictures, paths, arrays, tensors) as model input.

:func:`prepare_input` turns ``(model, image)`` into the module, the loaded model (or
``None`` for a bare module), the ``N x C x H x W`` input batch and :class:`Pictures`, what
the model sees of each image as H x W x 3 uint8, made only when something is drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..errors import CnnscopeError, ImageError
from ..images import resolve_image
from ..models import LoadedModel

__all__ = ["Pictures", "as_pil", "prepare_input"]


def as_pil(image) -> Image.Image:
    """An RGB PIL image from a PIL image, an H x W [x 3|4] array, a path or a gallery name.

    Float arrays in [0, 1] are scaled to 0-255.

    Examples
    --------
    >>> as_pil(np.ones((2, 3), np.float32)).size
    (3, 2)
    """
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        a = image
        if a.ndim == 2:
            a = np.repeat(a[..., None], 3, axis=2)
        if a.ndim != 3 or a.shape[2] not in (3, 4):
            raise ImageError(f"an image array must be H x W x 3, got shape {a.shape}")
        if a.dtype != np.uint8:
            a = np.clip(a * (255.0 if a.max() <= 1.0 else 1.0), 0, 255).round().astype(np.uint8)
        return Image.fromarray(a[..., :3])
    if isinstance(image, (str, Path)):
        return resolve_image(str(image))[1]
    raise ImageError(
        f"cannot use {type(image).__name__} as an image: give a PIL image, a path, "
        "an H x W x 3 array or an N x 3 x H x W tensor"
    )


def prepare_input(model, image) -> tuple[nn.Module, LoadedModel | None, torch.Tensor, bool, list]:
    """Turn ``model`` and ``image`` into ``(module, loaded, x, single, pictures)``.

    ``pictures`` holds, per image, what the model sees as H x W x 3 uint8 (or None).

    Examples
    --------
    >>> _, _, x, single, pics = prepare_input(nn.Conv2d(3, 1, 1), torch.zeros(3, 4, 5))
    >>> tuple(x.shape), single, pics[0].shape
    ((1, 3, 4, 5), True, (4, 5, 3))
    """
    module, loaded = _module_and_loaded(model)
    if isinstance(image, torch.Tensor):
        return (module, loaded, *_tensor_batch(image, loaded))
    return (module, loaded, *_picture_batch(image, loaded))


def _module_and_loaded(model) -> tuple[nn.Module, LoadedModel | None]:
    if isinstance(model, LoadedModel):
        return model.module, model
    if isinstance(model, nn.Module):
        return model, None
    raise CnnscopeError(
        f"cannot explain a {type(model).__name__}: give a LoadedModel (cnnscope.load_model) "
        "or a torch.nn.Module"
    )


def _tensor_batch(image: torch.Tensor, loaded: LoadedModel | None):
    """``(x, single, pictures)`` of an already preprocessed ``[N x] C x H x W`` tensor."""
    x = image.detach()
    single = x.dim() == 3
    if single:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[0] == 0:
        raise ImageError(
            f"an input tensor must be 3 x H x W or N x C x H x W, got {tuple(image.shape)}"
        )
    if not x.is_floating_point():
        raise ImageError("an input tensor must be floating point (the model's normalised input)")
    pictures = Pictures([lambda i=i: _picture_of(loaded, x[i]) for i in range(x.shape[0])])
    return x.float(), single, pictures


def _picture_batch(image, loaded: LoadedModel | None):
    """``(x, single, pictures)`` of one picture or a list, through the model's preprocessing."""
    single = not isinstance(image, (list, tuple))
    images = [image] if single else list(image)
    if not images:
        raise ImageError("no images given")
    if loaded is None:
        raise CnnscopeError(
            "a plain nn.Module has no preprocessing: give a LoadedModel or a preprocessed tensor"
        )
    pils = [as_pil(i) for i in images]
    xs = [loaded.preprocess(p) for p in pils]
    if len({tuple(t.shape) for t in xs}) > 1:
        raise ImageError(
            "images of different sizes cannot be batched: resize them or pass them one by one"
        )
    geometry = loaded.preprocess_config.geometry
    pictures = Pictures([lambda p=p: np.asarray(geometry(p), dtype=np.uint8) for p in pils])
    return torch.cat(xs), single, pictures


class Pictures(Sequence):
    """What the model saw, per image, made on first access (most calls never render).

    Examples
    --------
    >>> pics = Pictures([lambda: np.zeros((2, 2, 3), np.uint8)])
    >>> len(pics), pics[0].shape
    (1, (2, 2, 3))
    """

    def __init__(self, makers: list):
        self._makers = list(makers)
        self._made: dict[int, np.ndarray | None] = {}

    def __len__(self) -> int:
        return len(self._makers)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = range(len(self))[i]
        if i not in self._made:
            self._made[i] = self._makers[i]()
        return self._made[i]


def _picture_of(loaded: LoadedModel | None, x: torch.Tensor) -> np.ndarray | None:
    if x.shape[0] != 3:
        return None
    if loaded is not None:
        return loaded.preprocess_config.to_uint8(x)
    a = x.detach().float().cpu()
    lo, hi = float(a.min()), float(a.max())
    a = (a - lo) / (hi - lo) if hi > lo else torch.zeros_like(a)
    return (a * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
