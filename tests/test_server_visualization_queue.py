"""The feature-visualization queue: the unit looked at now first, one layer in one batch.

- The job asked for or polled last starts first (not the oldest), and it overtakes a
  running job that nobody polls now, which then goes on where it was.
- Waiting jobs of one layer run as ONE synthesis run (the lane's run counter and the
  records written beside the PNGs say so), each to the file ``unit_visualization`` gives
  it (a later call is a cache hit).
- A job nobody polls is dropped before it starts, and never joins a batch.
- A picture rendered in a batch is not bitwise the one rendered alone (documented in
  ``unit_visualizations``), but it drives its own unit as well: checked against the
  other units of the batch and against the picture rendered alone.
- A unit with a position reaches ``done`` (its picture is the channel's centre neuron).
"""

from __future__ import annotations

import io
import json
import threading
import time

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from cnnscope.engine import Engine
from cnnscope.server import create_app
from cnnscope.synthesis.api import driven_unit, unit_visualization, unit_visualizations
from cnnscope.synthesis.params import ImageSpace

STEPS, SIZE = 8, 48


@pytest.fixture
def served(model, tmp_path):
    app = create_app(model, data_dir=tmp_path, synthesis_steps=STEPS, synthesis_size=SIZE)
    with TestClient(app) as client:
        yield client, app.state.service


def vis(client: TestClient, unit: str, method: str = "get") -> dict:
    r = getattr(client, method)(f"/api/units/{unit}/visualization")
    assert r.status_code in (200, 202), r.text
    return r.json()


def gate(svc) -> threading.Event:
    """Hold the lane with a job that never reports progress until the event is set."""
    release = threading.Event()
    task = svc.background.submit("gate", lambda model, progress: release.wait(120))
    deadline = time.monotonic() + 60
    while task.state != "running" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert task.state == "running"
    return release


def wait_done(client, units: list[str], timeout: float = 120) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while True:
        states = {u: vis(client, u) for u in units}
        if all(s["state"] not in ("queued", "running") for s in states.values()):
            return states
        assert time.monotonic() < deadline, states
        time.sleep(0.05)


def test_the_unit_polled_last_starts_first(served):
    client, svc = served
    release = gate(svc)
    units = ["blocks.3:1", "blocks.6:2", "blocks.9:3"]  # three layers: no batch
    for unit in units:
        assert vis(client, unit, "post")["state"] == "queued"
    for unit in units:  # polled in order: the last one is what the user looks at now
        vis(client, unit)
    release.set()
    states = wait_done(client, units)
    assert all(s["state"] == "done" for s in states.values()), states
    started = [svc.units._vis_jobs[u].started for u in units]
    assert started[2] < started[1] < started[0]  # newest first (FIFO would be the reverse)


def test_a_new_unit_overtakes_a_running_job_nobody_polls(served):
    """The old job is suspended between two of its steps and then finishes its own work."""
    client, svc = served
    svc.background.recent_s = 0.3
    release, steps = threading.Event(), []

    def old_job(model, progress):
        while not release.is_set():
            steps.append(len(steps))
            progress(len(steps), 0)
            time.sleep(0.01)
        return len(steps)

    old = svc.background.submit("old", old_job, watch_s=60)
    while old.state != "running":
        time.sleep(0.01)
    time.sleep(0.5)  # nobody polled it for longer than recent_s
    assert vis(client, "blocks.5:4", "post")["state"] in ("queued", "running")
    state = wait_done(client, ["blocks.5:4"], timeout=60)["blocks.5:4"]
    assert state["state"] == "done" and old.state == "running"
    release.set()
    assert old.finished.wait(30) and old.state == "done" and old.result == len(steps)
    assert steps == list(range(len(steps)))  # resumed where it was, no step run twice


def test_waiting_units_of_one_layer_render_in_one_batch(served, model):
    client, svc = served
    release = gate(svc)
    same = ["blocks.8:1", "blocks.8:2", "blocks.8:3@1,2"]
    other = "blocks.4:5"
    for unit in [*same, other]:
        vis(client, unit, "post")
    for unit in [other, *same]:
        vis(client, unit)
    runs = svc.background.batches
    release.set()
    states = wait_done(client, [*same, other])
    assert all(s["state"] == "done" for s in states.values()), states
    assert svc.background.batches - runs == 2  # blocks.8 in one run, blocks.4 in another
    jobs = [svc.units._vis_jobs[u] for u in same]
    assert [t.batch_size for t in jobs] == [3, 3, 3] and svc.units._vis_jobs[other].batch_size == 1
    assert len({t.started for t in jobs}) == 1
    assert all(t.done == t.total == STEPS for t in jobs)  # progress reported to each job
    pictures = []
    for unit in same:
        png = client.get(states[unit]["image"])
        assert png.status_code == 200
        pictures.append(np.asarray(Image.open(io.BytesIO(png.content))).astype(np.int16))
        path = svc.units._vis_file(svc.refs.unit(unit))
        record = json.loads(path.with_suffix(".json").read_text())
        assert record["batch"] == 3 and record["unit"] == unit
        assert record["config"]["objective"].count("|") == 2
        # the file is the one unit_visualization gives the unit: a cache hit, not a run
        stamp = path.stat().st_mtime_ns
        again = unit_visualization(model, unit, svc.units._vis_dir, steps=STEPS, size=SIZE)
        assert again == path and path.stat().st_mtime_ns == stamp
    assert all(p.shape == (SIZE, SIZE, 3) and p.std() > 5 for p in pictures)
    assert np.abs(pictures[0] - pictures[1]).mean() > 5  # each image its own unit


def test_a_job_nobody_polls_is_dropped_and_never_batched(served):
    client, svc = served
    svc.units.visualization_watch_s = 1.0
    release = gate(svc)
    vis(client, "blocks.8:7", "post")  # asked for once, then the page moved on
    time.sleep(1.3)
    for unit in ("blocks.8:8", "blocks.8:9"):
        vis(client, unit, "post")
    release.set()
    states = wait_done(client, ["blocks.8:8", "blocks.8:9"])
    assert all(s["state"] == "done" for s in states.values()), states
    stale = vis(client, "blocks.8:7")
    assert stale["state"] == "none" and "dropped before it started" in stale["detail"]
    assert [svc.units._vis_jobs[u].batch_size for u in ("blocks.8:8", "blocks.8:9")] == [2, 2]


def test_a_unit_with_a_position_is_done_once_rendered(served):
    """Its picture is the channel's centre neuron, cached under ``LAYER_C_centre``; before,
    the page found no file of that name, saw ``none`` and asked again for ever."""
    client, _ = served
    assert vis(client, "blocks.5:3@2,2", "post")["state"] in ("queued", "running", "done")
    state = wait_done(client, ["blocks.5:3@2,2"])["blocks.5:3@2,2"]
    assert state["state"] == "done", state
    assert client.get(state["image"]).status_code == 200
    assert vis(client, "blocks.5:3@4,4", "post")["state"] == "done"  # one picture per channel


def test_a_batch_picture_drives_its_unit_as_the_lone_picture_does(model, tmp_path):
    """Not bitwise the picture rendered alone (other starting noise), but as good."""
    layer, channels, steps, size = "blocks.8", [3, 20, 41], 24, 64
    units = [f"{layer}:{c}" for c in channels]
    batch = unit_visualizations(model, units, tmp_path / "batch", steps=steps, size=size)
    alone = [
        unit_visualization(model, u, tmp_path / f"alone{i}", steps=steps, size=size)
        for i, u in enumerate(units)
    ]
    space, engine = ImageSpace.for_model(model), Engine.for_module(model.module)
    read = driven_unit(model, units[0]).layer

    def means(path) -> torch.Tensor:  # the channels' means on one picture
        a = np.asarray(Image.open(path)).astype(np.float32)
        x = space.to_input(space.from_pixels(torch.from_numpy(a).permute(2, 0, 1)[None]))
        fwd = engine.forward(x, cache=False, layers=[read], grad=False, truncate=True)
        return fwd.activation(read)[0, channels].mean(dim=(1, 2))

    on_batch = torch.stack([means(p) for p in batch])  # row: picture, column: unit
    on_alone = torch.stack([means(p) for p in alone])
    for i in range(len(units)):
        others = torch.cat([on_batch[:i, i], on_batch[i + 1 :, i]])
        assert on_batch[i, i] > others.max(), on_batch  # picture i excites unit i most
        assert on_batch[i, i] > 0.6 * on_alone[i, i], (on_batch[i, i], on_alone[i, i])
