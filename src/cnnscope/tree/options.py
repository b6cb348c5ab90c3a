"""The tree's options: gains, scorings and signs, each with its title, help and default.

:class:`~cnnscope.tree.Explorer` checks its arguments against :data:`GAINS`,
:data:`SCORINGS` and :data:`SIGNS` and starts from :data:`DEFAULT_GAIN`,
:data:`DEFAULT_SCORING` and :data:`DEFAULT_SIGN` (the rule's default is
:data:`cnnscope.engine.rules.DEFAULT_RULE`); ``cnnscope tree`` offers them as choices
and the explorer serves the terms and the defaults at ``/api/vocabulary``.

Examples
--------
>>> SCORINGS, DEFAULT_SCORING
(('path', 'local', 'seed'), 'path')
>>> [t.title for t in SIGN_TERMS if t.name in EXPLORER_SIGNS]
['Excites', 'Inhibits']
"""

from __future__ import annotations

from ..vocabulary import Term, names

__all__ = [
    "DEFAULT_GAIN",
    "DEFAULT_K",
    "DEFAULT_SCORING",
    "DEFAULT_SIGN",
    "EXPLORER_SIGNS",
    "GAINS",
    "GAIN_TERMS",
    "SCORINGS",
    "SCORING_TERMS",
    "SIGNS",
    "SIGN_TERMS",
]

#: How a kept channel's gradient is rescaled before it goes on down.
GAIN_TERMS: tuple[Term, ...] = (
    Term("auto", "Auto", "each kept channel rescaled to the L1 mass of its layer's gradient"),
    Term("fixed", "Fixed", "each kept channel scaled by one fixed factor"),
    Term("none", "None", "kept channels as they are (deep nodes get faint)"),
)
#: How children are ranked.
SCORING_TERMS: tuple[Term, ...] = (
    Term("path", "Path", "mean(A*G) with G conditioned on the whole path"),
    Term("local", "Local", "mean(A*G) with G seeded at the node alone"),
    Term("seed", "Treevis", "cnn_treevis's formula: |mean(A*G)|, G after the child's rule"),
)
#: Which children: with the rule's polarity, against it, or either.
SIGN_TERMS: tuple[Term, ...] = (
    Term("pos", "Excites", "children with the rule's polarity (what it passes)"),
    Term("neg", "Inhibits", "children that work against the rule's evidence"),
    Term("abs", "Either", "either sign, ranked by |mean(A*G)| (cnn_treevis's)"),
)

GAINS: tuple[str, ...] = names(GAIN_TERMS)
SCORINGS: tuple[str, ...] = names(SCORING_TERMS)
SIGNS: tuple[str, ...] = names(SIGN_TERMS)

#: The signs the explorer's pages ask for: its tree draws one sign per edge, so ``abs``
#: (either sign in one list) is left to the library and the CLI.
EXPLORER_SIGNS: tuple[str, ...] = ("pos", "neg")

#: What a tree starts with where its caller names nothing (each is a name of its list).
DEFAULT_GAIN = "auto"
DEFAULT_SCORING = "path"
DEFAULT_SIGN = "pos"
#: How many children a node shows.
DEFAULT_K = 5
