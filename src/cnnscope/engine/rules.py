"""Backward rules for every ReLU-family call, wherever it happened in the forward.

After a recorded forward, :func:`attach_rules` walks the autograd graph once and puts a
hook on every node that a ReLU-family op left behind: ``relu``, ``relu6``,
``hardtanh``, ``leaky_relu``, ``threshold(0, 0)`` and ``clamp(min=0)``, whether it ran
as a module, a functional call, a tensor method or an in-place variant, and however
many times one module object was reused. The graph is the ground truth of what ran,
so nothing is missed and the forward itself runs at full speed, untouched.

Each hook reads the rule in force from a :class:`RuleState` shared by the whole graph,
so one forward serves every rule: set ``state.rule`` and call ``torch.autograd.grad``.
With ``f'`` the activation's true derivative at its input and ``g`` the incoming
gradient, the rules are:

============  ===========================================  ========
rule          gradient passed down                         polarity
============  ===========================================  ========
gradient      ``g * f'(x)``                                 both
deconvnet     ``g * [g > 0]`` (plus ``slope * g`` where      +1
              ``g <= 0`` for leaky units)
guided        ``g * f'(x) * [g > 0]``                       +1
guided_neg    ``g * f'(x) * [g < 0]``                       -1
============  ===========================================  ========

The *polarity* (:data:`POLARITY`) is the sign of what a rule lets through an activation:
guided and deconvnet pass positive gradients only, guided_neg negative ones only, the
true gradient both (its polarity is taken as +1: an increase is the evidence). Note that
``guided_neg(g) = -guided(-g)``: guided_neg shows, negated, what guided shows for the
opposite seed. Deconvnet never reads ``x``: on a network without max-pooling (whose
switches are its only other link to the image) its pictures do not depend on the image.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

RULES: tuple[str, ...] = ("gradient", "deconvnet", "guided", "guided_neg")

#: Sign of the gradients each rule lets through an activation (+1 for the true gradient,
#: which passes both: an increase counts as evidence).
POLARITY: dict[str, int] = {"gradient": 1, "deconvnet": 1, "guided": 1, "guided_neg": -1}


@dataclass
class RuleState:
    """The backward rule in force for one recorded graph (read at backward time)."""

    rule: str = "gradient"


def check_rule(rule: str) -> str:
    """Return ``rule`` if it is a known backward rule, else raise ``CnnscopeError``."""
    if rule not in RULES:
        from ..errors import CnnscopeError

        raise CnnscopeError(f"unknown rule {rule!r}: choose one of {', '.join(RULES)}")
    return rule


def apply_rule(
    rule: str, grad_in: torch.Tensor, grad_out: torch.Tensor, leak: float = 0.0
) -> torch.Tensor:
    """The gradient an activation passes down under ``rule``.

    Parameters
    ----------
    rule : str
        One of :data:`RULES`.
    grad_in : torch.Tensor
        The true gradient at the activation's input, ``g * f'(x)``.
    grad_out : torch.Tensor
        The incoming gradient ``g`` at the activation's output.
    leak : float
        Slope below zero of a leaky unit (used by ``deconvnet``, which ignores ``x``).

    Examples
    --------
    >>> g = torch.tensor([1.0, -1.0, 2.0])
    >>> true = torch.tensor([0.0, -1.0, 2.0])  # f'(x) = [0, 1, 1]
    >>> apply_rule("guided", true, g).tolist(), apply_rule("deconvnet", true, g).tolist()
    ([0.0, 0.0, 2.0], [1.0, 0.0, 2.0])
    """
    if rule == "gradient":
        return grad_in
    if leak >= 0:  # f'(x) >= 0, so grad_in = g * f'(x) has g's sign (or is 0): one op each
        if rule == "guided":
            return grad_in.clamp(min=0)
        if rule == "guided_neg":
            return grad_in.clamp(max=0)
        if leak == 0:
            return grad_out.clamp(min=0)
    if rule == "guided":
        return grad_in * (grad_out > 0)
    if rule == "guided_neg":
        return grad_in * (grad_out < 0)
    return torch.where(grad_out > 0, grad_out, grad_out * leak)


def _leak(node) -> float | None:
    """The below-zero slope of a ReLU-family graph node, or None for any other node."""
    name = type(node).__name__
    if name in ("ReluBackward0", "ReluBackward1", "HardtanhBackward0", "HardtanhBackward1"):
        return 0.0
    if name.startswith("LeakyReluBackward"):
        return float(node._saved_negative_slope)
    if name in ("ClampBackward1", "ClampMinBackward0"):
        low = node._saved_min
        return 0.0 if low is not None and float(low) == 0.0 else None
    if name == "ThresholdBackward0":
        return 0.0 if float(node._saved_threshold) == 0.0 else None
    return None


def _rule_hook(state: RuleState, leak: float):
    def hook(grad_inputs, grad_outputs):
        if state.rule == "gradient" or grad_inputs[0] is None or grad_outputs[0] is None:
            return None
        return (apply_rule(state.rule, grad_inputs[0], grad_outputs[0], leak), *grad_inputs[1:])

    return hook


def attach_rules(tensors: Iterable[torch.Tensor], state: RuleState) -> int:
    """Hook every ReLU-family node of the graph behind ``tensors``; return how many.

    The hooks live on this graph only (made by one forward pass); the model is not
    touched.

    Examples
    --------
    >>> x = torch.tensor([-1.0, 2.0], requires_grad=True)
    >>> y = torch.relu(x) * 3
    >>> state = RuleState("guided")
    >>> attach_rules([y], state)
    1
    >>> torch.autograd.grad(y, x, torch.tensor([1.0, -1.0]))[0]
    tensor([0., 0.])
    """
    seen: dict[int, object] = {}  # keeps each node alive, so that ids stay unique
    stack = [t.grad_fn for t in tensors if t.grad_fn is not None]
    hooked = 0
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen[id(node)] = node
        leak = _leak(node)
        if leak is not None:
            node.register_hook(_rule_hook(state, leak))
            hooked += 1
        stack.extend(next_node for next_node, _ in node.next_functions)
    return hooked
