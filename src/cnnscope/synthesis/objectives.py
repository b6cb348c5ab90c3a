"""What to maximize: the library's objectives, each with its own text form.

An :class:`~cnnscope.synthesis.expression.Objective` names the layers it reads and maps
``{layer: activation}`` (batch first) to a tensor of ``N`` values, which the synthesis
loop maximizes (their sum). The gradient at each layer (the *seed*) is taken on detached
copies of the activations and handed to the engine, which backpropagates it to the image.

Objectives combine like numbers (``a + b``, ``2 * a``, ``a * b``, ``a | b`` for a batch:
:mod:`cnnscope.synthesis.expression`). Each class below reads and writes its own text
form (``kinds``, ``from_args``, ``spec``), so a run's configuration is plain JSON and a
new objective is one class here:

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

import warnings
from pathlib import Path

import numpy as np
import torch

from ..engine import LOGITS, Unit
from ..errors import CnnscopeError, UnitSpecError
from .expression import (
    KINDS,
    Batch,
    ModelBinding,
    Objective,
    format_number,
    keyword_args,
    layer_args,
    objective_seeds,
    parse_objective,
    unit_args,
)

__all__ = [
    "KINDS",
    "Amplify",
    "Batch",
    "Channel",
    "ClassLogit",
    "DeepDream",
    "Direction",
    "Diversity",
    "Inversion",
    "LayerObjective",
    "ModelBinding",
    "Neuron",
    "Objective",
    "objective_seeds",
    "parse_objective",
    "unit_objective",
]


def __getattr__(name: str):
    if name == "Context":  # the old name, taken by cnnscope.attribution.context.Context
        warnings.warn(
            "cnnscope.synthesis.objectives.Context is now ModelBinding",
            DeprecationWarning,
            stacklevel=2,
        )
        return ModelBinding
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _per_image(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


class LayerObjective(Objective):
    """Base of the objectives that read one layer, ``self.layer``.

    A subclass that takes nothing but the layer (``KIND(LAYER)``, as
    :class:`DeepDream`) only sets ``kinds``, ``examples`` and ``__call__``; one with
    more arguments also overrides ``__init__``, :meth:`from_args`, :meth:`bind` and
    :attr:`spec`.

    Examples
    --------
    >>> class Peak(LayerObjective):
    ...     kinds = ("peak",)
    ...     examples = ("peak(blocks.3)",)
    ...     def __call__(self, acts):
    ...         return _per_image(acts[self.layer]).amax(1)
    >>> obj = parse_objective("peak(fc)")
    >>> obj.spec, obj.layers(), obj({"fc": torch.tensor([[1.0, 4.0]])}).tolist()
    ('peak(fc)', {'fc'}, [4.0])
    >>> del KINDS["peak"]
    """

    layer: str

    @classmethod
    def from_args(cls, kind, args):
        return cls(layer_args(kind, args, count=0)[0])

    def __init__(self, layer: str):
        self.layer = layer

    def layers(self):
        return {self.layer}

    def bind(self, where):
        return type(self)(where.resolve(self.layer))

    @property
    def spec(self):
        return f"{self.kinds[0]}({self.layer})"


class Channel(LayerObjective):
    """The mean (or sum: cnn-vis's ``amplify_neuron``) of one channel over all positions.

    Examples
    --------
    >>> obj = Channel("conv", 1)
    >>> obj({"conv": torch.arange(8.0).view(1, 2, 2, 2)}).tolist()
    [5.5]
    """

    kinds = ("channel", "unit")
    examples = ("blocks.9:5", "channel(blocks.9:5, reduce=sum)")

    @classmethod
    def from_args(cls, kind, args):
        """``channel(L:C)``, ``channel(L:C, reduce=sum)``; with ``@Y,X`` a :class:`Neuron`."""
        unit, rest = unit_args(kind, args)
        if unit.pos is not None:
            if rest:
                raise CnnscopeError(f"{kind}({args}): a single neuron takes no options")
            return Neuron(unit.layer, unit.channel, unit.pos)
        return cls(unit.layer, unit.channel, **keyword_args(rest, {"reduce": str}, kind))

    def __init__(self, layer: str, channel: int, reduce: str = "mean"):
        if reduce not in ("mean", "sum"):
            raise CnnscopeError(f"unknown reduction {reduce!r}: choose mean or sum")
        self.layer, self.channel, self.reduce = layer, int(channel), reduce

    def __call__(self, acts):
        a = acts[self.layer]
        v = _per_image(a[:, self.channel])
        return v.mean(1) if self.reduce == "mean" else v.sum(1)

    def bind(self, where):
        layer = where.resolve(self.layer)
        where.check_channel(layer, self.channel)
        return Channel(layer, self.channel, self.reduce)

    @property
    def spec(self):
        if self.reduce == "sum":
            return f"channel({self.layer}:{self.channel}, reduce=sum)"
        return f"{self.layer}:{self.channel}"


class Neuron(LayerObjective):
    """One neuron: channel ``channel`` at ``pos`` (Y, X), or at the centre when ``pos`` is None.

    Examples
    --------
    >>> a = torch.arange(18.0).view(1, 2, 3, 3)
    >>> Neuron("conv", 1)({"conv": a}).tolist(), Neuron("conv", 0, (0, 2))({"conv": a}).tolist()
    ([13.0], [2.0])
    """

    kinds = ("neuron",)
    examples = ("neuron(blocks.9:5)", "blocks.9:5@3,4")

    @classmethod
    def from_args(cls, kind, args):
        unit, rest = unit_args(kind, args)
        if rest:
            raise CnnscopeError(f"neuron({args}) takes no options")
        return cls(unit.layer, unit.channel, unit.pos)

    def __init__(self, layer: str, channel: int, pos: tuple[int, int] | None = None):
        self.layer, self.channel = layer, int(channel)
        self.pos = None if pos is None else (int(pos[0]), int(pos[1]))

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

    def bind(self, where):
        layer = where.resolve(self.layer)
        where.check_channel(layer, self.channel)
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

    kinds = ("class",)
    examples = ("class(281)", "class(tabby)")

    @classmethod
    def from_args(cls, kind, args):
        text = args.strip()
        if not text:
            raise CnnscopeError("class() needs a class name or index")
        return cls(int(text) if text.isdigit() else text)

    def __init__(self, cls: int | str):
        self.cls = cls

    def layers(self):
        return {LOGITS}

    def __call__(self, acts):
        if not isinstance(self.cls, int):
            raise CnnscopeError(f"class {self.cls!r} is not resolved: bind the objective first")
        return _per_image(acts[LOGITS])[:, self.cls]

    def bind(self, where):
        cls = self.cls
        if where.class_index is not None:
            cls = where.class_index(cls)
        elif isinstance(cls, str):
            if not cls.strip().isdigit():
                raise UnitSpecError(f"class {cls!r}: give an index (this model has no labels)")
            cls = int(cls)
        n = where.shape(LOGITS)
        if n and not 0 <= cls < int(np.prod(n)):
            raise UnitSpecError(f"class index {cls} out of range 0-{int(np.prod(n)) - 1}")
        return ClassLogit(int(cls))

    @property
    def spec(self):
        return f"class({self.cls})"


class Amplify(LayerObjective):
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

    kinds = ("amplify",)
    examples = ("amplify(blocks.9, l1=1, l2=0.5, clip=3)",)

    @classmethod
    def from_args(cls, kind, args):
        layer, rest = layer_args(kind, args)
        return cls(layer, **keyword_args(rest, {"l1": float, "l2": float, "clip": float}, kind))

    def __init__(self, layer: str, l1: float = 1.0, l2: float = 1.0, clip: float = 5.0):
        if clip < 0:
            raise CnnscopeError(f"amplify clip must be >= 0, got {clip}")
        self.layer, self.l1, self.l2, self.clip = layer, float(l1), float(l2), float(clip)

    def __call__(self, acts):
        a = _per_image(acts[self.layer])
        mag = a.abs()
        c = self.clip
        huber = torch.where(mag <= c, 0.5 * a * a, c * mag - 0.5 * c * c)
        return (self.l1 * 0.5 * a * mag + self.l2 * huber).sum(1)

    def bind(self, where):
        return Amplify(where.resolve(self.layer), self.l1, self.l2, self.clip)

    @property
    def spec(self):
        return f"amplify({self.layer}, l1={format_number(self.l1)}, l2={format_number(self.l2)}, clip={format_number(self.clip)})"


class DeepDream(LayerObjective):
    """The mean of the squared activations of a layer (DeepDream).

    Examples
    --------
    >>> DeepDream("fc")({"fc": torch.tensor([[1.0, -3.0]])}).tolist()
    [5.0]
    """

    kinds = ("deepdream", "dream")
    examples = ("deepdream(blocks.10)",)

    def __call__(self, acts):
        return _per_image(acts[self.layer]).pow(2).mean(1)


class Direction(LayerObjective):
    """The mean over positions of the dot product of the channel vector with ``v / |v|``.

    The text form takes the values of ``v``, or a ``.npy`` file that holds them.

    Examples
    --------
    >>> a = torch.ones(1, 2, 3, 3)
    >>> round(Direction("conv", [3.0, 4.0])({"conv": a}).item(), 4)
    1.4
    """

    kinds = ("direction",)
    examples = ("direction(blocks.9, 0.5 -1.0 2.0)",)

    @classmethod
    def from_args(cls, kind, args):
        usage = "direction(LAYER, VALUES) needs one vector: a .npy file or numbers"
        layer, (text,) = layer_args(kind, args, 1, usage)
        if text.endswith(".npy"):
            path = Path(text).expanduser()
            if not path.is_file():
                raise CnnscopeError(f"direction file not found: {text}")
            return cls(layer, np.load(path, allow_pickle=False))
        try:
            return cls(layer, [float(v) for v in text.split()])
        except ValueError:
            raise CnnscopeError(
                f"bad direction values {text!r}: give numbers or a .npy file"
            ) from None

    def __init__(self, layer: str, vector):
        v = torch.as_tensor(np.asarray(vector, dtype=np.float64)).flatten()
        if v.numel() == 0 or not torch.isfinite(v).all() or float(v.norm()) == 0:
            raise CnnscopeError("a direction needs a finite, non-zero vector")
        self.layer, self.vector = layer, v

    def __call__(self, acts):
        a = acts[self.layer]
        if a.shape[1] != self.vector.numel():
            raise CnnscopeError(
                f"direction has {self.vector.numel()} values but {self.layer!r} has {a.shape[1]} channels"
            )
        v = (self.vector / self.vector.norm()).to(a)
        v = v.view(1, -1, *([1] * (a.dim() - 2)))
        return _per_image((a * v).sum(1)).mean(1)

    def bind(self, where):
        layer = where.resolve(self.layer)
        shape = where.shape(layer)
        if shape and shape[0] != self.vector.numel():
            raise CnnscopeError(
                f"direction has {self.vector.numel()} values but {layer!r} has {shape[0]} channels"
            )
        return Direction(layer, self.vector)

    @property
    def spec(self):
        return f"direction({self.layer}, {' '.join(repr(float(x)) for x in self.vector)})"


class Diversity(LayerObjective):
    """Minus each image's mean cosine similarity (of Gram matrices) to the other images.

    Add it to a batch objective to make the images of the batch differ in style.

    Examples
    --------
    >>> a = torch.stack([torch.ones(2, 2, 2), torch.ones(2, 2, 2)])
    >>> Diversity("conv")({"conv": a}).tolist()
    [-1.0, -1.0]
    """

    kinds = ("diversity",)
    examples = ("diversity(blocks.9)",)

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


class Inversion(LayerObjective):
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

    kinds = ("invert",)
    examples = ("invert(blocks.2, coffee)",)

    @classmethod
    def from_args(cls, kind, args):
        layer, (image,) = layer_args(kind, args, 1, "invert(LAYER, IMAGE) needs one image")
        return cls(layer, image)

    def __init__(self, layer: str, image: str | None = None, target: torch.Tensor | None = None):
        if image is None and target is None:
            raise CnnscopeError("inversion needs a target image")
        self.layer, self.image, self.target = layer, image, target

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

    def bind(self, where):
        layer = where.resolve(self.layer)
        target = self.target
        if target is None:
            if where.prepare_image is None:
                raise CnnscopeError("inversion of an image needs a model with preprocessing")
            x = where.prepare_image(self.image, where.image_size or where.input_size)
            fwd = where.engine.forward(x, cache=False, layers=[layer], grad=False, truncate=True)
            target = fwd.activation(layer).detach().clone()
        return Inversion(layer, self.image, target)

    @property
    def spec(self):
        if self.image is None:
            raise CnnscopeError("an inversion of a raw tensor target has no text form")
        return f"invert({self.layer}, {self.image})"


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
