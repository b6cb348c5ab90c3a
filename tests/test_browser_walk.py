"""A walk through every page of the explorer in real headless Chromium, looking at pictures.

Gallery, chelsea's image page (several attribution methods, the overview of every chain
layer), the unit pages of a few overview units per layer (reconstruction, activation,
feature visualization, dataset examples, the units above), and the layer views (mosaic
under each ordering and scale, the 3D volume) on the built-in model. On every page:

- no picture may be flat (one grey level, :func:`tests.live_server.is_flat`, decoded
  from the bytes the page's ``<img>`` URL serves) where its unit is active on the image;
- no console error (Chromium's SEVERE log) and no uncaught exception;
- no error toast and no picture that failed to load.

The overview's top classes must have distinct pictures, labelled with their method.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

from tests.live_server import chromium_page, is_flat, serving
from tests.test_browser import CHROMIUM, SLOW, assert_not_blank, expect

pytestmark = [pytest.mark.browser, pytest.mark.slow]

MODEL = "efficientnet_lite0"
METHODS = ["grad_cam", "guided_backprop", "gradient", "guided_grad_cam", "lrp"]
UNITS_PER_LAYER = (0, 3)  # which overview tiles of each layer get their unit page
LAYERS = ["stem_act", "blocks.5.expand_act", "head_act"]
ORDERS = ["none", "kmeans", "pca-slice", "pca"]
INDEXED = "blocks.5.expand_act"  # the one layer of the test's dataset index
SETTLED = (
    "() => !document.querySelector('.img-frame.loading, .loading-block, .mosaic-wrap.loading,"
    " .vis-slot .progress, .examples-slot .progress')"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from cnnscope.index import Source, build_index
    from cnnscope.models import load_model
    from cnnscope.server import create_app

    model = load_model()
    root = tmp_path_factory.mktemp("browser-walk")
    index = build_index(model, Source(None), [INDEXED], top_k=4, out=root / "ix", workers=0)
    app = create_app(model, data_dir=root / "data", index=str(index), synthesis_steps=8)
    with serving(app) as base:
        yield base


@pytest.fixture(scope="module")
def page(server):
    with chromium_page(CHROMIUM, SLOW) as pg:
        yield pg


def picture_unit(src: str) -> str | None:
    """The unit a picture URL shows (``None``: a picture that must never be flat)."""
    query = parse_qs(urlparse(src).query)
    if "/reconstruction.png" in src:
        return query["path"][0].split("/")[-1]
    if "/activation.png" in src:
        return query["unit"][0]
    return None


def check_page(page, server: str, active, what: str) -> int:
    """Wait for the page's pictures; fail on flat ones, errors and toasts. Returns the count."""
    page.wait_for_function(SETTLED, timeout=SLOW)
    expect(page.locator(".img-frame.failed")).to_have_count(0)
    flat, seen = [], 0
    for src in dict.fromkeys(page.eval_on_selector_all("img", "els => els.map(e => e.src)")):
        reply = httpx.get(src, timeout=SLOW / 1000)
        assert reply.status_code == 200, f"{what}: {src} answered {reply.status_code}"
        if not reply.headers["content-type"].startswith(("image/png", "image/jpeg")):
            continue  # the logo
        seen += 1
        unit = picture_unit(src)
        if is_flat(reply.content) and (unit is None or active(unit)):
            flat.append(src.removeprefix(server))
    assert not flat, f"{what}: flat pictures: {flat}"
    errors = page.locator(".toast-error").all_text_contents()
    assert not errors, f"{what}: error toasts: {errors}"
    assert page.problems == [], f"{what}: console errors: {page.problems}"
    return seen


def test_walk_every_page_for_flat_pictures_and_errors(page, server, active):
    page.problems.clear()
    page.goto(server + "/")
    expect(page.locator("a.image-card")).to_have_count(8)
    assert check_page(page, server, active, "gallery") >= 8

    # The image page: the attribution under a few methods, the overview of every layer
    page.goto(f"{server}/images/chelsea?model={MODEL}")
    chain = httpx.get(server + "/api/models").json()["models"][0]["chain"]
    expect(page.locator(".ov-layer")).to_have_count(len(chain))
    for method in METHODS:
        page.select_option("#attr-method", method)
        expect(page.locator(".attr-map img")).to_have_attribute(
            "src", re.compile(f"method={method}&")
        )
        check_page(page, server, active, f"image page, {method}")
    # the top classes' pictures: drawn by a method that tells them apart, and say which
    classes = page.locator('.ov-layer[data-layer="logits"]')
    expect(classes.locator(".ov-picture")).to_contain_text("gradient")
    srcs = classes.locator("a.unit-tile img").evaluate_all("els => els.map(e => e.src)")
    assert all("method=gradient" in s and "style=masked" in s for s in srcs), srcs
    pictures = {httpx.get(s, timeout=SLOW / 1000).content for s in srcs}
    assert len(pictures) == len(srcs), "two top classes have the same picture"
    units = [
        page.locator(".ov-layer").nth(i).locator("a.unit-tile").nth(j).get_attribute("data-unit")
        for i in range(len(chain))
        for j in UNITS_PER_LAYER
    ]

    # Unit pages of a few units per layer
    for unit in units:
        url_unit = unit.replace("#", "~")
        page.goto(f"{server}/units/{url_unit}?model={MODEL}&image=chelsea")
        expect(page.locator(".page-unit h1")).to_be_visible()
        if not unit.startswith("logits"):
            expect(page.locator(".vis-slot img")).to_be_visible()
        if unit.startswith(INDEXED + ":"):
            expect(page.locator("article.example-card")).to_have_count(4)
        check_page(page, server, active, f"unit page {unit}")

    # Layer views: each ordering, both scales, the 3D volume
    page.goto(f"{server}/images/chelsea/layers?model={MODEL}")
    for layer in LAYERS:
        page.select_option("#layer-select", layer)
        page.wait_for_url(f"**layer={layer}**")
        for order in ORDERS:
            page.locator(f'#opt-order button[data-value="{order}"]').click()
            expect(page.locator(".mosaic-wrap:not(.loading)")).to_have_count(1)
            check_page(page, server, active, f"mosaic of {layer}, {order}")
        page.locator('#opt-normalize button[data-value="channel"]').click()
        page.wait_for_url("**normalize=channel**")
        expect(page.locator(".mosaic-wrap:not(.loading)")).to_have_count(1)
        check_page(page, server, active, f"mosaic of {layer}, per channel")
        page.locator('#opt-normalize button[data-value="joint"]').click()
    page.locator('#opt-view button[data-value="volume"]').click()
    expect(page.locator("#volume-plot.ready")).to_have_count(1)
    page.wait_for_timeout(800)
    assert_not_blank(page.locator("#volume-plot"), "3D volume", 10)
    check_page(page, server, active, "3D volume")
