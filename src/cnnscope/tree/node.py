"""A node of a neuron tree, and its share of its parent's evidence."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..engine import Unit
from .paths import TreePath, format_path


@dataclass(frozen=True)
class Node:
    """One node of a tree.

    Attributes
    ----------
    unit : Unit
        The channel (and, for a root, the position).
    weight : float
        Its signed contribution ``mean(A_c * G_c)`` to the node above (children), or the
        node's contribution to this unit (parents).
    path : TreePath
        The path from the root to this node (for parents: ``(parent, unit)``, so that
        re-rooting at the parent shows ``unit`` as its child).
    sign : str
        ``"pos"`` for an excitatory edge (the child raises what its parent's seed
        measures), ``"neg"`` for an inhibitory one.
    share : float or None
        ``|weight|`` as a fraction of the parent's evidence of the same sign: the sum of
        ``|mean(A_c * G_c)|`` over every channel of the child's layer whose edge has
        this sign (children), or over the layer above (parents).
    """

    unit: Unit
    weight: float
    path: TreePath
    sign: str
    share: float | None = None

    def to_dict(self) -> dict:
        """A JSON-ready dict: unit and path as text.

        Examples
        --------
        >>> Node(Unit("blocks.15", 3), 0.5, (Unit("logits", 1), Unit("blocks.15", 3)), "pos").to_dict()
        {'unit': 'blocks.15:3', 'weight': 0.5, 'path': 'logits:1/blocks.15:3', 'sign': 'pos', 'share': None}
        """
        return {
            "unit": str(self.unit),
            "weight": self.weight,
            "path": format_path(self.path),
            "sign": self.sign,
            "share": self.share,
        }


def edge_shares(weights: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """``|w|`` over the sum of ``|w|`` of the same edge sign (``signs``: +1 or -1 each).

    Examples
    --------
    >>> w = torch.tensor([3.0, 1.0, -2.0])
    >>> edge_shares(w, torch.tensor([1.0, 1.0, -1.0])).tolist()
    [0.75, 0.25, 1.0]
    """
    mag = weights.abs()
    pos = float(mag[signs > 0].sum())
    neg = float(mag[signs < 0].sum())
    total = torch.where(signs > 0, torch.full_like(mag, pos), torch.full_like(mag, neg))
    return torch.where(total > 0, mag / total.clamp(min=1e-300), torch.zeros_like(mag))
