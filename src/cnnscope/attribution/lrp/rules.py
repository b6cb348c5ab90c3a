"""LRP rules: wrappers whose forward returns the layer's output and whose gradient is the rule.

Each rule is one small subclass of :class:`_LrpLayer` (its modified forward), listed in
:data:`LRP_LAYERS` under its :class:`LrpRule` kind, which :func:`parse_lrp_rule` names.
LayerNorm (:class:`_LrpLayerNorm`), elementwise activations (:class:`_PassActivation`) and
multiplicative gates (:class:`_ConstantGate`) have their own classes.

"Rule" alone, elsewhere in cnnscope, is the engine's backward rule (gradient, deconvnet,
guided, guided_neg: :mod:`cnnscope.engine.rules`); LRP's names say ``lrp``.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any, TypeGuard

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ...errors import CnnscopeError

log = logging.getLogger("cnnscope.attribution.lrp")

_TINY = 1e-12

# ---------------------------------------------------------------------------------------
# Rules


@dataclass(frozen=True)
class LrpRule:
    """One LRP rule with its parameters (``kind`` in epsilon, gamma, alpha_beta, box, pass).

    Examples
    --------
    >>> parse_lrp_rule("gamma:0.1")
    LrpRule(kind='gamma', epsilon=1e-09, gamma=0.1, alpha=2.0, beta=1.0)
    """

    kind: str
    epsilon: float = 1e-6
    gamma: float = 0.25
    alpha: float = 2.0
    beta: float = 1.0

    def __str__(self) -> str:
        if self.kind == "epsilon":
            return "zero" if self.epsilon == 0 else f"epsilon:{self.epsilon:g}"
        if self.kind == "gamma":
            return f"gamma:{self.gamma:g}"
        if self.kind == "alpha_beta":
            return (
                "zplus"
                if (self.alpha, self.beta) == (1, 0)
                else f"alpha_beta:{self.alpha:g},{self.beta:g}"
            )
        return self.kind


LRP_RULES = ("epsilon", "zero", "gamma", "alpha_beta", "zplus", "box", "flat", "wsquare", "pass")
#: Rules that read the input's range or shape, not its values: first layer only.
FIRST_LAYER_LRP_RULES = ("box", "flat", "wsquare")


def parse_lrp_rule(
    spec, epsilon: float = 1e-6, gamma: float = 0.25, alpha: float = 2.0, beta: float = 1.0
) -> LrpRule:
    """A :class:`LrpRule` from ``epsilon[:E]``, ``zero``, ``gamma[:G]``, ``alpha_beta[:A,B]``,
    ``zplus``, ``box``, ``flat``, ``wsquare`` or ``pass`` (parameters default to the given values).

    Examples
    --------
    >>> str(parse_lrp_rule("alpha_beta:1,0")), str(parse_lrp_rule("epsilon", epsilon=0.25))
    ('zplus', 'epsilon:0.25')
    """
    if isinstance(spec, LrpRule):
        return spec
    text = str(spec).strip().lower().replace("-", "_")
    name, _, arg = text.partition(":")
    name = {
        "eps": "epsilon",
        "lrp0": "zero",
        "z": "zero",
        "alphabeta": "alpha_beta",
        "z_plus": "zplus",
        "zb": "box",
        "z_b": "box",
        "zbox": "box",
        "ab": "alpha_beta",
        "w2": "wsquare",
        "w_square": "wsquare",
        "w^2": "wsquare",
    }.get(name, name)
    try:
        values = [float(v) for v in arg.split(",")] if arg else []
    except ValueError:
        raise CnnscopeError(f"bad LRP rule {spec!r}: parameters must be numbers") from None
    if name == "epsilon":
        return LrpRule("epsilon", epsilon=values[0] if values else epsilon)
    if name == "zero":
        return LrpRule("epsilon", epsilon=0.0)
    if name == "gamma":
        return LrpRule("gamma", epsilon=1e-9, gamma=values[0] if values else gamma)
    if name == "alpha_beta":
        a, b = (values + [alpha, beta][len(values) :])[:2] if values else (alpha, beta)
        if len(values) == 1:
            b = a - 1
        return LrpRule("alpha_beta", alpha=a, beta=b)
    if name == "zplus":
        return LrpRule("alpha_beta", alpha=1.0, beta=0.0)
    if name in LRP_LAYERS:  # a rule without parameters: its wrapper class names it
        return LrpRule(name)
    raise CnnscopeError(f"unknown LRP rule {spec!r}: choose one of {', '.join(LRP_RULES)}")


# ---------------------------------------------------------------------------------------
# Wrappers: forward value unchanged, gradient = the rule


def _tensor(module: nn.Module, name: str) -> torch.Tensor | None:
    """A module's parameter or buffer ``name``, or None when it has none."""
    value = getattr(module, name, None)
    return value if isinstance(value, torch.Tensor) else None


def _variant(layer: nn.Module, weight_fn=None, bias_fn=None, no_bias: bool = False) -> nn.Module:
    """A private copy of ``layer`` with modified parameters (not registered anywhere)."""
    twin = copy.deepcopy(layer)
    weight, bias = _tensor(twin, "weight"), _tensor(twin, "bias")
    with torch.no_grad():
        if weight_fn is not None and weight is not None:
            weight.copy_(weight_fn(weight))
        if bias is not None:
            if no_bias:
                bias.zero_()
            elif bias_fn is not None:
                bias.copy_(bias_fn(bias))
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin


def _pos(t: torch.Tensor) -> torch.Tensor:
    return t * (t > 0)


def _neg(t: torch.Tensor) -> torch.Tensor:
    return t * (t < 0)


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den where den is not ~0, else 0 (no gradient)."""
    ok = den.abs() > _TINY
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))


class _LrpLayer(nn.Module):
    """Wraps a linear layer: ``forward`` returns ``layer(x)``, the gradient follows the rule.

    Every rule has the form ``out = mod(x) * k + s * (z - mod(x) * k)`` (``k`` and the
    bracket detached), where ``mod`` is a bias-free, positively homogeneous modified
    forward and ``k = z / (mod + modified bias + stabiliser)``. So ``x * grad`` gives the
    rule's input relevance, and the gradient at the probe ``s`` (ones, one per image)
    gives the relevance the layer absorbs (its bias share, or units with no input
    contribution): per layer ``R_in + R_absorbed = R_out`` exactly.

    A rule is a subclass that sets :attr:`variants` (bias-free copies of the layer with
    modified weights) and implements :meth:`modified`, and is listed in :data:`LRP_LAYERS`.
    """

    #: name -> weight modifier of the bias-free copies the rule needs
    variants: dict = {}

    layer: nn.Module
    rule: LrpRule
    # set with object.__setattr__ (not submodules, not state): declared for the type checker
    _v: dict[str, nn.Module]
    bounds: Any
    probes: list[torch.Tensor]
    low: torch.Tensor | None
    high: torch.Tensor | None

    def __init__(self, layer: nn.Module, rule: LrpRule):
        super().__init__()
        self.layer = layer
        self.rule = rule
        if isinstance(layer, _BNS) and not isinstance(self, _Epsilon):
            raise CnnscopeError(
                f"a BatchNorm that cannot be folded takes the epsilon rule, not {rule}"
            )
        v = {name: _variant(layer, fn, no_bias=True) for name, fn in self.variants.items()}
        object.__setattr__(self, "_v", v)  # hidden from named_modules, hooks and .to()
        # box, flat, wsquare: graph tensors of the last call whose value x gradient is
        # input relevance ((low, high) bounds of z^B, the ones of flat and w^2)
        object.__setattr__(self, "bounds", None)
        object.__setattr__(self, "probes", [])  # one probe per call since the last reset
        object.__setattr__(self, "low", None)
        object.__setattr__(self, "high", None)

    def extra_repr(self) -> str:
        return f"rule={self.rule}"

    def _bias(self, z: torch.Tensor) -> torch.Tensor | None:
        """The layer's additive constant, shaped to broadcast over ``z`` (detached)."""
        layer = self.layer
        shape = (1, -1, *([1] * (z.dim() - 2)))
        if isinstance(layer, nn.Linear):  # features last, e.g. tokens B x T x C
            shape = (*([1] * (z.dim() - 1)), -1)
        if isinstance(layer, _BNS):
            return _bn_affine(layer)[1].detach().view(shape)
        b = getattr(layer, "bias", None)
        return None if b is None else b.detach().view(shape)

    def _contributions(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sums of the positive and of the negative contributions ``x_i w_ij`` per output.

        Each is computed directly (not as a difference, which would cancel badly when
        one of them is small): two convolutions when ``x >= 0``, four otherwise.
        """
        v = self._v
        if not bool((x < 0).any()):
            return v["plus"](x), v["minus"](x)
        xp, xn = _pos(x), _neg(x)
        return v["plus"](xp) + v["minus"](xn), v["minus"](xp) + v["plus"](xn)

    def _out(self, mod: torch.Tensor, k: torch.Tensor, zd: torch.Tensor) -> torch.Tensor:
        kept = mod * k
        probe = torch.ones(
            (zd.shape[0],) + (1,) * (zd.dim() - 1),
            dtype=zd.dtype,
            device=zd.device,
            requires_grad=True,
        )
        self.probes.append(probe)
        return kept + probe * (zd - kept.detach())

    def modified(self, x, zd, plain, bias) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mod, k)`` of the rule for input ``x``, output ``zd`` (detached), the output
        without its constant ``plain`` (with the layer's gradient) and the ``bias``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.layer(x)
        zd = z.detach()
        bias = self._bias(z)
        plain = z if bias is None else z - bias  # same gradient as z, no constant
        mod, k = self.modified(x, zd, plain, bias)
        return self._out(mod, k, zd)


def _sign(zd: torch.Tensor) -> torch.Tensor:
    return torch.where(zd >= 0, 1.0, -1.0).to(zd)


_SIGNED = {"plus": lambda w: w.clamp(min=0), "minus": lambda w: w.clamp(max=0)}


class _Epsilon(_LrpLayer):
    """epsilon (and ``pass``: eps = 0): ``k = z / (z + eps sign z)``; the bias keeps its share."""

    def modified(self, x, zd, plain, bias):
        eps = self.rule.epsilon if self.rule.kind == "epsilon" else 0.0
        k = torch.where(zd == 0, torch.ones_like(zd), _ratio(zd, zd + eps * _sign(zd)))
        return plain, k


class _Gamma(_LrpLayer):
    """gamma: ``w + gamma w+`` on positive outputs, ``w + gamma w-`` on negative ones."""

    variants = _SIGNED

    def modified(self, x, zd, plain, bias):
        # with P and N the positive and negative contributions, w + gamma w+ on x+ and
        # w + gamma w- on x- give plain + gamma P (plain + gamma N for negative outputs)
        p, n = self._contributions(x)
        g = self.rule.gamma
        positive = zd > 0
        mod = torch.where(positive, plain + g * p, plain + g * n)
        den = mod.detach()
        if bias is not None:
            den = den + torch.where(
                positive, bias + g * bias.clamp(min=0), bias + g * bias.clamp(max=0)
            )
        den = den + self.rule.epsilon * torch.where(positive, 1.0, -1.0).to(zd)
        return mod, _ratio(zd, den)


class _AlphaBeta(_LrpLayer):
    """alpha-beta (z+: alpha 1, beta 0): the bias is left out of both denominators."""

    variants = _SIGNED

    def modified(self, x, zd, plain, bias):
        p, n = self._contributions(x)
        a, b = self.rule.alpha, self.rule.beta
        mod = a * p * _ratio(zd, p.detach()) - b * n * _ratio(zd, n.detach())
        return mod, torch.ones_like(zd)


class _Flat(_LrpLayer):
    """flat (first layer): relevance spread evenly over each output's inputs."""

    variants = {"spread": torch.ones_like}

    def modified(self, x, zd, plain, bias):
        # the rule's "input" is all ones: its gradient is the input relevance
        ones = x * 0 + 1
        mod = self._v["spread"](ones)
        object.__setattr__(self, "bounds", (ones,))
        return mod, _ratio(zd, mod.detach())


class _WSquare(_Flat):
    """w^2 (first layer): relevance spread in proportion to the squared weights."""

    variants = {"spread": lambda w: w * w}


class _Box(_LrpLayer):
    """z^B (first layer): bounded inputs, with the lowest and highest input values."""

    variants = _SIGNED

    def modified(self, x, zd, plain, bias):
        # the bounds are graph tensors made from x, so their gradients can be read
        lo, hi = self.low, self.high
        if lo is None or hi is None:  # lrp() sets them before each call
            raise RuntimeError("the z^B rule needs the input bounds (low, high) first")
        if lo.dim() != x.dim():  # e.g. a linear first layer on the flattened input
            shape = (-1,) + (1,) * (x.dim() - 1)
            lo = lo.reshape(lo.shape[0], -1).amin(1).view(shape)
            hi = hi.reshape(hi.shape[0], -1).amax(1).view(shape)
        low = x * 0 + lo
        high = x * 0 + hi
        zb = plain - self._v["plus"](low) - self._v["minus"](high)
        object.__setattr__(self, "bounds", (low, high))
        return zb, _ratio(zd, zb.detach())


#: The wrapper class of each rule kind: a new rule is a new entry.
LRP_LAYERS = {
    "epsilon": _Epsilon,
    "pass": _Epsilon,
    "gamma": _Gamma,
    "alpha_beta": _AlphaBeta,
    "flat": _Flat,
    "wsquare": _WSquare,
    "box": _Box,
}


def lrp_layer(layer: nn.Module, rule: LrpRule) -> _LrpLayer:
    """``layer`` wrapped so that its gradient follows ``rule``.

    Examples
    --------
    >>> w = lrp_layer(nn.Linear(3, 2), parse_lrp_rule("zplus"))
    >>> type(w).__name__, str(w.rule)
    ('_AlphaBeta', 'zplus')
    """
    return LRP_LAYERS[rule.kind](layer, rule)


class _PassActivation(nn.Module):
    """Elementwise activation whose backward passes relevance unchanged: ``g * act(z) / z``."""

    _act: nn.Module  # not a submodule (object.__setattr__)

    def __init__(self, act: nn.Module):
        super().__init__()
        if getattr(act, "inplace", False):
            # a private copy: the ratio must not overwrite z (torch's stubs type module
            # attributes they do not know as Tensor | Module)
            act.inplace = False  # type: ignore[assignment]
        object.__setattr__(self, "_act", act)

    def extra_repr(self) -> str:
        return f"pass relevance through {type(self._act).__name__}"

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        zd = z.detach()
        with torch.no_grad():
            r = _ratio(self._act(zd), zd)
        return z * r


_ACTIVATIONS = (
    nn.ReLU,
    nn.ReLU6,
    nn.Hardtanh,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.SiLU,
    nn.GELU,
    nn.Hardswish,
    nn.Mish,
    nn.Softplus,
)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _bn_affine(bn: _BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` per channel of an eval-mode BatchNorm: ``bn(x) = x * scale + shift``."""
    mean, var = bn.running_mean, bn.running_var
    if mean is None or var is None:
        raise CnnscopeError("LRP needs BatchNorms with running statistics (track_running_stats)")
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


#: The layers LRP rewrites with a rule.
_Linear = nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear


def _is_linear(m: nn.Module | None) -> TypeGuard[_Linear]:
    return isinstance(m, (*_CONVS, nn.Linear))


class _ConstantGate(nn.Module):
    """A gate ``g`` of ``x * g(x)`` (squeeze-excitation, attention) as a constant: relevance
    flows only through ``x``, and none into the branch that computes the gate."""

    _gate: nn.Module  # not a submodule (object.__setattr__)

    def __init__(self, gate: nn.Module):
        super().__init__()
        object.__setattr__(self, "_gate", gate)

    def extra_repr(self) -> str:
        return f"constant gate {type(self._gate).__name__}"

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self._gate(z).detach()


class _LrpLayerNorm(_LrpLayer):
    """LayerNorm with its standard deviation held constant (the LN-rule of Ali et al. 2022):
    ``w (x - mean x) / std + b`` is then linear in ``x`` and passes relevance on; the bias
    share is absorbed as for other layers. Handles channels-last and channels-first
    (``LayerNorm2d``) use; a LayerNorm it cannot reproduce is left as it is, with a warning.
    """

    layer: nn.LayerNorm
    warned: bool

    def __init__(self, layer: nn.LayerNorm):
        nn.Module.__init__(self)
        self.layer = layer
        self.rule = LrpRule("pass")
        for key, value in (("_v", {}), ("bounds", None), ("probes", []), ("low", None)):
            object.__setattr__(self, key, value)
        object.__setattr__(self, "warned", False)

    def extra_repr(self) -> str:
        return "rule=layernorm (std constant)"

    def _centred(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor | None:
        """``w (x - mean) / std`` with std detached, or None when it does not match ``z``."""
        shape = tuple(self.layer.normalized_shape)
        k = len(shape)
        layouts = []
        if tuple(x.shape[-k:]) == shape:  # channels last, as F.layer_norm
            layouts.append((tuple(range(-k, 0)), shape))
        if k == 1 and x.dim() > 2 and x.shape[1] == shape[0]:  # channels first (LayerNorm2d)
            layouts.append(((1,), (-1, *([1] * (x.dim() - 2)))))
        for dims, view in layouts:
            out = self._normalise(x, dims, view)
            if out[0].shape == z.shape and torch.allclose(out[0].detach() + out[1], z, atol=1e-4):
                return out[0]
        return None

    def _normalise(self, x: torch.Tensor, dims: tuple, view: tuple):
        ln = self.layer
        std = torch.sqrt(x.detach().var(dims, unbiased=False, keepdim=True) + ln.eps)
        out = (x - x.mean(dims, keepdim=True)) / std
        if ln.weight is not None:
            out = out * ln.weight.detach().view(view)
        return out, 0 if ln.bias is None else ln.bias.detach().view(view)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.layer(x)
        zd = z.detach()
        mod = self._centred(x, zd)
        if mod is None:
            if not self.warned:
                log.warning("LRP: a %s it cannot reproduce is left as it is", type(self.layer))
                object.__setattr__(self, "warned", True)
            return z
        return self._out(mod, torch.ones_like(zd), zd)
