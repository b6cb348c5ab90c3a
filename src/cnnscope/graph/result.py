"""A class's attribution graph as data: top units per layer and their strongest edges.

:func:`class_graph` reads the sums of a graph folder (:func:`~cnnscope.graph.build_graph`)
and prunes them to a readable size. Every weight is a mean over the ``images`` the
class's sums include (a sum divided by that count):

- a node's ``importance`` is its mean influence on the class score,
  ``inf[L, c] / images`` with ``inf`` as in :mod:`cnnscope.graph.aggregate`; its
  ``activation`` the mean strength; ``top_count`` the number of images where it was
  among its layer's ``edge_k`` most influential units;
- an edge's ``weight`` is ``edge[U, u, c] / images``: how much lower unit ``c`` feeds
  upper unit ``u``'s part of the class score, on average (``count`` images contributed
  a term); an edge into the class node carries the upper node's importance.

Pruning, from the class down (as Summit's graph is read): the top layer keeps its
``units`` nodes of largest positive importance; every lower layer keeps the ``units``
nodes that send the most positive edge weight into the nodes kept above it
(``sum over kept u of max(edge[U, u, c], 0)``), the rest of its ``units`` by importance
where fewer feed them. Per upper node, its ``edges`` strongest positive edges to kept
nodes below are drawn, if at least ``min_share`` of the strongest edge of that pair of
layers. The thresholds and the cut-off values they gave are in
:attr:`ClassGraph.thresholds`.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..engine import LOGITS
from ..errors import CnnscopeError
from .build import image_table, read_state
from .sums import from_limbs

__all__ = ["ClassGraph", "GraphEdge", "GraphNode", "class_graph"]


@dataclass(frozen=True)
class GraphNode:
    """One unit of the graph.

    Attributes
    ----------
    layer, channel : str, int
        The unit (``id`` is ``LAYER:CHANNEL``; the class node is ``logits:CLASS``).
    importance : float
        Mean influence on the class score per included image (for the class node: the
        mean class logit).
    activation : float
        Mean strength per included image.
    top_count : int
        Images where it was among its layer's ``edge_k`` most influential units.
    examples : list of dict
        The images where it matters most: ``{"image", "influence", "position": [y, x]}``,
        by influence, best first.
    """

    layer: str
    channel: int
    importance: float
    activation: float = 0.0
    top_count: int = 0
    examples: list = field(default_factory=list)

    @property
    def id(self) -> str:
        """``LAYER:CHANNEL``, the unit's name everywhere in cnnscope."""
        return f"{self.layer}:{self.channel}"

    def to_dict(self) -> dict:
        """JSON-ready, with the ``id``.

        Examples
        --------
        >>> GraphNode("head_act", 7, 0.5).to_dict()["id"]
        'head_act:7'
        """
        return {"id": self.id, **asdict(self)}


@dataclass(frozen=True)
class GraphEdge:
    """An edge from a lower unit (``source``) into an upper one (``target``), by id."""

    source: str
    target: str
    weight: float
    count: int = 0

    def to_dict(self) -> dict:
        """JSON-ready.

        Examples
        --------
        >>> GraphEdge("blocks.15:3", "head_act:7", 0.25, 4).to_dict()
        {'source': 'blocks.15:3', 'target': 'head_act:7', 'weight': 0.25, 'count': 4}
        """
        return asdict(self)


@dataclass
class ClassGraph:
    """The pruned graph of one class (see the module docs for every weight).

    ``layers`` are top first; ``nodes`` start with the class node (layer ``logits``).
    """

    class_index: int
    label: str
    images: int
    layers: list
    nodes: list
    edges: list
    thresholds: dict
    meta: dict = field(default_factory=dict)

    def node(self, unit: str) -> GraphNode:
        """The node of a unit id (KeyError if it was pruned)."""
        for n in self.nodes:
            if n.id == unit:
                return n
        raise KeyError(unit)

    def to_dict(self) -> dict:
        """JSON-ready: plain lists, floats and strings."""
        return {
            "class": {"index": self.class_index, "label": self.label},
            "images": self.images,
            "layers": list(self.layers),
            "nodes": [n.to_dict() for n in self.nodes],
            "edges": [e.to_dict() for e in self.edges],
            "thresholds": dict(self.thresholds),
            "meta": dict(self.meta),
        }


def totals(arrays, name: str) -> np.ndarray:
    """The float64 value of a saved sum (``L0.influence``, ``E0.weight``...)."""
    hi = torch.from_numpy(np.array(arrays[f"S.{name}.hi"], np.int64))
    lo = torch.from_numpy(np.array(arrays[f"S.{name}.lo"], np.int64))
    return from_limbs(hi, lo).numpy()


def _examples(arrays, i: int, width: int, ids: list[str]) -> list[list[dict]]:
    values, images = arrays[f"X{i}.activation"], arrays[f"X{i}.image"]
    pos = arrays[f"X{i}.position"]
    out = []
    for c in range(values.shape[0]):
        row = []
        for v, im, p in zip(values[c], images[c], pos[c]):
            if im >= 0:
                row.append(
                    {
                        "image": ids[int(im)],
                        "influence": float(v),
                        "position": [int(p) // width, int(p) % width],
                    }
                )
        out.append(row)
    return out


def check_pruning(units: int, edges: int, min_share: float) -> None:
    """Raise ``CnnscopeError`` (one line) unless the pruning settings make sense.

    Examples
    --------
    >>> check_pruning(6, 3, 0.05)
    >>> check_pruning(0, 3, 0.05)
    Traceback (most recent call last):
    ...
    cnnscope.errors.CnnscopeError: --units must be at least 1, got 0
    """
    for option, value in (("--units", units), ("--edges", edges)):
        if int(value) < 1:
            raise CnnscopeError(f"{option} must be at least 1, got {value}")
    if not 0 <= float(min_share) < 1:
        raise CnnscopeError(f"--min-share must be in [0, 1), got {min_share}")


def class_graph(
    folder: str | os.PathLike,
    *,
    units: int = 6,
    edges: int = 3,
    min_share: float = 0.05,
) -> ClassGraph:
    """The pruned attribution graph saved in ``folder`` (see the module docs).

    Parameters
    ----------
    folder : path
        A graph folder written by :func:`~cnnscope.graph.build_graph`.
    units : int
        Nodes kept per layer (see the module docs for how they are chosen).
    edges : int
        Edges kept per node into the layer below.
    min_share : float
        Smallest edge kept, as a share of the strongest edge between kept nodes of the
        same two layers.

    Examples
    --------
    >>> g = class_graph("tabby.graph", units=4)  # doctest: +SKIP
    >>> g.nodes[1].id, g.edges[0].to_dict()  # doctest: +SKIP
    ('head_act:1033', {'source': 'head_act:1033', 'target': 'logits:281', ...})
    """
    check_pruning(units, edges, min_share)
    meta, arrays = read_state(folder)
    ids = image_table(arrays)
    images = int(round(float(totals(arrays, "images")[0])))
    n = float(max(1, images))
    t = int(meta["class"]["index"])
    names = [LOGITS] + [e["name"] for e in meta["layers"]]
    nodes = [GraphNode(LOGITS, t, float(totals(arrays, "logit")[0]) / n)]
    kept: list[list[int]] = [[t]]
    cutoffs: list[float | None] = []
    for i, entry in enumerate(meta["layers"]):
        feed = None
        if i:  # what each unit sends into the nodes kept above
            feed = np.clip(totals(arrays, f"E{i - 1}.weight")[kept[-1]] / n, 0, None).sum(0)
        layer_nodes = _layer_nodes(arrays, i, entry, n, int(units), ids, feed)
        nodes += layer_nodes
        kept.append([node.channel for node in layer_nodes])
        cutoffs.append(layer_nodes[-1].importance if layer_nodes else None)
    out_edges = [
        GraphEdge(node.id, f"{LOGITS}:{t}", node.importance, images)
        for node in nodes
        if node.layer == names[1]
    ]
    edge_cut: list[float | None] = []
    for i in range(len(meta["layers"]) - 1):
        pair = _pair_edges(
            arrays, i, names[i + 1 : i + 3], kept[i + 1 : i + 3], n, edges, min_share
        )
        out_edges += pair
        edge_cut.append(min((e.weight for e in pair), default=None))
    thresholds = {
        "units_per_layer": int(units),
        "edges_per_node": int(edges),
        "min_edge_share": float(min_share),
        "edge_k": int(meta["edge_k"]),
        "nodes_by": "importance (top layer); edge weight into the nodes kept above, then "
        "importance (lower layers)",
        "smallest_importance": dict(zip(names[1:], cutoffs)),
        "smallest_edge": dict(zip(names[2:], edge_cut)),
    }
    info = {k: meta[k] for k in ("model", "select", "rule", "source", "images") if k in meta}
    return ClassGraph(t, meta["class"]["label"], images, names, nodes, out_edges, thresholds, info)


def _layer_nodes(arrays, i: int, entry: dict, n: float, units: int, ids, feed) -> list[GraphNode]:
    """The ``units`` kept nodes of chain layer ``i``: by ``feed`` (positive only) if given,
    then by positive mean influence."""
    imp = totals(arrays, f"L{i}.influence") / n
    act = totals(arrays, f"L{i}.activation") / n
    top = totals(arrays, f"L{i}.top")
    order: list[int] = []
    for score in (feed, imp):
        for c in np.argsort(-score, kind="stable") if score is not None else ():
            if len(order) == units or score[c] <= 0:
                break
            if int(c) not in order:
                order.append(int(c))
    width = entry["shape"][2] if len(entry["shape"]) == 3 else 1
    ex = _examples(arrays, i, width, ids)
    return [
        GraphNode(entry["name"], c, float(imp[c]), float(act[c]), int(round(top[c])), ex[c])
        for c in order
    ]


def _pair_edges(arrays, i: int, names, kept, n: float, edges: int, min_share: float) -> list:
    """Per kept upper node of pair ``i``, its strongest positive edges to kept lower nodes,
    of at least ``min_share`` of the pair's strongest edge between kept nodes."""
    w = totals(arrays, f"E{i}.weight") / n
    count = totals(arrays, f"E{i}.count")
    if not kept[0] or not kept[1]:
        return []
    strongest = float(w[np.ix_(kept[0], kept[1])].max())
    out = []
    for u in kept[0]:
        row = w[u]
        best = sorted((-float(row[c]), c) for c in kept[1] if row[c] > 0)[: int(edges)]
        for neg, c in best:
            if -neg >= float(min_share) * strongest:
                out.append(
                    GraphEdge(f"{names[1]}:{c}", f"{names[0]}:{u}", -neg, int(round(count[u])))
                )
    return out
