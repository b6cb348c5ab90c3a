"""Objective expressions: the :class:`Objective` base class, its algebra and its text grammar.

Every objective class names the call words of its text form in ``kinds`` (``amplify``
for ``amplify(LAYER, ...)``), reads the text inside the parentheses in
:meth:`Objective.from_args` and writes itself back in :attr:`Objective.spec`; defining
the class registers it (:data:`KINDS`). The grammar here only combines them:

``a + b``, ``a - b``, ``2 * a``, ``a / 2``, ``-a``, ``a * b`` (product of the per-image
values), parentheses, and ``a | b | c`` (a :class:`Batch`: image ``i`` maximizes term
``i``). A bare ``LAYER:C`` or ``LAYER:C@Y,X`` reads as ``unit(LAYER:C...)``.

The library's objectives are in :mod:`cnnscope.synthesis.objectives`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..engine import Engine, Unit
from ..errors import CnnscopeError, UnitSpecError

__all__ = [
    "KINDS",
    "Batch",
    "Linear",
    "ModelBinding",
    "Objective",
    "Product",
    "keyword_args",
    "layer_args",
    "objective_seeds",
    "parse_objective",
    "unit_args",
]

#: ``call word -> objective class``, filled by defining the classes (``Objective.kinds``).
KINDS: dict[str, type[Objective]] = {}


@dataclass
class ModelBinding:
    """The model an objective is bound to (:meth:`Objective.bind`): layers, classes, images.

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
    image_size : (int, int), optional
        The size the inversion targets are computed at (default ``input_size``).

    Examples
    --------
    >>> from cnnscope.engine import Engine
    >>> from cnnscope.models import load_model
    >>> model = load_model()
    >>> where = ModelBinding(Engine.for_module(model.module), (224, 224), model.class_index)
    >>> parse_objective("class(tabby) + blocks.3:1").bind(where).spec
    'class(281) + blocks.3:1'
    """

    engine: Engine
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
        """Raise :class:`UnitSpecError` unless ``layer`` has a channel ``channel``."""
        shape = self.shape(layer)
        if not shape:
            raise UnitSpecError(f"layer {layer!r} has no channels")
        if not 0 <= channel < shape[0]:
            raise UnitSpecError(f"channel {channel} out of range for {layer!r} (0-{shape[0] - 1})")


def format_number(v: float) -> str:
    """A number as the text forms write it: ``2`` rather than ``2.0``.

    Examples
    --------
    >>> format_number(2.0), format_number(0.5)
    ('2', '0.5')
    """
    return repr(float(v)).removesuffix(".0") if float(v).is_integer() else repr(float(v))


class Objective:
    """Base class: a function of activations, one value per image (to maximize).

    A subclass with a text form sets ``kinds`` (its call words, e.g. ``("deepdream",
    "dream")``), ``examples`` (canonical text forms, which read back to themselves),
    :meth:`from_args` and :attr:`spec`.

    Examples
    --------
    >>> obj = Objective.parse("2*deepdream(fc) - fc:0")
    >>> str(obj), type(obj).__name__
    ('2*deepdream(fc) - fc:0', 'Linear')
    """

    #: The call words of the text form (``KIND(ARGS)``) this class reads.
    kinds: ClassVar[tuple[str, ...]] = ()
    #: Canonical text forms: ``str(parse(text)) == text`` for each.
    examples: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        for kind in cls.__dict__.get("kinds", ()):
            other = KINDS.get(kind)
            if other is not None and other.__qualname__ != cls.__qualname__:
                raise TypeError(f"objective kind {kind!r} is taken by {other.__name__}")
            KINDS[kind] = cls

    @classmethod
    def from_args(cls, kind: str, args: str) -> Objective:
        """The objective written ``kind(args)`` (``args``: the text inside the parentheses)."""
        raise CnnscopeError(f"{cls.__name__} has no text form")

    @classmethod
    def parse(cls, text: str | Objective) -> Objective:
        """Read an objective from its text form; on a subclass, it must be of that class.

        Examples
        --------
        >>> from cnnscope.synthesis.objectives import Amplify
        >>> Amplify.parse("amplify(blocks.9, clip=3)").clip
        3.0
        """
        obj = parse_objective(text)
        if not isinstance(obj, cls):
            raise CnnscopeError(f"{str(text)!r} is not a {cls.__name__} objective")
        return obj

    def layers(self) -> set[str]:
        """Layers whose activations :meth:`__call__` reads."""
        raise NotImplementedError

    def __call__(self, acts: dict[str, torch.Tensor]) -> torch.Tensor:
        """Values, shape (N,), for a batch of activations ``{layer: N x ...}``."""
        raise NotImplementedError

    def bind(self, where: ModelBinding) -> Objective:
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

    def bind(self, where):
        return Linear([(w, o.bind(where)) for w, o in self.terms])

    @property
    def spec(self):
        parts = []
        for w, o in self.terms:
            s = o.spec if not isinstance(o, Product) else f"({o.spec})"
            mag = abs(w)
            parts.append(("-" if w < 0 else "+", s if mag == 1.0 else f"{format_number(mag)}*{s}"))
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

    def bind(self, where):
        return Product(self.a.bind(where), self.b.bind(where))

    @property
    def spec(self):
        def wrap(o):
            return f"({o.spec})" if isinstance(o, Linear) and len(o.terms) > 1 else o.spec

        return f"{wrap(self.a)} * {wrap(self.b)}"


class Batch(Objective):
    """One objective per image of the batch (image ``i`` maximizes ``objectives[i]``).

    Examples
    --------
    >>> from cnnscope.synthesis.objectives import Channel
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

    def bind(self, where):
        return Batch([o.bind(where) for o in self.objectives])

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
    >>> from cnnscope.synthesis.objectives import DeepDream
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
# Reading the arguments of ``KIND(ARGS)`` (for the classes' ``from_args``)


def keyword_args(parts: list[str], allowed: dict[str, Callable], what: str) -> dict:
    """``["clip=3"]`` -> ``{"clip": 3.0}`` for the keywords ``allowed`` (name -> type).

    Examples
    --------
    >>> keyword_args(["clip=3", " l1=2"], {"l1": float, "clip": float}, "amplify")
    {'clip': 3.0, 'l1': 2.0}
    """
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


def unit_args(kind: str, raw: str) -> tuple[Unit, list[str]]:
    """``"L:3@1,2, reduce=sum"`` -> the unit and the other arguments.

    Examples
    --------
    >>> unit, rest = unit_args("channel", "blocks.3:1, reduce=sum")
    >>> str(unit), rest
    ('blocks.3:1', [' reduce=sum'])
    """
    m = re.match(r"^\s*([^,@]+:\d+(?:@\d+,\d+)?)\s*(?:,(.*))?$", raw)
    if not m:
        raise UnitSpecError(f"bad {kind}({raw}): write {kind}(LAYER:CHANNEL)")
    rest = [p for p in (m.group(2) or "").split(",") if p.strip()]
    return Unit.parse(m.group(1)), rest


def layer_args(
    kind: str, raw: str, count: int | None = None, usage: str = ""
) -> tuple[str, list[str]]:
    """``"LAYER, a, b"`` -> ``("LAYER", ["a", "b"])``; ``count``: how many must follow
    (else the error says ``usage``, or that ``kind`` takes only a layer).

    Examples
    --------
    >>> layer_args("invert", "blocks.2, coffee", count=1)
    ('blocks.2', ['coffee'])
    """
    parts = [p.strip() for p in raw.split(",")]
    layer, rest = parts[0], [p for p in parts[1:] if p]
    if not layer:
        raise CnnscopeError(f"{kind}() needs a layer name")
    if count is not None and len(rest) != count:
        raise CnnscopeError(usage or f"{kind}({raw}) takes only a layer")
    return layer, rest


# ---------------------------------------------------------------------------------------
# The grammar

_CALL = re.compile(r"[A-Za-z_][A-Za-z_0-9]*(?=\s*\()")
_NUMBER = re.compile(r"\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?")
_BARE_UNIT = re.compile(r"[^\s()+*/|]+?:\d+(?:@\d+,\d+)?(?=$|[\s)+*/|-])")


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.i = 0

    def error(self, what: str) -> CnnscopeError:
        return CnnscopeError(f"bad objective {self.text!r}: {what} at position {self.i}")

    def peek(self) -> str:
        while self.i < len(self.text) and self.text[self.i].isspace():
            self.i += 1
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
            return -self.factor()
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
        if m:  # a layer name never holds '(': this is a call
            kind = m.group(0)
            if kind not in KINDS:
                raise self.error(f"unknown objective {kind!r} (choose {', '.join(sorted(KINDS))})")
            j = self.text.index("(", m.end()) + 1
            depth, k = 1, j
            while k < len(self.text) and depth:
                depth += {"(": 1, ")": -1}.get(self.text[k], 0)
                k += 1
            if depth:
                raise self.error("missing ')'")
            self.i = k
            return KINDS[kind].from_args(kind, self.text[j : k - 1])
        m = _BARE_UNIT.match(self.text, self.i)
        if m and "unit" in KINDS:
            self.i = m.end()
            return KINDS["unit"].from_args("unit", m.group(0))
        raise self.error("expected an objective such as LAYER:CHANNEL, class(N) or amplify(LAYER)")


def parse_objective(text: str | Objective) -> Objective:
    """Read an objective from its text form (see :mod:`cnnscope.synthesis.objectives`).

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
