"""Load on loopback: concurrent clients expanding trees on several images, no errors.

A real uvicorn server on a free 127.0.0.1 port; six client threads each walk down their
own tree (children, then every child's reconstruction, then a child's children) on one
of three images, until a time budget runs out. The forward cache is bounded below three
images' worth, so forwards are evicted and recomputed while clients work. Every answer
must be a 200 with the right content; the server must have merged reconstructions.
"""

from __future__ import annotations

import io
import threading
import time

import httpx
import pytest
from PIL import Image

from tests.live_server import serving

pytestmark = pytest.mark.slow

CLIENTS = 6
IMAGES = ("chelsea", "coffee", "rocket")
BUDGET_S = 40.0  # no new expansion starts after this


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from cnnscope.server import create_app

    app = create_app(data_dir=tmp_path_factory.mktemp("load-data"), cache_mb=350)
    with serving(app) as base:
        yield base, app


def walk(base: str, image: str, rank: int, deadline: float, log: list, errors: list) -> None:
    with httpx.Client(base_url=base, timeout=600) as client:
        try:
            preds = client.get(f"/api/images/{image}/predictions?k=8").json()["predictions"]
            path = f"logits:{preds[rank % len(preds)]['index']}"
            while time.monotonic() < deadline:
                r = client.get(
                    f"/api/images/{image}/children", params={"path": path, "k": 3, "rule": "guided"}
                )
                if r.status_code != 200:
                    errors.append((path, r.status_code, r.text[:200]))
                    return
                kids = r.json()["children"]
                for kid in kids:
                    png = client.get(kid["reconstruction"])
                    if png.status_code != 200 or png.headers["content-type"] != "image/png":
                        errors.append((kid["path"], png.status_code, png.text[:200]))
                        return
                    if Image.open(io.BytesIO(png.content)).size != (224, 224):
                        errors.append((kid["path"], "bad size"))
                log.append((path, len(kids)))
                if not kids:  # bottom of the chain: start again from another class
                    rank += CLIENTS
                    path = f"logits:{preds[rank % len(preds)]['index']}"
                else:
                    path = kids[rank % len(kids)]["path"]
        except Exception as exc:  # noqa: BLE001 - any failure is a test failure
            errors.append((image, repr(exc)))


def test_concurrent_clients_expand_trees_without_errors(server):
    base, app = server
    deadline = time.monotonic() + BUDGET_S
    log: list = []
    errors: list = []
    threads = [
        threading.Thread(
            target=walk, args=(base, IMAGES[i % len(IMAGES)], i, deadline, log, errors)
        )
        for i in range(CLIENTS)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(900)
    assert not any(t.is_alive() for t in threads), "a client hung"
    assert errors == []
    assert len(log) >= CLIENTS  # every client expanded at least one node
    stats = httpx.get(base + "/api/stats").json()
    assert stats["inflight"] == 0
    assert stats["engine_cache_bytes"] <= 350 << 20
    service = app.state.service
    # every node expanded with children had them drawn at least once (answers are cached,
    # so a node walked again costs nothing)
    assert service.recon_paths >= len({path for path, kids in log if kids})
    assert service.recon_batches < service.recon_paths  # reconstructions were merged
