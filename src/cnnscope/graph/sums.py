"""Running sums that merge exactly: fixed-point integers in two ``int64`` limbs.

A float sum depends on the order of its terms in the last bits, so two processes that
each add half the images, then add their halves, would not give the bits of one process
adding them all. Here every term ``v`` (a float64) is rounded once to the fixed-point
grid ``2**-FRACTION_BITS``::

    q = round(v * 2**32)            an integer, |q| < 2**62
    q = hi * 2**32 + lo             hi = q >> 32 (floor), 0 <= lo < 2**32

and ``hi`` and ``lo`` are summed as ``int64``. Integer addition is associative, so the
totals are the same for any order and grouping of the terms: resumed, incremental and
distributed passes give bitwise the same sums as one uninterrupted run. The value is
``hi_sum + lo_sum * 2**-32``. Terms are exact to ``2**-32`` (about ``2.3e-10``) and
must stay below ``2**30`` in magnitude (larger ones are clipped, with a warning); the
limbs overflow only past ``2**31`` terms per entry.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import torch

__all__ = ["FRACTION_BITS", "LIMIT", "ExactSums"]

log = logging.getLogger(__name__)

#: Bits of the fixed-point fraction: terms are rounded to multiples of ``2**-FRACTION_BITS``.
FRACTION_BITS = 32
#: Largest magnitude of one term.
LIMIT = float(2**30)
_SCALE = float(2**FRACTION_BITS)
_LOW_MASK = (1 << FRACTION_BITS) - 1


def to_limbs(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed-point ``(hi, lo)`` int64 limbs of float values (clipped to :data:`LIMIT`).

    Examples
    --------
    >>> hi, lo = to_limbs(torch.tensor([1.5, -0.25], dtype=torch.float64))
    >>> hi.tolist(), lo.tolist()
    ([1, -1], [2147483648, 3221225472])
    """
    v = values.to(torch.float64)
    v = torch.nan_to_num(v, nan=0.0, posinf=LIMIT, neginf=-LIMIT)
    if bool((v.abs() > LIMIT).any()):
        log.warning("a term of magnitude over 2**30 was clipped in an exact sum")
        v = v.clamp(-LIMIT, LIMIT)
    q = torch.round(v * _SCALE).to(torch.int64)
    return q >> FRACTION_BITS, q & _LOW_MASK


def from_limbs(hi: torch.Tensor, lo: torch.Tensor) -> torch.Tensor:
    """The float64 value of summed limbs.

    Examples
    --------
    >>> hi, lo = to_limbs(torch.tensor([0.75, 0.75, -2.0], dtype=torch.float64))
    >>> float(from_limbs(hi.sum(), lo.sum()))
    -0.5
    """
    return hi.to(torch.float64) + lo.to(torch.float64) / _SCALE


class ExactSums:
    """Named running sums of fixed shapes, exact under any order of addition.

    Parameters
    ----------
    shapes : mapping of name to shape
        One sum per name, of that shape.
    device : torch.device or str
        Where the limbs live (the model's device: no transfer per batch).

    Examples
    --------
    >>> a, b = ExactSums({"x": (2,)}), ExactSums({"x": (2,)})
    >>> a.add("x", torch.tensor([[0.1, 1.0], [0.2, 2.0]], dtype=torch.float64))
    >>> b.add("x", torch.tensor([[0.3, 3.0]], dtype=torch.float64))
    >>> a.merge(b)
    >>> [round(v, 9) for v in a.value("x").tolist()]
    [0.6, 6.0]
    """

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], device: torch.device | str = "cpu"):
        self.shapes = {name: tuple(int(s) for s in shape) for name, shape in shapes.items()}
        self.device = torch.device(device)
        self.reset()

    def reset(self) -> None:
        """Every sum back to zero."""
        self.hi = {
            n: torch.zeros(s, dtype=torch.int64, device=self.device) for n, s in self.shapes.items()
        }
        self.lo = {
            n: torch.zeros(s, dtype=torch.int64, device=self.device) for n, s in self.shapes.items()
        }

    def add(self, name: str, terms: torch.Tensor) -> None:
        """Add ``terms`` (``N x shape``: N terms per entry, summed over the first axis)."""
        hi, lo = to_limbs(terms.to(self.device))
        self.hi[name] += hi.sum(0)
        self.lo[name] += lo.sum(0)

    def add_at(self, name: str, index: torch.Tensor, terms: torch.Tensor) -> None:
        """Add ``terms[i]`` to row ``index[i]`` of ``name`` (rows may repeat)."""
        hi, lo = to_limbs(terms.to(self.device))
        self.hi[name].index_add_(0, index.to(self.device), hi)
        self.lo[name].index_add_(0, index.to(self.device), lo)

    def merge(self, other: ExactSums) -> None:
        """Add another partial state of the same names and shapes."""
        for name in self.shapes:
            self.hi[name] += other.hi[name].to(self.device)
            self.lo[name] += other.lo[name].to(self.device)

    def value(self, name: str) -> torch.Tensor:
        """The float64 total of ``name``."""
        return from_limbs(self.hi[name], self.lo[name])

    def state_arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        """The raw limbs, for checkpoints, gathers and the saved graph."""
        out = {}
        for name in self.shapes:
            out[f"{prefix}{name}.hi"] = self.hi[name].cpu().numpy()
            out[f"{prefix}{name}.lo"] = self.lo[name].cpu().numpy()
        return out

    def load_state_arrays(self, arrays: Mapping[str, np.ndarray], prefix: str = "") -> None:
        """Inverse of :meth:`state_arrays`; raises ValueError on a shape mismatch."""
        for name, shape in self.shapes.items():
            hi, lo = arrays[f"{prefix}{name}.hi"], arrays[f"{prefix}{name}.lo"]
            if tuple(hi.shape) != shape or tuple(lo.shape) != shape:
                raise ValueError(f"sum {name} has shape {tuple(hi.shape)}, expected {shape}")
            self.hi[name] = torch.from_numpy(np.array(hi, np.int64)).to(self.device)
            self.lo[name] = torch.from_numpy(np.array(lo, np.int64)).to(self.device)
