"""Layer-wise relevance propagation as gradient x input on a rewritten copy of the model.

LRP redistributes the target score layer by layer. Here it is computed with the
"modified gradient" identity: if every layer's backward is changed so that the
relevance of any tensor ``a`` is ``a * grad(a)``, the relevance at the input is the
input times its (modified) gradient. So LRP needs no hooks and never touches the
caller's model:

1. a private copy of the model is made (:func:`copy.deepcopy`);
2. the **canonizer** folds each BatchNorm into the convolution (or linear layer) that
   feeds it, found from the autograd graph of one recorded forward pass, so that BN
   networks are explained as the equivalent network without BN;
3. each convolution / linear layer is replaced by a wrapper whose forward returns
   exactly the layer's output ``z`` but whose backward realises its **rule**, e.g. for
   LRP-epsilon ``grad_in = W^T (g * z / (z + eps sign z))``;
4. each elementwise activation (ReLU, ReLU6, SiLU, ...) passes relevance through
   unchanged (``grad_in = g * act(z) / z``): a saturated ReLU6 keeps its relevance;
5. the copy runs through the :class:`~cnnscope.engine.Engine` like any model and
   ``R = x * grad`` (plus the bound terms of the z^B rule) is read at the input.

Linear operations left as they are (additions of residual branches, concatenation,
average pooling, padding, flattening, scaling) conserve relevance by themselves under
this identity: their true gradient is the LRP-0 rule. Max pooling gives all relevance
to the maximum. Saturating activations called as functions (``F.relu6``) rather than
modules are not rewritten: they drop the relevance of saturated units.

Rules (``z`` the layer's output, ``x`` its input, ``W`` its weights)
---------------------------------------------------------------------
``epsilon`` / ``zero``   ``R_i = x_i sum_j w_ij R_j / (z_j + eps sign z_j)`` (``zero``: eps = 0)
``gamma``                contributions of the output's sign amplified: ``w + gamma w+``
``alpha_beta``           ``alpha`` times positive minus ``beta`` times negative contributions
``zplus``                ``alpha_beta`` with alpha=1, beta=0
``box``                  z^B for the first layer, with the input's lowest and highest values
``pass``                 the layer's true gradient
"""

from __future__ import annotations

import copy
import fnmatch
import logging
import threading
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import nn

from ..engine import INPUT, LOGITS, Engine
from ..errors import CnnscopeError
from .core import Context, MethodOutput, register, upsample

log = logging.getLogger(__name__)

__all__ = [
    "COMPOSITES",
    "Composite",
    "LRPModel",
    "Rule",
    "build_lrp_model",
    "find_gates",
    "fold_batchnorms",
    "parse_rule",
    "unfuse_batchnorm_acts",
]

_TINY = 1e-12
#: Relative conservation error above which LRP logs a warning with the figure.
CONSERVATION_TOLERANCE = 0.05

# ---------------------------------------------------------------------------------------
# Rules


@dataclass(frozen=True)
class Rule:
    """One LRP rule with its parameters (``kind`` in epsilon, gamma, alpha_beta, box, pass).

    Examples
    --------
    >>> parse_rule("gamma:0.1")
    Rule(kind='gamma', epsilon=1e-09, gamma=0.1, alpha=2.0, beta=1.0)
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


RULE_KINDS = ("epsilon", "zero", "gamma", "alpha_beta", "zplus", "box", "flat", "wsquare", "pass")
#: Rules that read the input's range or shape, not its values: first layer only.
FIRST_LAYER_RULES = ("box", "flat", "wsquare")


def parse_rule(
    spec, epsilon: float = 1e-6, gamma: float = 0.25, alpha: float = 2.0, beta: float = 1.0
) -> Rule:
    """A :class:`Rule` from ``epsilon[:E]``, ``zero``, ``gamma[:G]``, ``alpha_beta[:A,B]``,
    ``zplus``, ``box``, ``flat``, ``wsquare`` or ``pass`` (parameters default to the given values).

    Examples
    --------
    >>> str(parse_rule("alpha_beta:1,0")), str(parse_rule("epsilon", epsilon=0.25))
    ('zplus', 'epsilon:0.25')
    """
    if isinstance(spec, Rule):
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
        return Rule("epsilon", epsilon=values[0] if values else epsilon)
    if name == "zero":
        return Rule("epsilon", epsilon=0.0)
    if name == "gamma":
        return Rule("gamma", epsilon=1e-9, gamma=values[0] if values else gamma)
    if name == "alpha_beta":
        a, b = (values + [alpha, beta][len(values) :])[:2] if values else (alpha, beta)
        if len(values) == 1:
            b = a - 1
        return Rule("alpha_beta", alpha=a, beta=b)
    if name == "zplus":
        return Rule("alpha_beta", alpha=1.0, beta=0.0)
    if name in ("box", "flat", "wsquare", "pass"):
        return Rule(name)
    raise CnnscopeError(f"unknown LRP rule {spec!r}: choose one of {', '.join(RULE_KINDS)}")


# ---------------------------------------------------------------------------------------
# Wrappers: forward value unchanged, gradient = the rule


def _variant(layer: nn.Module, weight_fn=None, bias_fn=None, no_bias: bool = False) -> nn.Module:
    """A private copy of ``layer`` with modified parameters (not registered anywhere)."""
    twin = copy.deepcopy(layer)
    with torch.no_grad():
        if weight_fn is not None:
            twin.weight.copy_(weight_fn(layer.weight))
        if getattr(twin, "bias", None) is not None:
            if no_bias:
                twin.bias.zero_()
            elif bias_fn is not None:
                twin.bias.copy_(bias_fn(layer.bias))
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


class _RuleLayer(nn.Module):
    """Wraps a linear layer: ``forward`` returns ``layer(x)``, the gradient follows ``rule``.

    Every rule has the form ``out = mod(x) * k + s * (z - mod(x) * k)`` (``k`` and the
    bracket detached), where ``mod`` is a bias-free, positively homogeneous modified
    forward and ``k = z / (mod + modified bias + stabiliser)``. So ``x * grad`` gives the
    rule's input relevance, and the gradient at the probe ``s`` (ones, one per image)
    gives the relevance the layer absorbs (its bias share, or units with no input
    contribution): per layer ``R_in + R_absorbed = R_out`` exactly.
    """

    def __init__(self, layer: nn.Module, rule: Rule):
        super().__init__()
        self.layer = layer
        self.rule = rule
        kind = rule.kind
        v: dict[str, nn.Module] = {}
        if isinstance(layer, _BNS) and kind not in ("epsilon", "pass"):
            raise CnnscopeError(
                f"a BatchNorm that cannot be folded takes the epsilon rule, not {rule}"
            )
        if kind in ("gamma", "alpha_beta", "box"):
            v["plus"] = _variant(layer, lambda w: w.clamp(min=0), no_bias=True)
            v["minus"] = _variant(layer, lambda w: w.clamp(max=0), no_bias=True)
        if kind == "flat":
            v["flat"] = _variant(layer, torch.ones_like, no_bias=True)
        if kind == "wsquare":
            v["wsquare"] = _variant(layer, lambda w: w * w, no_bias=True)
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.layer(x)
        kind, v = self.rule.kind, self._v
        zd = z.detach()
        bias = self._bias(z)
        plain = z if bias is None else z - bias  # same gradient as z, no constant
        if kind in ("epsilon", "pass"):
            eps = self.rule.epsilon if kind == "epsilon" else 0.0
            den = zd + eps * torch.where(zd >= 0, 1.0, -1.0).to(zd)
            k = torch.where(zd == 0, torch.ones_like(zd), _ratio(zd, den))
            return self._out(plain, k, zd)
        if kind == "gamma":
            # with P and N the positive and negative contributions, w + gamma w+ on x+ and
            # w + gamma w- on x- give plain + gamma P (plain + gamma N for negative outputs)
            p, n = self._contributions(x)
            g = self.rule.gamma
            positive = zd > 0
            mod = torch.where(positive, plain + g * p, plain + g * n)
            den = mod.detach()
            if bias is not None:
                g = self.rule.gamma
                den = den + torch.where(
                    positive, bias + g * bias.clamp(min=0), bias + g * bias.clamp(max=0)
                )
            den = den + self.rule.epsilon * torch.where(positive, 1.0, -1.0).to(zd)
            return self._out(mod, _ratio(zd, den), zd)
        if kind == "alpha_beta":
            p, n = self._contributions(x)
            a, b = self.rule.alpha, self.rule.beta
            mod = a * p * _ratio(zd, p.detach()) - b * n * _ratio(zd, n.detach())
            return self._out(mod, torch.ones_like(zd), zd)
        if kind in ("flat", "wsquare"):
            # relevance spread by w^2 (or 1) over the inputs: the rule's "input" is all ones
            ones = x * 0 + 1
            mod = v[kind](ones)
            object.__setattr__(self, "bounds", (ones,))
            return self._out(mod, _ratio(zd, mod.detach()), zd)
        # box (z^B): the bounds are graph tensors made from x, so their gradients can be read.
        lo, hi = self.low, self.high
        if lo.dim() != x.dim():  # e.g. a linear first layer on the flattened input
            shape = (-1,) + (1,) * (x.dim() - 1)
            lo = lo.reshape(lo.shape[0], -1).amin(1).view(shape)
            hi = hi.reshape(hi.shape[0], -1).amax(1).view(shape)
        low = x * 0 + lo
        high = x * 0 + hi
        zb = plain - v["plus"](low) - v["minus"](high)
        object.__setattr__(self, "bounds", (low, high))
        return self._out(zb, _ratio(zd, zb.detach()), zd)


class _PassActivation(nn.Module):
    """Elementwise activation whose backward passes relevance unchanged: ``g * act(z) / z``."""

    def __init__(self, act: nn.Module):
        super().__init__()
        if getattr(act, "inplace", False):
            act.inplace = False  # a private copy: the ratio must not overwrite z
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


def _bn_affine(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` per channel of an eval-mode BatchNorm: ``bn(x) = x * scale + shift``."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


def _is_linear(m: nn.Module) -> bool:
    return isinstance(m, (*_CONVS, nn.Linear))


class _ConstantGate(nn.Module):
    """A gate ``g`` of ``x * g(x)`` (squeeze-excitation, attention) as a constant: relevance
    flows only through ``x``, and none into the branch that computes the gate."""

    def __init__(self, gate: nn.Module):
        super().__init__()
        object.__setattr__(self, "_gate", gate)

    def extra_repr(self) -> str:
        return f"constant gate {type(self._gate).__name__}"

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self._gate(z).detach()


class _LayerNormRule(_RuleLayer):
    """LayerNorm with its standard deviation held constant (the LN-rule of Ali et al. 2022):
    ``w (x - mean x) / std + b`` is then linear in ``x`` and passes relevance on; the bias
    share is absorbed as for other layers. Handles channels-last and channels-first
    (``LayerNorm2d``) use; a LayerNorm it cannot reproduce is left as it is, with a warning.
    """

    def __init__(self, layer: nn.LayerNorm):
        nn.Module.__init__(self)
        self.layer = layer
        self.rule = Rule("pass")
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


_GATES = (nn.Sigmoid, nn.Hardsigmoid)


def _is_gate_type(m: nn.Module) -> bool:
    return isinstance(m, _GATES) or "sigmoid" in type(m).__name__.lower()


def _first_tensor(out) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    values = (
        out.values() if isinstance(out, dict) else out if isinstance(out, (list, tuple)) else []
    )
    return next((t for t in map(_first_tensor, values) if t is not None), None)


def _consumer_kinds(root) -> dict[int, list[str]]:
    """For each autograd node reachable from ``root``, the class names of the nodes reading it."""
    kinds: dict[int, list[str]] = defaultdict(list)
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        for nxt, _ in node.next_functions:
            if nxt is not None:
                kinds[id(nxt)].append(type(node).__name__)
                stack.append(nxt)
    return kinds


def find_gates(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Names of the sigmoid-like modules whose output only multiplies other tensors (gates).

    Found on the autograd graph of one forward of ``x``: a sigmoid that is the model's
    output, or feeds anything but a product, is no gate.

    Examples
    --------
    >>> class SE(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.fc, self.gate = nn.Conv2d(3, 3, 1), nn.Sigmoid()
    ...     def forward(self, x):
    ...         return x * self.gate(self.fc(x.mean((2, 3), keepdim=True)))
    >>> find_gates(SE(), torch.randn(1, 3, 4, 4))
    ['gate']
    """
    outputs: dict[str, list] = defaultdict(list)
    handles = [
        m.register_forward_hook(lambda m, i, o, n=n: outputs[n].append(o.grad_fn))
        for n, m in model.named_modules()
        if n and _is_gate_type(m)
    ]
    try:
        with torch.enable_grad():
            out = _first_tensor(model(x.detach().clone().requires_grad_(True)))
    finally:
        for h in handles:
            h.remove()
    if out is None or out.grad_fn is None:
        return []
    kinds = _consumer_kinds(out.grad_fn)
    readers = lambda nodes: [k for g in nodes if g is not None for k in kinds.get(id(g), [])]  # noqa: E731
    return [
        n
        for n, nodes in outputs.items()
        if readers(nodes) and all(k.startswith("MulBackward") for k in readers(nodes))
    ]


def unfuse_batchnorm_acts(model: nn.Module) -> list[str]:
    """Split fused BatchNorm + activation modules (timm's ``BatchNormAct2d``) in place.

    A fused module is a BatchNorm subclass with an ``act`` or ``drop`` submodule; it becomes
    ``nn.Sequential(plain BatchNorm, drop, act)``, the same function, so that the BatchNorm
    can be folded and the activation gets its own rule.

    Examples
    --------
    >>> class BNAct(nn.BatchNorm2d):
    ...     def __init__(self, c):
    ...         super().__init__(c)
    ...         self.act = nn.ReLU()
    ...     def forward(self, x):
    ...         return self.act(super().forward(x))
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), BNAct(4)).eval()
    >>> unfuse_batchnorm_acts(net), type(net[1][0]).__name__
    (['1'], 'BatchNorm2d')
    """
    fused = [
        (n, m)
        for n, m in model.named_modules()
        if n
        and isinstance(m, nn.modules.batchnorm._BatchNorm)
        and type(m) not in _BNS
        and any(isinstance(getattr(m, a, None), nn.Module) for a in ("act", "drop"))
    ]
    for _, bn in fused:
        base = next(c for c in _BNS if isinstance(bn, c))
        plain = base(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        plain.load_state_dict({k: v for k, v in bn.state_dict().items() if "." not in k})
        parts = [plain.eval()]
        for attr in ("drop", "act"):
            sub = getattr(bn, attr, None)
            if isinstance(sub, nn.Module):
                if getattr(sub, "inplace", False):
                    sub.inplace = False  # a private copy: the BN output must stay recorded
                parts.append(sub)
        _replace_all(model, bn, nn.Sequential(*parts))
    return [n for n, _ in fused]


# ---------------------------------------------------------------------------------------
# Canonizer


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, last = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, last, new)


def _replace_all(root: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Replace every registration of module ``old`` (a module may sit at several paths)."""
    paths = [n for n, m in root.named_modules(remove_duplicate=False) if m is old and n]
    for path in paths:
        _set_module(root, path, new)


def _consumers(root) -> dict[int, int]:
    counts: dict[int, int] = defaultdict(int)
    seen: dict[int, object] = {}
    stack = [root]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen[id(node)] = node
        for nxt, _ in node.next_functions:
            if nxt is not None:
                counts[id(nxt)] += 1
                stack.append(nxt)
    return counts


def fold_batchnorms(model: nn.Module, x: torch.Tensor) -> list[tuple[str, str]]:
    """Fold each BatchNorm into the conv / linear layer that feeds it, in place.

    The pairs are found on the autograd graph of one recorded forward of ``x``: a BN is
    folded when its input is the output of a convolution (or linear layer) that nothing
    else reads, and both run once. The BN becomes an ``nn.Identity`` (its name still
    records the same values). Use it on a copy: :func:`build_lrp_model` does.

    Returns
    -------
    list of (str, str)
        The ``(conv, batchnorm)`` names folded.

    Examples
    --------
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    >>> with torch.no_grad():
    ...     _ = net[1].running_mean.fill_(0.5)
    >>> x = torch.randn(1, 3, 8, 8)
    >>> before = net(x)
    >>> fold_batchnorms(net, x)
    [('0', '1')]
    >>> torch.allclose(before, net(x), atol=1e-5)
    True
    """
    fwd = Engine(model).forward(x, cache=False)
    try:
        return _fold(model, fwd)
    finally:
        del fwd


def _fold(model: nn.Module, fwd) -> list[tuple[str, str]]:
    modules = dict(model.named_modules())
    names = fwd.layers
    calls = defaultdict(int)
    for n in names:
        calls[n.partition("#")[0]] += 1
    by_node = {}
    for n in names:
        t = fwd.tensor(n)
        if t.grad_fn is not None and calls[n.partition("#")[0]] == 1:
            by_node.setdefault(id(t.grad_fn), n)
    consumers = _consumers(fwd.output.grad_fn)
    pairs = []
    for n in names:
        bn = modules.get(n)
        if not isinstance(bn, _BNS) or calls[n] != 1 or bn.running_mean is None:
            continue
        node = fwd.tensor(n).grad_fn
        if node is None or "BatchNorm" not in type(node).__name__:
            continue
        parent = node.next_functions[0][0]
        conv_name = by_node.get(id(parent)) if parent is not None else None
        conv = modules.get(conv_name) if conv_name else None
        if conv is None or not _is_linear(conv) or consumers.get(id(parent), 0) != 1:
            continue
        pairs.append((conv_name, n))
    with torch.no_grad():
        for conv_name, bn_name in pairs:
            conv, bn = modules[conv_name], modules[bn_name]
            scale, shift = _bn_affine(bn)
            shape = (-1,) + (1,) * (conv.weight.dim() - 1)
            conv.weight.mul_(scale.view(shape))
            bias = conv.bias if conv.bias is not None else torch.zeros_like(shift)
            new_bias = bias * scale + shift
            if conv.bias is None:
                conv.bias = nn.Parameter(new_bias, requires_grad=False)
            else:
                conv.bias.copy_(new_bias)
            _replace_all(model, bn, nn.Identity())
    return pairs


# ---------------------------------------------------------------------------------------
# Composites


@dataclass
class Composite:
    """Which rule each layer gets: by name pattern, first layer, depth band and type.

    Attributes
    ----------
    dense, conv : Rule
        Rules of linear and convolutional layers.
    first : Rule or None
        Rule of the first linear layer in execution order (reads the input).
    depth : list of (float, Rule), optional
        ``(upper, rule)`` bands over the relative depth ``d`` in (0, 1] of each linear
        layer, counted from the input: the first band with ``d <= upper`` wins. When
        given they override ``dense`` and ``conv``.
    names : dict of str to Rule
        ``fnmatch`` patterns of module names that override everything.
    batchnorm : Rule
        Rule of BatchNorms that could not be folded.

    Examples
    --------
    >>> c = COMPOSITES["epsilon_gamma_box"](epsilon=1e-6, gamma=0.25, alpha=2, beta=1)
    >>> str(c.conv), str(c.first)
    ('gamma:0.25', 'box')
    """

    dense: Rule
    conv: Rule
    first: Rule | None = None
    depth: list[tuple[float, Rule]] | None = None
    names: dict[str, Rule] = field(default_factory=dict)
    batchnorm: Rule = field(default_factory=lambda: Rule("epsilon", epsilon=1e-6))

    def rule_for(self, name: str, module: nn.Module, index: int, total: int) -> Rule:
        """The rule of linear layer ``name``, the ``index``-th of ``total`` in execution order."""
        for pattern, rule in self.names.items():
            if fnmatch.fnmatchcase(name, pattern):
                return rule
        if isinstance(module, _BNS):
            return self.batchnorm
        if index == 0 and self.first is not None:
            return self.first
        if self.depth:
            d = (index + 1) / total
            for upper, rule in self.depth:
                if d <= upper:
                    return rule
            return self.depth[-1][1]
        return self.dense if isinstance(module, nn.Linear) else self.conv


def _c(dense, conv, first=None, depth=None):
    def make(epsilon, gamma, alpha, beta):
        r = lambda s: parse_rule(s, epsilon, gamma, alpha, beta)  # noqa: E731
        bands = [(u, r(s)) for u, s in depth] if depth else None
        return Composite(r(dense), r(conv), r(first) if first else None, bands)

    return make


#: Named composites: ``f(epsilon, gamma, alpha, beta) -> Composite``.
COMPOSITES = {
    "epsilon_gamma_box": _c("epsilon", "gamma", "box"),
    "epsilon_plus_box": _c("epsilon", "zplus", "box"),
    "epsilon_plus": _c("epsilon", "zplus"),
    "epsilon_alpha2_beta1": _c("epsilon", "alpha_beta:2,1"),
    "epsilon_alpha2_beta1_box": _c("epsilon", "alpha_beta:2,1", "box"),
    "epsilon_plus_flat": _c("epsilon", "zplus", "flat"),
    "epsilon_alpha2_beta1_flat": _c("epsilon", "alpha_beta:2,1", "flat"),
    "epsilon_gamma_wsquare": _c("epsilon", "gamma", "wsquare"),
    "epsilon": _c("epsilon", "epsilon"),
    "zero": _c("zero", "zero"),
    "gamma": _c("gamma", "gamma"),
    "alpha_beta": _c("alpha_beta", "alpha_beta"),
    "zplus": _c("zplus", "zplus"),
    # Montavon et al. 2019: LRP-0 near the output, epsilon in the middle, gamma below, z^B first.
    "depth": _c(
        "epsilon", "epsilon", "box", depth=[(1 / 3, "gamma"), (2 / 3, "epsilon"), (1.0, "zero")]
    ),
}


def make_composite(
    composite, epsilon=1e-6, gamma=0.25, alpha=2.0, beta=1.0, rules=None
) -> Composite:
    """A :class:`Composite` from a name in :data:`COMPOSITES` or a Composite, plus overrides.

    Examples
    --------
    >>> c = make_composite("epsilon_plus_box", rules={"fc*": "epsilon:0.5"})
    >>> str(c.conv), str(c.names["fc*"])
    ('zplus', 'epsilon:0.5')
    """
    if isinstance(composite, Composite):
        comp = copy.copy(composite)
    else:
        key = str(composite).strip().lower().replace("-", "_")
        if key not in COMPOSITES:
            raise CnnscopeError(
                f"unknown LRP composite {composite!r}: choose one of {', '.join(COMPOSITES)}"
            )
        comp = COMPOSITES[key](epsilon, gamma, alpha, beta)
    if rules:
        if not isinstance(rules, dict):
            raise CnnscopeError("LRP rules must be a dict {layer name pattern: rule}")
        comp.names = {
            **comp.names,
            **{str(k): parse_rule(v, epsilon, gamma, alpha, beta) for k, v in rules.items()},
        }
    return comp


# ---------------------------------------------------------------------------------------
# The rewritten model


@dataclass
class LRPModel:
    """A rewritten private copy of a model for LRP, with its own engine."""

    module: nn.Module
    engine: Engine
    rules: dict[str, str]
    folded: list[tuple[str, str]]
    first: _RuleLayer | None  # the first layer when its rule reads the input's range (box, ...)
    wrappers: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def build_lrp_model(
    module: nn.Module, x: torch.Tensor, composite: Composite, canonize: bool = True
) -> LRPModel:
    """Copy ``module``, fold its BatchNorms, and put rule wrappers on its layers.

    ``x`` (one input row is enough) is used to find the execution order of the layers
    and the BatchNorm pairs.

    Examples
    --------
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
    >>> lm = build_lrp_model(net, torch.randn(1, 3, 8, 8), make_composite("epsilon_gamma_box"))
    >>> lm.rules, lm.folded
    ({'0': 'box'}, [('0', '1')])
    """
    if isinstance(module, torch.jit.ScriptModule):
        raise CnnscopeError(
            "LRP rewrites a copy of the model: TorchScript models are not supported"
        )
    try:
        model = copy.deepcopy(module).eval()
    except Exception as exc:  # e.g. modules holding non-copyable handles
        raise CnnscopeError(f"LRP cannot copy this model: {type(exc).__name__}: {exc}") from None
    for p in model.parameters():
        p.requires_grad_(False)
    x = x[:1].detach()
    unfuse_batchnorm_acts(model)
    gates = find_gates(model, x)
    modules = dict(model.named_modules())
    for name in gates:
        _replace_all(model, modules[name], _ConstantGate(modules[name]))
    fwd = Engine(model).forward(x, cache=False)  # one pass: execution order and BN pairs
    names = fwd.layers
    folded = _fold(model, fwd) if canonize else []
    del fwd
    modules = dict(model.named_modules())
    order = []
    for name in names:
        base = name.partition("#")[0]
        m = modules.get(base)
        rewritten = _is_linear(m) or isinstance(m, (*_BNS, nn.LayerNorm))
        if m is not None and rewritten and base not in order:
            order.append(base)
    linear = [n for n in order if _is_linear(modules[n])]
    rules: dict[str, str] = {name: "gate (constant)" for name in gates}
    first = None
    wrapped: dict[int, nn.Module] = {}
    for name in order:
        m = modules[name]
        if isinstance(m, nn.LayerNorm):
            if id(m) not in wrapped:
                wrapped[id(m)] = _LayerNormRule(m)
                _replace_all(model, m, wrapped[id(m)])
            rules[name] = "layernorm (std constant)"
            continue
        if isinstance(m, _BNS) and m.running_var is None:
            raise CnnscopeError(
                f"LRP cannot explain {name!r}: a BatchNorm without running statistics "
                "normalises by each batch, it is not a fixed affine map"
            )
        index = linear.index(name) if name in linear else -1
        rule = composite.rule_for(name, m, index, len(linear))
        if rule.kind in FIRST_LAYER_RULES and index != 0:
            raise CnnscopeError(f"the {rule} rule is only for the first layer, not {name!r}")
        if id(m) in wrapped:
            continue
        w = _RuleLayer(m, rule)
        if rule.kind in FIRST_LAYER_RULES:
            first = w  # it reads the input's range or shape
        wrapped[id(m)] = w
        rules[name] = str(rule)
        _replace_all(model, m, w)
    for _, m in list(model.named_modules(remove_duplicate=False)):
        if isinstance(m, _ACTIVATIONS) and id(m) not in wrapped:
            wrapped[id(m)] = _PassActivation(m)
            _replace_all(model, m, wrapped[id(m)])
    layers = [w for w in wrapped.values() if isinstance(w, _RuleLayer)]
    return LRPModel(model, Engine(model), rules, folded, first, layers)


_CACHE_LOCK = threading.Lock()


def lrp_model_for(ctx: Context, composite: Composite, canonize: bool) -> LRPModel:
    """The rewritten copy of ``ctx.module`` for this composite, rebuilt on change.

    One copy per model, the one used last, is kept in the model's engine
    (:attr:`~cnnscope.engine.Engine.memo`), so it goes away with the model; a copy for
    another composite or for changed weights (or device) replaces it.
    """
    key = (ctx.engine.weights_fingerprint(), repr(composite), canonize)
    memo = ctx.engine.memo
    with _CACHE_LOCK:
        if memo.get("lrp_model", (None,))[0] == key:
            return memo["lrp_model"][1]
        memo.pop("lrp_model", None)  # the stale copy goes before the new one is built
    built = build_lrp_model(ctx.module, ctx.x, composite, canonize)
    with _CACHE_LOCK:
        memo["lrp_model"] = (key, built)
    return built


def _bounds(ctx: Context, bounds):
    if bounds is None:
        return ctx.input_bounds()
    try:
        low, high = bounds
    except (TypeError, ValueError):
        raise CnnscopeError(
            "bounds must be (low, high): numbers or per-channel sequences"
        ) from None
    c = ctx.x.shape[1]

    def as_t(v):
        t = torch.as_tensor(v, dtype=torch.float32).flatten()
        if t.numel() not in (1, c):
            raise CnnscopeError(f"bounds need 1 or {c} values per side")
        return t.expand(c).reshape(1, c, 1, 1).to(ctx.device)

    return as_t(low), as_t(high)


@register(
    "lrp",
    family="lrp",
    style="seismic",
    signed=True,
    aliases=("layerwise_relevance_propagation", "relevance"),
    summary="layer-wise relevance propagation: gamma on convolutions, epsilon on dense layers, "
    "z^B first (BatchNorm folded)",
    reference="Bach et al. 2015; Montavon et al. 2019, Layer-wise relevance propagation: an overview",
)
def lrp(
    ctx: Context,
    layer=None,
    composite="epsilon_gamma_box",
    epsilon: float = 1e-6,
    gamma: float = 0.25,
    alpha: float = 2.0,
    beta: float = 1.0,
    canonize: bool = True,
    bounds=None,
    rules: dict | None = None,
) -> MethodOutput:
    """LRP. ``composite`` names a preset of :data:`COMPOSITES`; ``rules`` overrides layers by
    name pattern (``{"classifier": "epsilon:0.1", "blocks.0.*": "gamma"}``). With ``layer``
    the relevance at that layer is returned (summed over channels, upsampled) instead of at
    the input. ``meta``: ``input_share`` is ``sum R / f(x)``; ``absorbed`` the relevance the
    layers' biases (and units without input contribution) took; ``conservation`` is
    ``(sum R + absorbed) / f(x)``, 1 when nothing else leaks.
    """
    comp = make_composite(composite, epsilon, gamma, alpha, beta, rules)
    if ctx.legacy:
        log.info("LRP has no legacy variant; running the regular one")
    lm = lrp_model_for(ctx, comp, canonize)
    targets = ctx.targets  # from the original model, so top-1 ties cannot differ
    top = ctx.target_layer
    read = None if layer is None else ctx.resolve_layer(layer)
    with lm.lock:
        for w in lm.wrappers:
            w.probes.clear()
        if lm.first is not None and lm.first.rule.kind == "box":
            low, high = _bounds(ctx, bounds)
            object.__setattr__(lm.first, "low", low)
            object.__setattr__(lm.first, "high", high)
        only = [n for n in (top, read) if n not in (None, LOGITS)]
        fwd = lm.engine.forward(ctx.x, cache=False, layers=only)
        shape = fwd.activation(top).shape[1:]
        seeds = ctx.seeds(list(range(ctx.n)), shape)
        absorbed = None
        if read is not None:
            name = fwd.resolve(read)
            g = fwd.grad(top, seeds, to=name)
            rel = (fwd.activation(name) * g).detach()
            total = rel.flatten(1).sum(1)
            maps = rel.sum(1) if rel.dim() == 4 else rel.flatten(1).sum(1).view(-1, 1, 1)
            maps = upsample(maps, ctx.size).unsqueeze(1)
        else:
            extras = list(lm.first.bounds) if lm.first is not None else []
            to = [INPUT, *extras]
            probes = [p for w in lm.wrappers for p in w.probes]
            grads = fwd.grad(top, seeds, to=to + probes)
            rel = ctx.x * grads[0]
            for t, g in zip(extras, grads[1 : len(to)]):
                if t.numel() != rel.numel():
                    raise CnnscopeError(
                        f"the {lm.first.rule} rule needs a first layer that reads the input: "
                        "pick another composite"
                    )
                rel = rel + (t.detach() * g).reshape(rel.shape)
            total = rel.flatten(1).sum(1)
            absorbed = torch.zeros_like(total, dtype=torch.float64)
            for g in grads[len(to) :]:
                absorbed = absorbed + g.double().flatten(1).sum(1)
            maps = rel
        del fwd
        for w in lm.wrappers:
            w.probes.clear()
    score = ctx.scores.to(total.device).double()
    # a zero score has nothing to conserve: the ratios are NaN there
    safe = torch.where(score.abs() > _TINY, score, torch.full_like(score, float("nan")))
    meta = {
        "rules": dict(lm.rules),
        "folded": list(lm.folded),
        "relevance": total.detach().float().cpu(),
        "input_share": (total.double() / safe).float().cpu(),
        "targets": [str(t) for t in targets],
    }
    if absorbed is not None:
        meta["absorbed"] = absorbed.float().cpu()
        meta["conservation"] = ((total.double() + absorbed) / safe).float().cpu()
        _warn_on_leaks(meta["conservation"], lm.rules)
    return MethodOutput(maps.detach(), meta, read)


def _warn_on_leaks(conservation: torch.Tensor, rules: dict[str, str]) -> None:
    """Log a warning with the figure when relevance is not conserved within 5%."""
    off = (conservation.double() - 1).abs()
    if bool((off > CONSERVATION_TOLERANCE).any()):
        log.warning(
            "LRP conserves %.3f to %.3f of the score on this model (more than %.0f%% off): "
            "some operation has no rule (rules: %s)",
            float(conservation.min()),
            float(conservation.max()),
            100 * CONSERVATION_TOLERANCE,
            ", ".join(sorted(set(rules.values()))),
        )


for _name, _composite, _summary in (
    ("lrp_epsilon", "epsilon", "LRP-epsilon on every layer (BatchNorm folded)"),
    (
        "lrp_zplus",
        "epsilon_plus_box",
        "LRP: z+ on convolutions, epsilon on dense layers, z^B first",
    ),
    (
        "lrp_alpha_beta",
        "epsilon_alpha2_beta1_box",
        "LRP: alpha=2 beta=1 on convolutions, z^B first",
    ),
):
    register(
        _name,
        family="lrp",
        style="seismic",
        signed=True,
        summary=_summary,
        reference="Montavon et al. 2019, Layer-wise relevance propagation: an overview",
        fixed={"composite": _composite, **({"epsilon": 0.25} if _composite == "epsilon" else {})},
        fn=lrp,
    )
