"""The static HTML export of a class graph (cnnscope.graph.export) and its drawing
(static/js/graph/draw.js): made from ClassGraph dataclasses directly, no model pass."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from cnnscope.errors import CnnscopeError
from cnnscope.graph import ClassGraph, GraphEdge, GraphNode
from cnnscope.graph.export import bundle_modules, export_graph_html, graph_html, script_json

EVIL = 'conv</script><script>alert("x")</script><!--'
PIXEL = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8Bw"
    "HwAFgwJ/lrJ6WQAAAABJRU5ErkJggg=="
)


def make_graph(
    layers: int = 10,
    units: int = 8,
    edges: int = 3,
    seed: int = 0,
    layer: str = "features.{}.conv",
    label: str = "tabby, tabby cat",
) -> ClassGraph:
    """A pruned-looking graph: ``layers`` unit layers of ``units`` nodes under a class node,
    each node with ``edges`` edges into the layer below (random, reproducible)."""
    rng = random.Random(seed)
    names = ["logits"] + [layer.format(i) for i in range(layers)]
    nodes = [GraphNode("logits", 281, 7.5)]
    kept = []
    for name in names[1:]:
        chans = sorted(rng.sample(range(512), units))
        imps = sorted((rng.uniform(0.01, 1.0) for _ in chans), reverse=True)
        for c, imp in zip(chans, imps):
            ex = [{"image": f"cat_{rng.randrange(100)}.jpg", "influence": imp, "position": [1, 2]}]
            nodes.append(GraphNode(name, c, imp, rng.uniform(0, 3), rng.randrange(10), ex))
        kept.append([f"{name}:{c}" for c in chans])
    out = [GraphEdge(u, "logits:281", 0.5, 10) for u in kept[0]]
    for upper, lower in zip(kept, kept[1:]):
        for u in upper:
            for src in rng.sample(lower, min(edges, len(lower))):
                out.append(GraphEdge(src, u, rng.uniform(0.001, 0.3), rng.randrange(1, 10)))
    thresholds = {
        "units_per_layer": units,
        "edges_per_node": edges,
        "min_edge_share": 0.05,
        "edge_k": 3,
        "smallest_importance": {n: 0.01 for n in names[1:]},
        "smallest_edge": {n: 0.001 for n in names[2:]},
    }
    return ClassGraph(281, label, 10, names, nodes, out, thresholds, {"model": "toy"})


def crossings(g: ClassGraph, x: dict[str, float]) -> int:
    """Crossings of the edges between adjacent layers, given each node's x."""
    row = {layer: i for i, layer in enumerate(g.layers)}
    layer = {n.id: n.layer for n in g.nodes}
    pairs = [(e.target, e.source) for e in g.edges]
    count = 0
    for i, (a1, b1) in enumerate(pairs):
        for a2, b2 in pairs[i + 1 :]:
            if row[layer[a1]] == row[layer[a2]] and (x[a1] - x[a2]) * (x[b1] - x[b2]) < 0:
                count += 1
    return count


def page_json(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="cg-data">(.*?)</script>', page, re.S)
    assert m, "no graph JSON in the page"
    return json.loads(m.group(1))


def test_page_json_round_trips():
    g = make_graph(4, 5)
    assert page_json(graph_html(g)) == json.loads(json.dumps(g.to_dict()))


def test_no_external_resources():
    page = graph_html(make_graph(3, 3))
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, re.I)
    assert not re.search(r"""url\(\s*["']?\s*(?:https?:)?//|@import""", page, re.I)
    assert "<link" not in page
    # one inline module, one JSON block, no script loaded from anywhere
    assert page.count("<script") == 2 and "<script src" not in page
    assert page.count('<script type="module">') == 1 and " import " not in page


def test_layer_name_cannot_close_the_script():
    g = make_graph(2, 2)
    evil_nodes = [g.nodes[0]] + [
        GraphNode(EVIL if n.layer == g.layers[1] else n.layer, n.channel, n.importance)
        for n in g.nodes[1:]
    ]
    bad = ClassGraph(
        g.class_index, 'cat</script>&<b>"', 1, ["logits", EVIL, g.layers[2]], evil_nodes, [], {}
    )
    page = graph_html(bad)
    block = page.split('id="cg-data">', 1)[1].split("</script>", 1)[0]
    assert "<" not in block and ">" not in block
    assert page.count("</script>") == 2  # the JSON block's and the module's, nothing else
    data = page_json(page)
    assert data["layers"][1] == EVIL and data["class"]["label"] == 'cat</script>&<b>"'
    assert "<title>cnnscope class graph: cat&lt;/script&gt;&amp;&lt;b&gt;&quot;</title>" in page


def test_script_json_independent_of_json_dumps():
    text = script_json({"a": "<>&\u2028", "b": float("nan"), "c": [1.5, float("inf")]})
    assert text == '{"a": "\\u003c\\u003e\\u0026\\u2028", "b": null, "c": [1.5, null]}'


def test_pictures_only_as_data_uris():
    d = make_graph(2, 2).to_dict()
    d["nodes"][1]["visualization"] = PIXEL
    d["nodes"][2]["visualization"] = "http://example.com/x.png"
    d["nodes"][1]["examples"][0]["thumbnail"] = "/api/images/x/thumb"
    d["nodes"][2]["examples"][0]["thumbnail"] = PIXEL
    data = page_json(graph_html(d))
    assert data["nodes"][1]["visualization"] == PIXEL
    assert "visualization" not in data["nodes"][2]
    assert "thumbnail" not in data["nodes"][1]["examples"][0]
    assert data["nodes"][2]["examples"][0]["thumbnail"] == PIXEL
    assert d["nodes"][2]["visualization"] == "http://example.com/x.png"  # caller's dict kept


def test_export_writes_atomically(tmp_path):
    out = export_graph_html(make_graph(2, 2), tmp_path / "g.html")
    assert out == tmp_path / "g.html" and out.read_text().startswith("<!DOCTYPE html>")
    assert [p.name for p in tmp_path.iterdir()] == ["g.html"]  # no temporary left
    with pytest.raises(CnnscopeError, match="not found"):
        export_graph_html(make_graph(2, 2), tmp_path / "missing" / "g.html")
    with pytest.raises(CnnscopeError, match="not a class graph"):
        export_graph_html({"nodes": []}, tmp_path / "x.html")


def test_bundle_rewrites_imports(tmp_path):
    (tmp_path / "js").mkdir()
    (tmp_path / "js" / "a.js").write_text("export const x = 2;\nconst hidden = 1;\n")
    (tmp_path / "js" / "b.js").write_text(
        'import { x as y } from "./a.js";\nconst hidden = 5;\nexport function f() { return y; }\n'
    )
    js = bundle_modules("js/b.js", tmp_path)
    assert "const { x: y } = __cnnscope_0;" in js and "return { f };" in js
    (tmp_path / "js" / "c.js").write_text('import "./a.js";\n')
    with pytest.raises(CnnscopeError, match="inlined"):
        bundle_modules("js/c.js", tmp_path)


@pytest.fixture(scope="module")
def chromium():
    from tests.live_server import chromium_page
    from tests.test_browser import CHROMIUM, SLOW  # skips where Chromium is missing

    with chromium_page(CHROMIUM, SLOW) as page:
        yield page


@pytest.fixture
def browser_page(chromium):
    chromium.problems.clear()
    return chromium


@pytest.mark.browser
def test_export_in_chromium(tmp_path, browser_page):
    long = "backbone.stages.3.blocks.{}.conv_pwl.bn"
    g = make_graph(10, 8, layer=long, label="tabby, tabby cat, domestic cat, house cat")
    path = export_graph_html(g, tmp_path / "graph.html")
    page = browser_page
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(path.as_uri())
    page.wait_for_selector(".cg-svg .cg-node")
    assert page.locator(".cg-svg circle.cg-mark, .cg-svg rect.cg-mark").count() == len(g.nodes)
    assert page.locator(".cg-svg rect.cg-mark").count() == 1
    assert page.locator(".cg-svg path.cg-edge").count() == len(g.edges)
    # the drawing's crossings, counted here from the nodes' x: what the page reports, and
    # no more than the rows in their given order have
    xs = page.eval_on_selector_all(
        ".cg-node", "els => els.map(e => [e.dataset.id, e.getBoundingClientRect().x])"
    )
    given = {}
    for layer in g.layers:
        row = [n.id for n in g.nodes if n.layer == layer]
        given.update({u: j - (len(row) - 1) / 2 for j, u in enumerate(row)})
    drawn = crossings(g, dict(xs))
    assert page.evaluate("window.cnnscopeGraph.drawing.crossings") == drawn
    assert drawn <= crossings(g, given)
    # hover: exactly the node's edges light up, and the tooltip names it
    unit = g.nodes[12]
    mine = {(e.source, e.target) for e in g.edges if unit.id in (e.source, e.target)}
    page.hover(f'.cg-node[data-id="{unit.id}"]')
    lit = page.eval_on_selector_all(
        ".cg-edge.hl", "els => els.map(e => [e.dataset.source, e.dataset.target])"
    )
    assert {tuple(x) for x in lit} == mine and mine
    tip = page.locator(".cg-tip")
    assert tip.is_visible() and unit.id in tip.inner_text()
    assert f"{unit.importance:.3g}" in tip.inner_text()
    box = page.locator(f'.cg-node[data-id="{unit.id}"]').bounding_box()
    page.mouse.move(box["x"] - 300, box["y"] - 300)
    assert page.locator(".cg-edge.hl").count() == 0 and not tip.is_visible()
    # click: the side panel shows its numbers and example images
    page.click(f'.cg-node[data-id="{unit.id}"]')
    panel = page.locator("#cg-panel")
    assert unit.id in panel.inner_text() and unit.examples[0]["image"] in panel.inner_text()
    # every label inside the visible drawing (nothing clipped by the SVG or its box)
    boxes = page.evaluate(
        "(() => { const s = document.querySelector('.cg-scroll').getBoundingClientRect();"
        " return [...document.querySelectorAll('.cg-svg text')].map(t => {"
        " const b = t.getBoundingClientRect();"
        " return [b.left - s.left, b.top - s.top, s.right - b.right, s.bottom - b.bottom]}) })()"
    )
    assert len(boxes) >= len(g.nodes) + len(g.layers)
    for margins in boxes:
        assert min(margins) >= 0, margins
    shot = Path(tmp_path / "graph.png")
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    assert all(u.startswith(("file:", "data:")) for u in requests), requests
    assert not page.problems, page.problems


def chain_graph(layers: int = 6, units: int = 6) -> ClassGraph:
    """Disjoint chains, one per column, with each row given in a shuffled order: an
    ordering exists without a single crossing."""
    rng = random.Random(1)
    names = ["logits"] + [f"l{i}" for i in range(layers)]
    nodes = [GraphNode("logits", 0, 1.0)]
    for name in names[1:]:
        chans = list(range(units))
        rng.shuffle(chans)
        ex = [{"image": "a.jpg", "influence": 1.0, "position": [0, 0], "thumbnail": PIXEL}]
        nodes += [GraphNode(name, c, 1.0 + c, 0.5, 1, ex) for c in chans]
    edges = [GraphEdge(f"l0:{c}", "logits:0", 1.0, 1) for c in range(units)]
    edges += [
        GraphEdge(f"{lo}:{c}", f"{up}:{c}", 1.0, 1)
        for up, lo in zip(names[1:], names[2:])
        for c in range(units)
    ]
    return ClassGraph(0, "chains", 1, names, nodes, edges, {})


@pytest.mark.browser
def test_sweeps_untangle_chains_and_pictures_show(tmp_path, browser_page):
    d = chain_graph().to_dict()
    d["nodes"][1]["visualization"] = PIXEL
    path = export_graph_html(d, tmp_path / "chains.html")
    page = browser_page
    page.goto(path.as_uri())
    page.wait_for_selector(".cg-svg .cg-node")
    assert page.evaluate("window.cnnscopeGraph.drawing.crossings") == 0
    xs = dict(
        page.eval_on_selector_all(
            ".cg-node", "els => els.map(e => [e.dataset.id, e.getBoundingClientRect().x])"
        )
    )
    g = chain_graph()
    assert crossings(g, xs) == 0
    given = {}
    for layer in g.layers:
        row = [n.id for n in g.nodes if n.layer == layer]
        given.update({u: j for j, u in enumerate(row)})
    assert crossings(g, given) > 20  # the rows as given are tangled
    unit = d["nodes"][1]["id"]
    page.click(f'.cg-node[data-id="{unit}"]')
    assert page.locator("#cg-panel img.cg-vis").count() == 1
    assert page.locator("#cg-panel .cg-panel-examples img").count() == 1
    assert page.evaluate("document.querySelector('#cg-panel img.cg-vis').naturalWidth") == 1
    assert not page.problems, page.problems


@pytest.mark.browser
def test_layers_without_nodes_draw(tmp_path, browser_page):
    g = ClassGraph(5, "dog", 0, ["logits", "a", "b"], [GraphNode("logits", 5, 0.0)], [], {})
    page = browser_page
    page.goto(export_graph_html(g, tmp_path / "empty.html").as_uri())
    page.wait_for_selector(".cg-svg .cg-node")
    assert page.locator(".cg-mark").count() == 1 and page.locator(".cg-edge").count() == 0
    ys = page.eval_on_selector_all(".cg-row-label", "els => els.map(e => e.getBBox().y)")
    assert len(ys) == 3 and ys == sorted(ys) and len(set(ys)) == 3
    page.hover(".cg-node")
    assert "dog" in page.locator(".cg-tip").inner_text()
    assert not page.problems, page.problems
