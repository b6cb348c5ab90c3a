"""The tree page in real headless Chromium, under every backward rule.

For each rule, with children of both signs shown, the tree of chelsea's top class is
expanded three levels down; every tile must show a picture (not one grey level) wherever
its unit is active on the image, and the page must log no console error. Switching the
rule keeps every open node open.
"""

from __future__ import annotations

import time
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

from cnnscope.engine.rules import RULES
from tests.live_server import chromium_page, is_flat, serving
from tests.test_browser import CHROMIUM, SLOW, expect

pytestmark = [pytest.mark.browser, pytest.mark.slow]

NODES = "svg.tree-svg g.node"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from cnnscope.server import create_app

    with serving(create_app(data_dir=tmp_path_factory.mktemp("browser-tree"))) as base:
        yield base


@pytest.fixture(scope="module")
def page(server):
    with chromium_page(CHROMIUM, SLOW) as pg:
        yield pg


def settle(page, at_least: int) -> int:
    deadline = time.monotonic() + SLOW / 1000
    while page.locator(NODES).count() < at_least or page.locator("g.node.loading").count():
        assert time.monotonic() < deadline, f"tree stuck at {page.locator(NODES).count()} nodes"
        page.wait_for_timeout(100)
    n = page.locator(NODES).count()
    expect(page.locator("svg.tree-svg .img-ph.done")).to_have_count(n)
    return n


def expand_first(page, depth: int) -> None:
    paths = [n.get_attribute("data-path") for n in page.locator(NODES).all()]
    path = next(p for p in paths if p.count("/") == depth)
    before = page.locator(NODES).count()
    page.locator(f'{NODES}[data-path="{path}"] g.knob').click()
    settle(page, before + 1)


def flat_tiles(page, server: str, active) -> list[str]:
    flat = []
    for node in page.locator(NODES).all():
        href = node.locator("image").get_attribute("href")
        png = httpx.get(server + href, timeout=SLOW / 1000).content
        unit = node.get_attribute("data-unit")
        if is_flat(png) and active(unit):
            flat.append(node.get_attribute("data-path"))
    return flat


@pytest.mark.parametrize("rule", RULES)
def test_three_levels_of_every_rule_have_pictures(page, server, active, rule):
    page.problems.clear()
    page.goto(f"{server}/images/chelsea/tree?model=efficientnet_lite0&rule={rule}&neg=1")
    page.wait_for_url("**path=logits**")
    assert page.locator("#opt-neg").is_checked(), "the options were lost on the way"
    settle(page, 2)
    expand_first(page, 1)
    expand_first(page, 2)
    depths = {n.get_attribute("data-path").count("/") for n in page.locator(NODES).all()}
    assert depths == {0, 1, 2, 3}, f"{rule}: the tree did not open three levels"
    assert page.locator(".toast").count() == 0, page.locator(".toast").all_text_contents()
    flat = flat_tiles(page, server, active)
    assert not flat, f"{rule}: flat pictures of active units: {flat}"
    expect(page.locator("#rule-note")).to_be_visible()
    if rule == "deconvnet":  # said where the rule is chosen
        expect(page.locator("#rule-note")).to_contain_text("same checkerboard for every image")
    if rule == "guided_neg":  # the root's children lower it: inhibitory edges
        expect(page.locator("g.node.neg").first).to_be_visible()
    assert page.problems == [], page.problems


def test_switching_the_rule_keeps_the_open_nodes(page, server):
    """The bug: open nodes that the new rule does not rank among the top k were closed
    (only the selected node's path was kept)."""
    page.problems.clear()
    page.goto(f"{server}/images/chelsea/tree?model=efficientnet_lite0&rule=guided")
    settle(page, 2)
    expand_first(page, 1)
    expand_first(page, 2)
    first = [n.get_attribute("data-path") for n in page.locator(NODES).all()]
    other = [p for p in first if p.count("/") == 1][-1]  # select a node off the open path
    page.locator(f'{NODES}[data-path="{other}"]').press("Space")  # select, don't expand
    page.wait_for_url(f"**path={other.replace(':', '%3A').replace('/', '%2F')}**")
    opened = parse_qs(urlparse(page.url).query)["open"][0].split(";")
    assert len(opened) == 3 and all(other not in p for p in opened)
    page.locator('#opt-rule button[data-value="guided_neg"]').click()
    page.wait_for_url("**rule=guided_neg**")
    deadline = time.monotonic() + SLOW / 1000
    while not any(p.count("/") == 3 for p in map(_path, page.locator(NODES).all())):
        assert time.monotonic() < deadline, "the third level did not come back"
        page.wait_for_timeout(100)
    settle(page, 3)
    for path in opened:  # each open node is drawn, pinned if the new rule ranks it lower
        expect(page.locator(f'{NODES}[data-path="{path}"]')).to_have_count(1)
    page.wait_for_timeout(300)
    after = parse_qs(urlparse(page.url).query)["open"][0].split(";")
    assert sorted(after) == sorted(opened)
    assert page.problems == [], page.problems


def _path(node) -> str:
    return node.get_attribute("data-path") or ""
