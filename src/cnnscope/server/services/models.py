"""What the served model offers: its attribution methods and the explorer's vocabulary.

Every list and every default comes from the library that obeys it: backward rules from
:mod:`cnnscope.engine.rules`, gains, scorings and signs from :mod:`cnnscope.tree.options`,
methods (with their titles, cost and the picker's order) from the attribution registry,
orderings and scales from :mod:`cnnscope.views`, image sources from the image store, the
call suffix from :mod:`cnnscope.vocabulary`. The server restates none of them.
"""

from __future__ import annotations

from collections.abc import Iterable

from ...attribution import METHODS, Method
from ...attribution.registry import DEFAULT_METHOD, picker_names
from ...engine.rules import DEFAULT_RULE, RULE_TERMS
from ...tree.options import (
    DEFAULT_GAIN,
    DEFAULT_K,
    DEFAULT_SCORING,
    DEFAULT_SIGN,
    EXPLORER_SIGNS,
    GAIN_TERMS,
    SCORING_TERMS,
    SIGN_TERMS,
)
from ...views.mosaic import DEFAULT_NORMALIZE, NORMALIZE_TERMS
from ...views.ordering import DEFAULT_CLUSTERS, NO_ORDER, ORDER_TERMS
from ...vocabulary import CALL_SUFFIX, URL_CALL_SUFFIX, Term
from ..store import SOURCE_TERMS

__all__ = ["DEFAULTS", "LAYER_ORDER_TERMS", "picker_methods", "vocabulary"]

#: The layer views' orderings: none (the channel order), then the library's.
LAYER_ORDER_TERMS: tuple[Term, ...] = (NO_ORDER, *ORDER_TERMS)

#: What each option of the routes is where a request names none, as the library says.
DEFAULTS: dict[str, str | int] = {
    "rule": DEFAULT_RULE,
    "gain": DEFAULT_GAIN,
    "scoring": DEFAULT_SCORING,
    "sign": DEFAULT_SIGN,
    "k": DEFAULT_K,
    "method": DEFAULT_METHOD,
    "order": NO_ORDER.name,
    "normalize": DEFAULT_NORMALIZE,
    "clusters": DEFAULT_CLUSTERS,
}


def picker_methods() -> list[Method]:
    """The registry's methods in the picker's order.

    Examples
    --------
    >>> [m.name for m in picker_methods()][:2]
    ['grad_cam', 'guided_backprop']
    """
    return [METHODS[n] for n in picker_names()]


def _terms(listed: Iterable[Term]) -> list[dict]:
    return [{"name": t.name, "title": t.title, "help": t.help} for t in listed]


def vocabulary(pages: dict[str, str]) -> dict:
    """The lists of ``/api/vocabulary``, as JSON-ready dicts, with the given ``pages``.

    Examples
    --------
    >>> words = vocabulary({"gallery": "/"})
    >>> [t["name"] for t in words["signs"]], words["call_suffix"]
    (['pos', 'neg'], {'name': '#', 'url': '~'})
    >>> words["defaults"]["rule"], words["defaults"]["method"]
    ('guided', 'grad_cam')
    """
    return {
        "rules": _terms(RULE_TERMS),
        "gains": _terms(GAIN_TERMS),
        "scorings": _terms(SCORING_TERMS),
        "signs": _terms(t for t in SIGN_TERMS if t.name in EXPLORER_SIGNS),
        "methods": [
            {"name": m.name, "title": m.title, "help": m.summary, "slow": m.slow}
            for m in picker_methods()
        ],
        "orders": _terms(LAYER_ORDER_TERMS),
        "normalizations": _terms(NORMALIZE_TERMS),
        "sources": _terms(SOURCE_TERMS),
        "defaults": dict(DEFAULTS),
        "call_suffix": {"name": CALL_SUFFIX, "url": URL_CALL_SUFFIX},
        "pages": dict(pages),
    }
