"""A static picture of a class graph (matplotlib): one row per layer, the class on top."""

from __future__ import annotations

import os

from ..errors import CnnscopeError
from .result import ClassGraph

__all__ = ["draw_graph"]


def draw_graph(graph: ClassGraph, path: str | os.PathLike, *, dpi: int = 120) -> None:
    """Draw ``graph`` to an image file (PNG, SVG or PDF by the suffix).

    Nodes are sized by ``|importance|`` within their layer (grey where it is negative: kept
    for what they feed above, they lower the class score overall) and labelled by channel;
    an edge's width and opacity grow with its weight relative to the strongest edge into
    the same layer.

    Examples
    --------
    >>> draw_graph(class_graph("tabby.graph"), "tabby.png")  # doctest: +SKIP
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {layer: i for i, layer in enumerate(graph.layers)}
    by_layer: dict[str, list] = {}
    for node in graph.nodes:
        by_layer.setdefault(node.layer, []).append(node)
    width = max(len(v) for v in by_layer.values())
    where = {}
    for layer, nodes in by_layer.items():
        for j, node in enumerate(nodes):
            where[node.id] = ((j + 0.5) * width / len(nodes), -rows[layer])
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * width + 2), 1.3 * len(graph.layers) + 1))
    strongest: dict[str, float] = {}
    for e in graph.edges:
        key = e.target.rsplit(":", 1)[0]
        strongest[key] = max(strongest.get(key, 0.0), abs(e.weight))
    for e in graph.edges:
        if e.source not in where or e.target not in where:
            continue
        rel = abs(e.weight) / (strongest[e.target.rsplit(":", 1)[0]] or 1.0)
        (x0, y0), (x1, y1) = where[e.source], where[e.target]
        ax.plot(
            [x0, x1], [y0, y1], color="tab:blue", lw=0.5 + 4 * rel, alpha=0.25 + 0.6 * rel, zorder=1
        )
    for nodes in by_layer.values():
        top = max(abs(n.importance) for n in nodes) or 1.0
        for n in nodes:
            x, y = where[n.id]
            size = 200 + 600 * abs(n.importance) / top
            color = "tab:orange" if n.importance >= 0 else "lightgray"
            ax.scatter([x], [y], s=size, color=color, edgecolor="black", zorder=2)
            ax.annotate(str(n.channel), (x, y), ha="center", va="center", fontsize=8, zorder=3)
    ax.set_yticks([-i for i in range(len(graph.layers))])
    ax.set_yticklabels(
        [f"class {graph.class_index}" if i == 0 else name for i, name in enumerate(graph.layers)]
    )
    ax.set_xticks([])
    ax.set_xlim(0, width)
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    t = graph.thresholds
    ax.set_title(
        f"{graph.label} ({graph.images} images)\ntop {t['units_per_layer']} units per layer, "
        f"{t['edges_per_node']} edges per unit, edges >= {t['min_edge_share']:.0%} of the "
        "strongest of their two layers\n(grey: units that lower the class score overall)",
        fontsize=9,
    )
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=dpi)
    except (OSError, ValueError) as exc:
        raise CnnscopeError(f"cannot write {path}: {exc}") from None
    finally:
        plt.close(fig)
