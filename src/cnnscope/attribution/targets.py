"""What an attribution explains: a class score or one unit of a layer, per image.

:func:`parse_targets` turns what the caller gave (``None``, a class index or name, a
``LAYER:CHANNEL[@Y,X]`` unit, or one of those per image) into :class:`Target` records,
``None`` standing for "the top-1 class", which :func:`complete_targets` fills in from
the model's output and checks against the target layer's shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..engine import INPUT, LOGITS, Unit
from ..engine.units import split_call, unknown_layer
from ..errors import UnitSpecError
from ..models import LoadedModel

__all__ = ["Target", "complete_targets", "parse_targets", "resolve_layer_name"]


@dataclass(frozen=True)
class Target:
    """What is explained for one image: a class score or a unit of a layer.

    Attributes
    ----------
    layer : str
        ``logits`` for a class, else the unit's (canonical) layer.
    channel : int
        Class index or channel.
    pos : (int, int) or None
        Spatial position of a unit; ``None`` means the sum over the whole map.
    label : str
        Class name, when known.
    """

    layer: str
    channel: int
    pos: tuple[int, int] | None = None
    label: str = ""

    @property
    def kind(self) -> str:
        """``class`` or ``unit``."""
        return "class" if self.layer == LOGITS else "unit"

    def __str__(self) -> str:
        if self.kind == "class":
            return f"{self.channel} ({self.label})" if self.label else str(self.channel)
        return str(Unit(self.layer, self.channel, self.pos))

    def seed(self, shape: Sequence[int]) -> torch.Tensor:
        """The gradient of this target's score with respect to its layer's output.

        The score is linear in the activation, so it is also ``(act * seed).sum()``.

        Examples
        --------
        >>> Target("logits", 2).seed((4,)).tolist()
        [0.0, 0.0, 1.0, 0.0]
        >>> Target("conv", 1).seed((2, 1, 2)).tolist()
        [[[0.0, 0.0]], [[1.0, 1.0]]]
        """
        seed = torch.zeros(tuple(shape))
        if self.pos is None:
            seed[self.channel] = 1.0
        else:
            seed[(self.channel,) + tuple(self.pos)] = 1.0
        return seed


def resolve_layer_name(module: nn.Module, name: str) -> str:
    """Check a layer name against the module tree (fast, no forward pass).

    Examples
    --------
    >>> resolve_layer_name(nn.Sequential(nn.Conv2d(3, 2, 1)), "0")
    '0'
    """
    if name in (INPUT, LOGITS):
        return name
    base, _call = split_call(name)
    names = [n for n, _ in module.named_modules() if n]
    if base in names:
        return name
    raise unknown_layer(name, names + [LOGITS])


def parse_targets(
    target, n: int, module: nn.Module, loaded: LoadedModel | None = None
) -> list[Target | None]:
    """One :class:`Target` (or ``None``: the top-1 class) per image of ``n``.

    Examples
    --------
    >>> parse_targets(3, 2, nn.Conv2d(3, 4, 1))
    [Target(layer='logits', channel=3, pos=None, label=''), Target(layer='logits', channel=3, pos=None, label='')]
    """
    if isinstance(target, (list, tuple)):
        items = list(target)
        if len(items) != n:
            raise UnitSpecError(
                f"{len(items)} targets given for {n} images: give one, or one per image"
            )
    else:
        items = [target] * n
    parsed = [_parse_one(t, module, loaded) for t in items]
    layers = {p.layer for p in parsed if p is not None}
    if len(layers) > 1 or (layers and None in parsed and LOGITS not in layers):
        raise UnitSpecError("all targets of one call must be on the same layer")
    return parsed


def _parse_one(target, module: nn.Module, loaded: LoadedModel | None) -> Target | None:
    if target is None:
        return None
    if isinstance(target, Target):
        return Target(resolve_layer_name(module, target.layer), target.channel, target.pos)
    if isinstance(target, Unit):
        return _unit_target(target, module, loaded)
    if isinstance(target, (bool, float)):
        raise UnitSpecError(f"bad target {target!r}: give a class index, name or unit")
    if isinstance(target, (int, np.integer)):
        return _class_target(int(target), loaded)
    if isinstance(target, torch.Tensor) and target.numel() == 1:
        return _class_target(int(target.item()), loaded)
    if isinstance(target, str):
        return _text_target(target, module, loaded)
    raise UnitSpecError(f"bad target {target!r}: give a class index, name or unit")


def _text_target(text: str, module: nn.Module, loaded: LoadedModel | None) -> Target:
    text = text.strip()
    if not text:
        raise UnitSpecError("empty target: give a class index, a class name or LAYER:CHANNEL")
    if ":" in text:
        return _unit_target(Unit.parse(text), module, loaded)
    if text.lstrip("-").isdigit():
        return _class_target(int(text), loaded)
    if loaded is None:
        raise UnitSpecError(f"class name {text!r} needs a model with labels: give a class index")
    return _class_target(loaded.class_index(text), loaded)


def _unit_target(unit: Unit, module: nn.Module, loaded: LoadedModel | None) -> Target:
    layer = resolve_layer_name(module, unit.layer)
    if layer == LOGITS or (loaded is not None and layer == loaded.logits_layer):
        if unit.pos is not None:
            raise UnitSpecError(f"the logits have no position: drop the @Y,X of {unit}")
        return _class_target(unit.channel, loaded)
    if layer == INPUT:
        raise UnitSpecError("the input is not a unit to explain: pick a layer above it")
    return Target(layer, unit.channel, unit.pos)


def _class_target(index: int, loaded: LoadedModel | None) -> Target:
    if index < 0:
        raise UnitSpecError(f"class index must be >= 0, got {index}")
    if loaded is not None:
        index = loaded.class_index(index)
        return Target(LOGITS, index, None, loaded.label(index))
    return Target(LOGITS, index)


def complete_targets(
    requested: Sequence[Target | None], out: torch.Tensor, loaded: LoadedModel | None = None
) -> list[Target]:
    """Fill in top-1 classes from ``out`` (the target layer's output) and check each target.

    Examples
    --------
    >>> complete_targets([None, Target("logits", 0)], torch.tensor([[0.0, 1.0], [3.0, 2.0]]))
    [Target(layer='logits', channel=1, pos=None, label=''), Target(layer='logits', channel=0, pos=None, label='')]
    """
    shape = tuple(out.shape[1:])
    targets = []
    for i, t in enumerate(requested):
        if t is None:
            t = _top1_target(out[i], loaded)
        problem = _unit_error(t, shape)
        if problem:
            raise UnitSpecError(problem)
        targets.append(t)
    return targets


def _top1_target(scores: torch.Tensor, loaded: LoadedModel | None) -> Target:
    if scores.dim() != 1:
        raise UnitSpecError("the model output is not a vector of class scores: give a target")
    index = int(scores.argmax())
    label = loaded.label(index) if loaded is not None else ""
    return Target(LOGITS, index, None, label)


def _unit_error(target: Target, shape: tuple[int, ...]) -> str | None:
    if not shape:
        return f"layer {target.layer!r} has no channels"
    if target.channel >= shape[0]:
        what = "class" if target.kind == "class" else "channel"
        return f"{what} {target.channel} out of range: {target.layer!r} has {shape[0]} ({what}s 0-{shape[0] - 1})"
    if target.pos is not None:
        if len(shape) != 3:
            return f"layer {target.layer!r} has no spatial map: drop the @Y,X of {target}"
        y, x = target.pos
        if not (0 <= y < shape[1] and 0 <= x < shape[2]):
            return f"position {y},{x} is outside {target.layer!r}'s {shape[1]}x{shape[2]} map"
    return None
