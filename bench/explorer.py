"""Benchmark of the explorer over HTTP: expansion latency, long jobs, throughput, memory.

Usage::

    python bench/explorer.py            # full: 20 warm + 8 cold expansions, expansions
                                        #       beside a drill-up and a Score-CAM, 60 s
                                        #       throughput runs, 1,000 expansions over 20 images
    python bench/explorer.py --quick    # a few minutes: smaller counts, same measures
    python bench/explorer.py --long-jobs  # only the expansions beside long jobs (printed)

A node expansion is what the tree page does on a click: ``GET children`` and then the
``reconstruction.png`` of every child, fetched six at a time like a browser. Latency is
reported as a ratio to one forward+backward of the model on one image, measured in this
run (torch autograd to the input, medians). The server is a real ``cnnscope serve``
subprocess on loopback, so its memory (VmRSS) is measured alone.

Figures go to docs/benchmarks/explorer.md (``--out``).
"""

from __future__ import annotations

import argparse
import copy
import io
import itertools
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import ImageEnhance, ImageOps

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


class Baseline:
    """One forward+backward (torch autograd to the input) of the model on one image.

    Sampled again and again during the run, between HTTP measurements, so that the
    ratios compare numbers taken under the same machine load.
    """

    def __init__(self):
        from cnnscope.images import load_gallery_image
        from cnnscope.models import load_model

        self.model = load_model()
        self.x = self.model.preprocess(load_gallery_image("chelsea"))
        self.samples: list[float] = []
        self.full: list[float] = []  # forward + backward to the weights, as training does
        # the same with the weights channels-last, the layout `cnnscope serve` runs on CPU
        self.fast = copy.deepcopy(self.model.module).to(memory_format=torch.channels_last)
        self.full_cl: list[float] = []
        for _ in range(2):
            self.once(keep=False)

    def once(self, keep: bool = True) -> float:
        t = time.perf_counter()
        xx = self.x.clone().requires_grad_(True)
        out = self.model.module(xx)
        torch.autograd.grad(out[0, 285], xx)
        elapsed = time.perf_counter() - t
        t = time.perf_counter()
        self.model.module.zero_grad(set_to_none=True)
        self.model.module(self.x)[0, 285].backward()
        full = time.perf_counter() - t
        self.model.module.zero_grad(set_to_none=True)
        t = time.perf_counter()
        self.fast(self.x)[0, 285].backward()
        full_cl = time.perf_counter() - t
        self.fast.zero_grad(set_to_none=True)
        if keep:
            self.samples.append(elapsed)
            self.full.append(full)
            self.full_cl.append(full_cl)
        return elapsed

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def median_full(self) -> float:
        return statistics.median(self.full)

    @property
    def median_full_cl(self) -> float:
        return statistics.median(self.full_cl)


def quiet_reference(baseline: Baseline, settle_s: float = 0.25) -> None:
    """One reference sample, taken while the server is idle.

    Interleaved with the expansions (same machine, same minutes), but not overlapping the
    server's last pictures of the previous expansion, which would slow the reference down
    and flatter the ratio; the next expansion starts on an idle machine too.
    """
    time.sleep(settle_s)
    baseline.once()
    time.sleep(settle_s)


def batching_gain(reps: int, k: int = 8) -> tuple[float, float]:
    """Seconds for ``k`` reconstructions: one batched call vs ``k`` single calls (medians).

    Measured in this process on the tree API itself, interleaved: it bounds what merging
    requests in the server can gain.
    """
    from cnnscope.images import load_gallery_image
    from cnnscope.models import load_model
    from cnnscope.tree import Explorer

    ex = Explorer(load_model())
    x = ex.input(load_gallery_image("coffee"))
    paths = [n.path for n in ex.children(x, "logits:967", k=k)]
    ex.reconstructions(x, paths)  # warm: seeds cached, as in the server
    batched, single = [], []
    for _ in range(reps):
        t = time.perf_counter()
        ex.reconstructions(x, paths)
        batched.append(time.perf_counter() - t)
        t = time.perf_counter()
        for p in paths:
            ex.reconstruction(x, p)
        single.append(time.perf_counter() - t)
    return statistics.median(batched), statistics.median(single)


def synthetic_images(n: int, seed: int = 0) -> list[bytes]:
    """``n`` distinct photos: gallery images cropped, flipped and recoloured."""
    from cnnscope.images import gallery_images

    rng = random.Random(seed)
    bases = [g.load() for g in gallery_images()]
    out = []
    for i in range(n):
        img = bases[i % len(bases)]
        w, h = img.size
        s = rng.uniform(0.6, 0.95)
        cw, ch = int(w * s), int(h * s)
        x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
        img = img.crop((x0, y0, x0 + cw, y0 + ch))
        if rng.random() < 0.5:
            img = ImageOps.mirror(img)
        img = ImageEnhance.Color(img).enhance(rng.uniform(0.7, 1.3))
        buf = io.BytesIO()
        img.save(buf, "PNG")
        out.append(buf.getvalue())
    return out


class Server:
    """``cnnscope serve`` in a subprocess."""

    def __init__(self, cache_mb: float, data_dir: str):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        cmd = [
            sys.executable, "-m", "cnnscope", "serve", "--no-browser", "--no-default-index",
            "--port", str(self.port),
            "--data-dir", data_dir, "--cache-mb", str(cache_mb),
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.base + "/api/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError("the server did not start")

    def rss(self) -> float:
        return rss_mb(self.proc.pid)

    def stats(self) -> dict:
        return httpx.get(self.base + "/api/stats", timeout=60).json()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Walker:
    """One client walking down its own trees: every expansion is a new path."""

    def __init__(self, base: str, image: str, next_root, k: int = 5):
        self.client = httpx.Client(base_url=base, timeout=900)
        self.pool = ThreadPoolExecutor(6)  # a browser fetches six images at a time
        self.image = image
        self.next_root = next_root
        self.k = k
        self.path: str | None = None
        self.turn = 0

    def expand(self) -> float:
        """One expansion; returns its wall time in seconds."""
        if self.path is None:
            self.path = f"logits:{self.next_root()}"
        t = time.perf_counter()
        r = self.client.get(
            f"/api/images/{self.image}/children", params={"path": self.path, "k": self.k}
        )
        r.raise_for_status()
        kids = r.json()["children"]
        for png in self.pool.map(lambda kid: self.client.get(kid["reconstruction"]), kids):
            png.raise_for_status()
        elapsed = time.perf_counter() - t
        self.turn += 1
        self.path = kids[self.turn % len(kids)]["path"] if kids else None
        return elapsed

    def close(self) -> None:
        self.pool.shutdown()
        self.client.close()


def upload(base: str, images: list[bytes]) -> list[str]:
    ids = []
    for i, data in enumerate(images):
        r = httpx.post(
            f"{base}/api/images?name=bench{i}.png",
            content=data,
            headers={"Content-Type": "image/png"},
            timeout=120,
        )
        r.raise_for_status()
        ids.append(r.json()["id"])
    return ids


def warm_up(base: str, image: str) -> None:
    """Run the image's forward (predictions) so that it is cached."""
    httpx.get(f"{base}/api/images/{image}/predictions", timeout=900).raise_for_status()


class Roots:
    """Hands out class indices, each once, so that no expansion is a cache hit."""

    def __init__(self, seed: int = 0):
        order = list(range(1000))
        random.Random(seed).shuffle(order)
        self._it = itertools.cycle(order)
        self._lock = threading.Lock()

    def __call__(self) -> int:
        with self._lock:
            return next(self._it)


def throughput(
    base: str, images: list[str], clients: int, seconds: float, roots: Roots
) -> tuple[float, int]:
    """Expansions per second of ``clients`` concurrent walkers during ``seconds``."""
    for image in images:
        warm_up(base, image)
    walkers = [Walker(base, images[i % len(images)], roots) for i in range(clients)]
    done = [0] * clients
    stop = time.monotonic() + seconds

    def run(i: int) -> None:
        while time.monotonic() < stop:
            walkers[i].expand()
            done[i] += 1

    t = time.perf_counter()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - t
    for w in walkers:
        w.close()
    return sum(done) / elapsed, sum(done)


def timed_get(url: str, params: dict, into: dict) -> None:
    """GET ``url``; put its status and seconds in ``into``."""
    t = time.perf_counter()
    r = httpx.get(url, params=params, timeout=1800)
    into["status"], into["s"] = r.status_code, time.perf_counter() - t


def beside_long_jobs(base: str, roots: Roots, n: int) -> dict:
    """Expansions on an idle server, then beside a running drill-up and a running Score-CAM.

    Each long job is one request from its own client; the expansions (a new node each, on
    the same image, its forward cached) start 0.5 s after it, one after another, as long as
    the job runs (a server that runs the job on its one model worker answers the first only
    when the job is done, and no other starts). Idle samples are taken before and after.
    """
    warm_up(base, "chelsea")
    overview = httpx.get(f"{base}/api/images/chelsea/overview", timeout=900).json()["layers"]
    drill_unit = overview[2]["units"][0]["unit"]
    jobs = {
        "drill-up": ("/api/images/chelsea/parents", {"unit": drill_unit}),
        "Score-CAM": ("/api/images/chelsea/attribution.png", {"method": "score_cam"}),
    }
    walker = Walker(base, "chelsea", roots)
    walker.expand()  # the first backward of a run is slower
    idle = [walker.expand() for _ in range(n)]
    out: dict = {"idle": idle, "jobs": {}, "drill_unit": drill_unit}
    for name, (url, params) in jobs.items():
        done: dict = {}
        thread = threading.Thread(target=timed_get, args=(base + url, params, done))
        thread.start()
        time.sleep(0.5)
        busy = []
        while len(busy) < n and thread.is_alive():
            busy.append(walker.expand())
        thread.join()
        idle += [walker.expand() for _ in range(n // 2)]
        out["jobs"][name] = {"busy": busy, "job_s": done["s"], "status": done["status"]}
        print(f"  {name}: {len(busy)} expansions, job {done['s']:.1f} s", flush=True)
    walker.close()
    return out


def drill_up_in_process(unit: str, reps: int = 2) -> tuple[float, float]:
    """Seconds of the same drill-up in this process on all the CPUs (as the model worker ran
    it) and on one thread (as the slow lane runs it), interleaved, medians of ``reps``."""
    from cnnscope.images import load_gallery_image
    from cnnscope.models import load_model
    from cnnscope.tree import Explorer

    ex = Explorer(load_model())
    x = ex.input(load_gallery_image("chelsea"))
    ex.predictions(x)
    threads = torch.get_num_threads()
    times: dict[int, list[float]] = {threads: [], 1: []}
    try:
        for _ in range(reps):
            for n in times:
                torch.set_num_threads(n)
                t = time.perf_counter()
                ex.parents(x, unit)
                times[n].append(time.perf_counter() - t)
    finally:
        torch.set_num_threads(threads)
    return statistics.median(times[threads]), statistics.median(times[1])


def render_long_jobs(r: dict) -> list[str]:
    idle = pct(r["idle"], 50)
    lines = [
        "## Expansion beside a long job (children + their 5 reconstructions)",
        "",
        "| while | n | p50 | p95 | p50 / idle p50 | long job took | target |",
        "|---|---|---|---|---|---|---|",
        f"| nothing (idle server) | {len(r['idle'])} | {idle:.2f} s | {pct(r['idle'], 95):.2f} s "
        f"| 1.0x | | |",
    ]
    for name, job in r["jobs"].items():
        busy = job["busy"]
        lines.append(
            f"| a {name} runs | {len(busy)} | {pct(busy, 50):.2f} s | {pct(busy, 95):.2f} s | "
            f"**{pct(busy, 50) / idle:.2f}x** | {job['job_s']:.1f} s (HTTP {job['status']}) | < 2x |"
        )
    every, one = r["drill_in_process_s"]
    lines += [
        "",
        f"The drill-up is `parents` of `{r['drill_unit']}` (the top unit of its layer on chelsea; "
        f"one backward per unit of the layer above); the expansions start 0.5 s after the long "
        f"job, one after another while it runs. The slow lane runs both jobs on one thread at a "
        f"lower priority: the same drill-up in process takes {every:.1f} s on all the CPUs and "
        f"{one:.1f} s on one thread (medians of 2, interleaved).",
        "",
    ]
    return lines


# ------------------------------------------------------------------------------ main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts (a few minutes)")
    parser.add_argument("--cache-mb", type=float, default=600, help="server forward cache bound")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "explorer.md"))
    parser.add_argument(
        "--long-jobs", action="store_true", help="only the expansions beside long jobs (printed)"
    )
    args = parser.parse_args(argv)
    if args.long_jobs:
        return long_jobs_only(args)
    q = args.quick
    n_warm, n_cold = (8, 3) if q else (20, 8)
    tp_seconds = 25 if q else 60
    mem_expansions, mem_images = (100, 5) if q else (1000, 20)

    print("baseline: forward+backward of one image ...", flush=True)
    baseline = Baseline()
    for _ in range(3):
        baseline.once()
    print(f"  {baseline.median * 1000:.0f} ms", flush=True)
    print("batching gain of the tree API ...", flush=True)
    gain_batched, gain_single = batching_gain(3)

    data_dir = tempfile.mkdtemp(prefix="cnnscope-bench-")
    server = Server(args.cache_mb, data_dir)
    results: dict = {}
    try:
        rss_start = server.rss()
        pics = synthetic_images(max(n_cold, mem_images))
        ids = upload(server.base, pics)

        # Warm: the image's forward is cached; every expansion is a new node.
        print("warm expansions ...", flush=True)
        roots = Roots()
        warm_up(server.base, "chelsea")
        walker = Walker(server.base, "chelsea", roots)
        warm = []
        for _ in range(n_warm):
            warm.append(walker.expand())
            quiet_reference(baseline)
        walker.close()
        # Cold: a new image each time (its forward is part of the expansion).
        print("cold expansions ...", flush=True)
        cold = []
        for image in ids[:n_cold]:
            w = Walker(server.base, image, roots)
            cold.append(w.expand())
            w.close()
            quiet_reference(baseline)
        results.update(
            warm=warm,
            cold=cold,
            baseline_s=baseline.median,
            baseline_full_s=baseline.median_full,
            baseline_full_cl_s=baseline.median_full_cl,
            baseline_n=len(baseline.samples),
            gain=(gain_batched, gain_single),
        )

        print("expansions beside long jobs ...", flush=True)
        results["long"] = beside_long_jobs(server.base, roots, 5 if q else 10)

        print("throughput ...", flush=True)
        one, n1 = throughput(server.base, ["chelsea"], 1, tp_seconds, roots)
        eight, n8 = throughput(server.base, ["chelsea"], 8, tp_seconds, roots)
        four_imgs = ["coffee", "rocket", "flower", "china"]
        one4, m1 = throughput(server.base, four_imgs[:1], 1, tp_seconds, roots)
        eight4, m8 = throughput(server.base, four_imgs, 8, tp_seconds, roots)
        results.update(tp=(one, n1, eight, n8), tp4=(one4, m1, eight4, m8))

        print(f"memory: {mem_expansions} expansions over {mem_images} images ...", flush=True)
        rss_before = server.rss()
        stats_before = server.stats()
        peak = [rss_before]
        counter = [0]
        lock = threading.Lock()
        images = ids[:mem_images]

        mem_roots = Roots(seed=1)

        def mem_client(i: int) -> None:
            while True:
                with lock:
                    if counter[0] >= mem_expansions:
                        return
                    counter[0] += 1
                    n = counter[0]
                image = images[n % len(images)]
                w = Walker(server.base, image, mem_roots, k=5)
                w.expand()
                w.close()
                peak[0] = max(peak[0], server.rss())

        threads = [threading.Thread(target=mem_client, args=(i,)) for i in range(8)]
        t0 = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        mem_time = time.perf_counter() - t0
        stats = server.stats()
        results.update(
            stats_before=stats_before,
            rss_start=rss_start,
            rss_before=rss_before,
            rss_peak=peak[0],
            rss_end=server.rss(),
            stats=stats,
            mem_time=mem_time,
        )
    finally:
        server.stop()

    results["long"]["drill_in_process_s"] = drill_up_in_process(results["long"]["drill_unit"])
    report = render(results, args, mem_expansions, mem_images)
    print(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report, "utf-8")
    print(f"wrote {out}")
    return 0


def long_jobs_only(args) -> int:
    """``--long-jobs``: the expansions beside long jobs alone, printed as markdown."""
    server = Server(args.cache_mb, tempfile.mkdtemp(prefix="cnnscope-bench-"))
    try:
        long = beside_long_jobs(server.base, Roots(), 5 if args.quick else 10)
    finally:
        server.stop()
    long["drill_in_process_s"] = drill_up_in_process(long["drill_unit"])
    cmd = "python bench/explorer.py --long-jobs" + (" --quick" if args.quick else "")
    print(f"Command: `{cmd}`, load average {os.getloadavg()[0]:.1f} at the end.\n")
    print("\n".join(render_long_jobs(long)))
    return 0


def render(r: dict, args, mem_expansions: int, mem_images: int) -> str:
    b, bf = r["baseline_s"], r["baseline_full_s"]
    warm, cold = r["warm"], r["cold"]
    one, n1, eight, n8 = r["tp"]
    one4, m1, eight4, m8 = r["tp4"]
    st = r["stats"]
    sb = r["stats_before"]
    bound = st["engine_cache_limit"] / 2**20
    results_mb = 128
    growth = r["rss_peak"] - r["rss_before"]
    cmd = "python bench/explorer.py" + (" --quick" if args.quick else "")
    lines = [
        "# Explorer benchmark",
        "",
        f"Command: `{cmd}` (cache bound {args.cache_mb:g} MB). Machine: {platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"load average {os.getloadavg()[0]:.1f} at the end (other jobs shared the CPUs).",
        "",
        f"References, EfficientNet-Lite0 on one image, medians of {r['baseline_n']} samples "
        f"taken between the latency measurements: a forward+backward as training runs it "
        f"(`loss.backward()`: every weight's gradient) **{bf * 1000:.0f} ms**; a forward plus "
        f"the gradient of one logit to the input only (the cheaper pass a reconstruction is "
        f"made of) **{b * 1000:.0f} ms**. The server stores the weights channels-last on CPU "
        f"(about 20% faster); the training-style pass in that layout takes "
        f"{r['baseline_full_cl_s'] * 1000:.0f} ms, against which warm p50 is "
        f"{pct(warm, 50) / r['baseline_full_cl_s']:.1f}x and cold p50 "
        f"{pct(cold, 50) / r['baseline_full_cl_s']:.1f}x.",
        "",
        "## Node expansion over HTTP (children + their 5 reconstructions)",
        "",
        "| | n | p50 | p95 | p50 / fwd+bwd | p50 / fwd+input grad | target |",
        "|---|---|---|---|---|---|---|",
        f"| warm (image cached) | {len(warm)} | {pct(warm, 50):.2f} s | {pct(warm, 95):.2f} s | "
        f"**{pct(warm, 50) / bf:.1f}x** | {pct(warm, 50) / b:.1f}x | <= 1.5x |",
        f"| cold (new image) | {len(cold)} | {pct(cold, 50):.2f} s | {pct(cold, 95):.2f} s | "
        f"**{pct(cold, 50) / bf:.1f}x** | {pct(cold, 50) / b:.1f}x | <= 3x |",
        "",
        *render_long_jobs(r["long"]),
        "## Throughput, 8 concurrent clients vs 1 (expansions per second)",
        "",
        "| clients on | 1 client | 8 clients | ratio | target |",
        "|---|---|---|---|---|",
        f"| one image | {one:.3f} ({n1}) | {eight:.3f} ({n8}) | **{eight / one:.2f}x** | >= 1.5x |",
        f"| four images | {one4:.3f} ({m1}) | {eight4:.3f} ({m8}) | **{eight4 / one4:.2f}x** | |",
        "",
        "What merging can gain at most: 8 reconstructions of one image through the tree "
        f"API, one batched call {r['gain'][0]:.2f} s vs 8 single calls {r['gain'][1]:.2f} s "
        f"(**{r['gain'][1] / r['gain'][0]:.2f}x**), in-process, medians of 3.",
        "",
        f"## Memory after {mem_expansions} expansions over {mem_images} images (8 clients)",
        "",
        "| server RSS | MB |",
        "|---|---|",
        f"| after start (model loaded) | {r['rss_start']:.0f} |",
        f"| before the run | {r['rss_before']:.0f} |",
        f"| peak during the run | {r['rss_peak']:.0f} |",
        f"| at the end | {r['rss_end']:.0f} |",
        f"| engine forward cache at the end | {st['engine_cache_bytes'] / 2**20:.0f} (bound {bound:.0f}) |",
        f"| answer cache at the end | {st['results_bytes'] / 2**20:.0f} (bound {results_mb}) |",
        "",
        f"Peak growth during the run: {growth:.0f} MB for a forward cache bound of {bound:.0f} MB "
        f"and an answer cache bound of {results_mb} MB ({r['mem_time']:.0f} s, "
        f"{st['recon_paths'] - sb['recon_paths']} reconstructions in "
        f"{st['recon_batches'] - sb['recon_batches']} batched backwards).",
        "",
        "## Reading these figures",
        "",
        "- Ratios compare medians of samples interleaved in time with the HTTP measurements, "
        "each taken with the server idle; on a CPU shared with other jobs single samples "
        "still vary several-fold, so compare runs only through the ratios.",
        "- Merging concurrent requests can only pay if one batched backward is cheaper than "
        "the same backwards one by one: the line above the memory table measures that on the "
        "tree API itself. On a 2-core CPU it is small, so 8 clients mostly share the same CPU "
        "time as one; on a GPU the batched backward is where the gain comes from.",
        "- With four images the forward cache bound (here smaller than four forwards) makes "
        "clients evict each other's forwards, which are then recomputed.",
        "- The server keeps one multi-threaded OpenMP team, its model worker's "
        "(`cnnscope.server.threads`): with a second team alive, GNU OpenMP stops spinning "
        "between parallel regions and the reconstruction backwards ran 2x slower.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
