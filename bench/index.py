"""Benchmark of the dataset index (``cnnscope index``).

1. Throughput: images/s of the indexing step (engine forward recording 5 layers + each
   unit's spatial max + the running top-k of every unit) against the plain model forward,
   on the same in-memory batches, interleaved, medians over repeats. Target >= 0.85x.
2. End to end: ``build_index`` on a folder (DataLoader decoding, checkpoints, the final
   write) against a loop of the same DataLoader + the plain forward.
3. Memory: peak PSS of a build's process tree (a fresh process each) as the folder grows
   10x. Target: flat.

Folders are made by augmenting the built-in gallery (random crops, flips, scales) into a
temporary folder. Run ``python bench/index.py`` (``--quick`` for a smoke run); ``--md PATH``
also writes the Markdown report.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import ImageOps

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from cnnscope.engine import Engine  # noqa: E402
from cnnscope.images import gallery_images  # noqa: E402
from cnnscope.index.build import offer_batch, run_build  # noqa: E402
from cnnscope.index.merge import RunningTopK  # noqa: E402
from cnnscope.models import load_model  # noqa: E402

LAYERS = ["stem_act", "blocks.4", "blocks.10", "blocks.15", "head_act"]


def make_folder(folder: Path, n: int, seed: int = 0, size: int = 256) -> Path:
    """``n`` JPEGs: random crops (30-100 %), flips and scales of the gallery photos."""
    folder.mkdir(parents=True, exist_ok=True)
    photos = [g.load() for g in gallery_images()]
    rng = np.random.default_rng(seed)
    for i in range(n):
        photo = photos[i % len(photos)]
        w, h = photo.size
        side = int(min(w, h) * rng.uniform(0.3, 1.0))
        left, top = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        img = photo.crop((left, top, left + side, top + side))
        # scales from a fixed set: Preprocessing.geometry fails on some sizes (e.g. 187 x 187,
        # a float rounding bug reported to the lead) and would make the bench skip images
        side = int(size * rng.choice([0.875, 0.9375, 1.0, 1.0625, 1.125, 1.25]))
        img = img.resize((side, side))
        if rng.random() < 0.5:
            img = ImageOps.mirror(img)
        sub = folder / f"part{i % 10}"
        sub.mkdir(exist_ok=True)
        img.save(sub / f"img{i:06d}.jpg", quality=90)
    return folder


def throughput(model, batches: list[torch.Tensor], repeats: int) -> dict:
    engine = Engine.for_module(model.module)
    size = model.preprocess_config.input_size
    infos = {i.name: i for i in engine.layers(size)}
    channels = {name: infos[name].shape[0] for name in LAYERS}
    units = sum(channels.values())
    plain, index = [], []
    with torch.no_grad():
        model.module(batches[0])  # warm up both paths
        state = RunningTopK(channels, 16)
        offer_batch(
            engine, LAYERS, state, batches[0], len(batches[0]), torch.arange(len(batches[0]))
        )
        for _ in range(repeats):
            # batch by batch, alternating which path goes first, so that load changes on a
            # shared machine hit both paths alike
            state = RunningTopK(channels, 16)
            tp = tq = 0.0
            for b, x in enumerate(batches):
                numbers = torch.arange(b * len(x), (b + 1) * len(x))
                for path in ("plain", "index") if b % 2 == 0 else ("index", "plain"):
                    t = time.perf_counter()
                    if path == "plain":
                        model.module(x)
                        tp += time.perf_counter() - t
                    else:
                        offer_batch(engine, LAYERS, state, x, len(x), numbers)
                        tq += time.perf_counter() - t
            plain.append(tp)
            index.append(tq)
    n = sum(len(x) for x in batches)
    p, q = statistics.median(plain), statistics.median(index)
    return {
        "images": n,
        "units": units,
        "plain_ips": n / p,
        "index_ips": n / q,
        "ratio": p / q,
        "plain_runs": plain,
        "index_runs": index,
    }


def end_to_end(model, folder: Path, out: Path, batch_size: int, workers: int) -> dict:
    """DataLoader + plain forward vs ``run_build`` on the same folder, ABBA-interleaved."""
    from cnnscope.index.loader import Collate, Images
    from cnnscope.index.sources import Source

    src = Source(folder)
    items = src.scan()
    pre = model.preprocess_config

    def plain() -> float:
        loader = torch.utils.data.DataLoader(
            Images(src, items, pre),
            batch_size=batch_size,
            num_workers=workers,
            collate_fn=Collate(batch_size, tuple(pre.input_size)),
        )
        t = time.perf_counter()
        with torch.no_grad():
            for _, x, _ in loader:
                model.module(x)
        return time.perf_counter() - t

    def build() -> float:
        t = time.perf_counter()
        run_build(
            model,
            folder,
            LAYERS,
            top_k=16,
            out=out,
            batch_size=batch_size,
            workers=workers,
            rebuild=True,
        )
        return time.perf_counter() - t

    a1, b1, b2, a2 = plain(), build(), build(), plain()
    n = len(items)
    p, q = (a1 + a2) / 2, (b1 + b2) / 2
    return {"images": n, "plain_ips": n / p, "index_ips": n / q, "ratio": p / q}


def child_build(folder: str, out: str, batch_size: int, workers: int) -> None:
    """Run in a fresh process: build, then print the main process's peak (VmHWM) as JSON."""
    model = load_model()
    t = time.perf_counter()
    result = run_build(
        model, folder, LAYERS, top_k=16, out=out, batch_size=batch_size, workers=workers
    )
    elapsed = time.perf_counter() - t
    print(
        json.dumps(
            {
                "images": result.total,
                "vmhwm_mib": _status_kib("self", "VmHWM") / 1024,
                "seconds": elapsed,
            }
        )
    )


def _status_kib(pid, field: str) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return 0.0


def _pss_kib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return float(line.split()[1])
    except OSError:
        pass
    return 0.0


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        for task in Path(f"/proc/{p}/task").glob("*") if Path(f"/proc/{p}/task").exists() else []:
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return pids


def memory(sizes: list[int], tmp: Path, batch_size: int, workers: int) -> list[dict]:
    """Peak PSS (proportional set size: shared pages split between processes) of the whole
    build process tree, sampled every 0.2 s, for each folder size."""
    rows = []
    for n in sizes:
        folder = make_folder(tmp / f"folder{n}", n, seed=n)
        cmd = [sys.executable, __file__, "--child-build", str(folder), str(tmp / f"ix{n}")]
        cmd += ["--batch-size", str(batch_size), "--workers", str(workers)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        peak_total = peak_main = 0.0
        while proc.poll() is None:
            pids = _tree(proc.pid)
            main_pss = _pss_kib(proc.pid)
            peak_main = max(peak_main, main_pss)
            peak_total = max(peak_total, main_pss + sum(_pss_kib(p) for p in pids[1:]))
            time.sleep(0.2)
        out = proc.stdout.read()
        if proc.returncode:
            raise SystemExit(f"child build failed ({proc.returncode})")
        row = json.loads(out.strip().splitlines()[-1])
        row.update(peak_pss_mib=peak_total / 1024, peak_main_pss_mib=peak_main / 1024)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, 1 repeat: a smoke run")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--batches", type=int, default=4, help="in-memory batches for part 1")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--sizes", default="100,1000", help="folder sizes for the memory part")
    ap.add_argument("--md", help="also write the Markdown report here")
    ap.add_argument("--child-build", nargs=2, metavar=("FOLDER", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_build:
        child_build(*args.child_build, args.batch_size, args.workers)
        return
    if args.quick:
        args.batch_size, args.batches, args.repeats, args.sizes = 8, 2, 2, "16,160"
    sizes = [int(s) for s in args.sizes.split(",")]

    model = load_model()
    tmp = Path(tempfile.mkdtemp(prefix="cnnscope-bench-index-"))
    folder = make_folder(tmp / "tp", args.batch_size * args.batches, seed=1)
    from cnnscope.images import load_image

    files = sorted(folder.rglob("*.jpg"))
    xs = torch.cat([model.preprocess(load_image(f)) for f in files])
    batches = list(xs.split(args.batch_size))

    tp = throughput(model, batches, args.repeats)
    e2e = end_to_end(model, folder, tmp / "e2e", args.batch_size, args.workers)
    mem = memory(sizes, tmp, args.batch_size, args.workers)

    shown = [a for a in sys.argv[1:] if a != "--md" and a != args.md]
    cmd = "python bench/index.py " + " ".join(shown)
    lines = [
        "# Dataset index benchmark (`bench/index.py`)",
        "",
        f"Command: `{cmd.strip()}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, CPU. Model: efficientnet_lite0 at 224x224, "
        f"batch {args.batch_size}.  ",
        f"Layers: {', '.join(LAYERS)} ({tp['units']} units), top 16 per unit.",
        "",
        "## Throughput (same in-memory batches, alternating batch by batch, median of "
        f"{args.repeats} runs of {tp['images']} images)",
        "",
        "| path | images/s |",
        "|---|---|",
        f"| plain `model(x)` under no_grad | {tp['plain_ips']:.1f} |",
        f"| indexing step (engine forward of 5 layers + spatial max + running top-k) | "
        f"{tp['index_ips']:.1f} |",
        f"| **ratio** (target >= 0.85) | **{tp['ratio']:.3f}** |",
        "",
        f"End to end on a folder of {e2e['images']} JPEGs ({args.workers} decoding worker(s), "
        "runs in the order plain, build, build, plain; means): DataLoader + plain forward "
        f"{e2e['plain_ips']:.1f} images/s, `build_index` {e2e['index_ips']:.1f} images/s "
        f"(ratio {e2e['ratio']:.3f}; includes scanning, checkpoints and the final write).",
        "",
        "## Peak memory as the folder grows (a fresh process per build)",
        "",
        "Peak PSS (shared pages split between processes) of the build's whole process tree "
        "(main + decoding workers), sampled every 0.2 s, and the main process's VmHWM.",
        "",
        "| images | peak PSS, all processes (MiB) | peak PSS, main (MiB) | VmHWM, main (MiB) | "
        "seconds |",
        "|---|---|---|---|---|",
    ]
    for r in mem:
        lines.append(
            f"| {r['images']} | {r['peak_pss_mib']:.0f} | {r['peak_main_pss_mib']:.0f} | "
            f"{r['vmhwm_mib']:.0f} | {r['seconds']:.1f} |"
        )
    growth = mem[-1]["peak_pss_mib"] - mem[0]["peak_pss_mib"]
    lines += [
        "",
        f"Peak PSS changes by {growth:+.0f} MiB for {mem[-1]['images'] // mem[0]['images']}x "
        "the images (target: flat). The running state is units x k x 12 bytes "
        f"({tp['units'] * 16 * 12 / 1024:.0f} KiB here); the file list is the only per-image "
        "memory.",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.md:
        Path(args.md).write_text(report)


if __name__ == "__main__":
    main()
