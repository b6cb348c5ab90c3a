"""Benchmark of feature synthesis on EfficientNet-Lite0.

1. Step overhead: one synthesis step (render the image from its parameterization,
   transforms, engine forward recording only the objective's layers, seeds, engine
   backward, backward through the transforms and the parameterization, priors,
   optimizer) against one plain forward + backward of the same batch (the model called
   directly, a hook reading the objective's layer, ``backward`` to the input), measured
   interleaved, medians over repeats. Three cases: pixels without transforms (the bare
   overhead), the Lucid pipeline (Fourier parameterization + pad/jitter/scale/rotate), and
   both against a plain pass that also stops at the objective's layer. Target <= 1.15x.
2. Batch mode: units rendered per second by ``visualize_units`` for batches of 1..16
   units (per-step times extrapolated to the default 128 steps).
3. DeepDream of a 1920x1080 image with 4 octaves (10 steps each): wall time, tiled with
   224x224 windows as cnn-vis, and untiled (the whole image per pass).
4. ``--select``: what a click on a node costs in the explorer, through the real server
   (``cnnscope serve`` in a subprocess, a fresh data dir: no cached picture). From the
   POST of a unit's visualization to its PNG served, polling as the page does, median
   over several units: on an idle server; right after 5 other units were asked for (and
   left, as a user clicking through nodes leaves them); and on a first start, while the
   default index is being built. Beside it, in process and interleaved: one picture with
   the explorer's old settings (128 steps, 160 px, contiguous) and its new ones
   (:data:`~cnnscope.synthesis.api.QUICK_VISUALIZATION`, channels-last weights), on one
   thread as the server's background lane runs it. Target: at most 20 s.

Run ``python bench/synthesis.py [--device cpu|cuda] [--quick] [--md PATH]``, or
``python bench/synthesis.py --select [--quick]`` for section 4 alone.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

from cnnscope.models import load_model
from cnnscope.synthesis import SynthesisConfig, deepdream, visualize_config
from cnnscope.synthesis.loop import _Run, _whole_update, make_param
from cnnscope.synthesis.optim import Optimizer


class _Stop(Exception):
    pass


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def medians(fns, repeats: int, device) -> list[float]:
    """Median time of each function, measured in turn within every repeat (noise-fair)."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for slot, fn in zip(times, fns):
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            slot.append(time.perf_counter() - t)
    return [statistics.median(t) for t in times]


def plain_pass(model, x, layer: str, channels: list[int], stop: bool):
    """Plain PyTorch: forward (optionally stopping at ``layer``), channel means, input gradient."""
    module = dict(model.module.named_modules())[layer]
    store = {}

    def hook(_m, _i, out):
        store["a"] = out
        if stop:
            raise _Stop

    def run():
        xx = x.detach().clone().requires_grad_(True)
        handle = module.register_forward_hook(hook)
        try:
            model.module(xx)
        except _Stop:
            pass
        finally:
            handle.remove()
        a = store["a"]
        obj = sum(a[i, c].mean() for i, c in enumerate(channels))
        # Gradient w.r.t. the input only (no weight gradients), like the engine's.
        return torch.autograd.grad(obj, xx)[0]

    return run


def synthesis_step(model, cfg: SynthesisConfig):
    """One step of ``synthesize`` with ``cfg`` (the same code path, without the loop)."""
    run = _Run(model, cfg, None)
    size = run.sizes()[0]
    run.bind(size)
    init = run.init_image(size).to(run.device)
    param = make_param(cfg.param, init, run.space, generator=run.gen, random_init=True)
    opt = Optimizer(cfg.optimizer)

    def step():
        _whole_update(run, param, None, 0.0, cfg.learning_rate, opt, None)

    return step


def bench_overhead(model, device, batch: int, size: int, layer: str, repeats: int) -> list[dict]:
    channels = list(range(batch))
    units = [f"{layer}:{c}" for c in channels]
    x = torch.randn(batch, 3, size, size, device=device)
    bare = visualize_config(
        model,
        units,
        1,
        size,
        param="pixel",
        pad=0,
        jitter=0,
        scales=[],
        angles=[],
        jitter2=0,
        optimizer="adam",
        learning_rate=1.0,
    )
    lucid = visualize_config(model, units, 1, size)
    fns = [
        plain_pass(model, x, layer, channels, stop=False),
        plain_pass(model, x, layer, channels, stop=True),
        synthesis_step(model, bare),
        synthesis_step(model, lucid),
    ]
    t_full, t_stop, t_bare, t_lucid = medians(fns, repeats, device)
    return [
        dict(
            case=case,
            layer=layer,
            batch=batch,
            size=size,
            step=t,
            plain=t_full,
            ratio=t / t_full,
            plain_stop=t_stop,
            ratio_stop=t / t_stop,
        )
        for case, t in (("pixels, no transforms", t_bare), ("Lucid: fft + transforms", t_lucid))
    ]


def bench_batches(model, device, batches, size: int, layer: str, repeats: int, steps: int = 128):
    rows = []
    for b in batches:
        cfg = visualize_config(model, [f"{layer}:{c}" for c in range(b)], 1, size)
        (t,) = medians([synthesis_step(model, cfg)], repeats, device)
        rows.append(dict(batch=b, step=t, units_per_s=b / (t * steps), s_per_unit=t * steps / b))
    return rows


def bench_dream(model, device, steps: int, size=(1080, 1920), octaves: int = 4, tile=True):
    t = time.perf_counter()
    r = deepdream(
        model,
        "astronaut",
        "blocks.8",
        octaves=octaves,
        steps=steps,
        size=size,
        tile=tile,
        batch_size=16,
    )
    _sync(device)
    return dict(seconds=time.perf_counter() - t, sizes=r.sizes, tile=tile, steps=steps)


# ---------------------------------------------------------------- 4. selecting a node

#: Units whose pictures the page asks for, a few per depth (one click each).
VISIBLE = [
    "blocks.8.expand_act:5",
    "blocks.15:3",
    "head_act:7",
    "blocks.4:2",
    "blocks.11:9",
    "blocks.13:30",
]
POLL_S = 1.0  # the page's polling interval (static/js/vis.js)
ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served(data_dir: str, default_index: bool = False):
    """``cnnscope serve`` in a subprocess on a free port; yields an ``httpx.Client``."""
    port = _free_port()
    cmd = [sys.executable, "-m", "cnnscope", "serve", "--no-browser", "--port", str(port),
           "--data-dir", data_dir]  # fmt: skip
    if not default_index:
        cmd.append("--no-default-index")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if client.get("/api/models").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the server did not start")
            time.sleep(0.3)
        yield client
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _vis_url(unit: str) -> str:
    return f"/api/units/{unit}/visualization"


def time_to_picture(client: httpx.Client, unit: str, timeout: float = 300) -> float:
    """Seconds from the POST of ``unit``'s visualization to its PNG, polling as the page."""
    t = time.perf_counter()
    state = client.post(_vis_url(unit)).json()
    while state["state"] != "done":
        if state["state"] == "failed" or time.perf_counter() - t > timeout:
            raise RuntimeError(f"{unit}: {state}")
        time.sleep(POLL_S)
        state = client.get(_vis_url(unit)).json()
        if state["state"] == "none":  # dropped, or the old server's lost file: ask again
            state = client.post(_vis_url(unit)).json()
    png = client.get(state["image"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    return time.perf_counter() - t


def wait_idle(client: httpx.Client, timeout: float = 120) -> None:
    """Until the background lane has nothing queued or running (a server without the
    running count: until nothing is queued, then the longest a job may still run)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = client.get("/api/stats").json()
        if stats.get("background_queued", 0) == 0:
            if "background_running" not in stats:
                time.sleep(25)  # an unpolled job is stopped within 20 s
                return
            if stats["background_running"] == 0:
                return
        time.sleep(0.5)


def _others(round_: int) -> list[str]:
    """5 units of the tree's layers nobody asked for before (a user's earlier clicks)."""
    layers = ["blocks.6", "blocks.9", "blocks.10", "blocks.12", "blocks.14"]
    return [f"{layer}:{40 + 7 * round_ + i}" for i, layer in enumerate(layers)]


def bench_select(units: list[str], index_case: bool = True) -> dict:
    """Seconds to the picture: idle, after 5 other asks, during the index build."""
    out: dict = {}
    with tempfile.TemporaryDirectory() as data, served(data) as client:
        time_to_picture(client, "blocks.2:1")  # the first job also warms the lane
        wait_idle(client)
        out["idle"] = []
        for unit in units:
            out["idle"].append(time_to_picture(client, unit))
            print(f"  idle {unit}: {out['idle'][-1]:.1f} s", flush=True)
        out["busy"] = []
        for i, unit in enumerate(units):
            wait_idle(client)
            for other in _others(i):  # asked for, then the page moved on
                client.post(_vis_url(other))
            out["busy"].append(time_to_picture(client, unit.replace(":", ":1")))
            print(f"  after 5 others {unit}: {out['busy'][-1]:.1f} s", flush=True)
    out["index"] = []
    if not index_case:
        return out
    with tempfile.TemporaryDirectory() as data, served(data, default_index=True) as client:
        for unit in units[:3]:
            building = client.get("/api/index").json()["state"] == "building"
            out["index"].append(time_to_picture(client, unit) if building else float("nan"))
            print(f"  while the index builds {unit}: {out['index'][-1]:.1f} s", flush=True)
    return out


def bench_settings(repeats: int) -> dict:
    """One picture, old explorer settings vs new, one thread, interleaved (in process)."""
    from cnnscope.server.background import channels_last
    from cnnscope.synthesis.api import QUICK_VISUALIZATION, visualize_units

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = load_model()
    quick = dict(QUICK_VISUALIZATION)

    def old():
        visualize_units(model, ["blocks.15:3"], steps=128, size=160)

    def new():
        with channels_last(model.module):
            visualize_units(model, ["blocks.15:3"], **quick)

    try:
        t_old, t_new = medians([old, new], repeats, torch.device("cpu"))
    finally:
        torch.set_num_threads(threads)
    return dict(old=t_old, new=t_new, quick=quick)


def select_report(quick: bool, repeats: int) -> list[str]:
    load = os.getloadavg()[0]
    units = VISIBLE[:3] if quick else VISIBLE
    s = bench_settings(1 if quick else repeats)
    r = bench_select(units)
    load = max(load, os.getloadavg()[0])
    med = {k: statistics.median(v) for k, v in r.items()}
    q = s["quick"]
    return [
        "## Selecting a node: POST of a unit's visualization to its PNG, through the server",
        "",
        f"`cnnscope serve` in a subprocess, fresh data dir, page-like polling every {POLL_S:g} s; "
        f"units {', '.join(units)}; load average up to {load:.1f} during the run.",
        "",
        "| case | median (s) | max (s) | target |",
        "|---|---|---|---|",
        f"| idle server | {med['idle']:.1f} | {max(r['idle']):.1f} | <= 20 |",
        f"| right after 5 other units were asked for | {med['busy']:.1f} | {max(r['busy']):.1f} | <= 20 |",
        f"| first start, while the default index builds | {med['index']:.1f} | {max(r['index']):.1f} | <= 20 |",
        "",
        f"One picture in process, one thread (the lane's), blocks.15:3, medians of "
        f"{1 if quick else repeats}: old settings (128 steps, 160 px, lr 0.05) {s['old']:.1f} s, "
        f"new ({q['steps']} steps, {q['size']} px, lr {q['learning_rate']:g}, channels-last) "
        f"{s['new']:.1f} s: {s['old'] / s['new']:.1f}x faster.",
    ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats")
    ap.add_argument("--no-dream", action="store_true", help="skip the 1920x1080 DeepDream")
    ap.add_argument("--md", help="also write the Markdown report here")
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--select", action="store_true", help="only section 4: selecting a node")
    args = ap.parse_args(argv)
    if args.select:
        text = "\n".join(select_report(args.quick, 3 if args.quick else args.repeats)) + "\n"
        if args.md:
            Path(args.md).write_text(text, "utf-8")
        print(text)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = load_model()
    model.module.to(device)
    repeats = 3 if args.quick else args.repeats
    lines = [
        "# Synthesis benchmark",
        "",
        f"Device: {device} ({platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads), torch {torch.__version__}. "
        f"Medians of {repeats} interleaved repeats. Command: `python bench/synthesis.py "
        f"{' '.join(argv if argv is not None else sys.argv[1:])}`.",
        "",
        "## Step time vs a plain forward + backward of the same batch",
        "",
        "| case | layer | batch x size | step (s) | plain full (s) | ratio | plain stopping at layer (s) | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    cases = (
        [(4, 128, "blocks.8")]
        if args.quick
        else [(1, 224, "blocks.8"), (4, 224, "blocks.8"), (8, 128, "blocks.4")]
    )
    for batch, size, layer in cases:
        for r in bench_overhead(model, device, batch, size, layer, repeats):
            lines.append(
                f"| {r['case']} | {r['layer']} | {r['batch']} x {r['size']} | {r['step']:.4f} | "
                f"{r['plain']:.4f} | {r['ratio']:.2f}x | {r['plain_stop']:.4f} | {r['ratio_stop']:.2f}x |"
            )
            print(lines[-1], flush=True)
    lines += [
        "",
        "## Batch mode: units rendered per second (128 steps, Lucid settings, blocks.8, 128 px)",
        "",
        "| units per batch | step (s) | units/s | s per unit |",
        "|---|---|---|---|",
    ]
    for r in bench_batches(
        model, device, [1, 4] if args.quick else [1, 4, 8, 16], 128, "blocks.8", repeats
    ):
        lines.append(
            f"| {r['batch']} | {r['step']:.3f} | {r['units_per_s']:.3f} | {r['s_per_unit']:.1f} |"
        )
        print(lines[-1], flush=True)
    if not args.no_dream:
        size = (270, 480) if args.quick else (1080, 1920)
        lines += [
            "",
            f"## DeepDream of a {size[1]}x{size[0]} image, 4 octaves x 10 steps (blocks.8, astronaut)",
            "",
            "| mode | octave sizes | wall time (s) |",
            "|---|---|---|",
        ]
        for tile in (True, False):
            r = bench_dream(model, device, 10, size, 4, tile)
            mode = "tiled 224x224 (cnn-vis)" if tile else "untiled (whole image)"
            sizes = ", ".join(f"{h}x{w}" for h, w in r["sizes"])
            lines.append(f"| {mode} | {sizes} | {r['seconds']:.1f} |")
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if args.md:
        Path(args.md).write_text(text, "utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
