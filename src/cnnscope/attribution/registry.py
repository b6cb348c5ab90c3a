"""The method registry: what each attribution method is called, does and costs.

A method is a function ``fn(ctx, **options) -> MethodOutput`` registered with
:func:`register`; :data:`METHODS` maps names to :class:`Method` records. The method
modules (:mod:`.gradient`, :mod:`.cam`, :mod:`.lrp`) register theirs when the package
imports them, so the registry is full as soon as :mod:`cnnscope.attribution` is.
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..errors import CnnscopeError

__all__ = [
    "DEFAULT_METHOD",
    "FAMILIES",
    "METHODS",
    "PICKER_ORDER",
    "Method",
    "MethodOutput",
    "check_positive",
    "get_method",
    "method_names",
    "picker_names",
    "register",
]

#: Method families, in the order :func:`method_names` lists them.
FAMILIES = ("gradient", "path", "noise", "cam", "lrp")


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
        Default rendering (see :data:`cnnscope.attribution.figures.STYLES`).
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
    slow : bool
        Whether one call runs many passes (seconds on a CPU): path and noise methods,
        Score-CAM and Ablation-CAM. The explorer runs these on its slow lane.

    Examples
    --------
    >>> get_method("grad_cam").family, get_method("grad_cam").uses_layer
    ('cam', True)
    >>> get_method("score_cam").slow, get_method("integrated_gradients").slow
    (True, True)
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
    slow: bool = False

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
    slow: bool | None = None,
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
            slow=family in ("path", "noise") if slow is None else slow,
        )
        METHODS[name] = method
        for alias in aliases:
            _ALIASES[alias] = name
        return func

    return wrap(fn) if fn is not None else wrap


def _normalised_name(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace(" ", "_").replace("+", "p")


def method_names() -> list[str]:
    """Registered method names, by family, then in registration order.

    Examples
    --------
    >>> "grad_cam" in method_names()
    True
    """
    rank = {f: i for i, f in enumerate(FAMILIES)}
    names = list(METHODS)
    return sorted(names, key=lambda n: (rank.get(METHODS[n].family, len(rank)), names.index(n)))


#: The order a picker offers the methods in (the explorer's, ``/api/vocabulary``): the
#: quick and familiar first; registered methods not named here follow, by name.
PICKER_ORDER: tuple[str, ...] = (
    "grad_cam",
    "guided_backprop",
    "guided_grad_cam",
    "gradient",
    "gradient_x_input",
    "guided_x_input",
    "deconvnet",
    "guided_neg",
    "grad_cam_pp",
    "xgrad_cam",
    "hires_cam",
    "layer_cam",
    "eigen_cam",
    "lrp",
    "integrated_gradients",
    "guided_ig",
    "smoothgrad",
    "smoothgrad_sq",
    "vargrad",
    "score_cam",
    "ablation_cam",
)
#: The method a picker starts with: the first of :data:`PICKER_ORDER`.
DEFAULT_METHOD: str = PICKER_ORDER[0]


def picker_names() -> list[str]:
    """Registered method names in the picker's order (:data:`PICKER_ORDER`, then by name).

    Examples
    --------
    >>> picker_names()[:2], picker_names()[0] == DEFAULT_METHOD
    (['grad_cam', 'guided_backprop'], True)
    >>> sorted(picker_names()) == sorted(METHODS)
    True
    """
    names = [n for n in PICKER_ORDER if n in METHODS]
    return names + sorted(set(METHODS) - set(names))


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
    if isinstance(name, Method):
        return name
    key = _normalised_name(str(name))
    key = _ALIASES.get(key, key)
    if key in METHODS:
        return METHODS[key]
    close = difflib.get_close_matches(key, list(METHODS) + list(_ALIASES), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise CnnscopeError(
        f"unknown attribution method {name!r}{hint} (run `cnnscope attribute --list` to see all)"
    )


def check_positive(name: str, value, integer: bool = False, allow_zero: bool = False):
    """Validate a method's numeric option; one-line error otherwise.

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
