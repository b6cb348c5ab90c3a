"""The gradient each tree path carries: its seed at its last node, cached per image.

A path's seed is built from its parent's: the parent's gradient is read at the node's
layer, only the node's channel is kept (rescaled by a gain), oriented to the rule's
polarity and taken below the node's own activation (see :mod:`cnnscope.tree.explorer`).
:class:`PathSeeds` keeps the seeds of every path it has walked, per recorded forward
and within a memory bound, so that expanding a node never recomputes the path above it.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence

import torch

from ..engine import Forward, Unit, apply_rule, strength_layer, unit_position, unit_seed
from ..engine.rules import POLARITY, activation
from ..engine.units import split_call
from .chain import LayerChain
from .paths import TreePath

log = logging.getLogger(__name__)

#: Graph nodes that pool or reshape: looked through to find the activation below a layer.
_THROUGH = (
    "Mean",
    "AvgPool",
    "AdaptiveAvgPool",
    "MaxPool",
    "AdaptiveMaxPool",
    "View",
    "Reshape",
    "Flatten",
    "Clone",
    "Squeeze",
    "Unsqueeze",
    "Alias",
)


def seed_key(path: TreePath, rule: str, gain: str, scoring: str) -> tuple:
    """Cache key of a path's seed (seed scoring has seeds of its own)."""
    return (path, rule, gain) if scoring != "seed" else (path, rule, gain, "seed")


class PathSeeds(LayerChain):
    """A :class:`~.chain.LayerChain` that computes and caches the seeds of tree paths.

    Examples
    --------
    >>> from cnnscope.models import load_model
    >>> from cnnscope.images import load_gallery_image
    >>> seeds = PathSeeds(load_model())
    >>> fwd = seeds.forward(seeds.input(load_gallery_image("chelsea")))
    >>> path = seeds.check_path("logits:285/head_act:1")
    >>> at, seed = seeds.node_seed(fwd, path, "guided")  # below head_act, its activation
    >>> at, tuple(seed.shape)
    ('head_bn', (1, 1280, 7, 7))
    """

    def __init__(self, model, chain: Sequence[str] | None = None, *, cache_bytes: int = 64 << 20):
        super().__init__(model, chain)
        self.cache_bytes = cache_bytes
        self._grad_at: dict[str, str] = {}
        self._made_by: dict[str, bool] = {}
        self._seeds: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._lock = threading.RLock()

    def grad_layer(self, fwd: Forward, layer: str) -> str:
        """Where a chain layer's gradient is read: after its own ReLU rule if it has one.

        For an activation module (ReLU, ReLU6, ...) whose input is the layer recorded just
        before it, that input (its pre-activation); otherwise the layer itself (e.g. a
        block output, which ends with a linear projection).
        """
        if layer in self._grad_at:
            return self._grad_at[layer]
        at = strength_layer(fwd, layer) if layer in fwd.layers else layer
        log.debug("gradient of chain layer %s read at %s", layer, at)
        self._grad_at[layer] = at
        return at

    def _root_seed(self, fwd: Forward, unit: Unit) -> tuple[str, torch.Tensor]:
        """A unit seeded alone (:func:`~cnnscope.engine.unit_seed`): 1 on its strength map
        at its position (default: its strongest), or its logit.
        """
        return unit_seed(fwd, unit.layer, unit.channel, None if unit.pos is None else [unit.pos])

    def position(self, x: torch.Tensor, unit: Unit | str) -> tuple[int, int] | None:
        """Where a unit is seeded as a root: its given or strongest position (None for FC).

        Examples
        --------
        >>> from cnnscope.models import load_model
        >>> from cnnscope.images import load_gallery_image
        >>> ex = PathSeeds(load_model())
        >>> ex.position(ex.input(load_gallery_image("chelsea")), "blocks.15:3")
        (5, 1)
        >>> ex.position(ex.input(load_gallery_image("chelsea")), "blocks.15:3@0,2")
        (0, 2)
        """
        (unit,) = self.check_path((Unit.parse(unit) if isinstance(unit, str) else unit,))
        if unit.pos is not None:
            return unit.pos
        return unit_position(self.forward(x), unit.layer, unit.channel)

    def _gain(self, grad: torch.Tensor, channel: int, gain: str) -> float:
        if gain == "none":
            return 1.0
        if gain == "fixed":
            return float(grad.shape[1])  # one kept channel of C: a per-layer constant
        kept = float(grad[:, channel].abs().sum())
        return float(grad.abs().sum()) / kept if kept > 0 else 0.0

    def _keep(self, grad: torch.Tensor, channel: int, gain: str) -> torch.Tensor:
        seed = torch.zeros_like(grad)
        seed[:, channel] = grad[:, channel] * self._gain(grad, channel, gain)
        return seed

    def _enter(
        self, fwd: Forward, layer: str, seed: torch.Tensor, rule: str
    ) -> tuple[str, torch.Tensor]:
        """Move a node's kept gradient below the node's own activation, if it has one.

        The activation is crossed under ``rule`` as a ReLU (slope 1 wherever the unit is
        on, clipped at the top or not): a node is shown as what drives it, also where a
        ReLU6 saturates, as with cnn_treevis's plain ReLUs.
        """
        at = self.grad_layer(fwd, layer)
        if at == layer:
            return layer, seed
        module = self._modules[split_call(layer)[0]]
        low = float(getattr(module, "min_val", 0.0))
        leak = float(getattr(module, "negative_slope", 0.0))
        pre = fwd.activation(at)
        slope = (pre > low).to(seed.dtype)
        if leak:
            slope = torch.where(pre > low, slope, torch.full_like(slope, leak))
        return at, apply_rule(rule, seed * slope, seed, leak)

    def _contributions(self, fwd: Forward, layer: str, grad: torch.Tensor) -> torch.Tensor:
        """``mean over positions of A_c * G_c`` for every channel of ``layer`` (float64)."""
        act = fwd.activation(layer)
        return (act * grad).reshape(act.shape[1], -1).mean(1).double()

    def _child_seed(
        self, fwd: Forward, layer: str, grad: torch.Tensor, w: float, channel: int, how: tuple
    ) -> tuple[str, torch.Tensor]:
        """The seed of child ``channel`` of ``layer`` from its parent's gradient ``grad``.

        ``how`` is ``(rule, gain, scoring)``; ``w`` the child's contribution. ``seed``
        scoring: ``grad`` was already taken through the layer's own rule (all channels),
        as in cnn_treevis. Otherwise the kept channel is oriented to the rule's polarity
        and crosses the node's activation: negated if ``mean(|A_c| * G_c)`` goes against
        it, so that the rule passes the gradient where the child carries its evidence.
        That is ``w`` when ``A_c >= 0`` (ReLU family); where SiLU or hardswish outputs are
        negative, ``w > 0`` comes with ``G_c < 0``, which guided would close.
        """
        rule, gain, scoring = how
        if scoring == "seed":
            return self.grad_layer(fwd, layer), self._keep(grad, channel, gain)
        kept = self._keep(grad, channel, gain)
        if self._lean(fwd, layer, grad, w, channel) * POLARITY[rule] < 0:
            kept = -kept
        return self._enter(fwd, layer, kept, rule)

    def _lean(self, fwd: Forward, layer: str, grad: torch.Tensor, w: float, channel: int) -> float:
        """The sign the rule must pass for a child: ``w``, or ``mean(|A_c| * G_c)`` where
        ``A_c`` is an activation's output that can be negative (SiLU, hardswish...).

        ``w = sum A * G`` is kept through linear layers down to the activation below a
        linear child (a block's projection), so it tells the sign of the gradient there.
        An activation's negative output with a negative gradient gives ``w > 0`` but a
        gradient the rule closes: the sign of ``G`` weighted by ``|A|`` is the one it passes.
        """
        act = fwd.activation(layer)[:, channel]
        if not bool((act < 0).any()) or not self._activated(fwd, layer):
            return w
        return float((act.abs() * grad[:, channel]).mean())

    def _activated(self, fwd: Forward, layer: str) -> bool:
        """Whether ``layer`` is an activation's output, seen through pools and reshapes."""
        if layer not in self._made_by:
            node = fwd.tensor(layer).grad_fn
            while node is not None and activation(node) is None:
                through = type(node).__name__.startswith(_THROUGH) and node.next_functions
                node = node.next_functions[0][0] if through else None
            self._made_by[layer] = node is not None
        return self._made_by[layer]

    def _reading(
        self, fwd: Forward, lower: str, grad: torch.Tensor, rule: str, scoring: str
    ) -> torch.Tensor:
        """The gradient the children of ``lower`` are scored on: before or after its rule."""
        if scoring != "seed":
            return grad
        return self._enter(fwd, lower, grad, rule)[1]

    def _orientation(self, fwd: Forward, path: TreePath, seed: torch.Tensor) -> float:
        """+1 if the node's seed points to what raises it (``sum A * seed > 0``), else -1."""
        if len(path) == 1:
            return 1.0
        node = path[-1]
        act = fwd.activation(node.layer)[:, node.channel]
        return -1.0 if float((act * seed[:, node.channel]).sum()) < 0 else 1.0

    def _cache(self, fwd: Forward) -> OrderedDict:
        with self._lock:
            cache = self._seeds.get(fwd)
            if cache is None:
                cache = self._seeds[fwd] = OrderedDict()
            return cache

    def _put(self, fwd: Forward, key, value: tuple[str, torch.Tensor]) -> None:
        with self._lock:
            cache = self._cache(fwd)
            cache[key] = value
            cache.move_to_end(key)
            total = sum(v[1].numel() * v[1].element_size() for v in cache.values())
            while len(cache) > 1 and total > self.cache_bytes:
                _, old = cache.popitem(last=False)
                total -= old[1].numel() * old[1].element_size()

    def _seed(
        self, fwd: Forward, path: TreePath, rule: str, gain: str, scoring: str = "path"
    ) -> tuple[str, torch.Tensor]:
        """The path's gradient seed: (layer, tensor) at its last node, cached."""
        mode = "seed" if scoring == "seed" else "path"
        key = seed_key(path, rule, gain, mode)
        with self._lock:
            cache = self._cache(fwd)
            if key in cache:
                cache.move_to_end(key)
                return cache[key]
        if len(path) == 1:
            value = self._root_seed(fwd, path[0])
        else:
            at, seed = self._seed(fwd, path[:-1], rule, gain, mode)
            node = path[-1]
            grad = fwd.grad(at, seed, to=node.layer, rule=rule)
            grad = self._reading(fwd, node.layer, grad, rule, mode)
            act = fwd.activation(node.layer)[:, node.channel]
            w = float((act * grad[:, node.channel]).mean())
            value = self._child_seed(fwd, node.layer, grad, w, node.channel, (rule, gain, mode))
        self._put(fwd, key, value)
        return value

    def node_seed(
        self, fwd: Forward, path: TreePath, rule: str, gain: str = "auto", scoring: str = "path"
    ) -> tuple[str, torch.Tensor]:
        """The gradient seed ``(layer, tensor)`` of the last node of a checked ``path``.

        ``local`` scoring seeds the node alone; ``seed`` follows cnn_treevis exactly (the
        gradient taken through each node's rule before its channel is kept, no
        orientation); ``path`` orients each kept channel to the rule's polarity.
        """
        if scoring == "local":
            return self._root_seed(fwd, Unit(path[-1].layer, path[-1].channel, path[-1].pos))
        return self._seed(fwd, path, rule, gain, scoring)
