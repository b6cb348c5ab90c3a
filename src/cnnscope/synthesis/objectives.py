"""What to maximize: functions of recorded activations, one value per image of the batch.

An :class:`Objective` names the layers it reads and maps ``{layer: activation}`` (batch
first) to a tensor of ``N`` values, which the synthesis loop maximizes (their sum). The
gradient at each layer (the *seed*) is taken on detached copies of the activations and
handed to the engine, which backpropagates it to the image.

Objectives combine like numbers: ``a + b``, ``a - b``, ``2 * a``, ``a / 2``, ``-a`` and
``a * b`` (product of the per-image values). Each has a text form (:attr:`Objective.spec`)
that :func:`parse_objective` reads back, so a run's configuration is plain JSON.

Text forms
----------
``LAYER:C``                      mean of channel C over positions (``channel``)
``LAYER:C@Y,X``                  one neuron (``neuron``)
``channel(LAYER:C)``             mean over positions; ``channel(LAYER:C, reduce=sum)`` sums
``neuron(LAYER:C)``              the neuron at the centre; ``neuron(LAYER:C@Y,X)`` at (Y, X)
``class(285)``, ``class(tabby)`` the class logit (pre-softmax)
``amplify(LAYER, l1=1, l2=1, clip=5)``  cnn-vis layer amplification
``deepdream(LAYER)``             mean of squares
``direction(LAYER, v1 v2 ...)``  mean over positions of the activation . v/|v|; a ``.npy`` path works too
``diversity(LAYER)``             minus the mean cosine similarity of each image's Gram matrix to the others'
``invert(LAYER, IMAGE)``         minus ``||phi(x) - phi(x0)||^2 / ||phi(x0)||^2`` for an image file or gallery name
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..engine import LOGITS, Unit
from ..errors import CnnscopeError, UnitSpecError

__all__ = [
    "Amplify",
    "Batch",
    "Channel",
    "ClassLogit",
    "Context",
    "DeepDream",
    "Direction",
    "Diversity",
    "Inversion",
    "Neuron",
    "Objective",
    "objective_seeds",
    "parse_objective",
    "unit_objective",
]


@dataclass
class Context:
    """What :meth:`Objective.bind` needs: layer names, class names, target images.

    Attributes
    ----------
    engine : cnnscope.engine.Engine
        The model's engine.
    input_size : (int, int)
        The model's input size, used to list layers and their shapes.
    class_index : callable, optional
        ``name or index -> class index`` (``LoadedModel.class_index``).
    prepare_image : callable, optional
        ``spec, size -> model input tensor`` for inversion targets.
    """

    engine: object
    input_size: tuple[int, int]
    class_index: Callable[[str], int] | None = None
    prepare_image: Callable[[str, tuple[int, int]], torch.Tensor] | None = None
    image_size: tuple[int, int] | None = None
    _shapes: dict | None = field(default=None, repr=False)

    def resolve(self, layer: str) -> str:
        """Canonical layer name (``UnknownLayerError`` with suggestions otherwise)."""
        return self.engine.resolve(layer, self.input_size)

    def shape(self, layer: str) -> tuple[int, ...]:
        """Shape (no batch) of ``layer`` at the model's input size."""
        if self._shapes is None:
            self._shapes = {i.name: i.shape for i in self.engine.layers(self.input_size)}
        return self._shapes[layer]

    def check_channel(self, layer: str, channel: int) -> None:
        shape = self.shape(layer)
        if not shape:
            raise UnitSpecError(f"layer {layer!r} has no channels")
        if not 0 <= channel < shape[0]:
            raise UnitSpecError(f"channel {channel} out of range for {layer!r} (0-{shape[0] - 1})")


def _num(v: float) -> str:
    return repr(float(v)).removesuffix(".0") if float(v).is_integer() else repr(float(v))


class Objective:
    """Base class: a function of activations, one value per image (to maximize)."""

    def layers(self) -> set[str]:
        """Layers whose activations :meth:`__call__` reads."""
        raise NotImplementedError

    def __call__(self, acts: dict[str, torch.Tensor]) -> torch.Tensor:
        """Values, shape (N,), for a batch of activations ``{layer: N x ...}``."""
        raise NotImplementedError

    def bind(self, ctx: Context) -> Objective:
        """A copy with canonical layer names and targets resolved against a model."""
        return self

    @property
    def spec(self) -> str:
        """Text form, read back by :func:`parse_objective`."""
        raise NotImplementedError

    def __str__(self) -> str:
        return self.spec

    def __repr__(self) -> str:
        return f"Objective({self.spec!r})"

    # algebra ------------------------------------------------------------------
    def _terms(self) -> list[tuple[float, Objective]]:
        return [(1.0, self)]

    def __add__(self, other):
        if isinstance(other, (int, float)) and other == 0:
            return self
        if not isinstance(other, Objective):
            return NotImplemented
        return Linear(self._terms() + other._terms())

    def __radd__(self, other):
        return self.__add__(other)

    def __sub__(self, other):
        if not isinstance(other, Objective):
            return NotImplemented
        return Linear(self._terms() + [(-w, o) for w, o in other._terms()])

    def __neg__(self):
        return Linear([(-w, o) for w, o in self._terms()])

    def __mul__(self, other):
        if isinstance(other, (int, float)):
            return Linear([(float(other) * w, o) for w, o in self._terms()])
        if isinstance(other, Objective):
            return Product(self, other)
        return NotImplemented

    def __rmul__(self, other):
        if isinstance(other, (int, float)):
            return self.__mul__(other)
        return NotImplemented

    def __truediv__(self, other):
        if isinstance(other, (int, float)) and other != 0:
            return self.__mul__(1.0 / float(other))
        return NotImplemented


class Linear(Objective):
    """A weighted sum of objectives."""

    def __init__(self, terms: Sequence[tuple[float, Objective]]):
        self.terms = [(float(w), o) for w, o in terms]

    def _terms(self):
        return list(self.terms)

    def layers(self):
        return set().union(*(o.layers() for _, o in self.terms))

    def __call__(self, acts):
        return sum(w * o(acts) for w, o in self.terms)

    def bind(self, ctx):
        return Linear([(w, o.bind(ctx)) for w, o in self.terms])

    @property
    def spec(self):
        parts = []
        for w, o in self.terms:
            s = o.spec if not isinstance(o, Product) else f"({o.spec})"
            sign = "-" if w < 0 else "+"
            mag = abs(w)
            body = s if mag == 1.0 else f"{_num(mag)}*{s}"
            parts.append((sign, body))
        out = ("-" if parts[0][0] == "-" else "") + parts[0][1]
        for sign, body in parts[1:]:
            out += f" {sign} {body}"
        return out


class Product(Objective):
    """The product of two objectives' per-image values."""

    def __init__(self, a: Objective, b: Objective):
        self.a, self.b = a, b

    def layers(self):
        return self.a.layers() | self.b.layers()

    def __call__(self, acts):
        return self.a(acts) * self.b(acts)

    def bind(self, ctx):
        return Product(self.a.bind(ctx), self.b.bind(ctx))

    @property
    def spec(self):
        def wrap(o):
            return f"({o.spec})" if isinstance(o, Linear) and len(o.terms) > 1 else o.spec

        return f"{wrap(self.a)} * {wrap(self.b)}"


def _per_image(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


class Channel(Objective):
    """The mean (or sum) of one channel over all positions.

    Examples
    --------
    >>> obj = Channel("conv", 1)
    >>> obj({"conv": torch.arange(8.0).view(1, 2, 2, 2)}).tolist()
    [5.5]
    """

    def __init__(self, layer: str, channel: int, reduce: str = "mean"):
        if reduce not in ("mean", "sum"):
            raise CnnscopeError(f"unknown reduction {reduce!r}: choose mean or sum")
        self.layer, self.channel, self.reduce = layer, int(channel), reduce

    def layers(self):
        return {self.layer}

    def __call__(self, acts):
        a = acts[self.layer]
        v = _per_image(a[:, self.channel])
        return v.mean(1) if self.reduce == "mean" else v.sum(1)

    def bind(self, ctx):
        layer = ctx.resolve(self.layer)
        ctx.check_channel(layer, self.channel)
        return Channel(layer, self.channel, self.reduce)

    @property
    def spec(self):
        if self.reduce == "sum":
            return f"channel({self.layer}:{self.channel}, reduce=sum)"
        return f"{self.layer}:{self.channel}"


class Neuron(Objective):
    """One neuron: channel ``channel`` at ``pos`` (Y, X), or at the centre when ``pos`` is None.

    Examples
    --------
    >>> a = torch.arange(18.0).view(1, 2, 3, 3)
    >>> Neuron("conv", 1)({"conv": a}).tolist(), Neuron("conv", 0, (0, 2))({"conv": a}).tolist()
    ([13.0], [2.0])
    """

    def __init__(self, layer: str, channel: int, pos: tuple[int, int] | None = None):
        self.layer, self.channel = layer, int(channel)
        self.pos = None if pos is None else (int(pos[0]), int(pos[1]))

    def layers(self):
        return {self.layer}

    def __call__(self, acts):
        a = acts[self.layer][:, self.channel]
        if a.dim() == 1:
            return a
        h, w = a.shape[-2:]
        y, x = self.pos if self.pos is not None else (h // 2, w // 2)
        if not (0 <= y < h and 0 <= x < w):
            raise UnitSpecError(
                f"position {y},{x} is outside {self.layer!r}'s {h}x{w} map at this image size"
            )
        return a[:, y, x]

    def bind(self, ctx):
        layer = ctx.resolve(self.layer)
        ctx.check_channel(layer, self.channel)
        return Neuron(layer, self.channel, self.pos)

    @property
    def spec(self):
        if self.pos is None:
            return f"neuron({self.layer}:{self.channel})"
        return f"{self.layer}:{self.channel}@{self.pos[0]},{self.pos[1]}"


class ClassLogit(Objective):
    """A class logit (the model output before softmax); ``cls`` is an index or a name.

    Examples
    --------
    >>> ClassLogit(2)({"logits": torch.tensor([[1.0, 2.0, 3.0]])}).tolist()
    [3.0]
    """

    def __init__(self, cls: int | str):
        self.cls = cls

    def layers(self):
        return {LOGITS}

    def __call__(self, acts):
        if not isinstance(self.cls, int):
            raise CnnscopeError(f"class {self.cls!r} is not resolved: bind the objective first")
        return _per_image(acts[LOGITS])[:, self.cls]

    def bind(self, ctx):
        cls = self.cls
        if ctx.class_index is not None:
            cls = ctx.class_index(cls)
        elif isinstance(cls, str):
            if not cls.strip().isdigit():
                raise UnitSpecError(f"class {cls!r}: give an index (this model has no labels)")
            cls = int(cls)
        n = ctx.shape(LOGITS)
        if n and not 0 <= cls < int(np.prod(n)):
            raise UnitSpecError(f"class index {cls} out of range 0-{int(np.prod(n)) - 1}")
        return ClassLogit(int(cls))

    @property
    def spec(self):
        return f"class({self.cls})"


class Amplify(Objective):
    """cnn-vis layer amplification: its gradient is ``l1 |a| + l2 clip(a, -clip, clip)``.

    The value is ``sum l1 a|a|/2 + l2 h(a)`` with ``h`` the Huber function (``a^2/2``
    inside ``[-clip, clip]``, linear outside), summed over channels and positions.

    Examples
    --------
    >>> a = torch.tensor([[-8.0, -1.0, 2.0, 10.0]], requires_grad=True)
    >>> Amplify("fc", l1=1.0, l2=1.0, clip=5.0)({"fc": a}).backward()
    >>> a.grad.tolist()
    [[3.0, 0.0, 4.0, 15.0]]
    """

    def __init__(self, layer: str, l1: float = 1.0, l2: float = 1.0, clip: float = 5.0):
        if clip < 0:
            raise CnnscopeError(f"amplify clip must be >= 0, got {clip}")
        self.layer, self.l1, self.l2, self.clip = layer, float(l1), float(l2), float(clip)

    def layers(self):
        return {self.layer}

    def __call__(self, acts):
        a = _per_image(acts[self.layer])
        mag = a.abs()
        c = self.clip
        huber = torch.where(mag <= c, 0.5 * a * a, c * mag - 0.5 * c * c)
        return (self.l1 * 0.5 * a * mag + self.l2 * huber).sum(1)

    def bind(self, ctx):
        return Amplify(ctx.resolve(self.layer), self.l1, self.l2, self.clip)

    @property
    def spec(self):
        return (
            f"amplify({self.layer}, l1={_num(self.l1)}, l2={_num(self.l2)}, clip={_num(self.clip)})"
        )


class DeepDream(Objective):
    """The mean of the squared activations of a layer (DeepDream).

    Examples
    --------
    >>> DeepDream("fc")({"fc": torch.tensor([[1.0, -3.0]])}).tolist()
    [5.0]
    """

    def __init__(self, layer: str):
        self.layer = layer

    def layers(self):
        return {self.layer}

    def __call__(self, acts):
        return _per_image(acts[self.layer]).pow(2).mean(1)

    def bind(self, ctx):
        return DeepDream(ctx.resolve(self.layer))

    @property
    def spec(self):
        return f"deepdream({self.layer})"


class Direction(Objective):
    """The mean over positions of the dot product of the channel vector with ``v / |v|``.

    Examples
    --------
    >>> a = torch.ones(1, 2, 3, 3)
    >>> round(Direction("conv", [3.0, 4.0])({"conv": a}).item(), 4)
    1.4
    """

    def __init__(self, layer: str, vector):
        v = torch.as_tensor(np.asarray(vector, dtype=np.float64)).flatten()
        if v.numel() == 0 or not torch.isfinite(v).all() or float(v.norm()) == 0:
            raise CnnscopeError("a direction needs a finite, non-zero vector")
        self.layer, self.vector = layer, v

    def layers(self):
        return {self.layer}

    def __call__(self, acts):
        a = acts[self.layer]
        if a.shape[1] != self.vector.numel():
            raise CnnscopeError(
                f"direction has {self.vector.numel()} values but {self.layer!r} has {a.shape[1]} channels"
            )
        v = (self.vector / self.vector.norm()).to(a)
        v = v.view(1, -1, *([1] * (a.dim() - 2)))
        return _per_image((a * v).sum(1)).mean(1)

    def bind(self, ctx):
        layer = ctx.resolve(self.layer)
        shape = ctx.shape(layer)
        if shape and shape[0] != self.vector.numel():
            raise CnnscopeError(
                f"direction has {self.vector.numel()} values but {layer!r} has {shape[0]} channels"
            )
        return Direction(layer, self.vector)

    @property
    def spec(self):
        return f"direction({self.layer}, {' '.join(repr(float(x)) for x in self.vector)})"


class Diversity(Objective):
    """Minus each image's mean cosine similarity (of Gram matrices) to the other images.

    Add it to a batch objective to make the images of the batch differ in style.

    Examples
    --------
    >>> a = torch.stack([torch.ones(2, 2, 2), torch.ones(2, 2, 2)])
    >>> Diversity("conv")({"conv": a}).tolist()
    [-1.0, -1.0]
    """

    def __init__(self, layer: str):
        self.layer = layer

    def layers(self):
        return {self.layer}

    def __call__(self, acts):
        a = acts[self.layer]
        n, c = a.shape[:2]
        if n < 2:
            return a.new_zeros(n)
        f = a.reshape(n, c, -1)
        gram = torch.bmm(f, f.transpose(1, 2)).reshape(n, -1)
        gram = gram / gram.norm(dim=1, keepdim=True).clamp_min(1e-12)
        sim = gram @ gram.T
        off = sim.sum(1) - sim.diagonal()
        return -off / (n - 1)

    def bind(self, ctx):
        return Diversity(ctx.resolve(self.layer))

    @property
    def spec(self):
        return f"diversity({self.layer})"


class Inversion(Objective):
    """Minus the normalised distance to a target representation (Mahendran & Vedaldi).

    ``value = -||phi(x) - phi0||^2 / ||phi0||^2``, with ``phi0`` the layer's activation
    for ``target``: an image spec (file or gallery name) resolved at :meth:`bind`, or
    the activation tensor itself (1 x ... or N x ...).

    Examples
    --------
    >>> target = torch.tensor([[1.0, 1.0]])
    >>> Inversion("fc", target=target)({"fc": torch.tensor([[1.0, 0.0]])}).tolist()
    [-0.5]
    """

    def __init__(self, layer: str, image: str | None = None, target: torch.Tensor | None = None):
        if image is None and target is None:
            raise CnnscopeError("inversion needs a target image")
        self.layer, self.image, self.target = layer, image, target

    def layers(self):
        return {self.layer}

    def __call__(self, acts):
        if self.target is None:
            raise CnnscopeError("inversion target is not computed: bind the objective first")
        a = acts[self.layer]
        t = self.target.to(a)
        if t.shape[1:] != a.shape[1:]:
            raise CnnscopeError(
                f"inversion target of shape {tuple(t.shape[1:])} does not match {tuple(a.shape[1:])}:"
                " invert at the target's size, without transforms that change the size"
            )
        d = _per_image(a - t).pow(2).sum(1)
        return -d / _per_image(t).pow(2).sum(1).clamp_min(1e-12)

    def bind(self, ctx):
        layer = ctx.resolve(self.layer)
        target = self.target
        if target is None:
            if ctx.prepare_image is None:
                raise CnnscopeError("inversion of an image needs a model with preprocessing")
            x = ctx.prepare_image(self.image, ctx.image_size or ctx.input_size)
            fwd = ctx.engine.forward(x, cache=False, layers=[layer], grad=False, truncate=True)
            target = fwd.activation(layer).detach().clone()
        return Inversion(layer, self.image, target)

    @property
    def spec(self):
        if self.image is None:
            raise CnnscopeError("an inversion of a raw tensor target has no text form")
        return f"invert({self.layer}, {self.image})"


class Batch(Objective):
    """One objective per image of the batch (image ``i`` maximizes ``objectives[i]``).

    Examples
    --------
    >>> obj = Batch([Channel("c", 0), Channel("c", 1)])
    >>> obj({"c": torch.arange(8.0).view(2, 2, 2)}).tolist()
    [0.5, 6.5]
    """

    def __init__(self, objectives: Sequence[Objective]):
        if not objectives:
            raise CnnscopeError("a batch objective needs at least one objective")
        self.objectives = list(objectives)

    def layers(self):
        return set().union(*(o.layers() for o in self.objectives))

    def __call__(self, acts):
        n = next(iter(acts.values())).shape[0]
        if n != len(self.objectives):
            raise CnnscopeError(f"batch of {n} images for {len(self.objectives)} objectives")
        vals = [
            o({k: v[i : i + 1] for k, v in acts.items()}) for i, o in enumerate(self.objectives)
        ]
        return torch.cat(vals)

    def bind(self, ctx):
        return Batch([o.bind(ctx) for o in self.objectives])

    @property
    def spec(self):
        return " | ".join(o.spec for o in self.objectives)


def objective_seeds(
    objective: Objective, acts: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The objective's values and ``{layer: d(sum of values)/d(activation)}``.

    ``acts`` are detached activations; the seeds are computed on leaf copies, so no
    graph of the model is touched.

    Examples
    --------
    >>> vals, seeds = objective_seeds(DeepDream("fc"), {"fc": torch.tensor([[1.0, -3.0]])})
    >>> vals.tolist(), seeds["fc"].tolist()
    ([5.0], [[1.0, -3.0]])
    """
    leaves = {k: v.detach().requires_grad_(True) for k, v in acts.items()}
    with torch.enable_grad():
        values = objective(leaves)
        grads = torch.autograd.grad(values.sum(), list(leaves.values()), allow_unused=True)
    seeds = {
        k: (g if g is not None else torch.zeros_like(leaves[k])) for k, g in zip(leaves, grads)
    }
    return values.detach(), seeds


# ---------------------------------------------------------------------------------------
# Parsing

_CALL = re.compile(r"[A-Za-z_][A-Za-z_0-9]*")
_NUMBER = re.compile(r"\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?")
_BARE_UNIT = re.compile(r"[^\s()+*/|]+?:\d+(?:@\d+,\d+)?(?=$|[\s)+*/|-])")
_KINDS = (
    "channel",
    "neuron",
    "unit",
    "class",
    "amplify",
    "deepdream",
    "dream",
    "direction",
    "diversity",
    "invert",
)


def _kwargs(parts: list[str], allowed: dict[str, Callable], what: str) -> dict:
    out = {}
    for part in parts:
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in allowed:
            raise CnnscopeError(
                f"bad argument {part.strip()!r} to {what}: use {', '.join(f'{k}=' for k in allowed)}"
            )
        try:
            out[key] = allowed[key](value.strip())
        except ValueError:
            raise CnnscopeError(f"bad value {value.strip()!r} for {key} in {what}") from None
    return out


def _unit_and_rest(raw: str, kind: str) -> tuple[Unit, list[str]]:
    m = re.match(r"^\s*([^,@]+:\d+(?:@\d+,\d+)?)\s*(?:,(.*))?$", raw)
    if not m:
        raise UnitSpecError(f"bad {kind}({raw}): write {kind}(LAYER:CHANNEL)")
    rest = [p for p in (m.group(2) or "").split(",") if p.strip()]
    return Unit.parse(m.group(1)), rest


def _make(kind: str, raw: str) -> Objective:
    if kind in ("channel", "unit"):
        unit, rest = _unit_and_rest(raw, kind)
        if unit.pos is not None:
            if rest:
                raise CnnscopeError(f"{kind}({raw}): a single neuron takes no options")
            return Neuron(unit.layer, unit.channel, unit.pos)
        kw = _kwargs(rest, {"reduce": str}, kind)
        return Channel(unit.layer, unit.channel, **kw)
    if kind == "neuron":
        unit, rest = _unit_and_rest(raw, kind)
        if rest:
            raise CnnscopeError(f"neuron({raw}) takes no options")
        return Neuron(unit.layer, unit.channel, unit.pos)
    if kind == "class":
        text = raw.strip()
        if not text:
            raise CnnscopeError("class() needs a class name or index")
        return ClassLogit(int(text) if text.isdigit() else text)
    parts = [p.strip() for p in raw.split(",")]
    layer, rest = parts[0], [p for p in parts[1:] if p]
    if not layer:
        raise CnnscopeError(f"{kind}() needs a layer name")
    if kind == "amplify":
        kw = _kwargs(rest, {"l1": float, "l2": float, "clip": float}, kind)
        return Amplify(layer, **kw)
    if kind in ("deepdream", "dream"):
        if rest:
            raise CnnscopeError(f"{kind}({raw}) takes only a layer")
        return DeepDream(layer)
    if kind == "diversity":
        if rest:
            raise CnnscopeError(f"diversity({raw}) takes only a layer")
        return Diversity(layer)
    if kind == "direction":
        if len(rest) != 1:
            raise CnnscopeError("direction(LAYER, VALUES) needs one vector: a .npy file or numbers")
        text = rest[0]
        if text.endswith(".npy"):
            path = Path(text).expanduser()
            if not path.is_file():
                raise CnnscopeError(f"direction file not found: {text}")
            return Direction(layer, np.load(path, allow_pickle=False))
        try:
            return Direction(layer, [float(v) for v in text.split()])
        except ValueError:
            raise CnnscopeError(
                f"bad direction values {text!r}: give numbers or a .npy file"
            ) from None
    if kind == "invert":
        if len(rest) != 1:
            raise CnnscopeError("invert(LAYER, IMAGE) needs one image")
        return Inversion(layer, rest[0])
    raise CnnscopeError(f"unknown objective {kind!r}")  # pragma: no cover


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.i = 0

    def error(self, what: str) -> CnnscopeError:
        return CnnscopeError(f"bad objective {self.text!r}: {what} at position {self.i}")

    def ws(self):
        while self.i < len(self.text) and self.text[self.i].isspace():
            self.i += 1

    def peek(self) -> str:
        self.ws()
        return self.text[self.i] if self.i < len(self.text) else ""

    def parse(self) -> Objective:
        parts = [self.expr()]
        while self.peek() == "|":
            self.i += 1
            parts.append(self.expr())
        if self.peek():
            raise self.error(f"unexpected {self.peek()!r}")
        value = parts[0] if len(parts) == 1 else Batch(parts)
        if not isinstance(value, Objective):
            raise CnnscopeError(f"bad objective {self.text!r}: it is a number, not an objective")
        return value

    def expr(self):
        return self._chain(self.term, ("+", "-"))

    def term(self):
        return self._chain(self.factor, ("*", "/"))

    def _chain(self, operand, ops: tuple[str, ...]):
        """``operand (op operand)*`` for ``op`` in ``ops``, combined left to right."""
        value = operand()
        while self.peek() in ops:
            op = self.text[self.i]
            self.i += 1
            value = self._combine(value, operand(), op)
        return value

    def _combine(self, a, b, op):
        num_a, num_b = isinstance(a, float), isinstance(b, float)
        if op in "+-" and (num_a or num_b):
            raise self.error("cannot add a number to an objective")
        if op == "/" and not num_b:
            raise self.error("can only divide by a number")
        if num_a and num_b:
            return {"*": a * b, "/": a / b if b else math.inf}[op]
        if op == "+":
            return a + b
        if op == "-":
            return a - b
        if op == "*":
            return a * b
        if b == 0:
            raise self.error("division by zero")
        return a / b

    def factor(self):
        c = self.peek()
        if c == "-":
            self.i += 1
            v = self.factor()
            return -v
        if c == "(":
            self.i += 1
            v = self.expr()
            if self.peek() != ")":
                raise self.error("missing ')'")
            self.i += 1
            return v
        m = _NUMBER.match(self.text, self.i)
        if m and not _BARE_UNIT.match(self.text, self.i):
            self.i = m.end()
            return float(m.group(0))
        m = _CALL.match(self.text, self.i)
        if m and m.group(0) in _KINDS and self.text[m.end() :].lstrip().startswith("("):
            kind = m.group(0)
            j = self.text.index("(", m.end()) + 1
            depth, k = 1, j
            while k < len(self.text) and depth:
                depth += {"(": 1, ")": -1}.get(self.text[k], 0)
                k += 1
            if depth:
                raise self.error("missing ')'")
            self.i = k
            return _make(kind, self.text[j : k - 1])
        m = _BARE_UNIT.match(self.text, self.i)
        if m:
            self.i = m.end()
            unit = Unit.parse(m.group(0))
            if unit.pos is not None:
                return Neuron(unit.layer, unit.channel, unit.pos)
            return Channel(unit.layer, unit.channel)
        raise self.error("expected an objective such as LAYER:CHANNEL, class(N) or amplify(LAYER)")


def parse_objective(text: str | Objective) -> Objective:
    """Read an objective from its text form (see the module docstring).

    ``a | b | c`` is a batch objective (image ``i`` maximizes term ``i``).

    Examples
    --------
    >>> parse_objective("blocks.9:5 - 0.5*deepdream(blocks.10)").spec
    'blocks.9:5 - 0.5*deepdream(blocks.10)'
    >>> parse_objective("amplify(blocks.9, clip=3)").spec
    'amplify(blocks.9, l1=1, l2=1, clip=3)'
    """
    if isinstance(text, Objective):
        return text
    if not isinstance(text, str) or not text.strip():
        raise CnnscopeError("the objective is empty: give e.g. blocks.9:5 or amplify(blocks.9)")
    return _Parser(text).parse()


def unit_objective(unit: Unit | str) -> Objective:
    """The objective that visualizes a unit: its channel, or one neuron when it has a position.

    Examples
    --------
    >>> unit_objective("blocks.5:3@7,7").spec, unit_objective(Unit("blocks.5", 3)).spec
    ('blocks.5:3@7,7', 'blocks.5:3')
    """
    u = unit if isinstance(unit, Unit) else Unit.parse(str(unit))
    if u.pos is not None:
        return Neuron(u.layer, u.channel, u.pos)
    return Channel(u.layer, u.channel)
