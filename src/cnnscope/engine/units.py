"""Names of layers and units: ``LAYER``, ``LAYER#CALL``, ``LAYER:CHANNEL[@Y,X]``."""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from ..errors import UnitSpecError, UnknownLayerError

INPUT = "input"
LOGITS = "logits"

_UNIT = re.compile(r"^(?P<layer>[^:@]+):(?P<channel>-?\d+)(?:@(?P<y>\d+),(?P<x>\d+))?$")


@dataclass(frozen=True)
class Unit:
    """One unit: a channel of a layer, optionally at one spatial position.

    Examples
    --------
    >>> Unit.parse("blocks.3.expand_act:12@4,5")
    Unit(layer='blocks.3.expand_act', channel=12, pos=(4, 5))
    >>> str(Unit("logits", 285))
    'logits:285'
    """

    layer: str
    channel: int
    pos: tuple[int, int] | None = None

    @classmethod
    def parse(cls, text: str) -> Unit:
        """Parse ``LAYER:CHANNEL`` or ``LAYER:CHANNEL@Y,X``."""
        match = _UNIT.match(text.strip())
        if not match:
            raise UnitSpecError(
                f"bad unit {text!r}: write LAYER:CHANNEL or LAYER:CHANNEL@Y,X (e.g. logits:285)"
            )
        pos = (int(match["y"]), int(match["x"])) if match["y"] is not None else None
        channel = int(match["channel"])
        if channel < 0:
            raise UnitSpecError(f"bad unit {text!r}: the channel must be >= 0")
        return cls(match["layer"], channel, pos)

    def __str__(self) -> str:
        base = f"{self.layer}:{self.channel}"
        return base if self.pos is None else f"{base}@{self.pos[0]},{self.pos[1]}"


def suggest(name: str, valid: Iterable[str], n: int = 3) -> str:
    """A ``did you mean`` suffix naming the closest valid names, or ``''``."""
    close = difflib.get_close_matches(name, list(valid), n=n, cutoff=0.5)
    return f"; did you mean {', '.join(close)}?" if close else ""


def unknown_layer(name: str, valid: Iterable[str]) -> UnknownLayerError:
    """The error for a layer name that the model does not have."""
    valid = list(valid)
    hint = suggest(name, valid) or "; run `cnnscope layers` to list them"
    return UnknownLayerError(f"unknown layer {name!r}{hint}")


def split_call(name: str) -> tuple[str, int]:
    """Split ``name#k`` into ``(name, k)``; a bare name is its first call."""
    base, sep, call = name.partition("#")
    if not sep:
        return name, 1
    if not call.isdigit() or int(call) < 1:
        raise UnknownLayerError(f"bad layer call {name!r}: write NAME#K with K >= 1")
    return base, int(call)


def find_layer(layer: str, names: Collection[str]) -> str | None:
    """The canonical spelling of ``layer`` among recorded ``names``, or None.

    A module called once is recorded as ``name``, one called K times as ``name#1`` ...
    ``name#K``: ``name#1`` finds ``name``, and a bare ``name`` finds ``name#1``.

    Examples
    --------
    >>> find_layer("act#1", ["input", "act", "logits"]), find_layer("act", ["act#1", "act#2"])
    ('act', 'act#1')
    >>> find_layer("act#3", ["act"]) is None
    True
    """
    if layer in names:
        return layer
    base, call = split_call(layer)
    for candidate in (base if call == 1 else None, f"{base}#{call}"):
        if candidate in names:
            return candidate
    return None


def resolve_layer(layer: str, names: Collection[str]) -> str:
    """:func:`find_layer`, or ``UnknownLayerError`` with suggestions.

    Examples
    --------
    >>> resolve_layer("conv#1", ["input", "conv", "logits"])
    'conv'
    >>> resolve_layer("conf", ["input", "conv", "logits"])
    Traceback (most recent call last):
    ...
    cnnscope.errors.UnknownLayerError: unknown layer 'conf'; did you mean conv?
    """
    found = find_layer(layer, names)
    if found is None:
        raise unknown_layer(layer, names)
    return found
