"""The engine: record activations once, backpropagate any seed under any ReLU rule."""

from .receptive import Field
from .record import Engine, Forward, LayerInfo, preserved, weights_fingerprint
from .rules import RULES, RuleState, apply_rule, attach_rules
from .units import INPUT, LOGITS, Unit

__all__ = [
    "Engine",
    "Field",
    "Forward",
    "INPUT",
    "LOGITS",
    "LayerInfo",
    "RULES",
    "apply_rule",
    "attach_rules",
    "RuleState",
    "Unit",
    "preserved",
    "weights_fingerprint",
]
