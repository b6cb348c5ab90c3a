"""The explorer in real headless Chromium: gallery -> image -> overview -> tree.

Drives Debian's /usr/bin/chromium with Playwright against a real uvicorn server on a free
loopback port. The page's Content-Security-Policy stays on (no bypass), so the test
also shows that the front end needs nothing but its own files. Pictures are checked by
cropping element screenshots and measuring their pixel spread: a blank (uniform) image
fails. Set CNNSCOPE_SCREENSHOTS=DIR to keep a screenshot of each page.
"""

from __future__ import annotations

import io
import os
import re
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from cnnscope.engine.rules import RULES
from tests.live_server import serving

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SLOW = 180_000  # ms; the machine running the tests may be busy

pytestmark = [pytest.mark.browser, pytest.mark.slow]

if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} is not installed (apt install chromium)", allow_module_level=True)
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the playwright package is not installed"
)
expect = sync_api.expect
expect.set_options(timeout=SLOW)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from cnnscope.server import create_app

    with serving(create_app(data_dir=tmp_path_factory.mktemp("browser-data"))) as base:
        yield base


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(SLOW)
    pg.errors = []
    pg.on("pageerror", lambda exc: pg.errors.append(str(exc)))
    yield pg
    context.close()


def shot_dir() -> Path | None:
    where = os.environ.get("CNNSCOPE_SCREENSHOTS")
    if not where:
        return None
    path = Path(where)
    path.mkdir(parents=True, exist_ok=True)
    return path


def save(page, name: str, full_page: bool = False) -> None:
    where = shot_dir()
    if where is not None:
        page.evaluate("() => window.scrollTo(0, 0)")
        expect(page.locator(".img-frame.loading")).to_have_count(0)
        page.wait_for_timeout(400)
        page.screenshot(path=str(where / f"{name}.png"), full_page=full_page)


def pixels(locator, size: int | None = None) -> np.ndarray:
    img = Image.open(io.BytesIO(locator.screenshot())).convert("RGB")
    if size:
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img).astype(np.float32)


def assert_not_blank(locator, what: str, min_std: float = 2.0) -> np.ndarray:
    img = pixels(locator)
    assert img.size and img.std() > min_std, f"{what} looks blank (pixel std {img.std():.2f})"
    return img


def node_count(page) -> int:
    return page.locator("svg.tree-svg g.node").count()


def node_at(page, depth: int):
    """The first node (in layout order) ``depth`` levels below the root."""
    paths = [n.get_attribute("data-path") for n in page.locator("svg.tree-svg g.node").all()]
    path = next(p for p in paths if p.count("/") == depth)
    return page.locator(f'svg.tree-svg g.node[data-path="{path}"]')


def wait_nodes_loaded(page, at_least: int) -> int:
    expect(page.locator("svg.tree-svg g.node")).not_to_have_count(0)
    deadline = time.monotonic() + SLOW / 1000
    while node_count(page) < at_least or page.locator("g.node.loading").count():
        assert time.monotonic() < deadline, f"tree stuck at {node_count(page)} nodes"
        page.wait_for_timeout(100)
    n = node_count(page)
    expect(page.locator("svg.tree-svg .img-ph.done")).to_have_count(n)
    return n


def test_walk_gallery_image_overview_tree(page, server):
    # Gallery
    page.goto(server + "/")
    cards = page.locator("a.image-card")
    expect(cards).to_have_count(8)
    expect(page.locator("a.image-card img").first).to_have_js_property("complete", True)
    assert_not_blank(
        page.locator('a.image-card[data-image="chelsea"] img'), "chelsea thumbnail", 10
    )
    save(page, "gallery")

    # Image page: model view, top-5, attribution, overview
    page.locator('a.image-card[data-image="chelsea"]').click()
    page.wait_for_url("**/images/chelsea?model=efficientnet_lite0")
    expect(page.locator("a.pred")).to_have_count(5)
    expect(page.locator("a.pred").first).to_contain_text("Egyptian cat")
    chain = httpx.get(server + "/api/models").json()["models"][0]["chain"]
    expect(page.locator(".ov-layer")).to_have_count(len(chain))
    expect(page.locator(".img-frame.loading")).to_have_count(0)
    expect(page.locator(".img-frame.failed")).to_have_count(0)
    assert_not_blank(page.locator(".model-view img"), "model view", 10)
    expect(page.locator(".attr-map img")).to_have_attribute("src", re.compile("method=grad_cam"))
    cam = assert_not_blank(page.locator(".attr-map img"), "Grad-CAM map", 5)
    page.select_option("#attr-method", "guided_backprop")
    expect(page.locator(".attr-map img")).to_have_attribute(
        "src", re.compile("method=guided_backprop")
    )
    expect(page.locator(".img-frame.loading")).to_have_count(0)
    guided = assert_not_blank(page.locator(".attr-map img"), "guided backprop map", 5)
    assert np.abs(cam - guided).mean() > 5, "the method picker did not change the map"
    tile = page.locator(".ov-layer").nth(2).locator("a.unit-tile").first
    assert_not_blank(tile.locator("img"), "overview reconstruction of the third chain layer", 2)
    assert_not_blank(
        page.locator('.ov-layer[data-layer="logits"] a.unit-tile img').first,
        "logit reconstruction",
        2,
    )
    save(page, "image", full_page=True)

    # Tree page: root opened by default
    unit = tile.get_attribute("data-unit")
    tile.click()
    page.wait_for_url("**/images/chelsea/tree?**")
    n1 = wait_nodes_loaded(page, 6)
    assert n1 == 6
    root_img = assert_not_blank(page.locator("g.node").first.locator("image"), f"root {unit}", 2)
    for i in range(1, n1):
        assert_not_blank(page.locator("g.node").nth(i).locator("image"), f"child {i}", 1.0)

    # Expand two levels below the root's children
    node_at(page, 1).locator("g.knob").click()
    n2 = wait_nodes_loaded(page, 11)
    assert n2 == 11
    node_at(page, 2).locator("g.knob").click()
    n3 = wait_nodes_loaded(page, 16)
    assert n3 == 16
    deepest = node_at(page, 3)
    assert_not_blank(deepest.locator("image"), "a node three levels down", 1.0)
    expect(page.locator("g.faith.faith-good, g.faith.faith-weak")).to_have_count(3)
    assert "→" in page.locator("g.faith text").first.text_content()  # value -> zeroed
    assert "open=" in page.url and "path=" in page.url
    page.locator('.zoom-btn[aria-label="fit the tree"]').click()
    save(page, "tree")

    # The URL restores the view
    shared = page.url
    page.goto(shared)
    assert wait_nodes_loaded(page, 16) == 16
    expect(page.locator("g.node.selected")).to_have_count(1)

    # Switch the rule: the tree is recomputed under the new rule
    page.locator('#opt-rule button[data-value="gradient"]').click()
    page.wait_for_url("**rule=gradient**")
    expect(page.locator("#rule-note")).to_have_text(re.compile(r"^Gradient: the true gradient"))
    wait_nodes_loaded(page, 6)
    href = page.locator("g.node").first.locator("image").get_attribute("href")
    assert "rule=gradient" in href
    root_gradient = assert_not_blank(
        page.locator("g.node").first.locator("image"), "root under gradient", 2
    )
    before = np.asarray(Image.fromarray(root_img.astype(np.uint8)).resize((64, 64)), np.float32)
    after = pixels(page.locator("g.node").first.locator("image"), 64)
    assert np.abs(after - before).mean() > 1, "the rule switch did not change the picture"
    assert root_gradient.std() > 2
    for i in range(node_count(page)):
        assert "rule=gradient" in page.locator("g.node").nth(i).locator("image").get_attribute(
            "href"
        )

    # Inhibitory children are drawn distinctly
    page.locator('label.switch[for="opt-neg"]').click()
    page.wait_for_url("**neg=1**")
    wait_nodes_loaded(page, 6)
    expect(page.locator("g.node.neg").first).to_be_visible()
    expect(page.locator("path.edge-neg").first).to_be_attached()
    labels = page.locator("svg.tree-svg g.node").all_text_contents()
    assert not [t for t in labels if "null" in t], labels

    # Drill up from the selected node: the answer (slow) outlives the panel's re-renders
    page.locator("#panel-drill").click()
    page.locator(".path-chip.current").click()  # re-selecting the node re-renders the panel
    expect(page.locator(".parents-list a.parent-item").first).to_be_visible()
    page.locator(".panel-actions a", has_text="Unit page").click()
    page.wait_for_url("**/units/**")
    expect(page.locator(".page-unit h1")).to_be_visible()
    expect(page.locator(".img-frame.loading")).to_have_count(0)
    save(page, "unit", full_page=True)
    assert page.errors == [], page.errors


def test_upload_by_picker_and_drop_and_errors_in_page(page, server, tmp_path):
    page.goto(server + "/")
    expect(page.locator("a.image-card")).to_have_count(8)
    good = tmp_path / "blue square.png"
    Image.new("RGB", (80, 80), (20, 60, 220)).save(good)
    page.set_input_files("#file-input", str(good))
    page.wait_for_url(re.compile(r"/images/u-[0-9a-f]{16}\?model="))  # the upload opens
    expect(page.locator(".page-image h1")).to_have_text("blue square.png")
    page.goto(server + "/")
    expect(page.locator("a.image-card")).to_have_count(9)

    bad = tmp_path / "notes.png"
    bad.write_text("not an image at all")
    page.set_input_files("#file-input", str(bad))
    expect(page.locator(".upload-status .status-error")).to_contain_text("not an image")

    # drag and drop a file onto the drop zone
    data = io.BytesIO()
    Image.new("RGB", (50, 70), (240, 200, 10)).save(data, "PNG")
    handle = page.evaluate_handle(
        """(bytes) => {
            const dt = new DataTransfer();
            dt.items.add(new File([new Uint8Array(bytes)], "dropped.png", { type: "image/png" }));
            return dt;
        }""",
        list(data.getvalue()),
    )
    page.dispatch_event("#dropzone", "drop", {"dataTransfer": handle})
    page.wait_for_url(re.compile(r"/images/u-[0-9a-f]{16}\?model="))
    expect(page.locator(".page-image h1")).to_have_text("dropped.png")
    page.goto(server + "/")
    expect(page.locator("a.image-card")).to_have_count(10)

    # readable messages for bad links
    page.goto(server + "/images/nope")
    expect(page.locator(".error-card")).to_contain_text("unknown image 'nope'")
    page.goto(server + "/images/chelsea/tree?path=nolayer:3")
    expect(page.locator(".error-card")).to_contain_text("unknown layer")
    page.goto(server + "/images/chelsea?model=resnet50")
    expect(page.locator(".error-card")).to_contain_text("another model")
    assert page.errors == [], page.errors


def test_layer_views_mosaic_tile_to_tree_and_volume(page, server):
    # From the image page to the layer views, then stem_act in k-means order
    page.goto(server + "/images/chelsea?model=efficientnet_lite0")
    page.locator("#open-layers").click()
    page.wait_for_url("**/images/chelsea/layers?**")
    expect(page.locator(".mosaic-wrap:not(.loading)")).to_have_count(1)
    page.select_option("#layer-select", "stem_act")
    page.wait_for_url("**layer=stem_act**")
    page.locator('#opt-order button[data-value="kmeans"]').click()
    page.wait_for_url("**order=kmeans**")
    expect(page.locator(".mosaic-card h2")).to_be_visible()
    expect(page.locator(".mosaic-wrap:not(.loading)")).to_have_count(1)
    expect(page.locator(".mosaic-hit")).to_have_count(32)
    expect(page.locator("#permutation .perm-chip")).to_have_count(32)
    expect(page.locator(".perm-group-head").first).to_contain_text("cluster 1")
    assert_not_blank(page.locator(".mosaic-img"), "stem_act mosaic", 10)
    # the overlay lies on the picture: tile k's box is where the mosaic draws channel k
    body = httpx.get(
        server + "/api/images/chelsea/layers/stem_act/mosaic?order=kmeans", timeout=120
    ).json()
    chips = [int(c) for c in page.locator("#permutation .perm-chip").all_inner_texts()]
    assert chips == body["permutation"]
    tile = page.locator(".mosaic-hit").nth(6)
    channel = int(tile.get_attribute("data-channel"))
    assert channel == body["permutation"][6]
    img_box = page.locator(".mosaic-img").bounding_box()
    hit_box = tile.bounding_box()
    scale = img_box["width"] / body["width"]
    assert abs(hit_box["x"] - img_box["x"] - body["tiles"][6]["x"] * scale) < 1.5
    assert abs(hit_box["y"] - img_box["y"] - body["tiles"][6]["y"] * scale) < 1.5
    tile.hover()
    expect(page.locator(".mosaic-tip")).to_contain_text(f"channel {channel}")
    expect(page.locator(".mosaic-tip")).to_contain_text("mean")
    save(page, "layers_mosaic", full_page=True)

    # A tile opens that unit's tree
    layers_url = page.url
    tile.click()
    page.wait_for_url("**/images/chelsea/tree?**")
    assert f"stem_act%3A{channel}" in page.url or f"stem_act:{channel}" in page.url
    expect(page.locator("svg.tree-svg g.node").first).to_have_attribute(
        "data-path", f"stem_act:{channel}"
    )

    # The shared URL restores the view; the 3D volume loads plotly.js from the server
    page.goto(layers_url)
    expect(page.locator('#opt-order button[aria-checked="true"]')).to_have_attribute(
        "data-value", "kmeans"
    )
    page.locator('#opt-view button[data-value="volume"]').click()
    page.wait_for_url("**view=volume**")
    expect(page.locator("#volume-plot.ready")).to_have_count(1)
    expect(page.locator("#volume-plot .main-svg").first).to_be_attached()
    expect(page.locator("#volume-plot .gl-container canvas").first).to_be_attached()
    assert page.evaluate("() => typeof window.Plotly") == "object"
    assert_not_blank(page.locator("#volume-plot"), "3D volume", 10)
    page.fill("#slice-slider", "3")
    expect(page.locator("#slice-readout")).to_contain_text(f"channel {body['permutation'][3]}")
    expect(page.locator("#slice-tree")).to_have_attribute(
        "href", re.compile(f"stem_act(%3A|:){body['permutation'][3]}")
    )
    page.wait_for_timeout(800)
    save(page, "layers_volume", full_page=True)
    assert page.errors == [], page.errors


EXAMPLES_UNIT = "blocks.8.expand_act:24"  # its top examples come from five photos


@pytest.fixture(scope="module")
def indexed_server(tmp_path_factory):
    """A server with a small index: the augmented gallery, one layer, 8 examples a unit."""
    from cnnscope.index import Source, build_index
    from cnnscope.models import load_model
    from cnnscope.server import create_app

    model = load_model()
    root = tmp_path_factory.mktemp("browser-index")
    layer = EXAMPLES_UNIT.split(":")[0]
    index = build_index(
        model, Source(None, augment=True), [layer], top_k=8, out=root / "ix", workers=0
    )
    app = create_app(model, data_dir=root / "data", index=str(index))
    with serving(app) as base:
        yield base


def test_unit_page_example_cards_open_their_tree(page, indexed_server):
    page.goto(f"{indexed_server}/units/{EXAMPLES_UNIT}?model=efficientnet_lite0&image=chelsea")
    cards = page.locator("article.example-card")
    expect(cards).to_have_count(8)
    expect(page.locator(".examples-slot img")).to_be_visible()  # the grid is still there
    expect(page.locator(".img-frame.loading")).to_have_count(0)
    expect(page.locator(".img-frame.failed")).to_have_count(0)
    assert_not_blank(page.locator(".examples-slot img"), "examples grid", 10)
    for i in range(3):
        assert_not_blank(cards.nth(i).locator(".example-img img"), f"patch {i + 1}", 5)
    expect(cards.first.locator(".example-act strong")).to_have_text(re.compile(r"^\d"))
    save(page, "unit_examples", full_page=True)

    card = cards.nth(1)
    root = card.get_attribute("data-unit")
    assert root.startswith(EXAMPLES_UNIT + "@")
    card.locator("button.example-open").click()
    page.wait_for_url(re.compile(r"/images/u-[0-9a-f]{16}/tree\?"))
    assert "path=" in page.url
    expect(page.locator("svg.tree-svg g.node").first).to_have_attribute("data-path", root)
    assert wait_nodes_loaded(page, 6) == 6
    assert_not_blank(page.locator("g.node").first.locator("image"), f"root {root}", 2)
    assert page.errors == [], page.errors


# -- layout (issue 14): nothing covers the tree, names stay readable, the view refits ------

INSIDE_SVG = """() => {
  const a = document.querySelector("#tree-svg").getBoundingClientRect();
  return [...document.querySelectorAll("#tree-svg g.node .card")]
    .map((c) => c.getBoundingClientRect())
    .filter((b) => b.left < a.left - 1 || b.right > a.right + 1 || b.top < a.top - 1 || b.bottom > a.bottom + 1)
    .length;
}"""


def overlaps(a: dict, b: dict) -> bool:
    return not (
        a["x"] + a["width"] <= b["x"]
        or b["x"] + b["width"] <= a["x"]
        or a["y"] + a["height"] <= b["y"]
        or b["y"] + b["height"] <= a["y"]
    )


def test_tree_controls_cover_no_node_names_fit_and_options_refit(page, server):
    page.goto(f"{server}/images/chelsea/tree?model=efficientnet_lite0&rule=guided")
    wait_nodes_loaded(page, 6)
    node_at(page, 1).locator("g.knob").click()
    wait_nodes_loaded(page, 11)
    node_at(page, 2).locator("g.knob").click()
    wait_nodes_loaded(page, 16)

    # the zoom buttons and the legend lie outside the drawing, so they cover no node
    svg = page.locator("#tree-svg").bounding_box()
    for what in (".zoom-btn", ".legend"):
        for box in [el.bounding_box() for el in page.locator(what).all()]:
            assert not overlaps(box, svg), f"{what} lies over the tree's drawing"

    # every card names its whole layer (no "blocks.15.e…"), inside the card
    for node in page.locator("svg.tree-svg g.node").all():
        unit = node.get_attribute("data-unit")
        layer = unit.rsplit(":", 1)[0]
        text = node.locator(".node-layer").text_content()
        assert text == (unit if layer == "logits" else layer), (unit, text)
        card, name = (
            node.locator(".card").bounding_box(),
            node.locator(".node-layer").bounding_box(),
        )
        assert name["x"] + name["width"] <= card["x"] + card["width"], f"{unit}: name overflows"
        assert unit in node.locator("title").first.text_content()

    # a deep node's long names stay inside the side panel
    node_at(page, 3).press("Space")
    expect(page.locator("#tree-panel .facts")).to_contain_text("blocks.")
    panel = page.locator("#tree-panel")
    wide, room = panel.evaluate("(el) => [el.scrollWidth, el.clientWidth]")
    assert wide <= room, f"the side panel overflows: {wide} px in {room}"

    # an option change refits: every node of the wider tree is in view, none under the footer
    page.locator('label.switch[for="opt-neg"]').click()
    page.wait_for_url("**neg=1**")
    n = wait_nodes_loaded(page, 17)
    page.wait_for_timeout(300)
    assert page.evaluate(INSIDE_SVG) == 0, f"nodes outside the view after an option change ({n})"
    save(page, "tree_layout")
    assert page.errors == [], page.errors


def test_long_image_name_keeps_the_toolbar_on_one_line(page, server):
    data = io.BytesIO()
    Image.new("RGB", (96, 96), (30, 140, 90)).save(data, "PNG")
    name = "a very long holiday photo name from the summer at the beach with everyone.png"
    out = httpx.post(
        f"{server}/api/images",
        params={"name": name},
        content=data.getvalue(),
        headers={"Content-Type": "image/png"},
        timeout=60,
    ).json()
    page.goto(f"{server}/images/{out['id']}/tree?model=efficientnet_lite0&path=logits:1")
    toolbar = page.locator(".page-tree .toolbar")
    expect(toolbar.locator(".toolbar-image")).to_have_attribute("title", name)
    box = toolbar.bounding_box()
    assert box["height"] < 70, f"the toolbar wrapped ({box['height']:.0f} px high)"
    assert page.errors == [], page.errors


def test_method_picker_shows_the_registry_titles(page, server):
    from cnnscope.attribution import METHODS

    page.goto(f"{server}/images/chelsea?model=efficientnet_lite0")
    options = page.locator("#attr-method option")
    expect(options.first).to_be_attached()
    shown = {o.get_attribute("value"): o.text_content() for o in options.all()}
    assert shown["guided_ig"].startswith("Guided Integrated Gradients"), shown["guided_ig"]
    for method, text in shown.items():
        assert text.removesuffix(" (slow)") == METHODS[method].title, (method, text)
        assert "_" not in text


def _picker_order(terms: list[dict], first: str) -> list[tuple[str, str]]:
    """``[(name, title)]`` of a vocabulary list, the page's default moved to the front."""
    pairs = [(t["name"], t["title"]) for t in terms]
    return sorted(pairs, key=lambda p: p[0] != first)  # stable: the rest keep their order


def _shown_lists(page, server: str) -> dict[str, list[tuple[str, str]]]:
    """Every list of choices the tree and image pages show, as ``[(value, label)]``."""
    page.goto(f"{server}/images/chelsea/tree?model=efficientnet_lite0&path=logits:285")
    expect(page.locator("#opt-rule button").first).to_be_visible()

    def buttons(css: str) -> list[tuple[str, str]]:
        return [(b.get_attribute("data-value"), b.text_content()) for b in page.locator(css).all()]

    shown = {
        "rules": buttons("#opt-rule button"),
        "scorings": buttons("#opt-scoring button"),
        "signs": [
            (el.get_attribute("class").split("lg-")[-1], el.text_content())
            for el in page.locator(".legend .lg:not(.lg-faith)").all()
        ],
    }
    page.goto(f"{server}/images/chelsea?model=efficientnet_lite0")
    expect(page.locator("#attr-method option").first).to_be_attached()

    def options(css: str) -> list[tuple[str, str]]:
        return [(o.get_attribute("value"), o.text_content()) for o in page.locator(css).all()]

    shown["overview_rules"] = options("#overview-rule option")
    shown["methods"] = options("#attr-method option")
    shown["defaults"] = {"method": page.locator("#attr-method").input_value()}
    page.goto(f"{server}/images/chelsea/layers?model=efficientnet_lite0")
    expect(page.locator("#opt-order button").first).to_be_visible()
    shown["orders"] = buttons("#opt-order button")
    shown["normalizations"] = buttons("#opt-normalize button")
    checked = '[aria-checked="true"]'
    shown["defaults"]["order"] = page.locator(f"#opt-order button{checked}").get_attribute(
        "data-value"
    )
    shown["defaults"]["normalize"] = page.locator(f"#opt-normalize button{checked}").get_attribute(
        "data-value"
    )
    page.goto(f"{server}/?model=efficientnet_lite0")
    expect(page.locator(".gallery-section").first).to_be_visible()
    shown["sources"] = [
        (head.locator("h2").text_content(), head.locator("span").text_content())
        for head in page.locator(".gallery-section .section-head").all()
    ]
    return shown


def _expected_lists(vocab: dict, server: str) -> dict:
    defaults = vocab["defaults"]
    present = {i["source"] for i in httpx.get(f"{server}/api/images", timeout=60).json()["images"]}
    return {
        "rules": _picker_order(vocab["rules"], defaults["rule"]),
        "scorings": _picker_order(vocab["scorings"], defaults["scoring"]),
        "signs": [(t["name"], t["title"].lower()) for t in vocab["signs"]],
        "overview_rules": _picker_order(vocab["rules"], defaults["rule"]),
        "methods": [
            (m["name"], m["title"] + (" (slow)" if m["slow"] else "")) for m in vocab["methods"]
        ],
        "defaults": {key: defaults[key] for key in ("method", "order", "normalize")},
        "orders": [(t["name"], t["title"]) for t in vocab["orders"]],
        "normalizations": [(t["name"], t["title"]) for t in vocab["normalizations"]],
        # a section per source with images, in the vocabulary's order
        "sources": [(t["title"], t["help"]) for t in vocab["sources"] if t["name"] in present],
    }


def _renamed(vocab: dict) -> dict:
    """``vocab`` with other titles, help and defaults: what the pages must then show."""
    for kind in ("rules", "scorings", "signs", "methods", "orders", "normalizations", "sources"):
        for term in vocab[kind]:
            term["title"] = f"{term['title']} v2"
            term["help"] = f"{term['help']} v2"
    names = {kind: [t["name"] for t in vocab[kind]] for kind in ("rules", "methods")}
    vocab["defaults"].update(
        rule=names["rules"][0],  # not the library's guided
        method=names["methods"][1],
        order=vocab["orders"][-1]["name"],
        normalize=vocab["normalizations"][-1]["name"],
    )
    return vocab


def test_pages_show_the_served_vocabulary_and_no_copy_of_it(page, server):
    """The rule, scoring, sign, method, ordering, scale and gallery-section lists on the
    pages are /api/vocabulary's (same names, titles and order, the served defaults first
    or picked), and a vocabulary with other titles and defaults is what the pages then
    show: the front end keeps no copy of a list or a default the library owns."""
    vocab = httpx.get(f"{server}/api/vocabulary", timeout=60).json()
    assert [t["name"] for t in vocab["rules"]] == list(RULES)
    assert _shown_lists(page, server) == _expected_lists(vocab, server)

    def renamed(route):
        answer = route.fetch()
        route.fulfill(response=answer, json=_renamed(answer.json()))

    page.route("**/api/vocabulary", renamed)
    try:
        vocab2 = _renamed(httpx.get(f"{server}/api/vocabulary", timeout=60).json())
        assert vocab2["defaults"]["rule"] != vocab["defaults"]["rule"]
        assert _shown_lists(page, server) == _expected_lists(vocab2, server)
    finally:
        page.unroute("**/api/vocabulary")
    assert page.errors == [], page.errors


def test_compare_figure_keeps_its_titles(tmp_path):
    """Not a browser check, but a picture users look at: a title cut at the top edge."""
    from cnnscope.cli import main

    fig = tmp_path / "compare.png"
    assert (
        main(["compare", "chelsea", "--methods", "gradient,guided_backprop", "--out", str(fig)])
        == 0
    )
    img = np.asarray(Image.open(fig).convert("L"), np.float32)
    assert img[:3].min() > 250, "the figure's top rows are not blank: a title is cut off"


# -- dataset examples: the popover fits, says what the index is, asks nothing of logits ----


def test_examples_popover_fits_and_logits_ask_for_no_examples(browser, indexed_server):
    context = browser.new_context(viewport={"width": 1280, "height": 640})
    page = context.new_page()
    page.set_default_timeout(SLOW)
    asked = []
    page.on("request", lambda r: "examples" in r.url and asked.append(r.url))
    page.on("pageerror", lambda exc: asked.append(f"error: {exc}"))
    try:
        # a logit-rooted tree: no request for examples of a layer the index lacks
        page.goto(f"{indexed_server}/images/chelsea/tree?model=efficientnet_lite0")
        wait_nodes_loaded(page, 6)
        expect(page.locator("#tree-panel .examples-slot")).to_contain_text(
            "No dataset examples for logits"
        )
        page.locator("svg.tree-svg g.node").first.locator(".img-hit").hover()
        page.wait_for_timeout(1200)
        expect(page.locator(".popover")).to_be_hidden()  # nothing to show: no popover
        assert [u for u in asked if "logits" in u or "head_act" in u] == [], asked

        # an indexed unit near the window's bottom: its popover stays in the window
        page.goto(
            f"{indexed_server}/images/chelsea/tree?model=efficientnet_lite0&path={EXAMPLES_UNIT}"
        )
        wait_nodes_loaded(page, 2)
        svg = page.locator("#tree-svg").bounding_box()
        page.mouse.move(svg["x"] + 20, svg["y"] + 20)
        page.mouse.wheel(0, -(svg["height"] - 170))  # pan the root down to the bottom
        root = page.locator("svg.tree-svg g.node").first
        root.locator(".img-hit").hover()
        pop = page.locator(".popover")
        expect(pop.locator(".examples-slot img")).to_be_visible()
        expect(pop).to_be_visible()
        page.wait_for_timeout(300)
        box = pop.bounding_box()
        assert (
            box["y"] >= svg["y"] - 1 and box["y"] + box["height"] <= svg["y"] + svg["height"] + 1
        ), (box, svg)
        assert box["x"] + box["width"] <= 1280
        expect(pop.locator(".examples-about")).to_contain_text(
            "Small index: 240 images from 8 built-in photos"
        )
        if shot_dir() is not None:
            page.screenshot(path=str(shot_dir() / "examples_popover.png"))
        assert [u for u in asked if u.startswith("error")] == [], asked
    finally:
        context.close()


def test_unit_page_says_how_small_the_index_is(page, indexed_server):
    page.goto(f"{indexed_server}/units/{EXAMPLES_UNIT}?model=efficientnet_lite0")
    about = page.locator(".examples-card .examples-about")
    expect(about).to_contain_text("240 images made from the 8 built-in gallery photos")
    expect(about.locator("code")).to_have_text("cnnscope serve --examples-from DIR")
    assert page.errors == [], page.errors
