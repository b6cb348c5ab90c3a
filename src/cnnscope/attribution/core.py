"""The attribution verb, its result object, targets and the per-call context.

:func:`attribute` turns ``(model, image(s), method, target, layer, options)`` into an
:class:`Attribution`. Each method is a small function registered in :data:`METHODS`
that receives a :class:`Context`: the engine, the input batch, the resolved targets and
helpers that batch and chunk the work (:meth:`Context.input_gradients`,
:meth:`Context.scores`). No method touches the model directly: every gradient comes
from :meth:`cnnscope.engine.Forward.grad` and every plain forward from
:meth:`cnnscope.engine.Engine.forward` or :meth:`~cnnscope.engine.Engine.intervene`.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..engine import INPUT, LOGITS, Engine, Forward, Unit, structure
from ..engine.rules import warn_once
from ..engine.units import split_call, unknown_layer
from ..errors import CnnscopeError, ImageError, UnitSpecError
from ..models import LoadedModel

log = logging.getLogger(__name__)

__all__ = [
    "METHODS",
    "Attribution",
    "Context",
    "Method",
    "MethodOutput",
    "Target",
    "attribute",
    "get_method",
    "method_names",
    "register",
]

#: Default memory budget of one chunk of inner samples (bytes).
DEFAULT_MEMORY = 2 << 30
#: Largest automatic chunk on CPU and on CUDA (bigger batches stop paying off).
_CPU_CAP, _CUDA_CAP = 16, 64


# --------------------------------------------------------------------------------------
# Registry


@dataclass(frozen=True)
class MethodOutput:
    """What a method function returns: ``maps`` (N x C x H x W) plus extras."""

    maps: torch.Tensor
    meta: dict = field(default_factory=dict)
    layer: str | list[str] | None = None


@dataclass(frozen=True)
class Method:
    """One registered attribution method.

    Attributes
    ----------
    name : str
        Registry key (``guided_backprop``).
    fn : callable
        ``fn(ctx, **options) -> MethodOutput``.
    family : str
        ``gradient``, ``path``, ``noise``, ``cam`` or ``lrp``.
    output : str
        ``pixel`` (3 x H x W signed maps) or ``map`` (H x W maps, e.g. CAMs).
    style : str
        Default rendering (see :data:`cnnscope.attribution.render.STYLES`).
    signed : bool
        Whether the sign carries meaning (IG, LRP, gradient x input). Unsigned
        methods are reduced with ``sum |a|`` for rankings and heatmaps.
    uses_layer : bool
        Whether the method takes ``layer=``.
    summary : str
        One line for ``--help`` and the docs.
    reference : str
        The paper.
    title : str
        The name people read (``Guided Integrated Gradients``): the explorer's picker and
        ``cnnscope compare``'s panel titles. Defaults to the name with spaces.
    """

    name: str
    fn: Callable[..., MethodOutput]
    family: str
    output: str
    style: str
    signed: bool
    uses_layer: bool
    summary: str
    reference: str = ""
    aliases: tuple[str, ...] = ()
    fixed: dict = field(default_factory=dict)
    title: str = ""

    @property
    def options(self) -> dict[str, object]:
        """Option names and defaults (``layer`` excluded)."""
        params = list(inspect.signature(self.fn).parameters.values())[1:]
        out = {
            p.name: p.default
            for p in params
            if p.kind is p.KEYWORD_ONLY or p.kind is p.POSITIONAL_OR_KEYWORD
        }
        out.pop("layer", None)
        for key in self.fixed:
            out[key] = self.fixed[key]
        return out


METHODS: dict[str, Method] = {}
_FAMILIES = ("gradient", "path", "noise", "cam", "lrp")
_ALIASES: dict[str, str] = {}


def register(
    name: str,
    *,
    family: str,
    output: str = "pixel",
    style: str = "grayscale",
    signed: bool = False,
    summary: str = "",
    reference: str = "",
    aliases: Sequence[str] = (),
    fixed: dict | None = None,
    fn: Callable | None = None,
    title: str = "",
):
    """Register an attribution method (decorator).

    ``fixed`` gives option defaults that differ from the function's own, so that one
    function can serve several named variants (``smoothgrad`` / ``vargrad``).

    Examples
    --------
    >>> @register("my_gradient", family="gradient", summary="demo")
    ... def my_gradient(ctx):
    ...     return MethodOutput(ctx.input_gradients(ctx.x))
    >>> "my_gradient" in METHODS
    True
    >>> del METHODS["my_gradient"]
    """

    def wrap(func):
        params = inspect.signature(func).parameters
        method = Method(
            name=name,
            fn=func,
            family=family,
            output=output,
            style=style,
            signed=signed,
            uses_layer="layer" in params,
            summary=summary or (func.__doc__ or "").strip().splitlines()[0],
            reference=reference,
            aliases=tuple(aliases),
            fixed=dict(fixed or {}),
            title=title or name.replace("_", " "),
        )
        METHODS[name] = method
        for alias in aliases:
            _ALIASES[alias] = name
        return func

    return wrap(fn) if fn is not None else wrap


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace(" ", "_").replace("+", "p")


def method_names() -> list[str]:
    """Registered method names, in registration order.

    Examples
    --------
    >>> "grad_cam" in method_names()
    True
    """
    _load_methods()
    rank = {f: i for i, f in enumerate(_FAMILIES)}
    names = list(METHODS)
    return sorted(names, key=lambda n: (rank.get(METHODS[n].family, len(rank)), names.index(n)))


def get_method(name: str | Method) -> Method:
    """Look a method up by name or alias (case and ``-``/``_`` insensitive).

    Raises
    ------
    CnnscopeError
        For an unknown name, with the closest names.

    Examples
    --------
    >>> get_method("Grad-CAM").name
    'grad_cam'
    """
    _load_methods()
    if isinstance(name, Method):
        return name
    key = _key(str(name))
    key = _ALIASES.get(key, key)
    if key in METHODS:
        return METHODS[key]
    close = difflib.get_close_matches(key, list(METHODS) + list(_ALIASES), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise CnnscopeError(
        f"unknown attribution method {name!r}{hint} (run `cnnscope attribute --list` to see all)"
    )


def _load_methods() -> None:
    # The method modules register themselves on import.
    from . import cam, gradient, lrp  # noqa: F401


# --------------------------------------------------------------------------------------
# Targets


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
            seed[(self.channel, *self.pos)] = 1.0
        return seed


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


# --------------------------------------------------------------------------------------
# The per-call context


def _resolve_name(module: nn.Module, name: str) -> str:
    """Check a layer name against the module tree (fast, no forward pass)."""
    if name in (INPUT, LOGITS):
        return name
    base, _call = split_call(name)
    names = [n for n, _ in module.named_modules() if n]
    if base in names:
        return name
    raise unknown_layer(name, names + [LOGITS])


class Context:
    """Everything a method needs for one call: engine, inputs, targets and chunking.

    Do not build it directly: :func:`attribute` does. Methods read ``ctx.x``
    (N x 3 x H x W on the model's device), ``ctx.targets`` and the options, and call
    the helpers below, which batch the work over images and inner samples in chunks of
    at most :attr:`batch_size` rows.
    """

    def __init__(
        self,
        module: nn.Module,
        x: torch.Tensor,
        target,
        *,
        loaded: LoadedModel | None = None,
        legacy: bool = False,
        batch_size: int | None = None,
        max_memory: int | None = None,
        progress: bool = False,
    ):
        self.module = module
        self.loaded = loaded
        self.engine = Engine.for_module(module)
        self.device = self.engine.device
        self.x = x.detach().to(self.device, torch.float32)
        self.n = int(self.x.shape[0])
        self.size = (int(self.x.shape[-2]), int(self.x.shape[-1]))
        self.legacy = bool(legacy)
        self.progress = bool(progress)
        self.max_memory = int(max_memory or DEFAULT_MEMORY)
        if batch_size is not None and int(batch_size) < 1:
            raise CnnscopeError(f"batch_size must be >= 1, got {batch_size}")
        self._batch_size = None if batch_size is None else int(batch_size)
        self._targets: list[Target] | None = None
        self._requested = self._parse_targets(target)
        self._scores: torch.Tensor | None = None

    # ---- targets -------------------------------------------------------------------

    def _parse_targets(self, target) -> list:
        if isinstance(target, (list, tuple)):
            items = list(target)
            if len(items) != self.n:
                raise UnitSpecError(
                    f"{len(items)} targets given for {self.n} images: give one, or one per image"
                )
        else:
            items = [target] * self.n
        parsed = [self._parse_one(t) for t in items]
        layers = {p.layer for p in parsed if p is not None}
        if len(layers) > 1 or (layers and None in parsed and LOGITS not in layers):
            raise UnitSpecError("all targets of one call must be on the same layer")
        return parsed

    def _parse_one(self, target) -> Target | None:
        if target is None:
            return None
        if isinstance(target, Target):
            return Target(_resolve_name(self.module, target.layer), target.channel, target.pos)
        if isinstance(target, Unit):
            unit = target
        elif isinstance(target, (bool, float)):
            raise UnitSpecError(f"bad target {target!r}: give a class index, name or unit")
        elif isinstance(target, (int, np.integer)):
            return self._class_target(int(target))
        elif isinstance(target, torch.Tensor) and target.numel() == 1:
            return self._class_target(int(target.item()))
        elif isinstance(target, str):
            text = target.strip()
            if not text:
                raise UnitSpecError(
                    "empty target: give a class index, a class name or LAYER:CHANNEL"
                )
            if ":" not in text:
                if text.lstrip("-").isdigit():
                    return self._class_target(int(text))
                if self.loaded is None:
                    raise UnitSpecError(
                        f"class name {text!r} needs a model with labels: give a class index"
                    )
                return self._class_target(self.loaded.class_index(text))
            unit = Unit.parse(text)
        else:
            raise UnitSpecError(f"bad target {target!r}: give a class index, name or unit")
        layer = _resolve_name(self.module, unit.layer)
        if layer == LOGITS or (self.loaded is not None and layer == self.loaded.logits_layer):
            if unit.pos is not None:
                raise UnitSpecError(f"the logits have no position: drop the @Y,X of {unit}")
            return self._class_target(unit.channel)
        if layer == INPUT:
            raise UnitSpecError("the input is not a unit to explain: pick a layer above it")
        return Target(layer, unit.channel, unit.pos)

    def _class_target(self, index: int) -> Target:
        if index < 0:
            raise UnitSpecError(f"class index must be >= 0, got {index}")
        if self.loaded is not None:
            index = self.loaded.class_index(index)
            return Target(LOGITS, index, None, self.loaded.label(index))
        return Target(LOGITS, index)

    @property
    def target_layer(self) -> str:
        """Layer where the targets' seeds go (``logits`` for classes)."""
        for t in self._requested:
            if t is not None:
                return t.layer
        return LOGITS

    @property
    def targets(self) -> list[Target]:
        """The resolved target of each image (top-1 classes are found on first use)."""
        if self._targets is None:
            self.resolve_targets()
        return self._targets  # type: ignore[return-value]

    def resolve_targets(self, fwd: Forward | None = None) -> list[Target]:
        """Fix the targets, taking top-1 classes from ``fwd`` (or one plain forward)."""
        if self._targets is not None:
            return self._targets
        layer = self.target_layer
        if fwd is not None and (layer == LOGITS or layer in fwd.layers):
            out = fwd.activation(layer)
        else:
            out = self.plain(self.x, layer)
        shape = tuple(out.shape[1:])
        targets = []
        for i, t in enumerate(self._requested):
            if t is None:
                if out.dim() != 2:
                    raise UnitSpecError(
                        "the model output is not a vector of class scores: give a target"
                    )
                index = int(out[i].argmax())
                label = self.loaded.label(index) if self.loaded is not None else ""
                t = Target(LOGITS, index, None, label)
            problem = _unit_error(t, shape)
            if problem:
                raise UnitSpecError(problem)
            targets.append(t)
        self._targets = targets
        self._scores = self._score_rows(out, list(range(self.n))).detach().float().cpu()
        return targets

    @property
    def scores(self) -> torch.Tensor:
        """The target score of each image (logit, or unit value), on the CPU."""
        self.targets  # noqa: B018 - resolves and fills the scores
        return self._scores  # type: ignore[return-value]

    def seeds(self, rows: Sequence[int], shape: Sequence[int]) -> torch.Tensor:
        """Seeds for rows that belong to images ``rows`` (k x *shape)."""
        targets = self.targets
        cache: dict[int, torch.Tensor] = {}
        out = []
        for r in rows:
            if r not in cache:
                cache[r] = targets[r].seed(shape)
            out.append(cache[r])
        return torch.stack(out).to(self.device)

    def _score_rows(self, out: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
        seed = self.seeds(rows, out.shape[1:])
        return (out * seed).flatten(1).sum(1)

    # ---- layers --------------------------------------------------------------------

    def resolve_layer(self, name: str) -> str:
        """Check a layer name (``UnknownLayerError`` with suggestions)."""
        if not isinstance(name, str):
            raise CnnscopeError(f"bad layer {name!r}: give a layer name")
        layer = _resolve_name(self.module, name.strip())
        if layer in (INPUT, LOGITS):
            raise CnnscopeError(f"layer {layer!r} has no feature maps: pick a convolutional layer")
        return layer

    def default_cam_layer(self) -> str:
        """The default CAM layer below the target (:func:`.structure.default_cam_layer`)."""
        channels = int(self.x.shape[1])
        top = self.target_layer
        below = None if top == LOGITS else self.engine.resolve(top, self.size, channels)
        return structure.default_cam_layer(self.engine, self.size, channels, before=below)

    # ---- forwards and gradients ----------------------------------------------------

    def record(self, x: torch.Tensor, layers: Sequence[str] = ()) -> Forward:
        """A graph-keeping forward of ``x`` recording ``layers`` (plus the target layer)."""
        wanted = {self.target_layer, *layers} - {INPUT, LOGITS}
        # a unit target needs the model only up to its layer
        cut = self.target_layer != LOGITS
        return self.engine.forward(x, cache=False, layers=sorted(wanted), truncate=cut)

    def plain(self, x: torch.Tensor, layer: str) -> torch.Tensor:
        """``layer``'s output for ``x`` from a forward without graph (detached)."""
        only = [] if layer in (INPUT, LOGITS) else [layer]
        fwd = self.engine.forward(x, cache=False, grad=False, layers=only, truncate=bool(only))
        return fwd.activation(fwd.resolve(layer))

    def grad(
        self, fwd: Forward, rows: Sequence[int], to, rule: str = "gradient", last: bool = False
    ):
        """Backpropagate the targets of ``rows`` (one image index per batch row) to ``to``.

        ``last``: the forward's only or last backward (its graph is freed as it goes).
        """
        top = self.target_layer
        shape = fwd.activation(top).shape[1:]
        return fwd.grad(top, self.seeds(rows, shape), to=to, rule=rule, keep_graph=not last)

    @property
    def batch_size(self) -> int:
        """Rows per chunk: the option, or what fits the memory budget (capped)."""
        if self._batch_size is not None:
            return self._batch_size
        per_row = _bytes_per_row(self.engine, self.x)
        cap = _CUDA_CAP if self.device.type == "cuda" else _CPU_CAP
        self._batch_size = max(1, min(cap, self.max_memory // max(per_row, 1)))
        return self._batch_size

    def chunks(self, total: int, desc: str = "") -> Iterator[slice]:
        """Slices of ``range(total)`` of at most :attr:`batch_size` rows (with progress)."""
        size = self.batch_size
        starts = range(0, total, size)
        if self.progress and len(starts) > 1:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc=desc or "attribution", unit="chunk", leave=False)
        for start in starts:
            yield slice(start, min(start + size, total))

    def single_pass(self, rule: str = "gradient") -> torch.Tensor:
        """Gradient at the input of the images themselves, under ``rule``.

        When all images fit one chunk, the top-1 targets come from the same forward
        pass, so a single-pass method costs exactly one forward and one backward.
        """
        if self._targets is None and self.n <= self.batch_size:
            fwd = self.record(self.x)
            self.resolve_targets(fwd)
            return self.grad(fwd, list(range(self.n)), INPUT, rule, last=True)
        return self.input_gradients(self.x, rule=rule)

    def input_gradients(
        self,
        inputs,
        rows: Sequence[int] | None = None,
        rule: str = "gradient",
        weights: torch.Tensor | None = None,
        groups: Sequence[int] | None = None,
        desc: str = "",
    ) -> torch.Tensor:
        """Gradients of the targets at the input, for a batch of (modified) inputs.

        Parameters
        ----------
        inputs : torch.Tensor or callable
            M x C x H x W, or ``make(slice) -> chunk`` for ``len(rows)`` rows, so that
            large sets of inner samples are never built at once.
        rows : sequence of int
            The image (target) each input row explains (default: row i explains image i).
        rule : str
            The engine's backward rule.
        weights : torch.Tensor, optional
            When given, return the weighted sums ``sum_r weights[r] * grad[r]`` over the
            rows of each group instead of one gradient per row.
        groups : sequence of int, optional
            The output row each input row adds to (default: ``rows``).
        """
        self.targets  # noqa: B018 - fix the targets before any modified input
        rows = list(range(len(inputs))) if rows is None else list(rows)
        make = inputs if callable(inputs) else (lambda s: inputs[s])
        if weights is not None:
            groups = rows if groups is None else list(groups)
            total = torch.zeros(
                (max(groups) + 1, *self.x.shape[1:]), device=self.device, dtype=torch.float64
            )
        parts = []
        for s in self.chunks(len(rows), desc):
            fwd = self.record(make(s))
            g = self.grad(fwd, rows[s], INPUT, rule, last=True)
            del fwd
            if weights is None:
                parts.append(g)
            else:
                w = weights[s].to(g.device, torch.float64).view(-1, *([1] * (g.dim() - 1)))
                index = torch.as_tensor(groups[s], device=g.device)
                total.index_add_(0, index, g.double() * w)
        if weights is not None:
            return total.float()
        if not parts:
            return torch.zeros(0, *self.x.shape[1:], device=self.device)
        return torch.cat(parts)

    def scores_of(
        self, inputs, rows: Sequence[int], softmax: bool = False, desc: str = ""
    ) -> torch.Tensor:
        """Target scores of many (modified) inputs without a graph, chunked.

        ``inputs`` is a tensor or a callable ``make(slice) -> chunk``. With ``softmax``,
        class targets give probabilities (unit targets stay raw).
        """
        self.targets  # noqa: B018
        rows = list(rows)
        make = inputs if callable(inputs) else (lambda s: inputs[s])
        layer = self.target_layer
        out = []
        for s in self.chunks(len(rows), desc):
            act = self.plain(make(s), layer)
            if softmax and layer == LOGITS:
                act = torch.softmax(act.float(), dim=1)
            out.append(self._score_rows(act, rows[s]))
        return torch.cat(out) if out else torch.zeros(0, device=self.device)

    # ---- input space ---------------------------------------------------------------

    def input_bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel lowest and highest input values (1 or N x C x 1 x 1 each).

        From the model's preprocessing (pixel 0 and 255) when known, else each image's
        own per-channel range.
        """
        if self.loaded is not None:
            pre = self.loaded.preprocess_config
            mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
            std = torch.tensor(pre.std).view(1, 3, 1, 1)
            low, high = (0.0 - mean) / std, (pre.scale - mean) / std
            return low.to(self.device), high.to(self.device)
        return self.x.amin(dim=(2, 3), keepdim=True), self.x.amax(dim=(2, 3), keepdim=True)


def _bytes_per_row(engine: Engine, x: torch.Tensor) -> int:
    """Estimated memory of one row of a graph-keeping forward + backward.

    From the engine's layer trace: the outputs of leaf modules (a container's output is
    its last child's), twice: what autograd saves plus the gradients in flight.
    """
    modules = dict(engine.module.named_modules())
    total = 0
    for info in engine.layers(tuple(x.shape[-2:]), int(x.shape[1])):
        sub = modules.get(split_call(info.name)[0])
        if info.name == INPUT or (sub is not None and next(sub.children(), None) is None):
            total += math.prod(info.shape)
    return 2 * total * x.element_size()


# --------------------------------------------------------------------------------------
# Inputs


def _as_pil(image) -> Image.Image:
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
        from ..images import resolve_image

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
    if isinstance(model, LoadedModel):
        module, loaded = model.module, model
    elif isinstance(model, nn.Module):
        module, loaded = model, None
    else:
        raise CnnscopeError(
            f"cannot explain a {type(model).__name__}: give a LoadedModel (cnnscope.load_model) "
            "or a torch.nn.Module"
        )
    if isinstance(image, torch.Tensor):
        x = image.detach()
        single = x.dim() == 3
        if single:
            x = x.unsqueeze(0)
        if x.dim() != 4 or x.shape[0] == 0:
            raise ImageError(
                f"an input tensor must be 3 x H x W or N x C x H x W, got {tuple(image.shape)}"
            )
        if not x.is_floating_point():
            raise ImageError(
                "an input tensor must be floating point (the model's normalised input)"
            )
        pictures = Pictures([lambda i=i: _picture_of(loaded, x[i]) for i in range(x.shape[0])])
        return module, loaded, x.float(), single, pictures
    single = not isinstance(image, (list, tuple))
    images = [image] if single else list(image)
    if not images:
        raise ImageError("no images given")
    if loaded is None:
        raise CnnscopeError(
            "a plain nn.Module has no preprocessing: give a LoadedModel or a preprocessed tensor"
        )
    pils = [_as_pil(i) for i in images]
    xs = [loaded.preprocess(p) for p in pils]
    if len({tuple(t.shape) for t in xs}) > 1:
        raise ImageError(
            "images of different sizes cannot be batched: resize them or pass them one by one"
        )
    geometry = loaded.preprocess_config.geometry
    pictures = Pictures([lambda p=p: np.asarray(geometry(p), dtype=np.uint8) for p in pils])
    return module, loaded, torch.cat(xs), single, pictures


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


# --------------------------------------------------------------------------------------
# The result


class Attribution:
    """The result of :func:`attribute`: raw maps plus what they explain.

    For one image ``tensor``/``array`` are ``3 x H x W`` (pixel methods) or ``H x W``
    (maps such as CAMs), at the model's input resolution, signed and unnormalised. For
    a batch they get a leading ``N``; ``attr[i]`` is the attribution of image ``i``.

    Attributes
    ----------
    method : str
        Registry name of the method.
    targets : list of Target
        What each image's map explains.
    scores : torch.Tensor
        The target score of each image (class logit or unit value).
    layer : str or list of str or None
        The layer(s) a CAM or layer method used.
    meta : dict
        Method extras (IG completeness, LRP conservation, low-resolution CAMs, options).
    pictures : sequence of numpy.ndarray
        What the model saw, H x W x 3 uint8 (for overlays; made on first access).

    Examples
    --------
    >>> from cnnscope.models import load_model
    >>> from cnnscope.images import load_gallery_image
    >>> attr = attribute(load_model(), load_gallery_image("chelsea"), "grad_cam")
    >>> attr.array.shape, attr.target.label
    ((224, 224), 'Egyptian cat')
    """

    def __init__(
        self,
        maps: torch.Tensor,
        method: Method,
        targets: list[Target],
        scores: torch.Tensor,
        *,
        single: bool,
        pictures: list | None = None,
        layer=None,
        meta: dict | None = None,
        options: dict | None = None,
    ):
        self._maps = maps.detach().float().cpu()  # N x C x H x W
        self._method = method
        self.method = method.name
        self.targets = list(targets)
        self.scores = scores
        self.single = single
        self.pictures = pictures if pictures is not None else [None] * len(self._maps)
        self.layer = layer
        self.meta = dict(meta or {})
        self.options = dict(options or {})

    # ---- data ----------------------------------------------------------------------

    @property
    def kind(self) -> str:
        """``pixel`` (3-channel maps) or ``map`` (one channel)."""
        return self._method.output

    @property
    def signed(self) -> bool:
        """Whether the sign of the values carries meaning."""
        return self._method.signed

    @property
    def tensor(self) -> torch.Tensor:
        """The raw maps (CPU float32): ``[N x] 3 x H x W`` or ``[N x] H x W``."""
        maps = self._maps[:, 0] if self.kind == "map" else self._maps
        return maps[0] if self.single else maps

    @property
    def array(self) -> np.ndarray:
        """:attr:`tensor` as a numpy array."""
        return self.tensor.numpy()

    @property
    def target(self) -> Target:
        """The target of a single-image attribution (the first one of a batch)."""
        return self.targets[0]

    def saliency(self) -> np.ndarray:
        """``[N x] H x W`` map used for rankings: signed channel sum, or ``sum |a|``."""
        m = self._maps
        s = m.sum(1) if self.signed or self.kind == "map" else m.abs().sum(1)
        s = s.numpy()
        return s[0] if self.single else s

    def __len__(self) -> int:
        return len(self._maps)

    def __getitem__(self, i: int) -> Attribution:
        if not isinstance(i, (int, np.integer)):
            raise TypeError("index an Attribution with an integer")
        n = len(self._maps)
        if not -n <= i < n:
            raise IndexError(f"image {i} out of range (0-{n - 1})")
        i = int(i) % n

        def pick(v):
            if isinstance(v, (list, torch.Tensor)) and len(v) == n:
                return v[i : i + 1] if isinstance(v, torch.Tensor) else v[i]
            if isinstance(v, dict):
                return {k: pick(u) if isinstance(u, torch.Tensor) else u for k, u in v.items()}
            return v

        meta = {k: pick(v) for k, v in self.meta.items()}
        return Attribution(
            self._maps[i : i + 1],
            self._method,
            [self.targets[i]],
            self.scores[i : i + 1],
            single=True,
            pictures=Pictures([lambda: self.pictures[i]]),
            layer=self.layer,
            meta=meta,
            options=self.options,
        )

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        shape = "x".join(str(s) for s in self.tensor.shape)
        targets = ", ".join(str(t) for t in self.targets[:4]) + (
            " ..." if len(self.targets) > 4 else ""
        )
        layer = f", layer={self.layer!r}" if self.layer else ""
        return f"Attribution({self.method}, {shape}, target={targets}{layer})"

    # ---- pictures ------------------------------------------------------------------

    def render(
        self,
        style: str | None = None,
        cmap: str | None = None,
        alpha: float = 0.5,
        percentile: float | None = None,
    ) -> np.ndarray:
        """Draw the map(s) as an H x W x 3 uint8 picture (a row of pictures for a batch).

        Parameters
        ----------
        style : str, optional
            ``colored``, ``grayscale``, ``positive``, ``negative``, ``mask``,
            ``heatmap``, ``overlay`` or ``seismic`` (default: the method's own).
        cmap : str, optional
            Matplotlib colormap for ``heatmap``/``overlay`` (default ``jet``) and
            ``seismic`` (default ``seismic``).
        alpha : float
            Opacity of the heatmap in ``overlay``.
        percentile : float, optional
            Clipping percentile (default 99; 99.5 for ``seismic``); 100 gives seed 2's
            plain min-max pictures.

        Examples
        --------
        >>> from cnnscope.models import load_model
        >>> from cnnscope.images import load_gallery_image
        >>> attr = attribute(load_model(), load_gallery_image("chelsea"), "gradient")
        >>> attr.render("grayscale").shape
        (224, 224, 3)
        """
        from .render import render_map

        style = style or self._method.style
        pics = [
            render_map(
                self._maps[i].numpy(),
                style,
                picture=self.pictures[i],
                cmap=cmap,
                alpha=alpha,
                percentile=percentile,
            )
            for i in range(len(self._maps))
        ]
        if len(pics) == 1:
            return pics[0]
        from ..render import grid

        return grid(pics, cols=len(pics))

    def save(self, path, style: str | None = None, **render_options) -> Path:
        """Write a PNG (any image suffix) of :meth:`render`, or the raw map to ``.npy``.

        Examples
        --------
        >>> import tempfile, os
        >>> from cnnscope.models import load_model
        >>> from cnnscope.images import load_gallery_image
        >>> attr = attribute(load_model(), load_gallery_image("chelsea"), "grad_cam")
        >>> attr.save(os.path.join(tempfile.mkdtemp(), "cam.npy")).suffix
        '.npy'
        """
        path = Path(path)
        if path.parent and not path.parent.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() == ".npy":
            np.save(path, self.array.astype(np.float32))
            return path
        picture = self.render(style, **render_options)
        try:
            Image.fromarray(picture).save(path)
        except (ValueError, KeyError) as exc:
            raise CnnscopeError(f"cannot write {path}: {exc}") from None
        return path

    def _repr_png_(self) -> bytes:
        from ..render import png_bytes

        return png_bytes(self.render())


# --------------------------------------------------------------------------------------
# The verb


def attribute(
    model: LoadedModel | nn.Module,
    image,
    method: str = "guided_backprop",
    target=None,
    layer: str | Sequence[str] | None = None,
    *,
    legacy: bool = False,
    batch_size: int | None = None,
    max_memory: int | None = None,
    progress: bool = False,
    **options,
) -> Attribution:
    """Explain what a model's output (or one unit) owes to each input pixel.

    Parameters
    ----------
    model : LoadedModel or torch.nn.Module
        A model from :func:`cnnscope.load_model`, or a bare module (then ``image``
        must be a preprocessed tensor and targets class indices or units).
    image : PIL image, list of PIL images, path, array, or tensor
        One image (``3 x H x W`` tensor or a picture) or a batch (list, or an
        ``N x 3 x H x W`` tensor, already preprocessed).
    method : str
        A name from :data:`METHODS` (``cnnscope attribute --list``), e.g.
        ``gradient``, ``guided_backprop``, ``integrated_gradients``, ``smoothgrad``,
        ``grad_cam``, ``score_cam``, ``lrp``.
    target : int, str, Unit, or list
        ``None``: each image's top-1 class. A class index or name. A unit
        ``LAYER:CHANNEL`` (the sum of that channel's map) or ``LAYER:CHANNEL@Y,X``
        (one neuron). A list gives one target per image.
    layer : str or list of str, optional
        The layer of CAM methods (default: the last layer with a spatial map larger
        than 1 x 1), several for fused CAMs, or the layer where LRP relevance is read.
    legacy : bool
        Reproduce seed 2's (pytorch-cnn-visualizations) quirks: Grad-CAM and Score-CAM
        start from ones, SmoothGrad's noise std is ``(4 / (max - min))**2``, IG uses
        101 Riemann points from a zero baseline and is not multiplied by the input.
    batch_size : int, optional
        Rows per forward/backward chunk of inner samples (IG steps, noise samples,
        Score-CAM masks). By default as many as fit ``max_memory`` (capped).
    max_memory : int, optional
        Memory budget in bytes of one chunk (default 2 GiB).
    progress : bool
        Show a progress bar over chunks.
    **options
        Method options, e.g. ``steps=64`` for IG, ``samples=25`` for SmoothGrad,
        ``composite="epsilon_gamma_box"`` for LRP (see ``METHODS[name].options``).

    Returns
    -------
    Attribution

    Raises
    ------
    CnnscopeError
        For an unknown method, option, layer or target, or an unusable input
        (one line, with suggestions).

    Examples
    --------
    >>> from cnnscope.models import load_model
    >>> from cnnscope.images import load_gallery_image
    >>> model = load_model()
    >>> attr = attribute(model, load_gallery_image("chelsea"), "integrated_gradients", steps=16)
    >>> attr.array.shape, attr.target.label
    ((3, 224, 224), 'Egyptian cat')
    """
    spec = get_method(method)
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        known = ", ".join(sorted(spec.options)) or "none"
        raise CnnscopeError(f"method {spec.name!r} has no option {unknown[0]!r} (options: {known})")
    if layer is not None and not spec.uses_layer:
        raise CnnscopeError(f"method {spec.name!r} takes no layer (it explains the input pixels)")
    module, loaded, x, single, pictures = prepare_input(model, image)
    if x.shape[1] != 3 and spec.family in ("path", "noise"):
        log.debug("input with %d channels", x.shape[1])
    ctx = Context(
        module,
        x,
        target,
        loaded=loaded,
        legacy=legacy,
        batch_size=batch_size,
        max_memory=max_memory,
        progress=progress,
    )
    kwargs = {**spec.fixed, **options}
    if spec.uses_layer:
        kwargs["layer"] = layer
    try:
        with warn_once():  # a rule's warning once per call, not once per forward
            out = spec.fn(ctx, **kwargs)
    except torch.cuda.OutOfMemoryError:
        raise CnnscopeError(
            "out of GPU memory: pass a smaller batch_size (--batch-size) or max_memory"
        ) from None
    maps = out.maps
    if maps.dim() == 3:
        maps = maps.unsqueeze(1)
    if not torch.isfinite(maps).all():
        log.warning("%s produced non-finite values; they are set to 0", spec.name)
        maps = torch.nan_to_num(maps, nan=0.0, posinf=0.0, neginf=0.0)
    return Attribution(
        maps,
        spec,
        ctx.targets,
        ctx.scores,
        single=single,
        pictures=pictures,
        layer=out.layer,
        meta=out.meta,
        options={**options, "legacy": legacy} if legacy else dict(options),
    )


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of N x h x w (or N x C x h x w) maps to ``size`` (H, W).

    Examples
    --------
    >>> upsample(torch.ones(2, 3, 4), (6, 8)).shape
    torch.Size([2, 6, 8])
    """
    squeeze = maps.dim() == 3
    m = maps.unsqueeze(1) if squeeze else maps
    if tuple(m.shape[-2:]) != tuple(size):
        m = torch.nn.functional.interpolate(
            m.float(), size=size, mode="bilinear", align_corners=False
        )
    return m[:, 0] if squeeze else m


def check_positive(name: str, value, integer: bool = False, allow_zero: bool = False):
    """Validate a numeric option; one-line error otherwise.

    Examples
    --------
    >>> check_positive("steps", "8", integer=True)
    8
    """
    try:
        v = int(value) if integer else float(value)
    except (TypeError, ValueError):
        raise CnnscopeError(f"option {name} must be a number, got {value!r}") from None
    if integer and float(value) != v:
        raise CnnscopeError(f"option {name} must be an integer, got {value!r}")
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise CnnscopeError(
            f"option {name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}"
        )
    return v
