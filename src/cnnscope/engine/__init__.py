"""The engine: record activations once, backpropagate any seed under any ReLU rule."""

from .forward import Forward
from .receptive import Field
from .record import Engine, LayerInfo, model_fingerprint, weights_fingerprint
from .recorder import preserved
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
from .units import INPUT, LOGITS, Unit, find_layer, resolve_layer

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
    "find_layer",
    "model_fingerprint",
    "RuleState",
    "Unit",
    "preserved",
    "recorded_layers",
    "resolve_layer",
    "strength_at",
    "strength_layer",
    "strengths",
    "strongest_units",
    "unit_position",
    "unit_seed",
    "weights_fingerprint",
]
