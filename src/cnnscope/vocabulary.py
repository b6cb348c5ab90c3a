"""The words the library's options are made of, each with the title people read.

A list of choices (backward rules, gains, scorings, signs) is a tuple of :class:`Term`
kept next to the code that obeys it (:data:`cnnscope.engine.rules.RULE_TERMS`,
:data:`cnnscope.tree.options.SCORING_TERMS`...); the CLI's ``choices`` and the explorer's
``/api/vocabulary`` read them from there, so that no client restates a list.

A layer that runs several times in one forward is named per call, ``name#K``
(:data:`CALL_SUFFIX`). ``#`` starts a URL fragment, so URLs write the call as ``name~K``
(:data:`URL_CALL_SUFFIX`): :func:`url_form` and :func:`from_url_form` are the one place
that knows.

Examples
--------
>>> Term("guided", "Guided", "only positive gradients pass each ReLU").title
'Guided'
>>> names((Term("a", "A"), Term("b", "B")))
('a', 'b')
>>> url_form("blocks.0#2:5"), from_url_form("blocks.0~2:5")
('blocks.0~2:5', 'blocks.0#2:5')
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "CALL_SUFFIX",
    "URL_CALL_SUFFIX",
    "Term",
    "from_url_form",
    "help_line",
    "names",
    "url_form",
]

#: What separates a layer's name from its call number: ``shared#2`` is its second call.
CALL_SUFFIX = "#"
#: The call suffix as URLs write it (``#`` would start the fragment).
URL_CALL_SUFFIX = "~"


@dataclass(frozen=True)
class Term:
    """One choice of an option: its name, the title people read, one line of help.

    Attributes
    ----------
    name : str
        What the code and the URLs take (``guided_neg``).
    title : str
        What a picker shows (``Guided neg``).
    help : str
        One sentence on what the choice does (a tooltip, a CLI help line).

    Examples
    --------
    >>> Term("auto", "Auto", "rescale to unit L1 mass").name
    'auto'
    """

    name: str
    title: str
    help: str = ""


def names(terms: Iterable[Term]) -> tuple[str, ...]:
    """The names of ``terms``, in order.

    Examples
    --------
    >>> names([Term("pos", "Excites")])
    ('pos',)
    """
    return tuple(term.name for term in terms)


def help_line(what: str, terms: Iterable[Term], default: str) -> str:
    """One help line for an option of the choices ``terms``: ``what``, then each choice with
    its help, and the ``default`` (a CLI's ``--help``; ``%`` escaped for argparse).

    Examples
    --------
    >>> help_line("sign", [Term("pos", "Excites", "raises it"), Term("neg", "Inhibits")], "pos")
    'sign (default: pos). pos: raises it; neg'
    """
    listed = "; ".join(f"{t.name}: {t.help}" if t.help else t.name for t in terms)
    return f"{what} (default: {default}). {listed}".replace("%", "%%")


def url_form(text: str) -> str:
    """A layer, unit or path with each call suffix written for a URL (``#`` -> ``~``).

    Examples
    --------
    >>> url_form("features.3#2:7/logits:1")
    'features.3~2:7/logits:1'
    """
    return str(text).replace(CALL_SUFFIX, URL_CALL_SUFFIX)


def from_url_form(text: str) -> str:
    """Inverse of :func:`url_form` (``~`` -> ``#``); text without ``~`` is unchanged.

    Examples
    --------
    >>> from_url_form("features.3~2:7"), from_url_form("head_act:1")
    ('features.3#2:7', 'head_act:1')
    """
    return str(text).replace(URL_CALL_SUFFIX, CALL_SUFFIX)
