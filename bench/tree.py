"""In-process node expansion of the neuron tree vs one forward+backward of the model.

A node expansion is what the explorer does when a node is clicked: its children
(:meth:`Explorer.children`) plus their reconstructions (:meth:`Explorer.reconstructions`).

- cold: a new image (the engine's forward cache is cleared), root ``logits:top1``;
- warm: the image's forward and the node's path are cached (a node at depth 1-3 that an
  earlier expansion produced).

The reference is one forward+backward of the plain model on one image (autograd, no
hooks), and, for information, the engine's recorded forward plus one backward. All are
timed interleaved in one run; medians and ratios are printed and written as Markdown.

Run: ``python bench/tree.py [--reps 15] [--k 5] [--out docs/benchmarks/tree.md]``

``--siblings`` measures instead how alike sibling pictures are in the tree a user opens
first (root: the top class's logit; rule guided, path scoring, k children per node, the
first two children of each level expanded, three levels): the mean Pearson correlation
over every pair of siblings' pictures, per level, over the gallery. Three renderings:
the whole reconstruction, the old zoom (``crop=support``: the box where the picture
differs from grey) and the node's focus (``crop=focus``, :meth:`Explorer.focus`, the
default now). Run: ``python bench/tree.py --siblings [--out docs/benchmarks/tree_siblings.md]``

``--classes`` measures how alike the image page's pictures of the top six classes are:
the mean Pearson correlation over the 15 pairs, over the gallery, for the picture the
overview showed before (the class logit's guided reconstruction) and the one it shows
now (the class's plain gradient drawn ``masked``: the image weighted by the smoothed
|gradient|), with the true gradient's and guided Grad-CAM's for reference.
Run: ``python bench/tree.py --classes``
"""

from __future__ import annotations

import argparse
import io
import itertools
import os
import platform
import statistics
import time
from functools import partial

import numpy as np
import torch
from PIL import Image

from cnnscope.engine import Engine, Unit
from cnnscope.images import gallery_images, load_gallery_image
from cnnscope.models import load_model
from cnnscope.render import png_bytes
from cnnscope.tree import Explorer, zoom_picture

#: Sibling pictures: how each is drawn (see --siblings).
RENDERINGS = ("whole", "support", "focus")


def _time(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of ``fn()``."""
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def _store(out: dict, key: str, fn, *args, **kwargs) -> None:
    out[key] = fn(*args, **kwargs)


def mean_correlation(pictures: list[np.ndarray]) -> float:
    """Mean Pearson correlation over every pair of pictures (flattened RGB)."""
    flat = [p.astype(np.float64).ravel() for p in pictures]
    flat = [(v - v.mean()) / (v.std() + 1e-9) for v in flat]
    return float(np.mean([a @ b / len(a) for a, b in itertools.combinations(flat, 2)]))


def _support(picture: np.ndarray) -> np.ndarray:
    from cnnscope.render.pictures import crop_to_support  # the explorer's old zoom

    return np.asarray(Image.open(io.BytesIO(crop_to_support(png_bytes(picture)))))


def sibling_correlations(ex: Explorer, names: list[str], k: int, levels: int = 3) -> dict:
    """``{rendering: {level: [mean correlation of each sibling group]}}`` (see --siblings)."""
    out = {r: {d: [] for d in range(1, levels + 1)} for r in RENDERINGS}
    for name in names:
        x = ex.input(load_gallery_image(name))
        level = [ex.check_path(f"logits:{ex.predictions(x, 1)[0]['index']}")]
        for depth in range(1, levels + 1):
            nxt = []
            for path in level:
                kids = ex.children(x, path, k=k)
                pictures = ex.reconstructions(x, [n.path for n in kids])
                drawn = {
                    "whole": pictures,
                    "support": [_support(p) for p in pictures],
                    "focus": [zoom_picture(p, ex.focus(x, n.path)) for p, n in zip(pictures, kids)],
                }
                if len(kids) > 1:
                    for rendering, pics in drawn.items():
                        out[rendering][depth].append(mean_correlation(pics))
                nxt.extend(n.path for n in kids[:2])
            level = nxt
    return out


def siblings_main(args) -> None:
    ex = Explorer(load_model())
    names = (
        [g.name for g in gallery_images()] if args.images == "gallery" else args.images.split(",")
    )
    result = sibling_correlations(ex, names, args.k)
    levels = sorted(result["whole"])
    lines = [
        f"Mean pairwise correlation of sibling pictures in the first tree (root: top class, "
        f"guided, path scoring, k={args.k}, first two children of each level expanded), over "
        f"{len(names)} gallery images ({', '.join(names)}); lower is more distinct.",
        "",
        "| picture | " + " | ".join(f"level {d}" for d in levels) + " |",
        "|---|" + "---:|" * len(levels),
    ]
    what = {
        "whole": "whole reconstruction",
        "support": "old zoom (crop=support), the default before",
        "focus": "focus zoom (crop=focus), the default now",
    }
    for rendering in RENDERINGS:
        cells = " | ".join(f"{np.mean(result[rendering][d]):.2f}" for d in levels)
        lines.append(f"| {what[rendering]} | {cells} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")


#: Top-class pictures: (label, how it is drawn) for --classes.
CLASS_PICTURES = (
    ("guided reconstruction (before)", None),
    ("gradient, masked: image x smoothed abs(gradient) (now)", ("gradient", "masked")),
    ("gradient, colored (as the tree draws it)", ("gradient", "colored")),
    ("guided Grad-CAM, colored", ("guided_grad_cam", "colored")),
)


def class_correlations(ex: Explorer, names: list[str], k: int = 6) -> dict[str, list[float]]:
    """``{picture: [mean pairwise correlation of the top-k class pictures, per image]}``."""
    from cnnscope.attribution import attribute
    from cnnscope.render import gradient_image

    out: dict[str, list[float]] = {label: [] for label, _ in CLASS_PICTURES}
    for name in names:
        image = load_gallery_image(name)
        x = ex.input(image)
        classes = [p["index"] for p in ex.predictions(x, k)]
        for label, how in CLASS_PICTURES:
            if how is None:
                pics = ex.reconstructions(x, [ex.check_path(f"logits:{c}") for c in classes])
            else:
                method, style = how
                attrs = [attribute(ex.model, image, method, target=c) for c in classes]
                pics = [
                    gradient_image(a.tensor) if style == "colored" else a.render(style)
                    for a in attrs
                ]
            out[label].append(mean_correlation(pics))
    return out


def classes_main(args) -> None:
    ex = Explorer(load_model())
    names = (
        [g.name for g in gallery_images()] if args.images == "gallery" else args.images.split(",")
    )
    result = class_correlations(ex, names)
    lines = [
        f"Mean pairwise correlation of the top-6 class pictures of the image page, over "
        f"{len(names)} gallery images; lower is more distinct.",
        "",
        "| picture | mean | " + " | ".join(names) + " |",
        "|---|---:|" + "---:|" * len(names),
    ]
    for label, values in result.items():
        cells = " | ".join(f"{v:.2f}" for v in values)
        lines.append(f"| {label} | {np.mean(values):.2f} | {cells} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--images", default=None, help="comma-separated, or 'gallery'")
    parser.add_argument("--siblings", action="store_true", help="sibling-picture correlations")
    parser.add_argument("--classes", action="store_true", help="top-class picture correlations")
    parser.add_argument("--out", default=None, help="write a Markdown table here")
    args = parser.parse_args()
    if args.classes:
        args.images = args.images or "gallery"
        classes_main(args)
        return
    if args.siblings:
        args.images = args.images or "gallery"
        siblings_main(args)
        return
    args.images = args.images or "chelsea,coffee,rocket,astronaut"

    model = load_model()
    engine = Engine.for_module(model.module)
    ex = Explorer(model)
    images = [ex.input(load_gallery_image(n)) for n in args.images.split(",")]
    k = args.k

    def plain_fwd_bwd(x):
        xi = x.clone().requires_grad_(True)
        out = model.module(xi)
        out[0, int(out[0].argmax())].backward()

    def engine_fwd_bwd(x):
        fwd = engine.forward(x, cache=False)
        seed = torch.zeros_like(fwd.activation("logits"))
        seed[0, int(fwd.activation("logits")[0].argmax())] = 1.0
        fwd.grad("logits", seed, rule="guided")

    def expand(x, path):
        kids = ex.children(x, path, k=k)
        ex.reconstructions(x, [n.path for n in kids])
        return kids

    # warm-up: one of each (allocator, lazy init)
    plain_fwd_bwd(images[0])
    engine_fwd_bwd(images[0])
    engine.clear_cache()
    expand(images[0], (Unit("logits", 0),))

    names = ["plain", "recorded", "cold", "warm", "children", "recon", "separate"]
    t: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    for rep in range(args.reps):
        x = images[rep % len(images)]
        t["plain"].append(_time(partial(plain_fwd_bwd, x)))
        t["recorded"].append(_time(partial(engine_fwd_bwd, x)))
        engine.clear_cache()  # a new image: nothing cached
        root = (Unit("logits", int(model.module(x)[0].argmax())),)
        out: dict[str, list] = {}
        run = partial(_store, out)
        t["cold"].append(_time(partial(run, "cold", expand, x, root)))
        # warm: expand a node produced by the previous expansion (its seed is cached)
        node = out["cold"][rep % len(out["cold"])].path
        t["warm"].append(_time(partial(run, "warm", expand, x, node)))
        deeper = out["warm"][0].path
        t["children"].append(_time(partial(run, "kids", ex.children, x, deeper, k=k)))
        paths = [n.path for n in out["kids"]]
        t["recon"].append(_time(partial(ex.input_gradients, x, paths)))
        fwd = ex.forward(x)
        seeds = [ex.node_seed(fwd, p, "guided") for p in paths]
        t["separate"].append(
            _time(partial(lambda f, ss: [f.grad(a, s, rule="guided") for a, s in ss], fwd, seeds))
        )

    def med(key: str, which: int) -> float:
        return statistics.median(v[which] for v in t[key])

    rows = [
        ("plain", "one forward+backward, plain model (reference)"),
        ("recorded", "one recorded forward + one backward (engine)"),
        ("cold", f"node expansion, cold (new image; children + {k} reconstructions)"),
        ("warm", f"node expansion, warm (cached image and path; children + {k} reconstructions)"),
        ("children", "  of which: children (one backward to the next chain layer)"),
        ("recon", f"  of which: {k} reconstructions, one batched backward"),
        ("separate", f"  for comparison: {k} reconstructions as {k} separate backwards"),
    ]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load average {load:.1f} at the end; "
        f"EfficientNet-Lite0, 224x224, k={k}, rule guided, {args.reps} reps interleaved over "
        f"{len(images)} gallery images; medians. CPU = this process's CPU time (robust to "
        "other processes sharing the cores); wall = elapsed time.",
        "",
        "| operation | wall (ms) | ratio (wall) | CPU (ms) | ratio (CPU) |",
        "|---|---:|---:|---:|---:|",
    ]
    for key, name in rows:
        w, c = med(key, 0), med(key, 1)
        lines.append(
            f"| {name} | {1000 * w:.0f} | {w / med('plain', 0):.2f}x | {1000 * c:.0f} | "
            f"{c / med('plain', 1):.2f}x |"
        )
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
