"""Backward rules for every rectifier call, wherever it happened in the forward.

After a recorded forward, :func:`attach_rules` walks the autograd graph once and puts a
hook on every node that a rectifier left behind: ``relu``, ``relu6``, ``hardtanh``,
``leaky_relu``, ``threshold(0, 0)``, ``clamp(min=0)`` and the smooth ones (SiLU, GELU,
Hardswish, Mish, ELU, CELU, SELU, Softplus), whether it ran
as a module, a functional call, a tensor method or an in-place variant, and however
many times one module object was reused. The graph is the ground truth of what ran,
so nothing is missed and the forward itself runs at full speed, untouched.

Each hook reads the rule in force from a :class:`RuleState` shared by the whole graph,
so one forward serves every rule: set ``state.rule`` and call ``torch.autograd.grad``.

A rule is one :class:`BackwardRule` in :data:`BACKWARD_RULES`: its :class:`Term` (name,
title, help), its *polarity*, the function that shapes the gradient at an activation (its
docstring gives the formula; None for the true gradient) and its column of the table of
docs/methods.md (:data:`RULES_TABLE`). Everything else reads them from there: the names
(:data:`RULES`, the CLI's choices, the server's schemas and ``/api/vocabulary``) and the
tree's sign per rule (:data:`POLARITY`). A new rule is one more entry there (and
``scripts/make_methods_doc.py`` rewrites the docs' table).

The polarity is the sign of what a rule lets through an activation: guided and deconvnet
pass positive gradients only, guided_neg negative ones only, the true gradient both (its
polarity is taken as +1: an increase is the evidence). Note that
``guided_neg(g) = -guided(-g)``: guided_neg shows, negated, what guided shows for the
opposite seed. Deconvnet never reads ``x``: on a network without max-pooling (whose
switches are its only other link to the image) its pictures do not depend on the image.
Outside the ReLU family (SiLU, GELU, Hardswish, Mish, ELU, Softplus...) the rules are
generalised, and squashing functions keep their true gradient.

Examples
--------
>>> [(rule.name, rule.polarity) for rule in BACKWARD_RULES]
[('gradient', 1), ('deconvnet', 1), ('guided', 1), ('guided_neg', -1)]
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch

from ..vocabulary import Term, names

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Activation:
    """How the rules see one kind of activation node of the autograd graph.

    ``family`` is ``"relu"`` (the ReLU family: every rule is exact), ``"smooth"`` (a smooth
    or piecewise rectifier: the rules' generalisation applies) or ``"other"`` (not a
    rectifier: the true gradient passes and a warning says so). ``leak`` and ``gain`` are
    the unit's slopes far below and far above zero, the rectifier it approximates (what
    ``deconvnet`` passes); ``monotone`` says that ``f' >= 0`` everywhere.
    """

    name: str
    family: str
    leak: float = 0.0
    gain: float = 1.0
    monotone: bool = True


#: How a rule shapes the gradient at one activation: ``(g * f'(x), g, unit) -> passed``.
Shape = Callable[[torch.Tensor, torch.Tensor, Activation], torch.Tensor]


def _deconvnet(grad_in: torch.Tensor, grad_out: torch.Tensor, act: Activation) -> torch.Tensor:
    """``g * [g > 0]`` (times the unit's gain; plus ``leak * g`` where ``g <= 0``)."""
    up = grad_out.clamp(min=0) if act.gain == 1 else grad_out.clamp(min=0) * act.gain
    return up if act.leak == 0 else torch.where(grad_out > 0, up, grad_out * act.leak)


def _guided(grad_in: torch.Tensor, grad_out: torch.Tensor, act: Activation) -> torch.Tensor:
    """``g * f'(x) * [g > 0] * [f'(x) > 0]``: then (and only then) it is > 0."""
    if act.monotone and act.leak >= 0:  # g * f'(x) has g's sign (or is 0): one op
        return grad_in.clamp(min=0)
    return grad_in.clamp(min=0) * (grad_out > 0)


def _guided_neg(grad_in: torch.Tensor, grad_out: torch.Tensor, act: Activation) -> torch.Tensor:
    """``g * f'(x) * [g < 0] * [f'(x) > 0]``: then (and only then) it is < 0."""
    if act.monotone and act.leak >= 0:
        return grad_in.clamp(max=0)
    return grad_in.clamp(max=0) * (grad_out < 0)


#: The rectifier rows of the docs' table (a rule's ``table`` gives one cell each); the
#: squashing functions' row follows, where every shaping rule passes the true gradient.
TABLE_ROWS: tuple[str, ...] = (
    "ReLU, ReLU6, Hardtanh, `clamp(min=0)`, `threshold(0, 0)`",
    "LeakyReLU (slope `a`)",
    "SiLU, GELU (both forms), Hardswish, Mish: `x gate(x)`",
    "ELU, CELU, Softplus (`f' > 0`)",
    "SELU (scale `l`)",
)
_OTHER_ROW = "Sigmoid, Tanh, Hardsigmoid, LogSigmoid, PReLU, RReLU"


@dataclass(frozen=True)
class BackwardRule:
    """One backward rule: its words, its polarity, what it passes, its column of the docs.

    Attributes
    ----------
    term : Term
        Name, title and help (the CLI's choices and ``/api/vocabulary`` read them).
    polarity : int
        +1 or -1: the sign of the gradients it lets through an activation (+1 for the true
        gradient, which passes both: an increase counts as evidence). The tree orients
        each kept channel to it and ranks children along it.
    shape : Shape or None
        The gradient an activation passes down (:data:`Shape`); None for the true gradient
        (no hook runs).
    table : tuple of str
        Its cell of each row of :data:`TABLE_ROWS` in docs/methods.md (empty for the true
        gradient, ``g f'(x)`` everywhere).

    Examples
    --------
    >>> rule = BackwardRule(Term("zero", "Zero", "no gradient passes"), 1, lambda gi, go, a: 0 * gi)
    >>> rule.name, rule.shape(torch.ones(2), torch.ones(2), Activation("ReLU", "relu")).tolist()
    ('zero', [0.0, 0.0])
    """

    term: Term
    polarity: int
    shape: Shape | None
    table: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """The rule's name (its term's)."""
        return self.term.name


_G_NEG = "`g f'(x) [g < 0]`"
_GATED_NEG = "`g f'(x) [g < 0] [f'(x) > 0]`"
_G_POS = "`g f'(x) [g > 0]`"
_GATED_POS = "`g f'(x) [g > 0] [f'(x) > 0]`"

#: Every backward rule, in the order the pickers list them.
BACKWARD_RULES: tuple[BackwardRule, ...] = (
    BackwardRule(
        Term("gradient", "Gradient", "the true gradient, both signs (noisy, but faithful)"),
        1,
        None,
    ),
    BackwardRule(
        Term(
            "deconvnet",
            "Deconvnet",
            "positive gradients pass each ReLU whatever its input: without max-pooling, "
            "nearly the same picture for every image",
        ),
        1,
        _deconvnet,
        ("`max(g, 0)`", "`g` where `g > 0`, else `a g`", "`max(g, 0)`", "`max(g, 0)`")
        + ("`l max(g, 0)`",),
    ),
    BackwardRule(
        Term("guided", "Guided", "only positive gradients pass each active ReLU"),
        1,
        _guided,
        (_G_POS, _GATED_POS, _GATED_POS, _G_POS, _G_POS),
    ),
    BackwardRule(
        Term(
            "guided_neg",
            "Guided neg",
            "only negative gradients pass each active ReLU: what lowers the node",
        ),
        -1,
        _guided_neg,
        (_G_NEG, _GATED_NEG, _GATED_NEG, _G_NEG, _G_NEG),
    ),
)
#: Each rule by its name.
RULE_BY_NAME: dict[str, BackwardRule] = {rule.name: rule for rule in BACKWARD_RULES}
#: The backward rules with their titles and help (the explorer's picker reads them).
RULE_TERMS: tuple[Term, ...] = tuple(rule.term for rule in BACKWARD_RULES)
RULES: tuple[str, ...] = names(RULE_TERMS)
#: The rule the tree and the explorer's pictures start with where none is named.
DEFAULT_RULE = "guided"

#: Sign of the gradients each rule lets through an activation (+1 for the true gradient,
#: which passes both: an increase counts as evidence).
POLARITY: dict[str, int] = {rule.name: rule.polarity for rule in BACKWARD_RULES}


def _table() -> str:
    """The table of :data:`RULES_TABLE`, one column per rule of :data:`BACKWARD_RULES`."""
    true = "`g f'(x)`"
    lines = [
        "| activation | " + " | ".join(f"`{rule.name}`" for rule in BACKWARD_RULES) + " |",
        "|---" * (len(BACKWARD_RULES) + 1) + "|",
    ]
    for i, row in enumerate((*TABLE_ROWS, _OTHER_ROW)):
        cells = [
            true
            if rule.shape is None
            else (rule.table[i] if i < len(TABLE_ROWS) else f"{true}, warned")
            for rule in BACKWARD_RULES
        ]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


#: The rules table of docs/methods.md ("Backward rules"), written by
#: scripts/make_methods_doc.py from here.
RULES_TABLE = f"""\
## Backward rules

`deconvnet`, `guided_backprop` and `guided_neg` (and `guided_grad_cam`, `guided_x_input`,
`smoothgrad` around them, the tree's `--rule`) are backprop with a rule at every activation
call, module, functional or in-place. With `g` the gradient arriving at an activation's
output and `f'(x)` its true derivative at its input:

{_table()}

Springenberg et al. 2015 define guided backprop on ReLUs only: a gradient passes where the
unit's input was positive and the gradient is positive. On a ReLU the first gate is
`f'(x) > 0`, which is what the table keeps for every unit: guided passes the true local
gradient where the unit rises with its input and the arriving gradient is positive, so it
passes positive values only, as on ReLUs, and `guided_neg(g) = -guided(-g)` still holds.
SiLU, GELU, Mish and Hardswish fall below x = -1.28, -0.75, -1.19 and -1.5 (`f' < 0`):
there guided closes the unit. Deconvnet (Zeiler & Fergus 2014) sends `g` through the
rectifier itself and ignores `x`; a smooth rectifier sends it through the piecewise-linear
unit it tends to away from zero (slope 0 below, 1 above; SELU's scale above). A squashing
function or a gate (the sigmoid of a squeeze-excitation block) has no meaning under these
rules: its true gradient passes, and the engine logs one warning per call naming the rule
and counting the calls it generalised to and left alone. A rule that finds no ReLU-family
or smooth rectifier in the model raises `CnnscopeError` rather than return the plain
gradient under its name. The `gradient` rule is the true gradient, bit for bit. Captum's
`GuidedBackprop` and `Deconvolution` (0.9) override `nn.ReLU` modules only: every other
activation, and every functional ReLU, keeps its plain gradient, with no warning, so on
EfficientNet-B0 or ConvNeXt they return the gradient itself.
"""


@dataclass
class RuleState:
    """The backward rule in force for one recorded graph (read at backward time)."""

    rule: str = "gradient"


def check_rule(rule: str) -> str:
    """Return ``rule`` if it is a known backward rule, else raise ``CnnscopeError``.

    Examples
    --------
    >>> check_rule("guided")
    'guided'
    """
    if rule not in RULES:
        from ..errors import CnnscopeError

        raise CnnscopeError(f"unknown rule {rule!r}: choose one of {', '.join(RULES)}")
    return rule


def apply_rule(
    rule: str,
    grad_in: torch.Tensor,
    grad_out: torch.Tensor,
    leak: float = 0.0,
    *,
    gain: float = 1.0,
    monotone: bool = True,
) -> torch.Tensor:
    """The gradient an activation passes down under ``rule``.

    Parameters
    ----------
    rule : str
        One of :data:`RULES` (its :attr:`BackwardRule.shape`, for one unit).
    grad_in : torch.Tensor
        The true gradient at the activation's input, ``g * f'(x)``.
    grad_out : torch.Tensor
        The incoming gradient ``g`` at the activation's output.
    leak : float
        Slope far below zero of the rectifier the unit is (used by ``deconvnet``, which
        ignores ``x``).
    gain : float
        Slope far above zero (``deconvnet``): 1 but for SELU.
    monotone : bool
        Whether ``f' >= 0`` everywhere; False for SiLU, GELU, Mish, Hardswish, whose
        ``f'`` is negative somewhere below zero (guided then masks on ``g`` too).

    Examples
    --------
    >>> g = torch.tensor([1.0, -1.0, 2.0])
    >>> true = torch.tensor([0.0, -1.0, 2.0])  # f'(x) = [0, 1, 1]
    >>> apply_rule("guided", true, g).tolist(), apply_rule("deconvnet", true, g).tolist()
    ([0.0, 0.0, 2.0], [1.0, 0.0, 2.0])
    >>> apply_rule("guided", torch.tensor([-0.1]), torch.tensor([1.0]), monotone=False)
    tensor([0.])
    """
    shape = RULE_BY_NAME[check_rule(rule)].shape
    if shape is None:
        return grad_in
    return shape(grad_in, grad_out, Activation("", "relu", leak, gain, monotone))


_RELU = {"ReluBackward", "HardtanhBackward"}
_SMOOTH = {  # f(x) = x * gate(x), the gate rising from 0 to 1: not monotone below 0
    "SiluBackward": "SiLU",
    "GeluBackward": "GELU",
    "HardswishBackward": "Hardswish",
    "MishBackward": "Mish",
}
_OTHER = {  # squashing functions and gates, or rectifiers whose slope is learnt or random
    "SigmoidBackward": "Sigmoid",
    "TanhBackward": "Tanh",
    "HardsigmoidBackward": "Hardsigmoid",
    "LogSigmoidBackward": "LogSigmoid",
    "PreluKernelBackward": "PReLU",
    "RreluWithNoiseBackward": "RReLU",
}


def activation(node) -> Activation | None:
    """What kind of activation a graph node is, or None for any other node.

    Examples
    --------
    >>> x = torch.randn(3, requires_grad=True)
    >>> activation(torch.nn.functional.silu(x).grad_fn)
    Activation(name='SiLU', family='smooth', leak=0.0, gain=1.0, monotone=False)
    """
    kind = type(node).__name__.rstrip("0123456789")
    if kind in _RELU:
        return Activation("ReLU", "relu")
    if kind == "LeakyReluBackward":
        slope = float(node._saved_negative_slope)
        return Activation("LeakyReLU", "relu", leak=slope, monotone=slope >= 0)
    if kind in ("ClampBackward", "ClampMinBackward"):
        low = node._saved_min
        return Activation("ReLU", "relu") if low is not None and float(low) == 0.0 else None
    if kind == "ThresholdBackward":
        return Activation("ReLU", "relu") if float(node._saved_threshold) == 0.0 else None
    if kind in _SMOOTH:
        return Activation(_SMOOTH[kind], "smooth", monotone=False)
    if kind == "EluBackward":  # ELU and SELU (scale != 1): slope 0 far below, scale above
        scale, alpha = float(node._saved_scale), float(node._saved_alpha)
        name = "ELU" if scale == 1.0 else "SELU"
        return Activation(name, "smooth", gain=scale, monotone=alpha * scale >= 0)
    if kind == "CeluBackward":
        return Activation("CELU", "smooth", monotone=float(node._saved_alpha) >= 0)
    if kind == "SoftplusBackward":
        return Activation("Softplus", "smooth")
    if kind in _OTHER:
        return Activation(_OTHER[kind], "other")
    return None


def _rule_hook(state: RuleState, act: Activation):
    def hook(grad_inputs, grad_outputs):
        shape = RULE_BY_NAME[state.rule].shape
        if shape is None or grad_inputs[0] is None or grad_outputs[0] is None:
            return None
        return (shape(grad_inputs[0], grad_outputs[0], act), *grad_inputs[1:])

    return hook


def attach_rules(tensors: Iterable[torch.Tensor], state: RuleState) -> Counter:
    """Hook every rectifying node of the graph behind ``tensors``; count the activations.

    ReLU-family and smooth rectifiers (:func:`activation`) get a hook; the others are
    only counted. The hooks live on this graph only (made by one forward pass); the model
    is not touched.

    Returns
    -------
    collections.Counter
        ``{Activation: number of calls}`` over the whole graph.

    Examples
    --------
    >>> x = torch.tensor([-1.0, 2.0], requires_grad=True)
    >>> y = torch.relu(x) * 3
    >>> state = RuleState("guided")
    >>> sum(attach_rules([y], state).values())
    1
    >>> torch.autograd.grad(y, x, torch.tensor([1.0, -1.0]))[0]
    tensor([0., 0.])
    """
    seen: dict[int, object] = {}  # keeps each node alive, so that ids stay unique
    stack: list[torch.autograd.graph.Node | None] = [
        t.grad_fn for t in tensors if t.grad_fn is not None
    ]
    found: Counter = Counter()
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen[id(node)] = node
        act = activation(node)
        if act is not None:
            found[act] += 1
            if act.family != "other":
                node.register_hook(_rule_hook(state, act))
        stack.extend(next_node for next_node, _ in node.next_functions)
    return found


def _tally(found: Counter, family: str) -> str:
    counts: Counter = Counter()
    for act, n in found.items():
        if act.family == family:
            counts[act.name] += n
    return ", ".join(f"{n} {name}" for name, n in sorted(counts.items()))


def check_reach(rule: str, found: Counter) -> str | None:
    """Raise if ``rule`` shapes none of the activations ``found``; else the warning to give.

    Returns None when every activation is ReLU-family (the rule is exact), else the
    one-line warning that names what the rule generalised to and what it left alone.

    Examples
    --------
    >>> x = torch.randn(3, requires_grad=True)
    >>> found = attach_rules([torch.nn.functional.gelu(x)], RuleState())
    >>> check_reach("guided", found)
    "rule 'guided' met activations that are not ReLU-family: generalised to 1 GELU calls (see docs/methods.md, backward rules)"
    """
    if RULE_BY_NAME[rule].shape is None:
        return None
    smooth, other = _tally(found, "smooth"), _tally(found, "other")
    if not smooth and not _tally(found, "relu"):
        from ..errors import CnnscopeError

        why = f"its only activations ({other}) are not rectifiers" if other else "none at all"
        raise CnnscopeError(
            f"rule {rule!r} has no ReLU-family or rectifying activation to act on in this"
            f" model ({why}): it would return the plain gradient"
        )
    if not smooth and not other:
        return None
    parts = [f"generalised to {smooth} calls"] if smooth else []
    parts += [f"passed the true gradient through {other} calls (not rectifiers)"] if other else []
    return (
        f"rule {rule!r} met activations that are not ReLU-family: {'; '.join(parts)}"
        " (see docs/methods.md, backward rules)"
    )


_NOTES: ContextVar[set[str] | None] = ContextVar("cnnscope_rule_notes", default=None)


@contextmanager
def warn_once() -> Iterator[None]:
    """Within this block, each rule warning (:func:`note`) is logged once.

    Wrap one user-level call (an attribution, a tree expansion) that may record many
    forwards of one model, so that its warning comes once, not once per forward.

    Examples
    --------
    >>> with warn_once():
    ...     note("a"); note("a")  # logged once
    """
    token = _NOTES.set(set())
    try:
        yield
    finally:
        _NOTES.reset(token)


def note(message: str) -> None:
    """Log a rule warning, once per :func:`warn_once` block when one is open."""
    said = _NOTES.get()
    if said is not None:
        if message in said:
            return
        said.add(message)
    log.warning("%s", message)
