"""User-facing exceptions.

Every error that a user can cause (a bad model spec, an unreadable image, an
unknown layer or unit) is a :class:`CnnscopeError` whose message is one clear
line saying what is wrong and what to do. The CLI and the server print that
line instead of a traceback. :func:`warn_renamed` flags an old public spelling.
"""

from __future__ import annotations

import warnings


class CnnscopeError(Exception):
    """Base: a user-facing error with a one-line message."""


class ModelSpecError(CnnscopeError, ValueError):
    """A model spec, weights file or preprocessing override cannot be used."""


class ImageError(CnnscopeError, ValueError):
    """An image cannot be found, decoded or is too large."""


class UnknownLayerError(CnnscopeError, KeyError):
    """A layer name does not exist in the model."""

    def __str__(self) -> str:
        # KeyError.__str__ would repr() the message and add quotes.
        return str(self.args[0]) if self.args else ""


class UnitSpecError(CnnscopeError, ValueError):
    """A unit (channel / neuron) spec cannot be parsed or is out of range."""


def warn_renamed(old: str, new: str, *, stacklevel: int = 3) -> None:
    """Warn (``DeprecationWarning``) that the public spelling ``old`` is now ``new``.

    ``stacklevel`` 3 points at the caller of the function that calls this one.

    Examples
    --------
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     warn_renamed("legacy=", "quirks=", stacklevel=2)
    >>> str(caught[0].message), caught[0].category.__name__
    ('legacy= is deprecated: use quirks=', 'DeprecationWarning')
    """
    warnings.warn(f"{old} is deprecated: use {new}", DeprecationWarning, stacklevel=stacklevel)
