"""Shared plumbing of the layer views: models, inputs, layers and conv weights."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..attribution.inputs import as_pil
from ..engine import Engine, strongest_units
from ..engine.units import suggest
from ..errors import CnnscopeError, UnknownLayerError

log = logging.getLogger(__name__)


def module_of(model) -> nn.Module:
    """The ``nn.Module`` of a :class:`~cnnscope.models.LoadedModel` or a bare module."""
    if isinstance(model, nn.Module):
        return model
    module = getattr(model, "module", None)
    if isinstance(module, nn.Module):
        return module
    raise CnnscopeError(f"expected a LoadedModel or a torch.nn.Module, got {type(model).__name__}")


def to_input(model, image) -> torch.Tensor:
    """A ``1 x C x H x W`` input from a PIL image, file path, gallery name, array or tensor."""
    if isinstance(image, (str, Path, Image.Image, np.ndarray)):
        image = as_pil(image)
        if not hasattr(model, "preprocess"):
            raise CnnscopeError("a bare module needs a preprocessed input tensor, not an image")
        return model.preprocess(image)
    if isinstance(image, torch.Tensor):
        if image.dim() == 3:
            image = image.unsqueeze(0)
        if image.dim() != 4:
            raise CnnscopeError(
                f"the input tensor must be C x H x W or N x C x H x W, got {tuple(image.shape)}"
            )
        return image
    raise CnnscopeError(f"cannot use {type(image).__name__} as an image")


def channel_maps(acts: torch.Tensor, layer: str) -> torch.Tensor:
    """The first image's ``C x H x W`` maps of a recorded activation, or a one-line error."""
    if acts.dim() != 4:
        shape = "x".join(map(str, acts.shape[1:]))
        raise CnnscopeError(
            f"layer {layer!r} has shape {shape}, not channel maps C x H x W: "
            "pick a convolutional layer (see `cnnscope layers`)"
        )
    return acts[0]


def layer_maps(model, image, layer: str, engine: Engine | None = None) -> tuple[str, torch.Tensor]:
    """Canonical layer name and the float ``C x H x W`` activation of ``layer`` for ``image``."""
    module = module_of(model)
    engine = engine or Engine.for_module(module)
    fwd = engine.forward(to_input(model, image))
    name = fwd.resolve(layer)
    return name, channel_maps(fwd.activation(name), name).float().cpu()


def strongest_channels(model, image, layer: str, k: int = 5) -> list[tuple[int, float]]:
    """``(channel, strength)`` of the ``k`` strongest units of ``layer`` for ``image``.

    The engine's strength (:func:`cnnscope.engine.strongest_units`): for a ReLU6 layer the
    pre-activation maximum, so that the units saturated at 6 are told apart.

    Examples
    --------
    >>> from cnnscope.models import load_model
    >>> [(c, round(v, 1)) for c, v in strongest_channels(load_model(), "chelsea", "head_act", 2)]
    [(112, 13.8), (1236, 12.1)]
    """
    fwd = Engine.for_module(module_of(model)).forward(to_input(model, image))
    return [(u.channel, value) for u, value in strongest_units(fwd, layer, k)]


def conv_layers(module: nn.Module) -> list[str]:
    """Names of the submodules with a 4-D ``weight`` parameter (convolutions)."""
    return [
        name
        for name, sub in module.named_modules()
        if name and isinstance(getattr(sub, "weight", None), torch.Tensor) and sub.weight.dim() == 4
    ]


def conv_weight(module: nn.Module, layer: str) -> torch.Tensor:
    """The 4-D weight of conv layer ``layer`` (``out x in/groups x kh x kw``)."""
    convs = conv_layers(module)
    modules = dict(module.named_modules())
    sub = modules.get(layer) if layer else None
    if sub is None:
        hint = (
            suggest(layer, convs)
            or f" (conv layers: {', '.join(convs[:6])}{', ...' if len(convs) > 6 else ''})"
        )
        raise UnknownLayerError(f"unknown conv layer {layer!r}{hint}")
    if layer not in convs:
        hint = suggest(layer, convs)
        raise CnnscopeError(
            f"layer {layer!r} ({type(sub).__name__}) has no 4-D conv weight{hint or ''}"
        )
    return sub.weight


def first_conv(module: nn.Module) -> str:
    """The first convolution in module order."""
    convs = conv_layers(module)
    if not convs:
        raise CnnscopeError("the model has no convolution layer")
    return convs[0]


def grad_ready(module: nn.Module, layer: str) -> tuple[nn.Module, torch.Tensor, bool]:
    """The module and conv weight to differentiate; a private copy when the weight is frozen.

    The engine never changes ``requires_grad`` on the caller's model, so a frozen weight
    is differentiated on a ``copy.deepcopy`` of the module (the caller's stays as it is).
    """
    weight = conv_weight(module, layer)
    if weight.requires_grad:
        return module, weight, False
    log.info("%s.weight does not require grad: differentiating a private copy", layer)
    clone = copy.deepcopy(module)
    cw = conv_weight(clone, layer)
    cw.requires_grad_(True)
    return clone, cw, True


def class_index(model, target) -> int:
    """A class index from an index or (for a LoadedModel) a class name."""
    if hasattr(model, "class_index"):
        return int(model.class_index(target))
    try:
        return int(target)
    except (TypeError, ValueError):
        raise CnnscopeError(f"class {target!r} must be an index for a bare module") from None


def class_label(model, index: int) -> str:
    """A display name of class ``index``."""
    return model.label(index) if hasattr(model, "label") else f"class {index}"
