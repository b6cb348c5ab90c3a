"""Screenshots of every explorer page, taken in headless Chromium, for docs/explorer.md.

Starts a real server (``create_app`` with the gallery's default index, built on the first
run into ``--data-dir``), waits for the index, and walks: gallery, image page, tree (with
a node's dataset examples on hover and its feature visualization in the side panel), unit
page, layer views, and the class page of chelsea's top class (its graph built over the
gallery with the page's own button the first time, into ``DATA_DIR/graphs``). Needs Debian's chromium and the playwright package (test extras)::

    python scripts/make_explorer_screenshots.py [--data-dir DIR] [--out docs/img/explorer]
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import threading
import time
from pathlib import Path

import httpx
import uvicorn
from playwright.sync_api import expect, sync_playwright

from cnnscope.server import create_app

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
SLOW = 600_000  # ms


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir: Path) -> str:
    app = create_app(data_dir=data_dir, default_index=True)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}"


def wait_for(url: str, done, what: str, seconds: float = 900) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        state = httpx.get(url, timeout=60).json()
        if done(state):
            return state
        time.sleep(1)
    raise SystemExit(f"timed out waiting for {what}")


def settle(page) -> None:
    expect(page.locator(".img-frame.loading")).to_have_count(0)
    page.wait_for_function(
        # a function, not an expression: the page's CSP forbids the eval that polls one
        "() => [...document.images].every(i => i.getBoundingClientRect().top > innerHeight"
        " || (i.complete && i.naturalWidth > 0))"
    )
    page.wait_for_timeout(500)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=None, help="server data (default: temp)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "explorer")
    args = parser.parse_args()
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="cnnscope-shots-"))
    args.out.mkdir(parents=True, exist_ok=True)
    base = start_server(data_dir)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"],
        )
        page = browser.new_context(viewport={"width": 1440, "height": 900}).new_page()
        page.set_default_timeout(SLOW)
        expect.set_options(timeout=SLOW)

        page.goto(base + "/")
        expect(page.locator("a.image-card")).to_have_count(8)
        settle(page)  # the thumbnails, while the banner shows the build
        page.screenshot(path=str(args.out / "gallery_first_start.png"))  # index banner
        wait_for(base + "/api/index", lambda s: s["state"] == "ready", "the gallery index")
        page.reload()
        expect(page.locator("a.image-card")).to_have_count(8)
        settle(page)
        page.screenshot(path=str(args.out / "gallery.png"))

        page.goto(base + "/images/chelsea?model=efficientnet_lite0")
        expect(page.locator("a.pred")).to_have_count(5)
        settle(page)
        page.screenshot(path=str(args.out / "image.png"), full_page=True)

        root = "logits:285"
        page.goto(base + f"/images/chelsea/tree?model=efficientnet_lite0&path={root}")
        expect(page.locator("svg.tree-svg g.node")).to_have_count(6)
        child = page.locator("svg.tree-svg g.node").nth(1)
        child.locator("g.knob").click()
        expect(page.locator("svg.tree-svg g.node")).to_have_count(11)
        grandchild = page.locator("svg.tree-svg g.node").nth(6)
        grandchild.click()
        unit = grandchild.get_attribute("data-path").split("/")[-1]
        vis = f"{base}/api/units/{unit.replace('#', '~')}/visualization"
        wait_for(vis, lambda s: s["state"] in ("done", "failed"), "a feature visualization")
        page.locator('.zoom-btn[aria-label="fit the tree"]').click()
        settle(page)
        expect(page.locator(".vis-slot img")).to_be_visible()
        page.locator(".vis-slot img").scroll_into_view_if_needed()
        page.locator("svg.tree-svg g.node").nth(7).hover()
        expect(page.locator(".popover img")).to_be_visible()
        settle(page)
        page.screenshot(path=str(args.out / "tree.png"))
        link = page.locator("#class-graph-link")
        expect(link).to_be_visible()
        graph_page = link.get_attribute("href")

        page.goto(base + f"/units/{unit.replace('#', '~')}?image=chelsea&model=efficientnet_lite0")
        expect(page.locator(".page-unit h1")).to_be_visible()
        expect(page.locator(".page-unit .loading-block")).to_have_count(0)  # drill up
        settle(page)
        page.screenshot(path=str(args.out / "unit.png"), full_page=True)

        # The class page: the first time, build its graph over the gallery (the page's button).
        page.goto(base + graph_page + "?model=efficientnet_lite0")
        page.wait_for_selector("#graph-drawing, #graph-start")
        if page.locator("#graph-start").count():
            page.screenshot(path=str(args.out / "class_build.png"))
            page.locator("#graph-start").click()
        expect(page.locator("#graph-drawing svg.cg-svg")).to_be_visible()
        settle(page)
        page.screenshot(path=str(args.out / "class.png"), full_page=True)

        page.goto(base + "/images/chelsea/layers?layer=stem_act&order=kmeans")
        expect(page.locator("img.mosaic-img")).to_have_js_property("complete", True)
        settle(page)
        page.screenshot(path=str(args.out / "layers_mosaic.png"))

        page.goto(base + "/images/chelsea/layers?layer=blocks.5.expand_act")
        page.locator('#opt-view button[data-value="volume"]').click()
        expect(page.locator("#volume-plot.ready")).to_have_count(1)
        page.wait_for_timeout(1500)
        page.screenshot(path=str(args.out / "layers_volume.png"))

        browser.close()
    print(f"wrote screenshots to {args.out}")


if __name__ == "__main__":
    main()
