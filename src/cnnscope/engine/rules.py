"""Backward rules for every ReLU-family call, wherever it happens.

A :class:`RuleMode` (a ``TorchFunctionMode``) is active while the engine records a
forward pass. It routes ``relu``, ``relu6``, ``hardtanh``, ``leaky_relu`` and
``clamp(min=0)``, as modules, functional calls, tensor methods or in-place variants,
through one custom autograd function, :class:`_PiecewiseLinear`. Its backward reads
the rule to apply from a :class:`RuleState` shared by the whole recorded graph, so one
forward serves every rule: set ``state.rule`` and call ``torch.autograd.grad``.

With ``x`` the activation's input, ``f'`` its true derivative and ``g`` the incoming
gradient, the rules are:

============  ===========================================
gradient      ``g * f'(x)``
deconvnet     ``g * [g > 0]`` (plus ``slope * g`` where ``g <= 0`` for leaky units)
guided        ``g * f'(x) * [g > 0]``
guided_neg    ``g * f'(x) * [g < 0]``
============  ===========================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

RULES: tuple[str, ...] = ("gradient", "deconvnet", "guided", "guided_neg")


@dataclass
class RuleState:
    """The backward rule in force for one recorded graph (read at backward time)."""

    rule: str = "gradient"


def check_rule(rule: str) -> str:
    """Return ``rule`` if it is a known backward rule, else raise ``ValueError``."""
    if rule not in RULES:
        from ..errors import CnnscopeError

        raise CnnscopeError(f"unknown rule {rule!r}: choose one of {', '.join(RULES)}")
    return rule


def apply_rule(
    rule: str, grad: torch.Tensor, slope_mask: torch.Tensor, leak: float = 0.0
) -> torch.Tensor:
    """Apply a backward ``rule`` to ``grad``.

    ``slope_mask`` is the true derivative of the activation at its input; ``leak`` the
    slope of a leaky unit below zero, used by ``deconvnet``, which ignores the input.
    """
    if rule == "gradient":
        return grad * slope_mask
    if rule == "guided":
        return grad * slope_mask * (grad > 0)
    if rule == "guided_neg":
        return grad * slope_mask * (grad < 0)
    # deconvnet ignores the forward input: only the sign of the gradient matters.
    return torch.where(grad > 0, grad, grad * leak)


class _PiecewiseLinear(torch.autograd.Function):
    """``clamp(x, lo, hi)`` with slope ``leak`` below ``lo``, backward under a rule."""

    @staticmethod
    def forward(x, lo, hi, leak, inplace, state):  # noqa: D102
        if leak:
            y = torch.where(x > lo, x, x * leak)
            return x.copy_(y) if inplace else y
        if inplace:
            return x.clamp_(lo, hi)
        return x.clamp(lo, hi)

    @staticmethod
    def setup_context(ctx, inputs, output):  # noqa: D102
        _, lo, hi, leak, inplace, state = inputs
        if inplace:
            ctx.mark_dirty(inputs[0])
        ctx.save_for_backward(output)
        ctx.lo, ctx.hi, ctx.leak, ctx.state = lo, hi, leak, state

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        (out,) = ctx.saved_tensors
        inside = (out > ctx.lo) & (out < ctx.hi)
        slope = inside.to(grad.dtype)
        if ctx.leak:
            slope = torch.where(out > ctx.lo, slope, torch.full_like(slope, ctx.leak))
        return apply_rule(ctx.state.rule, grad, slope, ctx.leak), None, None, None, None, None


def _arg(args, kwargs, index, name, default):
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


_INF = math.inf

# (function) -> (lo, hi, leak, inplace) read from the call's arguments, or None to pass through.
_RELU = {torch.relu, torch.Tensor.relu, torch.nn.functional.relu}
_RELU_ = {torch.relu_, torch.Tensor.relu_, torch.nn.functional.relu_}
_CLAMP = {torch.clamp, torch.Tensor.clamp, torch.clip, torch.Tensor.clip}
_CLAMP_ = {torch.clamp_, torch.Tensor.clamp_, torch.clip_, torch.Tensor.clip_}
_CLAMP_MIN = {torch.clamp_min, torch.Tensor.clamp_min}
_CLAMP_MIN_ = {torch.clamp_min_, torch.Tensor.clamp_min_}


def _scalar(v) -> float | None:
    if v is None:
        return None
    if isinstance(v, (int, float)):
        return float(v)
    return None  # tensor bounds are not ReLU-like


def _classify(func, args, kwargs):
    """Return ``(lo, hi, leak, inplace)`` if ``func`` is a ReLU-family call, else None."""
    if func in _RELU:
        return 0.0, _INF, 0.0, bool(_arg(args, kwargs, 1, "inplace", False)) and func is F.relu
    if func in _RELU_:
        return 0.0, _INF, 0.0, True
    if func is F.relu6:
        return 0.0, 6.0, 0.0, bool(_arg(args, kwargs, 1, "inplace", False))
    if func in (F.hardtanh, F.hardtanh_):
        lo = float(_arg(args, kwargs, 1, "min_val", -1.0))
        hi = float(_arg(args, kwargs, 2, "max_val", 1.0))
        inplace = func is F.hardtanh_ or bool(_arg(args, kwargs, 3, "inplace", False))
        return lo, hi, 0.0, inplace
    if func in (F.leaky_relu, F.leaky_relu_):
        leak = float(_arg(args, kwargs, 1, "negative_slope", 0.01))
        inplace = func is F.leaky_relu_ or bool(_arg(args, kwargs, 2, "inplace", False))
        return 0.0, _INF, leak, inplace
    if func in _CLAMP or func in _CLAMP_:
        lo = _scalar(_arg(args, kwargs, 1, "min", None))
        hi_raw = _arg(args, kwargs, 2, "max", None)
        hi = _scalar(hi_raw)
        if lo != 0.0 or (hi_raw is not None and hi is None):
            return None
        return 0.0, _INF if hi is None else hi, 0.0, func in _CLAMP_
    if func in _CLAMP_MIN or func in _CLAMP_MIN_:
        if _scalar(_arg(args, kwargs, 1, "min", None)) != 0.0:
            return None
        return 0.0, _INF, 0.0, func in _CLAMP_MIN_
    return None


class RuleMode(TorchFunctionMode):
    """Route every ReLU-family call through a rule-aware autograd function.

    Parameters
    ----------
    state : RuleState
        Shared holder of the rule applied at backward time.

    Examples
    --------
    >>> import torch
    >>> state = RuleState()
    >>> x = torch.tensor([-1.0, 2.0], requires_grad=True)
    >>> with RuleMode(state):
    ...     y = torch.relu(x)
    >>> state.rule = "guided"
    >>> torch.autograd.grad(y, x, torch.tensor([1.0, -1.0]))[0]
    tensor([0., -0.])
    """

    def __init__(self, state: RuleState):
        super().__init__()
        self.state = state

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        spec = _classify(func, args, kwargs)
        x = args[0] if args else kwargs.get("input")
        if spec is None or not isinstance(x, torch.Tensor) or not torch.is_grad_enabled():
            return func(*args, **kwargs)
        if not (x.requires_grad and x.is_floating_point()):
            return func(*args, **kwargs)
        lo, hi, leak, inplace = spec
        return _PiecewiseLinear.apply(x, lo, hi, leak, inplace, self.state)
