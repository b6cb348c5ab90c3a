"""Deprecated: the old name of :mod:`cnnscope.index.bundle` (and :mod:`cnnscope.atomic`).

``cnnscope.index.store`` was the index's bundle format; ``store`` now means only the
explorer's image store (:mod:`cnnscope.server.store`). Every name it had still imports
from here, with a ``DeprecationWarning`` naming its new home.

Examples
--------
>>> import warnings
>>> from cnnscope.index import store
>>> with warnings.catch_warnings(record=True) as caught:
...     warnings.simplefilter("always")
...     digest = store.array_digest
>>> str(caught[0].message)
'cnnscope.index.store.array_digest is deprecated: use cnnscope.index.bundle.array_digest'
"""

from __future__ import annotations

from typing import Any

from .. import atomic
from ..errors import warn_renamed
from . import bundle

#: Each old name and the module that holds it now.
_MOVED = {
    **{name: bundle for name in (*bundle.__all__, "MAX_INFLATION")},
    **{name: atomic for name in atomic.__all__},
}


def __getattr__(name: str) -> Any:
    """The names this module had, from their new modules, with a DeprecationWarning."""
    if name in _MOVED:
        home = _MOVED[name]
        warn_renamed(f"{__name__}.{name}", f"{home.__name__}.{name}")
        return getattr(home, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
