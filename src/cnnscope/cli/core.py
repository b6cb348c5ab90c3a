"""``cnnscope predict`` and ``cnnscope layers``."""

from __future__ import annotations

import argparse
from typing import Any

import torch

from ..engine import Engine
from .common import add_images_arg, add_model_args, iter_images, model_from_args, print_json


def register(subparsers) -> None:
    """Add the core subcommands."""
    p = subparsers.add_parser("predict", help="top-5 classes of images (the gallery by default)")
    add_images_arg(p)
    add_model_args(p)
    p.add_argument("--top", type=int, default=5, help="how many classes (default: 5)")
    p.add_argument("--json", action="store_true", help="print JSON for machines")
    p.set_defaults(func=predict)

    p = subparsers.add_parser(
        "layers", help="every addressable layer with shape and receptive field"
    )
    add_model_args(p)
    p.add_argument("--json", action="store_true", help="print JSON for machines")
    p.set_defaults(func=layers)


def top_classes(model, x: torch.Tensor, top: int = 5) -> list[dict]:
    """The ``top`` classes of a 1x3xHxW input: index, label and probability."""
    with torch.no_grad():
        logits = model.module(x.to(Engine.for_module(model.module).device))
    return model.top_classes(logits[0], top)


def predict(args: argparse.Namespace) -> int:
    """Print the top classes of each image."""
    model = model_from_args(args)
    results = []
    for name, image in iter_images(args.images):
        preds = top_classes(model, model.preprocess(image), args.top)
        results.append({"image": name, "predictions": preds})
        if not args.json:
            print(name)
            for p in preds:
                print(f"  {p['probability']:6.1%}  {p['index']:>4}  {p['label']}")
    if args.json:
        print_json(results)
    return 0


def layers(args: argparse.Namespace) -> int:
    """Print every addressable layer of the model."""
    model = model_from_args(args)
    infos = Engine.for_module(model.module).layers(model.preprocess_config.input_size)
    rows: list[dict[str, Any]] = []
    for info in infos:
        field = info.field
        rows.append(
            {
                "name": info.name,
                "type": info.kind,
                "shape": list(info.shape),
                "rf_size": list(field.size) if field else None,
                "rf_stride": list(field.stride) if field else None,
                "rf_offset": list(field.offset) if field else None,
            }
        )
    if args.json:
        print_json(rows)
        return 0
    print(f"{'layer':<34} {'type':<18} {'shape':<16} {'rf size':>9} {'stride':>7} {'offset':>10}")
    for r in rows:
        shape = "x".join(map(str, r["shape"]))
        if r["rf_size"]:
            size = "x".join(map(str, r["rf_size"]))
            stride = "x".join(map(str, r["rf_stride"]))
            offset = ",".join(f"{v:g}" for v in r["rf_offset"])
        else:
            size = stride = offset = "-"
        print(f"{r['name']:<34} {r['type']:<18} {shape:<16} {size:>9} {stride:>7} {offset:>10}")
    return 0
