"""The class page in real headless Chromium, against ``cnnscope serve --graphs DIR``.

A graph built by the library over two gallery photos is served from ``--graphs``: the
page must draw one SVG node per node of the API's graph, a click on a unit must land on
its unit page, the per-image tree links must be there, and the tree page must link to
the class graph of its predicted class. A class without a graph is built from the page
(the background lane), which shows its progress and then the graph.
"""

from __future__ import annotations

import re
import shutil
from urllib.parse import unquote, urlparse

import httpx
import pytest

from tests.live_server import chromium_page, cnnscope_serve, sandbox_env
from tests.test_browser import CHROMIUM, SLOW, expect
from tests.test_server_graphs import two_photo_graph

pytestmark = [pytest.mark.browser, pytest.mark.slow]

NODES = "#graph-drawing svg.cg-svg g.cg-node"
SHOT = "/tmp/cnnscope-class-page.png"


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    root = tmp_path_factory.mktemp("graph-page")
    photos, _ = two_photo_graph(model, root)
    args = ("--graphs", str(root / "graphs"), "--data-dir", str(root / "data"))
    with cnnscope_serve(
        *args, "--gallery", str(photos), "--no-default-index", env=sandbox_env(root)
    ) as srv:
        yield srv.base
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def page(server):
    with chromium_page(CHROMIUM, SLOW) as pg:
        yield pg


def test_the_class_page_draws_the_graph_and_links_units(server, page):
    graph = httpx.get(f"{server}/api/graphs/tabby", timeout=60).json()
    page.goto(f"{server}/classes/tabby")
    expect(page.locator(NODES)).to_have_count(len(graph["nodes"]))
    drawn = {g.get_attribute("data-id") for g in page.locator(NODES).all()}
    assert drawn == {n["id"] for n in graph["nodes"]}
    expect(page.locator("#graph-covers")).to_contain_text("from 2 images of")
    expect(page.locator(".cg-thresholds")).to_contain_text(
        "Pruned from the class down: 6 units per layer"
    )
    # every example with a tree in the API is a link on the page
    trees = [ex["tree"] for n in graph["nodes"] for ex in n["examples"][:5] if ex.get("tree")]
    assert trees
    expect(page.locator("a.graph-example")).to_have_count(len(trees))
    assert page.locator("a.graph-example").first.get_attribute("href") == trees[0]
    href = page.locator("#graph-export").get_attribute("href")
    r = httpx.get(server + href, timeout=60)
    assert r.status_code == 200 and "attachment" in r.headers["content-disposition"]
    page.screenshot(path=SHOT, full_page=True)
    assert page.problems == [], page.problems
    unit = graph["nodes"][1]["id"]
    page.locator(f'{NODES}[data-id="{unit}"]').click()
    page.wait_for_url(lambda url: unquote(urlparse(url).path) == "/units/" + unit.replace("#", "~"))
    expect(page.locator("h1")).to_contain_text(unit)


def test_a_pruning_change_redraws(server, page):
    page.goto(f"{server}/classes/281?units=2&edges=1")
    graph = httpx.get(f"{server}/api/graphs/281?units=2&edges=1", timeout=60).json()
    expect(page.locator(NODES)).to_have_count(len(graph["nodes"]))
    assert len(graph["nodes"]) <= 1 + 2 * (len(graph["layers"]) - 1)


def test_the_tree_page_links_to_the_class_graph_which_builds(server, page):
    top = httpx.get(f"{server}/api/images/chelsea/predictions?k=1", timeout=60).json()
    top = top["predictions"][0]
    page.goto(f"{server}/images/chelsea/tree")
    link = page.locator("#class-graph-link")
    expect(link).to_be_visible()
    expect(link).to_have_text(f"class graph of {top['label'].split(',')[0]}")
    assert link.get_attribute("href") == f"/classes/{top['index']}"
    page.screenshot(path="/tmp/cnnscope-tree-link.png")
    page.problems.clear()
    link.click()
    page.wait_for_url(re.compile(f"/classes/{top['index']}$"))
    page.locator("#graph-start").click()  # no graph of that class yet: build one
    expect(page.locator("#graph-build .progress")).to_be_visible()
    page.screenshot(path="/tmp/cnnscope-class-build.png")
    expect(page.locator(NODES).first).to_be_visible(timeout=SLOW)
    graph = httpx.get(f"{server}/api/graphs/{top['index']}", timeout=60).json()
    expect(page.locator(NODES)).to_have_count(len(graph["nodes"]))
    expect(page.locator("#graph-covers")).to_contain_text(
        "from 10 images of the explorer's gallery"
    )
    # the one 404 of the graph before it was built is the only console error
    assert all("404" in p for p in page.problems), page.problems
