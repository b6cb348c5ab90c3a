"""The engine: record activations once, backpropagate any seed under any ReLU rule."""

from .receptive import Field
from .record import Engine, Forward, LayerInfo, preserved, weights_fingerprint
from .rules import RULES, RuleState, apply_rule, attach_rules
from .strength import (
    recorded_layers,
    strength_at,
    strength_layer,
    strengths,
    strongest_units,
    unit_position,
    unit_seed,
)
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
    "recorded_layers",
    "strength_at",
    "strength_layer",
    "strengths",
    "strongest_units",
    "unit_position",
    "unit_seed",
    "weights_fingerprint",
]
