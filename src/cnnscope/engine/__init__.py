"""The engine: record activations once, backpropagate any seed under any ReLU rule."""

from .receptive import Field
from .record import Engine, Forward, LayerInfo, preserved
from .rules import RULES, RuleMode, RuleState
from .units import INPUT, LOGITS, Unit

__all__ = [
    "Engine",
    "Field",
    "Forward",
    "INPUT",
    "LOGITS",
    "LayerInfo",
    "RULES",
    "RuleMode",
    "RuleState",
    "Unit",
    "preserved",
]
