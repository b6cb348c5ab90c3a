"""Engine overhead on EfficientNet-Lite0 at 224: recording and batched seeds.

Every figure is a ratio of medians measured side by side in this one run:

- forward with activation recording (every module's output, rule mode on) vs the plain
  model forward with autograd on, and vs a plain ``no_grad`` forward;
- k seeds in one batched backward vs k separate backwards on the same forward, and vs
  the alternative of repeating the input k times (one forward of k copies + one backward).

Run: ``python bench/engine.py [--repeats 15] [--batches 1 16] [--k 5] [--device cpu]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from cnnscope.engine import Engine
from cnnscope.images import load_gallery_image
from cnnscope.models import load_model


def _timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def medians(fns, repeats: int, device: torch.device) -> list[float]:
    """Median time of each function, measured in turn within every repeat (noise-fair)."""
    for fn in fns:
        fn()  # warm up
    times = [[] for _ in fns]
    for _ in range(repeats):
        for slot, fn in zip(times, fns):
            slot.append(_timed(fn, device))
    return [statistics.median(t) for t in times]


def seeds_at(act: torch.Tensor, k: int) -> torch.Tensor:
    """k one-hot seeds on the k most active channels at their max positions (a tree node)."""
    n, c, h, w = act.shape
    flat = act.flatten(2).amax(2)[0]
    seeds = torch.zeros(k, *act.shape)
    for i, ch in enumerate(flat.topk(k).indices.tolist()):
        pos = int(act[0, ch].flatten().argmax())
        seeds[i, :, ch, pos // w, pos % w] = 1.0
    return seeds


def forward_rows(engine, module, x, args, row) -> None:
    """Recording forward vs plain forward, with and without autograd, for one batch."""

    def plain_grad():
        module(x.clone().requires_grad_(True))

    def plain_nograd():
        with torch.no_grad():
            module(x)

    rec, rec_ng, ref, ref_ng = medians(
        [
            lambda: engine.forward(x, cache=False),
            lambda: engine.forward(x, cache=False, grad=False),
            plain_grad,
            plain_nograd,
        ],
        args.repeats,
        x.device,
    )
    row("recording forward vs plain forward (autograd on)", len(x), rec, ref)
    row("recording forward (grad=False) vs plain no_grad forward", len(x), rec_ng, ref_ng)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    model = load_model()
    model.module.to(device)
    engine = Engine(model.module)
    image = model.preprocess(load_gallery_image("chelsea"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    print("| measure | batch | ours (ms) | reference (ms) | ratio |")
    print("|---|---|---|---|---|")

    def row(name, batch, ours, ref):
        print(f"| {name} | {batch} | {ours * 1e3:.1f} | {ref * 1e3:.1f} | {ours / ref:.3f} |")

    for batch in args.batches:
        forward_rows(engine, model.module, image.repeat(batch, 1, 1, 1).to(device), args, row)

    x = image.to(device)
    fwd = engine.forward(x, cache=False)
    seeds = seeds_at(fwd.activation("head_act"), args.k).to(device)

    def repeated():
        f = engine.forward(x.repeat(args.k, 1, 1, 1), cache=False)
        f.grad("head_act", seeds[:, 0], to="input", rule="guided")

    def batched_with(strategy):
        def run():
            fwd.batch_strategy = strategy
            try:
                fwd.grad("head_act", seeds, to="input", rule="guided", batched=True)
            finally:
                del fwd.batch_strategy

        return run

    batched, vmapped, separate, rep = medians(
        [
            batched_with("auto"),
            batched_with("vmap"),
            lambda: [fwd.grad("head_act", s, to="input", rule="guided") for s in seeds],
            repeated,
        ],
        args.repeats,
        device,
    )
    print()
    print(f"| k={args.k} seeds at head_act -> input (guided) | time (ms) | speed-up vs separate |")
    print("|---|---|---|")
    print(f"| {args.k} separate backwards | {separate * 1e3:.1f} | 1.00x |")
    print(
        f"| one batched call, engine default ({x.device.type}: "
        f"{'seed loop' if x.device.type == 'cpu' else 'vmap'}) | {batched * 1e3:.1f} |"
        f" {separate / batched:.2f}x |"
    )
    print(
        f"| one vmapped backward (is_grads_batched) | {vmapped * 1e3:.1f} | {separate / vmapped:.2f}x |"
    )
    print(
        f"| input repeated k times (1 forward + 1 backward) | {rep * 1e3:.1f} | {separate / rep:.2f}x |"
    )


if __name__ == "__main__":
    main()
