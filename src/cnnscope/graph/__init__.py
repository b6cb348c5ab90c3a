"""Class-level attribution graphs across a dataset (Summit-like, for any PyTorch CNN).

One pass over a folder adds up, for a class, every chain unit's activation and influence
on the class score and the influence of each unit on the units above it
(:mod:`cnnscope.graph.aggregate`, formulas there and in ``docs/graph.md``); it streams,
resumes, updates incrementally and runs under ``torchrun`` like the index
(:func:`build_graph`). :func:`class_graph` prunes the sums into nodes and edges;
:func:`draw_graph` draws them as a PNG and :func:`export_graph_html` as a page that
opens in any browser.

Examples
--------
>>> from cnnscope.graph import GraphEdge
>>> GraphEdge("blocks.15:3", "head_act:7", 0.5).to_dict()["weight"]
0.5
>>> from cnnscope.models import load_model
>>> from cnnscope.graph import build_graph, class_graph
>>> run = build_graph(load_model(), "photos/", "tabby", out="tabby.graph")  # doctest: +SKIP
>>> [n.id for n in class_graph("tabby.graph", units=2).nodes]  # doctest: +SKIP
['logits:281', 'head_act:1033', 'head_act:250', 'blocks.15:87', ...]
"""

from .aggregate import GraphState, Terms, batch_terms
from .build import FORMAT, SELECTIONS, VERSION, GraphRun, build_graph, chain_layers, read_state
from .draw import draw_graph
from .export import export_graph_html
from .result import ClassGraph, GraphEdge, GraphNode, class_graph
from .sums import ExactSums

__all__ = [
    "FORMAT",
    "SELECTIONS",
    "VERSION",
    "ClassGraph",
    "ExactSums",
    "GraphEdge",
    "GraphNode",
    "GraphRun",
    "GraphState",
    "Terms",
    "batch_terms",
    "build_graph",
    "chain_layers",
    "class_graph",
    "draw_graph",
    "export_graph_html",
    "read_state",
]
