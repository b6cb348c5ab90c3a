"""Load on loopback: clients expand trees, upload images and drill up at once; no errors.

A real uvicorn server on a free 127.0.0.1 port. Until a time budget runs out, four
client threads each walk down their own tree (children, then every child's
reconstruction, then a child's children) on one of three built-in images; one client
uploads new images (raw bodies) and expands a tree on each; one runs long jobs (drill-ups,
which take seconds on the slow lane) one after another. The forward cache is bounded below
three images' worth, so forwards are evicted and recomputed while clients work. Every
answer must be a 200 with the right content, the server must have merged reconstructions,
and its memory must stay flat once its caches are full.
"""

from __future__ import annotations

import io
import itertools
import statistics
import threading
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from cnnscope.images import load_gallery_image
from tests.live_server import serving

pytestmark = pytest.mark.slow

WALKERS = 4
IMAGES = ("chelsea", "coffee", "rocket")
BUDGET_S = 45.0  # no new request starts after this
CACHE_MB, RESULTS_MB = 350, 32
FLAT_MB = 64  # growth allowed from the middle third of the run to the last (medians)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from cnnscope.server import create_app

    app = create_app(
        data_dir=tmp_path_factory.mktemp("load-data"), cache_mb=CACHE_MB, results_mb=RESULTS_MB
    )
    with serving(app) as base:
        yield base, app


def check_png(client: httpx.Client, url: str, errors: list) -> bool:
    png = client.get(url)
    if png.status_code != 200 or png.headers["content-type"] != "image/png":
        errors.append((url, png.status_code, png.text[:200]))
        return False
    if Image.open(io.BytesIO(png.content)).size != (224, 224):
        errors.append((url, "bad size"))
        return False
    return True


def expand(client: httpx.Client, image: str, path: str, errors: list) -> list | None:
    """Children of ``path`` and all their reconstructions; ``None`` after an error."""
    r = client.get(f"/api/images/{image}/children", params={"path": path, "k": 3})
    if r.status_code != 200:
        errors.append((image, path, r.status_code, r.text[:200]))
        return None
    kids = r.json()["children"]
    if not all(check_png(client, kid["reconstruction"], errors) for kid in kids):
        return None
    return kids


def walk(base: str, image: str, rank: int, deadline: float, log: list, errors: list) -> None:
    with httpx.Client(base_url=base, timeout=600) as client:
        try:
            preds = client.get(f"/api/images/{image}/predictions?k=8").json()["predictions"]
            path = f"logits:{preds[rank % len(preds)]['index']}"
            while time.monotonic() < deadline:
                kids = expand(client, image, path, errors)
                if kids is None:
                    return
                log.append((path, len(kids)))
                if not kids:  # bottom of the chain: start again from another class
                    rank += WALKERS
                    path = f"logits:{preds[rank % len(preds)]['index']}"
                else:
                    path = kids[rank % len(kids)]["path"]
        except Exception as exc:  # noqa: BLE001 - any failure is a test failure
            errors.append((image, repr(exc)))


def new_photo(i: int) -> bytes:
    """A distinct photo: a gallery image cropped by ``i`` pixels."""
    img = load_gallery_image(IMAGES[i % len(IMAGES)])
    w, h = img.size
    buf = io.BytesIO()
    img.crop((i % 40, i % 30, w - 1, h - 1)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def upload_and_expand(base: str, deadline: float, log: list, errors: list) -> None:
    with httpx.Client(base_url=base, timeout=600) as client:
        try:
            for i in itertools.count(1):
                if time.monotonic() >= deadline:
                    return
                up = client.post(
                    f"/api/images?name=load{i}.jpg",
                    content=new_photo(i),
                    headers={"Content-Type": "application/octet-stream"},
                )
                if up.status_code != 201:
                    errors.append(("upload", i, up.status_code, up.text[:200]))
                    return
                image = up.json()["id"]
                kids = expand(client, image, "logits:285", errors)
                if kids is None:
                    return
                log.append((image, len(kids)))
        except Exception as exc:  # noqa: BLE001 - any failure is a test failure
            errors.append(("upload", repr(exc)))


def drill_up(base: str, deadline: float, log: list, errors: list) -> None:
    with httpx.Client(base_url=base, timeout=600) as client:
        try:
            layers = client.get("/api/images/coffee/overview").json()["layers"]
            units = [u["unit"] for layer in layers[1:] for u in layer["units"]]
            for unit in units:
                if time.monotonic() >= deadline:
                    return
                r = client.get("/api/images/coffee/parents", params={"unit": unit, "k": 3})
                if r.status_code != 200 or not isinstance(r.json()["parents"], list):
                    errors.append(("parents", unit, r.status_code, r.text[:200]))
                    return
                log.append(unit)
        except Exception as exc:  # noqa: BLE001 - any failure is a test failure
            errors.append(("parents", repr(exc)))


def test_clients_expand_upload_and_drill_up_at_once_without_errors(server):
    base, app = server
    start = time.monotonic()
    deadline = start + BUDGET_S
    walks, uploads, drills, errors = [], [], [], []
    threads = [
        threading.Thread(target=walk, args=(base, IMAGES[i % len(IMAGES)], i, deadline, walks, errors))
        for i in range(WALKERS)
    ]  # fmt: skip
    threads.append(
        threading.Thread(target=upload_and_expand, args=(base, deadline, uploads, errors))
    )
    threads.append(threading.Thread(target=drill_up, args=(base, deadline, drills, errors)))
    for t in threads:
        t.start()
    memory = []  # (seconds since start, RSS MB), sampled while the clients run
    while any(t.is_alive() for t in threads) and time.monotonic() < start + 600:
        memory.append((time.monotonic() - start, rss_mb()))
        time.sleep(0.5)
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a client hung"
    assert errors == [], errors
    assert len(walks) >= WALKERS and len(uploads) >= 2 and len(drills) >= 2
    for _ in range(600):  # the drill-ups' prefetched pictures nobody fetched finish too
        stats = httpx.get(base + "/api/stats").json()
        if stats["inflight"] == 0:
            break
        time.sleep(0.1)
    assert stats["inflight"] == 0
    assert stats["engine_cache_bytes"] <= CACHE_MB << 20
    assert stats["results_bytes"] <= RESULTS_MB << 20
    service = app.state.service
    # every node expanded with children had them drawn at least once (answers are cached,
    # so a node walked again costs nothing)
    assert service.recon_paths >= len({path for path, kids in walks if kids})
    assert service.recon_batches < service.recon_paths  # reconstructions were merged
    # memory: flat once the caches are full (after the first third of the run; single
    # samples swing by a transient forward or two, so compare the medians of the thirds)
    middle = statistics.median(mb for t, mb in memory if BUDGET_S / 3 <= t < 2 * BUDGET_S / 3)
    last = statistics.median(mb for t, mb in memory if t >= 2 * BUDGET_S / 3)
    print(f"RSS medians: {middle:.0f} MB in the middle third of the run, {last:.0f} MB in the "
          f"last; {len(walks)} expansions, {len(uploads)} uploads, {len(drills)} drill-ups")  # fmt: skip
    assert last - middle < FLAT_MB, [f"{t:.0f}s {mb:.0f}" for t, mb in memory]
