"""Which layer chain makes the best neuron trees for EfficientNet-Lite0?

For each candidate chain and gallery image, the tree is rooted at the top-1 logit and
followed down its first child for ``--depth`` levels, k=5 children per level. Per level:

- sibling similarity: mean pairwise cosine similarity of the children's |input gradient|
  maps (1 = the k pictures are the same; lower = the children show different things);
- blank: children whose reconstruction is all zero;
- faithfulness: zeroing the 5 children vs 5 random channels of their layer (8 draws); z =
  (drop - random mean) / random std, on the quantity the children were scored for.

Writes a Markdown table and a picture of each chain's tree on the first image.

Run: ``python bench/tree_chains.py [--images chelsea,coffee,rocket] [--out-dir docs/benchmarks]``
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
from PIL import Image

from cnnscope.engine import Unit
from cnnscope.images import load_gallery_image
from cnnscope.models import load_model
from cnnscope.render import grid
from cnnscope.tree import Explorer

STAGE_ENDS = [15, 14, 10, 7, 4, 2]
STAGE_STARTS = [15, 11, 8, 5, 3, 1]
CHAINS = {
    "stage outputs (blocks.N)": ["logits", "head_act"]
    + [f"blocks.{i}" for i in STAGE_ENDS]
    + ["blocks.0", "stem_act"],
    "depthwise_act of stage ends": ["logits", "head_act"]
    + [f"blocks.{i}.depthwise_act" for i in STAGE_ENDS]
    + ["stem_act"],
    "expand_act of stage ends": ["logits", "head_act"]
    + [f"blocks.{i}.expand_act" for i in STAGE_ENDS]
    + ["stem_act"],
    "expand_act of stage starts (default)": ["logits", "head_act"]
    + [f"blocks.{i}.expand_act" for i in STAGE_STARTS]
    + ["stem_act"],
}


def walk(ex: Explorer, x: torch.Tensor, depth: int, k: int):
    """Per-level metrics and pictures along the first child."""
    path = (Unit("logits", ex.predictions(x, 1)[0]["index"]),)
    rows, pictures = [], []
    for _ in range(depth):
        kids = ex.children(x, path, k=k)
        if len(kids) < 2:
            break
        grads = ex.input_gradients(x, [n.path for n in kids])
        flat = grads.abs().sum(1).reshape(len(kids), -1)
        blank = int((flat.sum(1) == 0).sum())
        flat = flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)
        sim = float((flat @ flat.T)[~torch.eye(len(kids), dtype=torch.bool)].mean())
        f = ex.faithfulness(x, path, [n.unit for n in kids], draws=8)
        z = (f["drop"] - f["random_drop"]) / max(f["random_std"], 1e-9)
        rows.append({"layer": kids[0].unit.layer, "sim": sim, "blank": blank, "z": z, **f})
        pictures.extend(ex.reconstructions(x, [n.path for n in kids]))
        path = kids[0].path
    return rows, pictures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default="chelsea,coffee,rocket")
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--out-dir", default=None)
    args = parser.parse_args()
    model = load_model()
    names = args.images.split(",")
    lines = [
        f"Trees rooted at the top-1 logit of {', '.join(names)}, first child followed for "
        f"{args.depth} levels, k={args.k}, rule guided, path scoring (levels below head_act).",
        "",
        "| chain | sibling similarity (mean) | blank pictures | faithfulness z > 2 | "
        "median drop (children) | median drop (random) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for c, (title, chain) in enumerate(CHAINS.items()):
        ex = Explorer(model, chain)
        rows, first_pictures = [], None
        for name in names:
            r, pics = walk(ex, ex.input(load_gallery_image(name)), args.depth, args.k)
            rows.extend(r[1:])  # skip head_act: the same in every chain
            first_pictures = first_pictures or pics
            print(title, name, [(d["layer"], round(d["sim"], 2), round(d["z"], 1)) for d in r])
        sims = statistics.mean(d["sim"] for d in rows)
        blank = sum(d["blank"] for d in rows)
        faithful = sum(d["z"] > 2 for d in rows)
        lines.append(
            f"| {title} | {sims:.2f} | {blank} / {args.k * len(rows)} | {faithful} / {len(rows)}"
            f" | {statistics.median(d['drop'] for d in rows):.2f}"
            f" | {statistics.median(d['random_drop'] for d in rows):.3f} |"
        )
        if args.out_dir and first_pictures:
            img = Image.fromarray(grid(first_pictures, cols=args.k))
            img = img.resize((img.width // 2, img.height // 2), Image.Resampling.LANCZOS)
            img.save(Path(args.out_dir) / f"tree_chain_{c}.jpg", quality=85)
    text = "\n".join(lines)
    print(text)
    if args.out_dir:
        (Path(args.out_dir) / "tree_chains.md").write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
