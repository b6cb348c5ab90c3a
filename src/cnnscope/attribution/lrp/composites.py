"""LRP composites: which rule each layer gets."""

from __future__ import annotations

import copy
import fnmatch
from dataclasses import dataclass, field

from torch import nn

from ...errors import CnnscopeError
from .rules import _BNS, LrpRule, parse_lrp_rule

# ---------------------------------------------------------------------------------------
# Composites


@dataclass
class Composite:
    """Which rule each layer gets: by name pattern, first layer, depth band and type.

    Attributes
    ----------
    dense, conv : LrpRule
        Rules of linear and convolutional layers.
    first : LrpRule or None
        Rule of the first linear layer in execution order (reads the input).
    depth : list of (float, LrpRule), optional
        ``(upper, rule)`` bands over the relative depth ``d`` in (0, 1] of each linear
        layer, counted from the input: the first band with ``d <= upper`` wins. When
        given they override ``dense`` and ``conv``.
    names : dict of str to LrpRule
        ``fnmatch`` patterns of module names that override everything.
    batchnorm : LrpRule
        Rule of BatchNorms that could not be folded.

    Examples
    --------
    >>> c = COMPOSITES["epsilon_gamma_box"](epsilon=1e-6, gamma=0.25, alpha=2, beta=1)
    >>> str(c.conv), str(c.first)
    ('gamma:0.25', 'box')
    """

    dense: LrpRule
    conv: LrpRule
    first: LrpRule | None = None
    depth: list[tuple[float, LrpRule]] | None = None
    names: dict[str, LrpRule] = field(default_factory=dict)
    batchnorm: LrpRule = field(default_factory=lambda: LrpRule("epsilon", epsilon=1e-6))

    def rule_for(self, name: str, module: nn.Module, index: int, total: int) -> LrpRule:
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
        r = lambda s: parse_lrp_rule(s, epsilon, gamma, alpha, beta)  # noqa: E731
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
            **{str(k): parse_lrp_rule(v, epsilon, gamma, alpha, beta) for k, v in rules.items()},
        }
    return comp
