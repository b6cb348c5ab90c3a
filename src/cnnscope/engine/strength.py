"""A unit's strength, position and gradient seed: one definition for all of cnnscope.

A ReLU-family activation hides how strongly a unit fires where it is clipped: a ReLU6
unit reads 6 wherever its input is past 6, and passes no gradient there. Ranked by its
output, such a unit ties with itself at many positions and with other images, and a
gradient seeded at its output is zero. So a unit is measured *below* its activation:

- the **strength map** of a layer is its pre-activation
  (:meth:`Forward.pre_activation`: the input of a ReLU-family module applied to the layer
  recorded just before it), else the layer's own output;
- a unit's **strength** in an image is the maximum of its strength map, and its
  **position** the first place of that maximum in row-major order. The activation is
  non-decreasing in its input, so this is the unit's maximum activation, with ties (at a
  clip of 6, or at 0) broken by how far past the clip the unit is;
- its **seed** is 1 on the strength map at that position: the gradient is injected
  below the clip, so a saturated unit's reconstruction is not blank.

The index (ranking, positions, example patches), the overview, the tree and the
synthesis all use these functions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import CnnscopeError
from .forward import ACTIVATIONS, Forward
from .record import Engine
from .units import INPUT, Unit, split_call

__all__ = [
    "recorded_layers",
    "strength_at",
    "strength_layer",
    "strengths",
    "strongest_units",
    "unit_position",
    "unit_seed",
]


def strength_layer(fwd: Forward, layer: str) -> str:
    """The recorded layer where the units of ``layer`` are measured and seeded.

    Examples
    --------
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU6())
    >>> fwd = Engine(net).forward(torch.randn(1, 3, 8, 8), grad=False)
    >>> strength_layer(fwd, "1"), strength_layer(fwd, "0")
    ('0', '0')
    """
    return fwd.pre_activation(layer)


def strengths(fwd: Forward, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Every unit's strength and flat position ``y * W + x`` in every image (two ``N x C``).

    Positions are 0 for a layer without maps (``N x C``).

    Examples
    --------
    >>> net = torch.nn.Sequential(torch.nn.Identity(), torch.nn.ReLU6())
    >>> x = torch.tensor([[[[1.0, 9.0], [7.0, 8.0]]]])  # ReLU6 reads 6 at three places
    >>> values, where = strengths(Engine(net).forward(x, grad=False), "1")
    >>> values.tolist(), where.tolist()
    ([[9.0]], [[1]])
    """
    values = fwd.activation(strength_layer(fwd, layer))
    if values.dim() == 2:
        return values, torch.zeros_like(values, dtype=torch.int64)
    return values.flatten(2).max(dim=2)


def unit_position(fwd: Forward, layer: str, channel: int, row: int = 0) -> tuple[int, int] | None:
    """``(y, x)`` of a unit's strength in image ``row`` of the batch (``None`` without maps).

    Examples
    --------
    >>> net = torch.nn.Sequential(torch.nn.Identity(), torch.nn.ReLU6())
    >>> x = torch.tensor([[[[1.0, 9.0], [7.0, 8.0]]]])
    >>> unit_position(Engine(net).forward(x, grad=False), "1", 0)
    (0, 1)
    """
    values = fwd.activation(strength_layer(fwd, layer))
    if values.dim() != 4:
        return None
    flat = int(values[row, channel].reshape(-1).argmax())
    return divmod(flat, values.shape[3])


def strength_at(
    fwd: Forward, layer: str, channel: int, positions: Sequence[tuple[int, int]]
) -> torch.Tensor:
    """A unit's strength map at one ``(y, x)`` per image of the batch (``N`` values).

    Examples
    --------
    >>> net = torch.nn.Sequential(torch.nn.Identity(), torch.nn.ReLU6())
    >>> x = torch.tensor([[[[1.0, 9.0], [7.0, 8.0]]]])
    >>> strength_at(Engine(net).forward(x, grad=False), "1", 0, [(1, 0)]).tolist()
    [7.0]
    """
    values = fwd.activation(strength_layer(fwd, layer))
    rows = torch.arange(values.shape[0])
    if values.dim() != 4:
        return values[rows, channel]
    ys, xs = _yx(positions, values.shape[0], values.device)
    return values[rows, channel, ys, xs]


def unit_seed(
    fwd: Forward,
    layer: str,
    channel: int,
    positions: Sequence[tuple[int, int]] | None = None,
) -> tuple[str, torch.Tensor]:
    """``(layer to seed at, seed)``: 1 on a unit's strength map, in every image of the batch.

    ``positions`` gives one ``(y, x)`` per image; by default each image's strongest one
    (:func:`unit_position`). Pass the result to :meth:`Forward.grad`: below a clipped unit's
    activation, the seed's gradient is not zero where the unit saturates.

    Examples
    --------
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1), torch.nn.ReLU6())
    >>> with torch.no_grad():
    ...     _ = net[0].weight.fill_(1.0), net[0].bias.zero_()
    >>> fwd = Engine(net).forward(torch.tensor([[[[1.0, 9.0], [7.0, 8.0]]]]))
    >>> at, seed = unit_seed(fwd, "1", 0)
    >>> at, seed[0, 0].tolist()
    ('0', [[0.0, 1.0], [0.0, 0.0]])
    >>> fwd.grad(at, seed)[0, 0].tolist()  # seeded at the output, it would be all 0
    [[0.0, 1.0], [0.0, 0.0]]
    """
    at = strength_layer(fwd, layer)
    values = fwd.activation(at)
    seed = torch.zeros_like(values)
    rows = torch.arange(values.shape[0])
    if values.dim() != 4:
        seed[rows, channel] = 1.0
        return at, seed
    if positions is None:
        flat = values[:, channel].flatten(1).argmax(dim=1)
        ys, xs = flat // values.shape[3], flat % values.shape[3]
    else:
        ys, xs = _yx(positions, values.shape[0], values.device)
    seed[rows, channel, ys, xs] = 1.0
    return at, seed


def strongest_units(fwd: Forward, layer: str, k: int, row: int = 0) -> list[tuple[Unit, float]]:
    """The ``k`` strongest units of ``layer`` in image ``row``, strongest first.

    Ties keep channel order.

    Examples
    --------
    >>> net = torch.nn.Sequential(torch.nn.Identity(), torch.nn.ReLU6())
    >>> x = torch.tensor([[[[7.0]], [[9.0]], [[2.0]]]])  # channels 0 and 1 both read 6
    >>> [(str(u), s) for u, s in strongest_units(Engine(net).forward(x, grad=False), "1", 2)]
    [('1:1', 9.0), ('1:0', 7.0)]
    """
    values = strengths(fwd, layer)[0][row].double()
    order = torch.sort(values, descending=True, stable=True).indices
    top = order[: max(1, min(int(k), len(order)))].tolist()
    name = fwd.resolve(layer)
    return [(Unit(name, c), float(values[c])) for c in top]


def recorded_layers(
    engine: Engine, layers: Sequence[str], input_size: tuple[int, int], channels: int = 3
) -> list[str]:
    """``layers`` plus what a forward must also record to read their strength maps.

    For ``Engine.forward(x, layers=...)``: the layer traced just before each activation
    layer (its pre-activation candidate). Canonical names, in execution order.

    Examples
    --------
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU6(), torch.nn.Conv2d(4, 2, 1))
    >>> recorded_layers(Engine(net), ["1", "2"], (8, 8))
    ['0', '1', '2']
    """
    names = engine.layer_names(input_size, channels)
    wanted = set()
    for layer in layers:
        name = engine.resolve(layer, input_size, channels)
        wanted.add(name)
        i = names.index(name)
        if i > 0 and names[i - 1] != INPUT and _is_activation(engine.module, name):
            wanted.add(names[i - 1])
    return [n for n in names if n in wanted]


def _is_activation(root: nn.Module, layer: str) -> bool:
    base = split_call(layer)[0]
    try:
        return bool(base) and isinstance(root.get_submodule(base), ACTIVATIONS)
    except AttributeError:
        return False


def _yx(positions: Sequence[tuple[int, int]], n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    if len(positions) != n:
        raise CnnscopeError(f"give one position per image: {len(positions)} for {n} images")
    ys = torch.tensor([int(p[0]) for p in positions], device=device)
    xs = torch.tensor([int(p[1]) for p in positions], device=device)
    return ys, xs
