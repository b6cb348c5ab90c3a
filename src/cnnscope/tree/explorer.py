"""The neuron tree of one image: path-conditioned children, reconstructions, ablations.

This is seed cnn_treevis's ``VisTree`` rebuilt on the engine, for any PyTorch CNN.

A *chain* is a list of layers, top first (the logits, the head, stage outputs...). A
*path* is a root unit followed by one channel of each next lower chain layer. The path
defines a gradient, under one backward rule (:mod:`cnnscope.engine.rules`):

- the root is seeded with 1 at its maximum (or given) position, or at its logit. For an
  activation layer (ReLU6...) the seed goes in just below the activation, at the
  pre-activation maximum: a unit saturated at 6 would otherwise pass no gradient;
- the gradient ``G`` is read at the output of the next chain layer, i.e. after the rule
  of every activation above it. Only the node's channel is kept, rescaled by a gain, and
  it goes on down from there, through the node's own activation under the rule.

Children (``scoring="path"``, the default): the channels ``c`` of the next chain layer
ranked by ``w_c = mean over positions of A_c * G_c`` (``A`` that layer's output), the
first-order share of ``c`` in its parent's evidence, read *before* the child's own rule;
for the logit root and the head (no activation between them) it is exact. Reading it
there lets both signs show under every rule: ``sign="pos"`` gives the children whose
``w`` has the rule's polarity (:data:`~cnnscope.engine.rules.POLARITY`: positive for
gradient, guided and deconvnet, negative for guided_neg, which passes only negative
gradients), ``sign="neg"`` those that work against it (inhibitory under guided).

Each non-root node's kept channel is *oriented* to the rule's polarity before it crosses
its own activation: a child whose ``w`` goes against the rule is kept negated, so that
the rule passes it (where a child is the output of an activation that can be negative,
SiLU or hardswish, the sign is read from ``mean(|A_c| * G_c)``, the sign of its
gradient where it is active). Under guided an inhibitory child is then drawn by what
drives it rather than blanked; under guided_neg every node carries negative gradients down, as in
the seed. An edge's displayed sign (:attr:`Node.sign`) is relative to its parent:
``pos`` when the child raises what its parent's seed measures.

``scoring="seed"`` is seed cnn_treevis's exact formula: ``G`` read *after* the child's
own rule (Caffe's inclusive ``backward(start, end)``), ``w_c = |mean(A_c * G_c)|`` with
``sign="abs"``, the gain measured there, and no orientation. Under guided, deconvnet and
guided_neg, ``G`` then has one sign where ``A > 0``, so ``pos`` and ``abs`` agree. It is
not the default because it hides a child's inhibition (guided keeps only the positive
part of ``G_c``: a channel whose evidence is mostly negative still ranks high) and ranks
by a quantity that is not a share of the parent.

A node's reconstruction is the path's gradient at the input; :meth:`Explorer.focus` is
the box of the input where the node carries its evidence (the zoom of its picture).

Cost: one recorded forward per image (the engine caches it), then one backward to
score a node's children and one batched backward for the reconstructions of all of
them. The masked seed of every node is cached, so expanding a node never recomputes
the path above it.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..engine import (
    INPUT,
    LOGITS,
    Engine,
    Forward,
    Unit,
    apply_rule,
    strength_layer,
    strengths,
    strongest_units,
    unit_position,
    unit_seed,
)
from ..engine.rules import POLARITY, activation, check_rule
from ..engine.units import split_call
from ..errors import CnnscopeError, UnitSpecError
from ..models import as_loaded
from ..render import gradient_image
from .paths import Path, format_path, parse_path

log = logging.getLogger(__name__)

GAINS: tuple[str, ...] = ("auto", "fixed", "none")
SCORINGS: tuple[str, ...] = ("path", "local", "seed")
SIGNS: tuple[str, ...] = ("pos", "neg", "abs")

#: Activation modules whose input is the place to read a chain layer's gradient.
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
#: Floats per chunk of seeds in :meth:`Explorer.parents` (bounds its memory).
_PARENT_CHUNK_FLOATS = 1 << 24


@dataclass(frozen=True)
class Node:
    """One node of a tree.

    Attributes
    ----------
    unit : Unit
        The channel (and, for a root, the position).
    weight : float
        Its signed contribution ``mean(A_c * G_c)`` to the node above (children), or the
        node's contribution to this unit (parents).
    path : Path
        The path from the root to this node (for parents: ``(parent, unit)``, so that
        re-rooting at the parent shows ``unit`` as its child).
    sign : str
        ``"pos"`` for an excitatory edge (the child raises what its parent's seed
        measures), ``"neg"`` for an inhibitory one.
    share : float or None
        ``|weight|`` as a fraction of the parent's evidence of the same sign: the sum of
        ``|mean(A_c * G_c)|`` over every channel of the child's layer whose edge has
        this sign (children), or over the layer above (parents).
    """

    unit: Unit
    weight: float
    path: Path
    sign: str
    share: float | None = None

    def to_dict(self) -> dict:
        """A JSON-ready dict: unit and path as text.

        Examples
        --------
        >>> Node(Unit("blocks.15", 3), 0.5, (Unit("logits", 1), Unit("blocks.15", 3)), "pos").to_dict()
        {'unit': 'blocks.15:3', 'weight': 0.5, 'path': 'logits:1/blocks.15:3', 'sign': 'pos', 'share': None}
        """
        return {
            "unit": str(self.unit),
            "weight": self.weight,
            "path": format_path(self.path),
            "sign": self.sign,
            "share": self.share,
        }


def _seed_key(path: Path, rule: str, gain: str, scoring: str) -> tuple:
    """Cache key of a path's seed (seed scoring has seeds of its own)."""
    return (path, rule, gain) if scoring != "seed" else (path, rule, gain, "seed")


def _shares(weights: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """``|w|`` over the sum of ``|w|`` of the same edge sign (``signs``: +1 or -1 each)."""
    mag = weights.abs()
    pos = float(mag[signs > 0].sum())
    neg = float(mag[signs < 0].sum())
    total = torch.where(signs > 0, torch.full_like(mag, pos), torch.full_like(mag, neg))
    return torch.where(total > 0, mag / total.clamp(min=1e-300), torch.zeros_like(mag))


def _choice(value: str, allowed: Sequence[str], what: str) -> str:
    if value not in allowed:
        raise CnnscopeError(f"unknown {what} {value!r}: choose one of {', '.join(allowed)}")
    return value


class Explorer:
    """Path-conditioned neuron trees of a model on single images.

    Parameters
    ----------
    model : LoadedModel
        The model (see :func:`cnnscope.models.load_model`).
    chain : list of str, optional
        Layers of the tree, top first; ``model.default_chain`` by default. The model's
        logits layer is called ``logits``. Names are validated and put in execution order.
    cache_bytes : int
        Memory bound of the cached node seeds per image.

    Examples
    --------
    >>> from cnnscope.models import load_model
    >>> from cnnscope.images import load_gallery_image
    >>> ex = Explorer(load_model())
    >>> x = ex.input(load_gallery_image("chelsea"))
    >>> root = parse_path("logits:285")
    >>> [n.unit.layer for n in ex.children(x, root, k=2)]
    ['head_act', 'head_act']
    """

    def __init__(self, model, chain: Sequence[str] | None = None, *, cache_bytes: int = 64 << 20):
        self.model = model = as_loaded(model)
        self.engine = Engine.for_module(model.module)
        self.input_size = tuple(model.preprocess_config.input_size)
        self.cache_bytes = cache_bytes
        infos = self.engine.layers(self.input_size)
        self._order = {info.name: i for i, info in enumerate(infos)}
        self._shape = {info.name: info.shape for info in infos}
        self._modules = dict(model.module.named_modules())
        names = list(chain) if chain else list(model.default_chain)
        if not names:
            raise CnnscopeError("empty layer chain: give at least one layer")
        resolved = []
        for name in names:
            layer = self.canonical(name)
            if layer == INPUT:
                raise CnnscopeError("the input cannot be a layer of the chain")
            if layer not in resolved:
                resolved.append(layer)
        resolved.sort(key=lambda n: -self._order[n])
        self.chain: list[str] = resolved
        self._grad_at: dict[str, str] = {}
        self._made_by: dict[str, bool] = {}
        self._seeds: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ names
    def canonical(self, layer: str) -> str:
        """The canonical name of ``layer`` (the model's logits layer is ``logits``).

        Examples
        --------
        >>> from cnnscope.models import load_model
        >>> Explorer(load_model()).canonical("classifier")
        'logits'
        """
        if layer == LOGITS or (self.model.logits_layer and layer == self.model.logits_layer):
            return LOGITS
        name = self.engine.resolve(layer, self.input_size)
        return LOGITS if name == self.model.logits_layer else name

    def below(self, layer: str) -> str | None:
        """The next lower chain layer under ``layer``, or None at the bottom."""
        order = self._order[self.canonical(layer)]
        return next((n for n in self.chain if self._order[n] < order), None)

    def above(self, layer: str) -> str | None:
        """The next higher chain layer over ``layer``, or None at the top."""
        order = self._order[self.canonical(layer)]
        return next((n for n in reversed(self.chain) if self._order[n] > order), None)

    def check_path(self, path: Path | str) -> Path:
        """Validate ``path`` (or its text) against the model and the chain.

        Returns the path with canonical layer names. Raises ``UnitSpecError`` (bad unit,
        channel or position, or a node not in the next chain layer) or
        ``UnknownLayerError``.

        Examples
        --------
        >>> from cnnscope.models import load_model
        >>> Explorer(load_model()).check_path("classifier:285")
        (Unit(layer='logits', channel=285, pos=None),)
        """
        if isinstance(path, str):
            path = parse_path(path)
        if not path or not all(isinstance(u, Unit) for u in path):
            raise UnitSpecError("a tree path is a non-empty sequence of units")
        out = []
        for i, unit in enumerate(path):
            layer = self.canonical(unit.layer)
            if layer == INPUT:
                raise UnitSpecError("the input has no units to explore")
            if i:
                expected = self.below(out[-1].layer)
                if layer != expected:
                    raise UnitSpecError(
                        f"bad tree path {format_path(tuple(path))!r}: after {out[-1].layer} "
                        f"comes {expected or 'nothing (bottom of the chain)'}, not {layer}"
                    )
                if unit.pos is not None:
                    raise UnitSpecError("only the root of a tree path may carry a position")
            shape = self._shape[layer]
            if not shape or unit.channel >= shape[0]:
                n = shape[0] if shape else 0
                raise UnitSpecError(f"channel {unit.channel} out of range for {layer} (0-{n - 1})")
            if unit.pos is not None:
                if len(shape) != 3:
                    raise UnitSpecError(f"{layer} has no spatial positions (@Y,X)")
                y, x = unit.pos
                if not (0 <= y < shape[1] and 0 <= x < shape[2]):
                    raise UnitSpecError(
                        f"position {y},{x} out of range for {layer} ({shape[1]}x{shape[2]})"
                    )
            out.append(Unit(layer, unit.channel, unit.pos))
        return tuple(out)

    # ------------------------------------------------------------------ image
    def input(self, image: Image.Image) -> torch.Tensor:
        """The model input (1 x 3 x H x W) for a PIL image."""
        return self.model.preprocess(image)

    def forward(self, x: torch.Tensor) -> Forward:
        """The engine's recorded (cached) forward of the single image ``x``."""
        if isinstance(x, torch.Tensor) and x.dim() == 3:
            x = x.unsqueeze(0)
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[0] != 1:
            raise CnnscopeError("the explorer takes one image: a 1 x C x H x W tensor")
        if tuple(x.shape[-2:]) != self.input_size:
            raise CnnscopeError(
                f"input size {tuple(x.shape[-2:])} differs from the model's {self.input_size}"
            )
        return self.engine.forward(x)

    def predictions(self, x: torch.Tensor, k: int = 5) -> list[dict]:
        """The top-``k`` classes: ``[{index, label, probability}]``.

        Examples
        --------
        >>> from cnnscope.models import load_model
        >>> from cnnscope.images import load_gallery_image
        >>> ex = Explorer(load_model())
        >>> ex.predictions(ex.input(load_gallery_image("chelsea")), k=1)[0]["index"]
        285
        """
        logits = self.forward(x).activation(LOGITS).reshape(-1).float()
        probs = torch.softmax(logits, 0)
        values, idx = probs.topk(max(1, min(int(k), probs.numel())))
        return [
            {"index": int(i), "label": self.model.label(int(i)), "probability": float(v)}
            for v, i in zip(values, idx)
        ]

    def overview(self, x: torch.Tensor, per_layer: int = 8) -> list[dict]:
        """The strongest units of each chain layer (:func:`~cnnscope.engine.strongest_units`).

        A unit's score is its strength: its spatial maximum, read below a ReLU-family
        activation (its pre-activation maximum), so units saturated at a clip do not tie.
        Returns ``[{"layer": name, "units": [{"unit": "LAYER:C", "score": float}]}]``,
        top layer first.

        Examples
        --------
        >>> from cnnscope.models import load_model
        >>> from cnnscope.images import load_gallery_image
        >>> ex = Explorer(load_model())
        >>> ov = ex.overview(ex.input(load_gallery_image("chelsea")), per_layer=2)
        >>> ov[0]["units"][0]["unit"]
        'logits:285'
        """
        fwd = self.forward(x)
        out = []
        for layer in self.chain:
            units = [
                {"unit": str(u), "score": s} for u, s in strongest_units(fwd, layer, per_layer)
            ]
            out.append({"layer": layer, "units": units})
        return out

    # ------------------------------------------------------------------ gradients
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
        >>> ex = Explorer(load_model())
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
        ReLU6 saturates, as with the seed's plain ReLUs.
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

    def _orientation(self, fwd: Forward, path: Path, seed: torch.Tensor) -> float:
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
        self, fwd: Forward, path: Path, rule: str, gain: str, scoring: str = "path"
    ) -> tuple[str, torch.Tensor]:
        """The path's gradient seed: (layer, tensor) at its last node, cached."""
        mode = "seed" if scoring == "seed" else "path"
        key = _seed_key(path, rule, gain, mode)
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
        self, fwd: Forward, path: Path, rule: str, gain: str = "auto", scoring: str = "path"
    ) -> tuple[str, torch.Tensor]:
        """The gradient seed ``(layer, tensor)`` of the last node of a checked ``path``.

        ``local`` scoring seeds the node alone; ``seed`` follows cnn_treevis exactly (the
        gradient taken through each node's rule before its channel is kept, no
        orientation); ``path`` orients each kept channel to the rule's polarity.
        """
        if scoring == "local":
            return self._root_seed(fwd, Unit(path[-1].layer, path[-1].channel, path[-1].pos))
        return self._seed(fwd, path, rule, gain, scoring)

    # ------------------------------------------------------------------ tree
    def children(
        self,
        x: torch.Tensor,
        path: Path | str,
        k: int = 5,
        rule: str = "guided",
        scoring: str = "path",
        gain: str = "auto",
        sign: str = "pos",
    ) -> list[Node]:
        """The top-``k`` children of the last node of ``path`` in the next chain layer.

        Parameters
        ----------
        x : torch.Tensor
            The image (1 x 3 x H x W).
        path : Path or str
            Root first.
        k : int
            How many children.
        rule : {"gradient", "deconvnet", "guided", "guided_neg"}
            Backward rule of every ReLU on the way.
        scoring : {"path", "local", "seed"}
            ``path``: the gradient conditioned on the whole path, read before the
            children's own rule (see the module docs); ``local``: the node seeded alone at
            its maximum; ``seed``: cnn_treevis's exact formula (read after the children's
            rule; use it with ``sign="abs"``).
        gain : {"auto", "fixed", "none"}
            Rescaling of each kept channel: the whole layer's L1 mass, the layer's
            channel count, or 1. It changes the weights' scale, never their order, their
            shares or the pictures (each is scaled on its own).
        sign : {"pos", "neg", "abs"}
            ``pos``: the children whose ``mean(A_c G_c)`` has the rule's polarity (the
            largest positive ones, or under guided_neg the most negative: what the rule
            passes); ``neg``: those against it (inhibitory children under guided);
            ``abs``: the largest ``|mean(A_c G_c)|`` of either sign (the seed's formula).

        Returns
        -------
        list of Node
            Best first; empty at the bottom of the chain, or when no channel of the next
            layer has a contribution of the asked sign.

        Examples
        --------
        >>> from cnnscope.models import load_model
        >>> from cnnscope.images import load_gallery_image
        >>> ex = Explorer(load_model())
        >>> x = ex.input(load_gallery_image("chelsea"))
        >>> kids = ex.children(x, "logits:285", k=3)
        >>> len(kids), kids[0].path[0], kids[0].sign
        (3, Unit(layer='logits', channel=285, pos=None), 'pos')
        >>> ex.children(x, "logits:285", k=1, rule="guided_neg")[0].sign  # it lowers the logit
        'neg'
        """
        check_rule(rule)
        _choice(scoring, SCORINGS, "scoring")
        _choice(gain, GAINS, "gain")
        _choice(sign, SIGNS, "sign")
        if int(k) < 1:
            raise CnnscopeError(f"k must be at least 1, not {k}")
        path = self.check_path(path)
        lower = self.below(path[-1].layer)
        if lower is None:
            log.info("%s", self._bottom_line(path))
            return []
        fwd = self.forward(x)
        at, seed = self.node_seed(fwd, path, rule, gain, scoring)
        grad = fwd.grad(at, seed, to=lower, rule=rule)
        grad = self._reading(fwd, lower, grad, rule, scoring)
        contrib = self._contributions(fwd, lower, grad)
        along = contrib * POLARITY[rule]
        if sign == "abs":
            order = torch.argsort(contrib.abs(), descending=True, stable=True)
        elif sign == "pos":
            order = torch.argsort(along, descending=True, stable=True)
            order = order[along[order] > 0]
        else:
            order = torch.argsort(along, stable=True)
            order = order[along[order] < 0]
        if not len(order):
            log.info("%s", self._empty_line(fwd, path, lower, along, rule, sign))
        edge = torch.where(contrib < 0, -1.0, 1.0).double() * self._orientation(fwd, path, seed)
        shares = _shares(contrib, edge)
        nodes = []
        for c in order[: int(k)].tolist():
            child = path + (Unit(lower, c),)
            w = float(contrib[c])
            if scoring != "local":  # the child's seed, for its own children and picture
                entered = self._child_seed(fwd, lower, grad, w, c, (rule, gain, scoring))
                self._put(fwd, _seed_key(child, rule, gain, scoring), entered)
            edge_sign = "pos" if edge[c] > 0 else "neg"
            nodes.append(Node(Unit(lower, c), w, child, edge_sign, float(shares[c])))
        return nodes

    def no_children(self, x: torch.Tensor, path: Path | str, **options) -> str | None:
        """Why :meth:`children` of ``path`` with ``options`` is empty (one line), or None.

        Examples
        --------
        >>> from cnnscope.models import load_model
        >>> from cnnscope.images import load_gallery_image
        >>> ex = Explorer(load_model())
        >>> x = ex.input(load_gallery_image("chelsea"))
        >>> ex.no_children(x, "logits:285") is None
        True
        """
        path = self.check_path(path)
        if self.children(x, path, k=1, **options):
            return None
        lower = self.below(path[-1].layer)
        if lower is None:
            return self._bottom_line(path)
        rule, scoring = options.get("rule", "guided"), options.get("scoring", "path")
        fwd = self.forward(x)
        at, seed = self.node_seed(fwd, path, rule, options.get("gain", "auto"), scoring)
        grad = self._reading(fwd, lower, fwd.grad(at, seed, to=lower, rule=rule), rule, scoring)
        along = self._contributions(fwd, lower, grad) * POLARITY[rule]
        return self._empty_line(fwd, path, lower, along, rule, options.get("sign", "pos"))

    @staticmethod
    def _bottom_line(path: Path) -> str:
        return f"{path[-1]} is in the bottom layer of the chain: it has no children"

    def _empty_line(
        self, fwd: Forward, path: Path, lower: str, along: torch.Tensor, rule: str, sign: str
    ) -> str:
        """The one-line reason for no children of ``sign`` in ``lower`` (``along``: the
        contributions times the rule's polarity)."""
        node = path[-1]
        kind = "excitatory" if sign == "pos" else "inhibitory"
        other = int((along < 0).sum() if sign == "pos" else (along > 0).sum())
        n = along.numel()
        spread = f"all {n}" if other == n else f"{other} of {n} (the rest are 0)"
        line = (
            f"no unit of {lower} carries {kind} evidence for {node} under {rule}: "
            f"{spread} contributions go the other way"
        )
        if other:
            line += f" (try sign={'neg' if sign == 'pos' else 'pos'})"
        fc = self._modules.get(self.model.logits_layer or "")
        bias = getattr(fc, "bias", None)
        if len(path) == 1 and node.layer == LOGITS and isinstance(bias, torch.Tensor):
            value = float(fwd.activation(LOGITS).reshape(-1)[node.channel])
            b = float(bias.detach().reshape(-1)[node.channel])
            line += f"; the logit {value:+.3g} has a bias of {b:+.3g}"
        return line

    def input_gradients(
        self,
        x: torch.Tensor,
        paths: Sequence[Path | str],
        rule: str = "guided",
        gain: str = "auto",
        scoring: str = "path",
    ) -> torch.Tensor:
        """The input gradients (n x 3 x H x W) of ``paths``: one batched backward per seed layer.

        Examples
        --------
        >>> from cnnscope.models import load_model
        >>> from cnnscope.images import load_gallery_image
        >>> ex = Explorer(load_model())
        >>> x = ex.input(load_gallery_image("chelsea"))
        >>> ex.input_gradients(x, ["logits:285", "logits:281"]).shape
        torch.Size([2, 3, 224, 224])
        """
        check_rule(rule)
        _choice(gain, GAINS, "gain")
        _choice(scoring, SCORINGS, "scoring")
        checked = [self.check_path(p) for p in paths]
        if not checked:
            return torch.zeros(0, 3, *self.input_size)
        fwd = self.forward(x)
        seeds = [self.node_seed(fwd, p, rule, gain, scoring) for p in checked]
        out: list[torch.Tensor | None] = [None] * len(seeds)
        groups: dict[str, list[int]] = {}
        for i, (at, _) in enumerate(seeds):
            groups.setdefault(at, []).append(i)
        for at, idx in groups.items():
            stacked = torch.stack([seeds[i][1] for i in idx])
            grads = fwd.grad(at, stacked, to=INPUT, rule=rule, batched=True)
            for j, i in enumerate(idx):
                out[i] = grads[j, 0]
        return torch.stack(out).detach().cpu()

    def reconstructions(
        self,
        x: torch.Tensor,
        paths: Sequence[Path | str],
        rule: str = "guided",
        gain: str = "auto",
        scoring: str = "path",
        zoom: bool = False,
    ) -> list[np.ndarray]:
        """Reconstructions (H x W x 3 uint8) of ``paths``, batched.

        Each is the path's gradient at the input, each map scaled by its own percentile
        (see :func:`cnnscope.render.gradient_image`), so deep paths neither saturate nor
        vanish. With ``zoom``, each is cropped to its node's :meth:`focus` and scaled back.
        """
        grads = self.input_gradients(x, paths, rule, gain, scoring)
        pictures = [render_gradient(g) for g in grads]
        if not zoom:
            return pictures
        return [
            zoom_picture(pic, self.focus(x, p, rule, gain, scoring))
            for pic, p in zip(pictures, paths)
        ]

    def reconstruction(
        self,
        x: torch.Tensor,
        path: Path | str,
        rule: str = "guided",
        gain: str = "auto",
        scoring: str = "path",
    ) -> np.ndarray:
        """The reconstruction (H x W x 3 uint8) of one path.

        Examples
        --------
        >>> from cnnscope.models import load_model
        >>> from cnnscope.images import load_gallery_image
        >>> ex = Explorer(load_model())
        >>> ex.reconstruction(ex.input(load_gallery_image("chelsea")), "logits:285").shape
        (224, 224, 3)
        """
        return self.reconstructions(x, [path], rule, gain, scoring)[0]

    def focus(
        self,
        x: torch.Tensor,
        path: Path | str,
        rule: str = "guided",
        gain: str = "auto",
        scoring: str = "path",
    ) -> tuple[int, int, int, int] | None:
        """The box of the input where the last node of ``path`` carries its evidence.

        The node's evidence map is ``A_c * |S_c|`` at its layer (``S`` its seed: the
        gradient its path brings, or for a root its seeded position; ``A`` its
        pre-activation above zero, which keeps a ReLU6 unit's peak where it saturates).
        The box covers the 3 x 3 cells around the map's peak, at least :data:`MIN_FOCUS`
        pixels wide. It is the zoom of the node's picture: below the logit the gradient
        reaches most of the image, while the node's evidence peaks in a few cells.
        ``None`` for a unit without positions (a logit) or without evidence.

        Returns
        -------
        tuple of int or None
            ``(top, left, bottom, right)`` in input pixels (bottom and right excluded).

        Examples
        --------
        >>> from cnnscope.models import load_model
        >>> from cnnscope.images import load_gallery_image
        >>> ex = Explorer(load_model())
        >>> x = ex.input(load_gallery_image("chelsea"))
        >>> ex.focus(x, "logits:285") is None
        True
        >>> ex.focus(x, "blocks.15.expand_act:3@0,2")  # one 32-pixel cell, padded by one
        (0, 32, 96, 128)
        """
        check_rule(rule)
        _choice(gain, GAINS, "gain")
        _choice(scoring, SCORINGS, "scoring")
        path = self.check_path(path)
        node = path[-1]
        fwd = self.forward(x)
        at, seed = self.node_seed(fwd, path, rule, gain, scoring)
        act = fwd.activation(at)[0, node.channel]
        if act.dim() != 2 or seed.dim() != 4:
            return None
        act = act.clamp(min=0) if at != node.layer else act.abs()
        evidence = (act * seed[0, node.channel].abs()).double()
        if float(evidence.max()) <= 0:
            return None
        peak = divmod(int(evidence.reshape(-1).argmax()), evidence.shape[1])
        return _focus_box(peak, tuple(evidence.shape), self.input_size)

    def faithfulness(
        self,
        x: torch.Tensor,
        path: Path | str,
        children: Sequence[Unit | str],
        draws: int = 8,
        seed: int = 0,
        rule: str = "guided",
        scoring: str = "path",
    ) -> dict:
        """How much zeroing ``children`` lowers the last node of ``path``, vs random channels.

        ``children`` (channels of the next chain layer) are set to zero at their layer;
        in ``draws`` other rows of the same batched forward, as many random other
        channels of that layer are. Two readings of the node are compared:

        - ``max``: its activation at its position (root) or spatial maximum, or its
          logit (for an activation layer, the pre-activation there);
        - ``path``: the quantity its children were scored for: the sum of its
          activation (pre-activation) times its path-conditioned seed. For a root, or
          with ``scoring="local"``, it is the ``max`` reading.

        Returns
        -------
        dict
            For the reading that matches ``scoring``: ``value``, its value ``a``;
            ``zeroed``, its value with the children zeroed; ``random_zeroed``, its mean
            value over the random draws; ``drop``, the relative drop
            ``(a - a_zeroed) / |a|`` (above 1 when the value changes sign);
            ``random_drop`` and ``random_std``, the mean and standard deviation of the
            drop over the random draws. Also ``target`` (``path`` or ``max``),
            ``measure`` (what was measured, in words), ``max`` (the same numbers for the
            ``max`` reading), ``draws`` and ``layer``.

        Examples
        --------
        >>> from cnnscope.models import load_model
        >>> from cnnscope.images import load_gallery_image
        >>> ex = Explorer(load_model())
        >>> x = ex.input(load_gallery_image("chelsea"))
        >>> kids = [n.unit for n in ex.children(x, "logits:285", k=5)]
        >>> f = ex.faithfulness(x, "logits:285", kids)
        >>> f["drop"] > f["random_drop"] + 3 * f["random_std"]
        True
        """
        check_rule(rule)
        _choice(scoring, SCORINGS, "scoring")
        path = self.check_path(path)
        parent = path[-1]
        lower = self.below(parent.layer)
        if lower is None:
            raise UnitSpecError(f"{parent} is at the bottom of the chain: it has no children")
        units = [Unit.parse(u.replace("~", "#")) if isinstance(u, str) else u for u in children]
        if not units:
            raise UnitSpecError("faithfulness needs at least one child")
        chans = []
        for u in units:
            if self.canonical(u.layer) != lower:
                raise UnitSpecError(f"child {u} is not in {lower}, the layer below {parent}")
            if not 0 <= u.channel < self._shape[lower][0]:
                raise UnitSpecError(f"channel {u.channel} out of range for {lower}")
            chans.append(u.channel)
        chans = sorted(set(chans))
        draws = max(1, min(int(draws), 256))
        fwd = self.forward(x)
        n_chan = self._shape[lower][0]
        others = np.setdiff1d(np.arange(n_chan), chans)
        pool = others if len(others) >= len(chans) else np.arange(n_chan)
        rng = np.random.default_rng(seed)
        mask = torch.ones(draws + 2, n_chan)
        mask[1, chans] = 0.0
        for d in range(draws):
            mask[d + 2, rng.choice(pool, len(chans), replace=False)] = 0.0

        def zero(t: torch.Tensor) -> torch.Tensor:
            return t * mask.to(t).view(mask.shape[0], n_chan, *([1] * (t.dim() - 2)))

        batch = fwd.input.detach().repeat(draws + 2, *([1] * (fwd.input.dim() - 1)))
        at, root = self._root_seed(fwd, parent)
        out = self.engine.intervene(batch, {lower: zero}, read=[at])[at].double().cpu()
        rows = out.shape[0]
        at_max = (out * root.double().cpu()).reshape(rows, -1).sum(1)
        result = {"max": _drops(at_max), "draws": draws, "layer": lower}
        if scoring != "local" and len(path) > 1:
            _, own = self.node_seed(fwd, path, rule, "none", scoring)
            along = (out * own.double().cpu()).reshape(rows, -1).sum(1)
            what = "pre-activation" if at != parent.layer else "activation"
            measure = (
                f"{parent}'s {what} summed over its map, weighted by the gradient its path "
                "brings (what its children were scored on)"
            )
            result.update(_drops(along), target="path", measure=measure)
        else:
            result.update(result["max"], target="max", measure=self._max_words(fwd, parent))
        return result

    def _max_words(self, fwd: Forward, unit: Unit) -> str:
        """What the ``max`` reading of ``unit`` is, in words."""
        if unit.layer == LOGITS:
            return f"the logit of class {unit.channel} ({self.model.label(unit.channel)})"
        at, seed = self._root_seed(fwd, unit)
        what = "pre-activation" if at != unit.layer else "activation"
        if seed.dim() != 4:
            return f"{unit}'s {what}"
        y, x = divmod(int(seed[0, unit.channel].reshape(-1).argmax()), seed.shape[3])
        where = "at" if unit.pos is not None else "at its peak,"
        return f"{Unit(unit.layer, unit.channel)}'s {what} {where} position ({y}, {x})"

    def parents(
        self, x: torch.Tensor, unit: Unit | str, k: int = 5, rule: str = "guided"
    ) -> list[Node]:
        """Drill up: the units of the chain layer above that ``unit`` feeds most.

        Each channel ``p`` of the layer above is seeded alone at its maximum (its logit);
        ``unit``'s weight for it is ``mean(A_u * G_u)``, as it would be as ``p``'s child
        under local scoring. The top ``k`` by magnitude are returned; each node's path is
        ``(parent, unit)``. All seeds go through batched backwards in memory-bounded chunks.
        Parents with a zero weight are left out: a unit can feed nothing above it on an
        image (for instance when its depthwise channel is silent there), and then the list
        is empty.

        Examples
        --------
        >>> from cnnscope.models import load_model
        >>> from cnnscope.images import load_gallery_image
        >>> ex = Explorer(load_model())
        >>> x = ex.input(load_gallery_image("chelsea"))
        >>> ex.parents(x, "head_act:0", k=1)[0].unit.layer
        'logits'
        """
        check_rule(rule)
        if isinstance(unit, str):
            unit = Unit.parse(unit.replace("~", "#"))
        (unit,) = self.check_path((unit,))
        upper = self.above(unit.layer)
        if upper is None:
            return []
        fwd = self.forward(x)
        act_u = fwd.activation(unit.layer)[0, unit.channel].reshape(1, -1)
        at = self.grad_layer(fwd, upper)
        pre = fwd.activation(at)
        n_par = pre.shape[1]
        per = max(1, _PARENT_CHUNK_FLOATS // max(pre.numel(), fwd.activation(unit.layer).numel()))
        weights = torch.zeros(n_par, dtype=torch.float64)
        flat = pre[0].reshape(n_par, -1)
        best = strengths(fwd, upper)[1][0]
        for start in range(0, n_par, per):
            idx = torch.arange(start, min(n_par, start + per))
            seeds = torch.zeros(len(idx), n_par, flat.shape[1], dtype=pre.dtype, device=pre.device)
            seeds[torch.arange(len(idx)), idx, best[idx]] = 1.0
            seeds = seeds.view(len(idx), *pre.shape)
            grads = fwd.grad(at, seeds, to=unit.layer, rule=rule, batched=True)
            g = grads[:, 0, unit.channel].reshape(len(idx), -1)
            weights[idx] = (g * act_u).mean(1).double().cpu()
        order = torch.argsort(weights.abs(), descending=True, stable=True)[: max(1, int(k))]
        order = order[weights[order] != 0]  # a unit whose path up is silent feeds nobody
        child = Unit(unit.layer, unit.channel)
        shares = _shares(weights, torch.where(weights < 0, -1.0, 1.0).double())
        nodes = []
        for p in order.tolist():
            w = float(weights[p])
            parent = Unit(upper, p)
            sign = "pos" if w >= 0 else "neg"
            nodes.append(Node(parent, w, (parent, child), sign, float(shares[p])))
        return nodes


def _drops(values: torch.Tensor) -> dict:
    """Relative drops of rows 1.. (children, then random draws) against row 0 (clean)."""
    clean = float(values[0])
    scale = abs(clean) if abs(clean) > 1e-12 else 1.0
    drops = (clean - values[1:]) / scale
    rand = drops[1:]
    return {
        "drop": float(drops[0]),
        "random_drop": float(rand.mean()),
        "random_std": float(rand.std(unbiased=False)),
        "value": clean,
        "zeroed": float(values[1]),
        "random_zeroed": float(values[2:].mean()),
    }


#: Smallest side of a focus box, in input pixels (a few cells of a low layer).
MIN_FOCUS = 48


def _focus_box(peak: tuple[int, int], grid: tuple[int, int], size: tuple[int, int]):
    """The square pixel box over the 3 x 3 grid cells around ``peak`` (row, col)."""
    (gh, gw), (h, w) = grid, size
    cy, cx = (peak[0] + 0.5) * h / gh, (peak[1] + 0.5) * w / gw
    side = int(round(min(max(3 * h / gh, 3 * w / gw, MIN_FOCUS), h, w)))
    y0 = int(np.clip(round(cy - side / 2), 0, h - side))
    x0 = int(np.clip(round(cx - side / 2), 0, w - side))
    return y0, x0, y0 + side, x0 + side


def zoom_picture(picture: np.ndarray, box: tuple[int, int, int, int] | None) -> np.ndarray:
    """``picture`` (H x W x 3 uint8) cropped to ``box`` and scaled back to H x W.

    Examples
    --------
    >>> pic = np.zeros((8, 8, 3), np.uint8); pic[2:4, 2:4] = 255
    >>> zoom_picture(pic, (2, 2, 4, 4)).min(), zoom_picture(pic, None) is pic
    (np.uint8(255), True)
    """
    if box is None:
        return picture
    top, left, bottom, right = box
    h, w = picture.shape[:2]
    crop = Image.fromarray(np.ascontiguousarray(picture[top:bottom, left:right]))
    return np.asarray(crop.resize((w, h), Image.Resampling.BICUBIC))


def render_gradient(grad: torch.Tensor) -> np.ndarray:
    """An input gradient (3 x H x W) as the tree's picture (H x W x 3 uint8)."""
    return gradient_image(grad)
