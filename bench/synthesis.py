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

Run ``python bench/synthesis.py [--device cpu|cuda] [--quick] [--md PATH]``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from cnnscope.models import load_model
from cnnscope.synthesis import SynthesisConfig, deepdream, visualize_config
from cnnscope.synthesis.optim import Optimizer
from cnnscope.synthesis.render import _Run, _whole_update, make_param


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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats")
    ap.add_argument("--no-dream", action="store_true", help="skip the 1920x1080 DeepDream")
    ap.add_argument("--md", help="also write the Markdown report here")
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args(argv)
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
