"""User-facing exceptions.

Every error that a user can cause (a bad model spec, an unreadable image, an
unknown layer or unit) is a :class:`CnnscopeError` whose message is one clear
line saying what is wrong and what to do. The CLI and the server print that
line instead of a traceback.
"""

from __future__ import annotations


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
