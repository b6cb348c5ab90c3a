"""The explorer's scheduling: long jobs never hold short requests, the queues are bounded.

- A tree expansion asked for while a drill-up runs is answered about as fast as on an
  idle server (the drill-up runs on the slow lane, on its own copy of the model).
- Every thread keeps the torch thread count it was given, whichever starts first.
- The feature-visualization queue is bounded (the newest request wins), and a rendering
  nobody polls any more is dropped, before it starts or at its next step.
- The server writes nothing outside its data directory (index grids, matplotlib).
"""

from __future__ import annotations

import asyncio
import io
import itertools
import os
import statistics
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from cnnscope.images import load_gallery_image
from cnnscope.server import create_app
from cnnscope.server.service import ExplorerService
from cnnscope.server.store import ImageStore
from cnnscope.server.worker import Job
from tests.live_server import cnnscope_serve, serving

# ------------------------------------------------------------------ long jobs, short requests


def expand(client: httpx.Client, image: str, path: str) -> float:
    """Seconds for what a click on a node does: its children, then their pictures."""
    t = time.perf_counter()
    r = client.get(f"/api/images/{image}/children", params={"path": path, "k": 3})
    assert r.status_code == 200, r.text
    for kid in r.json()["children"]:
        png = client.get(kid["reconstruction"])
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    return time.perf_counter() - t


@pytest.mark.slow
def test_an_expansion_is_not_held_by_a_running_drill_up(model, tmp_path):
    """Medians of fresh expansions: during a drill-up under 2x those on the idle server.

    Before the slow lane, the drill-up held the one model worker for seconds and the first
    expansion waited for all of it.
    """
    roots = (f"logits:{c}" for c in itertools.count(100, 7))  # a new node each time
    with serving(create_app(model, data_dir=tmp_path)) as base:
        with httpx.Client(base_url=base, timeout=300) as client:
            assert client.get("/api/images/chelsea/predictions").status_code == 200
            expand(client, "chelsea", next(roots))  # warm: the first backward of a run
            idle = [expand(client, "chelsea", next(roots)) for _ in range(5)]

            answer: dict = {}
            layers = client.get("/api/images/chelsea/overview").json()["layers"]
            unit = layers[2]["units"][0]["unit"]  # a drill-up of 5-15 s on 2 cores

            def drill_up() -> None:
                with httpx.Client(base_url=base, timeout=300) as other:
                    t = time.perf_counter()
                    answer["r"] = other.get("/api/images/chelsea/parents", params={"unit": unit})
                    answer["s"] = time.perf_counter() - t

            long_job = threading.Thread(target=drill_up)
            long_job.start()
            time.sleep(0.5)  # the drill-up has started
            busy = []
            for _ in range(5):
                busy.append(expand(client, "chelsea", next(roots)))
                assert long_job.is_alive(), f"an expansion waited for the drill-up: {busy}"
            long_job.join(300)
            idle += [expand(client, "chelsea", next(roots)) for _ in range(3)]
    ratio = statistics.median(busy) / statistics.median(idle)
    print(f"expansion idle {statistics.median(idle):.3f} s, under a drill-up "
          f"{statistics.median(busy):.3f} s: {ratio:.2f}x (drill-up {answer['s']:.1f} s)")  # fmt: skip
    assert ratio < 2.0, (idle, busy)
    assert answer["r"].status_code == 200 and answer["r"].json()["parents"]


def test_every_thread_keeps_its_torch_threads_whichever_starts_first(model, tmp_path):
    """One multi-threaded team (the worker's), whatever order the threads start and run in.

    ``torch.set_num_threads`` also sets a process-wide count that a thread takes at its
    first torch call: the background lane, set to 1 at its start, ran its first job on the
    worker's 3 threads (a second OpenMP team), and the worker, had a lane set 1 after it,
    would have run on 1.
    """
    service = ExplorerService(model, ImageStore(tmp_path), threads=3)
    try:
        task = service.background.submit("count", lambda _m, _p: torch.get_num_threads())
        assert task.finished.wait(60) and task.result == 1
        on_worker = service.worker.submit(Job("call", object(), torch.get_num_threads))
        assert on_worker.result(30) == 3

        async def beside():
            return await service.compute.off_loop(torch.get_num_threads)

        assert asyncio.run(beside()) == 1
        on_slow = service.slow.submit(Job("call", object(), torch.get_num_threads))
        assert on_slow.result(30) == 1
        again = service.worker.submit(Job("call", object(), torch.get_num_threads))
        assert again.result(30) == 3
    finally:
        service.close()


# ------------------------------------------------------------------ feature visualizations


def poll_until(client, unit: str, states: set[str], timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        state = client.get(f"/api/units/{unit}/visualization").json()
        if state["state"] in states or time.monotonic() > deadline:
            return state
        time.sleep(0.05)


def test_the_visualization_queue_is_bounded_and_the_newest_requests_win(model, tmp_path):
    app = create_app(model, data_dir=tmp_path, synthesis_steps=100000, synthesis_size=48)
    svc = app.state.service
    units = [f"blocks.5:{c}" for c in range(30)]
    with TestClient(app) as c:
        assert c.post(f"/api/units/{units[0]}/visualization").status_code == 202
        assert poll_until(c, units[0], {"running"})["state"] == "running"
        for unit in units[1:]:  # 29 more, as fast as a client can ask
            assert c.post(f"/api/units/{unit}/visualization").status_code == 202
        states = [c.get(f"/api/units/{u}/visualization").json() for u in units]
        queued = [s["unit"] for s in states if s["state"] == "queued"]
        assert states[0]["state"] == "running"
        assert queued == units[-svc.units.visualization_queue :]  # the newest wait
        assert len(svc.background.queued) == svc.units.visualization_queue
        dropped = states[1 : -svc.units.visualization_queue]
        assert all(
            s["state"] == "none" and "dropped from the queue" in s["detail"] for s in dropped
        )
        # asking again queues it anew, as the newest
        assert c.post(f"/api/units/{units[1]}/visualization").json()["state"] == "queued"
        assert c.get(f"/api/units/{units[-svc.units.visualization_queue]}/visualization").json()[
            "state"
        ] == "none"  # fmt: skip


def test_a_visualization_nobody_polls_is_dropped(model, tmp_path):
    """The running one stops at its next step; a waiting one is dropped before it starts."""
    app = create_app(model, data_dir=tmp_path, synthesis_steps=100000, synthesis_size=48)
    svc = app.state.service
    svc.units.visualization_watch_s = 1.5
    with TestClient(app) as c:
        c.post("/api/units/blocks.5:1/visualization")
        assert poll_until(c, "blocks.5:1", {"running"})["state"] == "running"
        c.post("/api/units/blocks.5:2/visualization")  # never polled again
        watched_until = time.monotonic() + 2 * svc.units.visualization_watch_s
        while time.monotonic() < watched_until:  # the first stays wanted meanwhile
            assert c.get("/api/units/blocks.5:1/visualization").json()["state"] == "running"
            time.sleep(0.1)
        c.post("/api/units/blocks.5:3/visualization")  # polled from now on: the page shows it
        third = poll_until(c, "blocks.5:3", {"running"}, timeout=60)
        assert third["state"] == "running", third
        first = c.get("/api/units/blocks.5:1/visualization").json()
        assert first["state"] == "none" and first["detail"].startswith("stopped: nobody asked")
        second = c.get("/api/units/blocks.5:2/visualization").json()
        assert second["state"] == "none" and "dropped before it started" in second["detail"]
        assert c.post("/api/units/blocks.5:2/visualization").json()["state"] == "queued"


# ------------------------------------------------------------------ writes outside the data dir


def listing(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_the_server_writes_only_inside_its_data_dir(model, tmp_path):
    """Grids of an index, activation maps (matplotlib) and uploads: nothing lands in the
    index folder, HOME or the XDG folders; ``cnnscope serve`` as a user runs it."""
    from cnnscope.index import build_index, open_index

    photos = tmp_path / "photos"
    photos.mkdir()
    for i, name in enumerate(("chelsea", "coffee", "rocket")):
        load_gallery_image(name).resize((160, 120)).save(photos / f"{i}.png")
    index = build_index(model, photos, ["blocks.4"], top_k=2, out=tmp_path / "ix", workers=0)
    home, data = tmp_path / "home", tmp_path / "data"
    outside = {"index": Path(index), "home": home, "photos": photos}
    for folder in ("config", "cache", "share", "state"):
        outside[folder] = home / f"xdg-{folder}"
        outside[folder].mkdir(parents=True)
    before = {name: listing(folder) for name, folder in outside.items()}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MPL", "XDG_"))}
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(outside["config"]),
        XDG_CACHE_HOME=str(outside["cache"]),
        XDG_DATA_HOME=str(outside["share"]),
        XDG_STATE_HOME=str(outside["state"]),
    )
    with (
        cnnscope_serve("--data-dir", str(data), "--index", str(index), env=env) as served,
        httpx.Client(base_url=served.base, timeout=600) as client,
    ):
        grid = client.get("/api/units/blocks.4:7/examples.png")
        for url in (
            "/api/units/blocks.4:7/examples.png",
            "/api/units/blocks.4:7/examples/1.png",
            "/api/images/coffee/activation.png?unit=blocks.4:7",
            "/api/images/coffee/attribution.png?method=grad_cam",
        ):
            r = client.get(url)
            assert r.status_code == 200 and r.headers["content-type"] == "image/png", url
        up = client.post(
            "/api/images",
            content=(photos / "0.png").read_bytes(),
            headers={"Content-Type": "application/octet-stream"},
        )
        assert up.status_code in (200, 201), up.text
    assert {name: listing(folder) for name, folder in outside.items()} == before, served.output
    assert (data / "matplotlib").is_dir()  # matplotlib's folder is inside the data dir
    # the grid rendered in memory is the index's own grid
    want = open_index(index).grid("blocks.4:7", model)
    got = np.asarray(Image.open(io.BytesIO(grid.content)).convert("RGB"))
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    assert got.shape == want.shape and diff.max() <= 1 and (diff > 0).mean() < 1e-3
