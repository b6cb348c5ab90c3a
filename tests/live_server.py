"""A real server on a free loopback port: uvicorn in a thread (browser and load tests) or
``cnnscope serve`` in a subprocess (the command end to end)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping


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


@dataclasses.dataclass
class ServeProcess:
    """A running ``cnnscope serve``: its port and base URL; ``output`` (its stdout and stderr)
    is filled in once it has stopped."""

    port: int
    base: str
    output: str = ""


def sandbox_env(home, **more: str) -> dict[str, str]:
    """The environment with ``HOME`` and the cache (``XDG_CACHE_HOME``) inside ``home``."""
    return {**os.environ, "XDG_CACHE_HOME": str(home / "cache"), "HOME": str(home), **more}


@contextlib.contextmanager
def cnnscope_serve(
    *args: str, env: Mapping[str, str], startup_s: float = 300.0
) -> Iterator[ServeProcess]:
    """Run ``cnnscope serve --no-browser --port PORT ARGS`` on a free port with ``env``; yield
    once ``/api/models`` answers 200 (fail if the process exits or ``startup_s`` passes first);
    terminate it afterwards."""
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "cnnscope", "serve", "--no-browser", "--port", str(port), *args]
    served = ServeProcess(port, f"http://127.0.0.1:{port}")
    # A file, not a pipe: a chatty server cannot fill it and block.
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, env=dict(env), stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + startup_s
            while not _answers(httpx, served.base + "/api/models"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"cnnscope serve did not start: {_read(log)[-2000:]}")
                time.sleep(0.25)
            yield served
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            served.output = _read(log)


def _read(log) -> str:
    log.seek(0)
    return log.read().decode(errors="replace")


def _answers(httpx, url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


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
