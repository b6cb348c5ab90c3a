"""Benchmark of the class-graph pass (``cnnscope graph``).

1. Throughput: images/s of the pass's per-batch work (engine forward recording the chain,
   one backward of the class logit to every chain layer, ``edge_k`` seeded backwards per
   adjacent pair, the exact sums) against the plain forward+backward of
   the same in-memory batches: (a) as in training, ``model(x)[:, t].sum().backward()``
   with the weights' gradients, (b) the input gradient only. Interleaved, medians.
   Target >= 0.5x.
2. Memory: peak RSS (VmHWM) of a fresh process running ``build_graph`` on 100 and on
   1000 images. Target: flat.
3. Two processes: wall time of ``torchrun --nproc_per_node 2 -m cnnscope graph`` against
   ``python -m cnnscope graph`` on the same folder (one thread per process).

Folders are augmented gallery photos (``bench/index.py``'s ``make_folder``). Run
``python bench/graph.py`` (``--quick`` for a smoke run); ``--md PATH`` writes the report.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from index import _status_kib, make_folder  # noqa: E402  (bench/index.py)
from timing import interleaved  # noqa: E402

from cnnscope.engine import Engine  # noqa: E402
from cnnscope.graph import GraphState, batch_terms, build_graph, chain_layers  # noqa: E402
from cnnscope.images import load_image  # noqa: E402
from cnnscope.models import load_model  # noqa: E402

TARGET = 285  # Egyptian cat


def _model(size: int):
    return load_model(input_size=(size, size))


def throughput(model, batches: list[torch.Tensor], repeats: int, edge_k: int) -> dict:
    """Seconds per batch of each path, alternating batch by batch (a load spike of the
    machine hits the paths alike), median over ``repeats`` rounds of every batch."""
    engine = Engine.for_module(model.module)
    chain = chain_layers(model, engine)
    names = [e["name"] for e in chain]
    state = GraphState([e["channels"] for e in chain], 8)
    strength_at: dict[str, str] = {}
    module = model.module
    params = list(module.parameters())
    flags = [p.requires_grad for p in params]
    turn = {"i": 0}

    def batch() -> torch.Tensor:
        return batches[turn["i"] % len(batches)]

    def plain_train():
        for p in params:
            p.requires_grad_(True)
        module(batch())[:, TARGET].sum().backward()
        for p, f in zip(params, flags):
            p.grad = None
            p.requires_grad_(f)

    def plain_input():
        x = batch().clone().requires_grad_(True)
        torch.autograd.grad(module(x)[:, TARGET].sum(), x)

    def graph_pass(k: int):
        def run():
            x = batch()
            terms = batch_terms(engine, names, TARGET, x, edge_k=k, strength_at=strength_at)
            state.add(terms, torch.ones(len(x), dtype=torch.bool), torch.arange(len(x)))
            if k == max(ks):
                turn["i"] += 1  # the last path of a round: the next round takes the next batch

        return run

    ks = sorted({1, 2, 3, edge_k})
    fns = {"train": plain_train, "input": plain_input, **{f"k{k}": graph_pass(k) for k in ks}}
    t = interleaved(fns, repeats * len(batches))
    n = len(batches[0])
    return {
        "images": n * len(batches),
        "layers": names,
        "train_ips": n / t["train"],
        "input_ips": n / t["input"],
        "pass_ips": {k: n / t[f"k{k}"] for k in ks},
        "ratio_train": {k: t["train"] / t[f"k{k}"] for k in ks},
        "ratio_input": {k: t["input"] / t[f"k{k}"] for k in ks},
    }


def child_run(folder: str, out: str, size: int, batch_size: int, edge_k: int) -> None:
    """In a fresh process: one pass, then print the peak RSS (VmHWM) as JSON."""
    model = _model(size)
    t = time.perf_counter()
    run = build_graph(model, folder, TARGET, out=out, batch_size=batch_size, edge_k=edge_k)
    print(
        json.dumps(
            {
                "images": run.total,
                "seconds": time.perf_counter() - t,
                "vmhwm_mib": _status_kib("self", "VmHWM") / 1024,
            }
        )
    )


def memory(sizes, tmp: Path, size: int, batch_size: int, edge_k: int) -> list[dict]:
    rows = []
    for n in sizes:
        folder = make_folder(tmp / f"folder{n}", n, seed=n, size=size + size // 4)
        cmd = [sys.executable, __file__, "--child-run", str(folder), str(tmp / f"g{n}")]
        cmd += ["--input-size", str(size), "--batch-size", str(batch_size), "--edge-k", str(edge_k)]
        run = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(run.stdout.strip().splitlines()[-1]))
    return rows


def two_processes(folder: Path, tmp: Path, size: int, batch_size: int, edge_k: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    args = [
        "graph",
        str(folder),
        "--class",
        str(TARGET),
        "--input-size",
        str(size),
        "--batch-size",
        str(batch_size),
        "--edge-k",
        str(edge_k),
    ]
    times = {}
    for nproc in (1, 2):
        if nproc == 1:
            cmd = [sys.executable, "-m", "cnnscope", *args, "--out", str(tmp / "p1")]
        else:
            cmd = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc_per_node",
                "2",
                "-m",
                "cnnscope",
                *args,
                "--out",
                str(tmp / "p2"),
            ]
        t = time.perf_counter()
        subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        times[nproc] = time.perf_counter() - t
    return {"one_s": times[1], "two_s": times[2], "speedup": times[1] / times[2]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, 1 repeat: a smoke run")
    ap.add_argument("--input-size", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--batches", type=int, default=3, help="in-memory batches for part 1")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--edge-k", type=int, default=2)
    ap.add_argument("--sizes", default="100,1000", help="folder sizes for the memory part")
    ap.add_argument("--dist-images", type=int, default=600, help="folder size for part 3")
    ap.add_argument("--md", help="also write the Markdown report here")
    ap.add_argument("--child-run", nargs=2, metavar=("FOLDER", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_run:
        child_run(*args.child_run, args.input_size, args.batch_size, args.edge_k)
        return
    if args.quick:
        args.batches, args.repeats, args.sizes, args.dist_images = 2, 1, "20,200", 40
    sizes = [int(s) for s in args.sizes.split(",")]
    size = args.input_size
    model = _model(size)
    tmp = Path(tempfile.mkdtemp(prefix="cnnscope-bench-graph-"))
    folder = make_folder(tmp / "tp", args.batch_size * args.batches, seed=1, size=size + size // 4)
    xs = torch.cat([model.preprocess(load_image(f)) for f in sorted(folder.rglob("*.jpg"))])
    tp = throughput(model, list(xs.split(args.batch_size)), args.repeats, args.edge_k)
    k = args.edge_k
    mem = memory(sizes, tmp, size, args.batch_size, args.edge_k)
    dist_folder = make_folder(tmp / "dist", args.dist_images, seed=2, size=size + size // 4)
    two = two_processes(dist_folder, tmp, size, args.batch_size, args.edge_k)

    shown = [a for a in sys.argv[1:] if a not in ("--md", args.md)]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        "# Class-graph benchmark (`bench/graph.py`)",
        "",
        f"Command: `python bench/graph.py {' '.join(shown)}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, CPU, load average {load:.1f}. Model: "
        f"efficientnet_lite0 at {size}x{size}, batch {args.batch_size}, class {TARGET}, "
        f"edge_k {args.edge_k}.  ",
        f"Chain ({len(tp['layers'])} layers): {', '.join(tp['layers'])}.",
        "",
        f"## Throughput ({tp['images']} images in batches of {args.batch_size}, the paths "
        f"alternating batch by batch, median over {args.repeats} rounds)",
        "",
        "| path | images/s |",
        "|---|---|",
        f"| forward + backward as in training (weights' gradients) | {tp['train_ips']:.1f} |",
        f"| forward + input gradient only | {tp['input_ips']:.1f} |",
        f"| **class-graph pass, edge_k {k}** (forward, 1 + {k} backwards over the chain) | "
        f"{tp['pass_ips'][k]:.1f} |",
        f"| **ratio to training fwd+bwd** (target >= 0.5) | **{tp['ratio_train'][k]:.2f}** |",
        f"| ratio to fwd + input gradient | {tp['ratio_input'][k]:.2f} |",
        "",
        "Other edge_k, same run: "
        + ", ".join(
            f"{j}: {tp['pass_ips'][j]:.1f} images/s = {tp['ratio_train'][j]:.2f}x"
            for j in sorted(tp["pass_ips"])
            if j != k
        )
        + ".",
        "",
        "## Peak memory (a fresh process per pass, no decoding workers)",
        "",
        "| images | VmHWM (MiB) | seconds |",
        "|---|---|---|",
    ]
    lines += [f"| {r['images']} | {r['vmhwm_mib']:.0f} | {r['seconds']:.1f} |" for r in mem]
    lines += [
        "",
        f"## Two processes ({args.dist_images} images, one thread each, wall time with start-up)",
        "",
        f"1 process {two['one_s']:.1f} s, 2 processes (torchrun, gloo) {two['two_s']:.1f} s: "
        f"speed-up **{two['speedup']:.2f}x**.",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.md:
        Path(args.md).write_text(report)


if __name__ == "__main__":
    main()
