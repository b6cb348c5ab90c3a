"""Layer-wise relevance propagation as gradient x input on a rewritten copy of the model.

LRP redistributes the target score layer by layer. Here it is computed with the
"modified gradient" identity: if every layer's backward is changed so that the
relevance of any tensor ``a`` is ``a * grad(a)``, the relevance at the input is the
input times its (modified) gradient. So LRP needs no hooks and never touches the
caller's model. The package has three parts: :mod:`.rules` (one wrapper per kind of
layer), :mod:`.composites` (which rule each layer gets) and :mod:`.canonizers`
(equivalent rewrites of the copy).

1. a private copy of the model is made (:func:`copy.deepcopy`);
2. **canonizers**: fused BatchNorm + activation modules (timm's ``BatchNormAct2d``) are
   split; each BatchNorm is folded into the convolution (or linear layer) that feeds it,
   found from the autograd graph of one recorded forward pass; a BatchNorm with nothing
   to fold into (DenseNet's, on a concatenation) keeps the epsilon rule as an affine
   layer; sigmoid-like modules whose output only multiplies (squeeze-excitation gates)
   become constants: in ``x * g(x)`` relevance flows through ``x`` only;
3. each convolution / linear layer is replaced by a wrapper whose forward returns
   exactly the layer's output ``z`` but whose backward realises its **rule**, e.g. for
   LRP-epsilon ``grad_in = W^T (g * z / (z + eps sign z))``; each LayerNorm holds its
   standard deviation constant (Ali et al. 2022), so it passes relevance on;
4. each elementwise activation (ReLU, ReLU6, SiLU, ...) passes relevance through
   unchanged (``grad_in = g * act(z) / z``): a saturated ReLU6 keeps its relevance;
5. the copy runs through the :class:`~cnnscope.engine.Engine` like any model and
   ``R = x * grad`` (plus the bound terms of the z^B, flat and w^2 rules) is read at the input.

Linear operations left as they are (additions of residual branches, concatenation,
average pooling, padding, flattening, scaling) conserve relevance by themselves under
this identity: their true gradient is the LRP-0 rule. Max pooling gives all relevance
to the maximum. Saturating activations called as functions (``F.relu6``), functional
gates (``x * s.sigmoid()``) and ``F.layer_norm`` are not rewritten: they leak, and the
method logs a warning with the figure when relevance is off by more than 5%.

Rules (``z`` the layer's output, ``x`` its input, ``W`` its weights)
---------------------------------------------------------------------
``epsilon`` / ``zero``   ``R_i = x_i sum_j w_ij R_j / (z_j + eps sign z_j)`` (``zero``: eps = 0)
``gamma``                contributions of the output's sign amplified: ``w + gamma w+``
``alpha_beta``           ``alpha`` times positive minus ``beta`` times negative contributions
``zplus``                ``alpha_beta`` with alpha=1, beta=0
``box``                  z^B for the first layer, with the input's lowest and highest values
``flat``                 first layer: ``R_i = sum_j R_j / n_j`` (each output's inputs alike)
``wsquare``              first layer: ``R_i = sum_j w_ij^2 R_j / sum_i' w_i'j^2``
``pass``                 the layer's true gradient

Biases: epsilon and gamma put the bias in the denominator (the bias keeps its share, which
``meta['absorbed']`` reports). z+ and alpha-beta leave it out, as the formulas of Montavon
et al. 2019 do: all of a layer's relevance goes to its inputs. zennit instead adds the
positive (and for beta, the negative) bias to its denominators, so its z+ and alpha-beta
maps carry less relevance on layers with biases, and squares the bias into its w^2
denominator; flat and w^2 here leave the bias out (as zennit's flat does).
"""

from __future__ import annotations

import copy
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ...engine import INPUT, LOGITS, Engine
from ...errors import CnnscopeError, warn_renamed
from ..context import Context, upsample
from ..registry import MethodOutput, register
from .canonizers import (
    _fold,
    _replace_all,
    find_gates,
    fold_batchnorms,
    unfuse_batchnorm_acts,
)
from .composites import COMPOSITES, Composite, make_composite
from .rules import (
    _ACTIVATIONS,
    _BNS,
    _TINY,
    FIRST_LAYER_LRP_RULES,
    LRP_RULES,
    LrpRule,
    _ConstantGate,
    _is_linear,
    _LrpLayer,
    _LrpLayerNorm,
    _PassActivation,
    lrp_layer,
    parse_lrp_rule,
)

log = logging.getLogger(__name__)

__all__ = [
    "COMPOSITES",
    "CONSERVATION_TOLERANCE",
    "FIRST_LAYER_LRP_RULES",
    "LRP_RULES",
    "Composite",
    "LRPModel",
    "LrpRule",
    "build_lrp_model",
    "find_gates",
    "fold_batchnorms",
    "make_composite",
    "parse_lrp_rule",
    "unfuse_batchnorm_acts",
]
#: Relative conservation error above which LRP logs a warning with the figure.
CONSERVATION_TOLERANCE = 0.05

#: Old names (before issue 16: "rule" alone now means the engine's backward rule).
_RENAMED = {
    "Rule": "LrpRule",
    "RULE_KINDS": "LRP_RULES",
    "FIRST_LAYER_RULES": "FIRST_LAYER_LRP_RULES",
    "parse_rule": "parse_lrp_rule",
}


def __getattr__(name: str):
    """The old names of :data:`_RENAMED`, with a DeprecationWarning."""
    if name in _RENAMED:
        warn_renamed(f"cnnscope.attribution.lrp.{name}", _RENAMED[name])
        return globals()[_RENAMED[name]]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------------------------
# The rewritten model


@dataclass
class LRPModel:
    """A rewritten private copy of a model for LRP, with its own engine."""

    module: nn.Module
    engine: Engine
    rules: dict[str, str]
    folded: list[tuple[str, str]]
    first: _LrpLayer | None  # the first layer when its rule reads the input's range (box, ...)
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
                wrapped[id(m)] = _LrpLayerNorm(m)
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
        if rule.kind in FIRST_LAYER_LRP_RULES and index != 0:
            raise CnnscopeError(f"the {rule} rule is only for the first layer, not {name!r}")
        if id(m) in wrapped:
            continue
        w = lrp_layer(m, rule)
        if rule.kind in FIRST_LAYER_LRP_RULES:
            first = w  # it reads the input's range or shape
        wrapped[id(m)] = w
        rules[name] = str(rule)
        _replace_all(model, m, w)
    for _, m in list(model.named_modules(remove_duplicate=False)):
        if isinstance(m, _ACTIVATIONS) and id(m) not in wrapped:
            wrapped[id(m)] = _PassActivation(m)
            _replace_all(model, m, wrapped[id(m)])
    layers = [w for w in wrapped.values() if isinstance(w, _LrpLayer)]
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
    title="LRP",
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
    if ctx.quirks:
        log.info("LRP has no quirks variant; running the regular one")
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
            g = fwd.grad(top, seeds, to=[name])[0]
            rel = (fwd.activation(name) * g).detach()
            total = rel.flatten(1).sum(1)
            maps = rel.sum(1) if rel.dim() == 4 else rel.flatten(1).sum(1).view(-1, 1, 1)
            maps = upsample(maps, ctx.size).unsqueeze(1)
        else:
            first = lm.first
            extras = list(first.bounds) if first is not None else []
            to = [INPUT, *extras]
            probes = [p for w in lm.wrappers for p in w.probes]
            grads = fwd.grad(top, seeds, to=to + probes)
            rel = ctx.x * grads[0]
            for t, g in zip(extras, grads[1 : len(to)]):
                if first is not None and t.numel() != rel.numel():
                    raise CnnscopeError(
                        f"the {first.rule} rule needs a first layer that reads the input: "
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
    meta: dict[str, Any] = {
        "rules": dict(lm.rules),
        "folded": list(lm.folded),
        "relevance": total.detach().float().cpu(),
        "input_share": (total.double() / safe).float().cpu(),
        "targets": [str(t) for t in targets],
    }
    if absorbed is not None:
        meta["absorbed"] = absorbed.float().cpu()
        conservation = ((total.double() + absorbed) / safe).float().cpu()
        meta["conservation"] = conservation
        _warn_on_leaks(conservation, lm.rules)
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


for _name, _title, _composite, _summary in (
    ("lrp_epsilon", "LRP-ε", "epsilon", "LRP-epsilon on every layer (BatchNorm folded)"),
    (
        "lrp_zplus",
        "LRP-z⁺",
        "epsilon_plus_box",
        "LRP: z+ on convolutions, epsilon on dense layers, z^B first",
    ),
    (
        "lrp_alpha_beta",
        "LRP-αβ (α=2, β=1)",
        "epsilon_alpha2_beta1_box",
        "LRP: alpha=2 beta=1 on convolutions, z^B first",
    ),
):
    register(
        _name,
        title=_title,
        family="lrp",
        style="seismic",
        signed=True,
        summary=_summary,
        reference="Montavon et al. 2019, Layer-wise relevance propagation: an overview",
        fixed={"composite": _composite, **({"epsilon": 0.25} if _composite == "epsilon" else {})},
        fn=lrp,
    )
