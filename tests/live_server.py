"""A real uvicorn server on a free loopback port, for the browser and load tests."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(app) -> Iterator[str]:
    """Run ``app`` with uvicorn in a thread; yield its base URL; stop it afterwards."""
    import uvicorn

    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(600):
        if srv.started:
            break
        time.sleep(0.05)
    assert srv.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(10)


def is_flat(png: bytes, min_std: float = 0.5) -> bool:
    """Whether a picture (PNG or JPEG bytes) is one grey level: its luminance barely varies."""
    import io

    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"), np.float32)
    return bool(pixels.std() < min_std)


@contextlib.contextmanager
def chromium_page(executable: str, timeout_ms: float, args: tuple[str, ...] = ()) -> Iterator:
    """A Playwright page of headless Chromium (1440 x 900); ``page.problems`` collects its
    console errors (Chromium's SEVERE log entries) and uncaught exceptions."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launch = ["--headless", "--no-sandbox", *args]
        browser = p.chromium.launch(executable_path=executable, args=launch)
        page = browser.new_context(viewport={"width": 1440, "height": 900}).new_page()
        page.set_default_timeout(timeout_ms)
        page.problems = []
        page.on("console", lambda m: m.type == "error" and page.problems.append(m.text))
        page.on("pageerror", lambda exc: page.problems.append(str(exc)))
        try:
            yield page
        finally:
            browser.close()
