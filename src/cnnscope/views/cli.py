"""``cnnscope activations``, ``weightgrad``, ``prune`` and ``filters``: the layer views."""

from __future__ import annotations

import argparse
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..cli.common import (
    add_model_args,
    check_output,
    figure_suffixes,
    image_suffixes,
    model_from_args,
    print_json,
    staged,
)
from ..errors import CnnscopeError
from ..render import safe_file_name

ORDERS = ("kmeans", "pca-slice", "pca")


def _save_png(image: np.ndarray, path: str | Path, option: str = "--out") -> str:
    with staged(path, option) as tmp:
        Image.fromarray(np.asarray(image, dtype=np.uint8)).save(tmp)
    return str(path)


def _write_text(text: str, path: str | Path, option: str) -> str:
    with staged(path, option) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return str(path)


def _npy_path(text: str) -> Path:
    """Where ``np.save`` writes ``text``: ``.npy`` is added unless it is there."""
    path = Path(text)
    return path if path.suffix == ".npy" else path.with_name(path.name + ".npy")


def _vox_path(text: str) -> Path:
    """Where :func:`write_vox` writes ``text`` (``.vox`` added unless it is there)."""
    path = Path(text)
    return path if path.suffix.lower() == ".vox" else path.with_name(path.name + ".vox")


def _check_outputs(
    args: argparse.Namespace, files: dict[str, tuple[str, Collection | None]]
) -> None:
    """Check every output option given, before any work: ``{option: (dest, suffixes)}``."""
    for option, (dest, suffixes) in files.items():
        value = getattr(args, dest)
        if value:
            check_output(value, option, suffixes=suffixes)


def _print_files(files: Mapping[str, str | list[str]]) -> None:
    for kind, path in files.items():
        print(f"  wrote {kind}: {path if isinstance(path, str) else ', '.join(path)}")


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad numbers {text!r}: write e.g. 0,0.1,0.2") from None
    if not values:
        raise argparse.ArgumentTypeError("give at least one threshold")
    return values


def register(subparsers) -> None:
    """Add the layer-view subcommands."""
    p = subparsers.add_parser(
        "activations",
        help="mosaic / ordering / 3D volume of one layer's channels for an image",
        description="Draw every channel of a layer for one image as a numbered mosaic, "
        "optionally reordered, and export the stacked maps as a volume.",
    )
    p.add_argument("image", metavar="IMAGE", help="image file or gallery name")
    p.add_argument("--layer", required=True, help="layer name (see `cnnscope layers`)")
    p.add_argument("--order", choices=ORDERS, help="reorder the channels")
    p.add_argument("--clusters", type=int, default=6, help="k of --order kmeans (default: 6)")
    p.add_argument(
        "--row", type=int, help="row of the slice for kmeans / pca-slice (default: middle)"
    )
    p.add_argument(
        "--normalize", choices=("joint", "channel"), default="joint", help="default: joint"
    )
    p.add_argument("--cmap", default="viridis", help="matplotlib colormap (default: viridis)")
    p.add_argument(
        "--out", help="mosaic PNG (default: IMAGE-LAYER.png when nothing else is written)"
    )
    p.add_argument(
        "--slice-out", help="PNG of the row slice of every channel, with cluster separators"
    )
    p.add_argument("--vox", help="raw .vox volume (+ .hd header), 0..255")
    p.add_argument("--nrrd", help="NRRD volume (float32)")
    p.add_argument("--vtk", help="legacy VTK volume (float32)")
    p.add_argument("--npy", help="float32 C x H x W array")
    p.add_argument("--html", help="interactive 3D volume, self-contained offline HTML")
    p.add_argument("--json", action="store_true", help="print each channel's max and mean as JSON")
    add_model_args(p)
    p.set_defaults(func=activations)

    p = subparsers.add_parser(
        "weightgrad",
        help="gradient of a class logit w.r.t. a conv layer's weights, per image",
        description="Compute d logit[TARGET] / d W for a conv layer and each image, and play "
        "the (filter x ky x kx) volumes as a time series.",
    )
    p.add_argument(
        "images", nargs="+", metavar="IMAGE", help="image files or gallery names, in play order"
    )
    p.add_argument("--layer", required=True, help="conv layer (module name), e.g. stem")
    p.add_argument(
        "--target", required=True, help="class index or name (the neuron differentiated)"
    )
    p.add_argument(
        "--reduce",
        choices=("sum", "l2", "abs", "none"),
        default="sum",
        help="fold in-channels: sum (CNN-VIS), l2, abs, none (default: sum)",
    )
    p.add_argument(
        "--scale",
        choices=("minmax", "binary", "symmetric"),
        default="minmax",
        help="0..255, the CNN-VIS 0/1 threshold, or 0 at mid-grey (default: minmax)",
    )
    p.add_argument(
        "--per-image", action="store_true", help="scale each image alone (default: one joint scale)"
    )
    p.add_argument(
        "--out",
        help="animated .gif (or .png: all frames stacked); default weightgrad-LAYER-TARGET.gif",
    )
    p.add_argument("--html", help="interactive 3D animation, self-contained offline HTML")
    p.add_argument("--vox-dir", help="write one scaled .vox/.hd volume per image here")
    p.add_argument("--npy", help="raw gradients as one float32 array N x F x C x kh x kw")
    p.add_argument("--json", action="store_true", help="print JSON for machines")
    add_model_args(p)
    p.set_defaults(func=weightgrad)

    p = subparsers.add_parser(
        "prune",
        help="filter importance for a class and accuracy after zeroing unimportant filters",
        description="Rank a conv layer's filters by their mean gradient norm for a class, zero "
        "those below importance thresholds (on a copy of the model) and measure the accuracy on "
        "a labelled folder with one subfolder per class index (DIR/285/*.jpg).",
    )
    p.add_argument("directory", metavar="DIR", help="labelled folder: DIR/<class index>/images")
    p.add_argument("--layer", required=True, help="conv layer (module name)")
    p.add_argument("--target", required=True, help="class index or name")
    p.add_argument("--importance-dir", help="images for the importance (default: DIR/<target>)")
    p.add_argument(
        "--thresholds",
        type=_floats,
        help="thresholds on the importance normalised to [0, 1] (above 1 zeroes every filter), "
        "e.g. 0,0.1,0.2; default: the 0, 10, ..., 90%% quantiles",
    )
    p.add_argument("--out", help="accuracy plot PNG (default: prune-LAYER-TARGET.png)")
    p.add_argument("--grid", help="also draw the importance grid to this PNG")
    p.add_argument(
        "--conv-only",
        action="store_true",
        help="zero only the conv filters, not the batch norm right after them "
        "(which then passes its shift through)",
    )
    p.add_argument("--json", action="store_true", help="print JSON for machines")
    add_model_args(p)
    p.set_defaults(func=prune)

    p = subparsers.add_parser("filters", help="first-layer filters as an RGB grid")
    p.add_argument(
        "--layer", help="conv layer with 1 or 3 input channels (default: the first conv)"
    )
    p.add_argument(
        "--normalize", choices=("joint", "filter"), default="joint", help="default: joint"
    )
    p.add_argument("--out", default="filters.png", help="PNG (default: filters.png)")
    add_model_args(p)
    p.set_defaults(func=filters)


def activations(args: argparse.Namespace) -> int:
    """Mosaic, ordering, stats and volume exports of one layer for one image."""
    from ..images import resolve_image
    from ._common import layer_maps, strongest_channels
    from .mosaic import layer_stats, render_mosaic
    from .ordering import order_channels, slice_image
    from .volume import volume_html, write_npy, write_nrrd, write_vox, write_vtk

    _check_outputs(
        args,
        {
            "--out": ("out", image_suffixes()),
            "--slice-out": ("slice_out", image_suffixes()),
            "--nrrd": ("nrrd", None),
            "--vtk": ("vtk", None),
            "--html": ("html", None),
        },
    )
    vox = check_output(_vox_path(args.vox), "--vox") if args.vox else None
    npy = check_output(_npy_path(args.npy), "--npy") if args.npy else None
    model = model_from_args(args)
    name, image = resolve_image(args.image)
    layer, acts = layer_maps(model, image, args.layer)
    ordering = None
    if args.order:
        opts = {"row": args.row} if args.order != "pca" else {}
        if args.order == "kmeans":
            opts["k"] = args.clusters
        ordering = order_channels(acts, args.order, **opts)
    files: dict[str, str] = {}
    wants_file = any((args.slice_out, args.vox, args.nrrd, args.vtk, args.npy, args.html))
    out = args.out or (
        None
        if wants_file or args.json
        else f"{safe_file_name(Path(name).stem, 'x')}-{safe_file_name(layer, 'x')}.png"
    )
    if out:
        m = render_mosaic(acts, ordering, args.normalize, args.cmap, layer=layer)
        files["mosaic"] = _save_png(m.image, out)
    if args.slice_out:
        s = slice_image(acts, args.row, ordering)
        from ..render import colorize

        zoom = max(2, int(np.ceil(256 / s.shape[1])))  # each value a zoom x zoom block
        img = np.repeat(np.repeat(colorize(s, "gray"), zoom, axis=0), zoom, axis=1)
        files["slice"] = _save_png(img, args.slice_out, "--slice-out")
    comments = [f"layer {layer} of {model.name}", f"image {name}"]
    if ordering is not None:
        comments.append(f"order {ordering.method}: " + " ".join(map(str, ordering.permutation)))
    if vox:
        with staged(vox, "--vox") as tmp:
            write_vox(tmp, acts, ordering)
        files["vox"], files["hd"] = str(vox), str(vox.with_suffix(".hd"))
    if args.nrrd:
        with staged(args.nrrd, "--nrrd") as tmp:
            write_nrrd(tmp, acts, ordering, comments=comments)
        files["nrrd"] = args.nrrd
    if args.vtk:
        with staged(args.vtk, "--vtk") as tmp:
            write_vtk(tmp, acts, ordering, name=safe_file_name(layer, "x"))
        files["vtk"] = args.vtk
    if npy:
        with staged(npy, "--npy") as tmp:
            write_npy(tmp, acts, ordering)
        files["npy"] = str(npy)
    if args.html:
        html = volume_html(acts, ordering, title=f"{layer} - {name}")
        files["html"] = _write_text(html, args.html, "--html")
    stats = layer_stats(acts)
    if args.json:
        print_json(
            {
                "image": name,
                "layer": layer,
                "shape": list(acts.shape),
                "channels": stats,
                "ordering": ordering.to_dict() if ordering is not None else None,
                "files": files,
            }
        )
        return 0
    c, h, w = acts.shape
    print(
        f"{name}  {layer}  {c} channels of {h}x{w}  min {float(acts.min()):.4g}  max {float(acts.max()):.4g}"
    )
    top = strongest_channels(model, image, layer)
    print("  strongest: " + ", ".join(f"{c} (strength {v:.3g})" for c, v in top))
    dead = sum(1 for s in stats if s["max"] == 0)
    if dead:
        print(f"  {dead} channel(s) are zero everywhere")
    if ordering is not None:
        print(f"  order {ordering.method}: " + " ".join(map(str, ordering.permutation)))
        if ordering.separators:
            sizes = [len(g) for g in ordering.groups()]
            print(f"  clusters (row {ordering.info.get('row')}): sizes {sizes}")
            for k, g in enumerate(ordering.groups()):
                print(f"    {k}: {' '.join(map(str, g))}")
    _print_files(files)
    return 0


def weightgrad(args: argparse.Namespace) -> int:
    """Weight gradients of a conv layer for a list of images, as a time series."""
    from ..images import resolve_image
    from .volume import figure_html, write_vox
    from .weightgrad import (
        FRAME_MS,
        gradient_volume,
        save_gif,
        scale_volumes,
        series_frames,
        weight_gradients,
        weightgrad_figure,
    )

    _check_outputs(args, {"--out": ("out", image_suffixes()), "--html": ("html", None)})
    vox_dir = check_output(args.vox_dir, "--vox-dir", folder=True) if args.vox_dir else None
    npy = check_output(_npy_path(args.npy), "--npy") if args.npy else None
    model = model_from_args(args)
    target = model.class_index(args.target)
    loaded = [resolve_image(spec) for spec in args.images]
    names = [n for n, _ in loaded]
    results = weight_gradients(
        model, [img for _, img in loaded], args.layer, target, names=names, progress=True
    )
    files: dict[str, str | list[str]] = {}
    frames = series_frames(
        results, model, reduce=args.reduce, scale=args.scale, joint=not args.per_image
    )
    out = args.out or f"weightgrad-{safe_file_name(args.layer, 'x')}-{target}.gif"
    if out.lower().endswith(".gif"):
        with staged(out, "--out") as tmp:
            save_gif(frames, tmp, FRAME_MS)
        files["animation"] = out
    else:
        files["frames"] = _save_png(np.concatenate(frames, axis=0), out)
    if args.html:
        html = figure_html(
            weightgrad_figure(results, model, reduce=args.reduce), "weight gradients"
        )
        files["html"] = _write_text(html, args.html, "--html")
    if vox_dir:
        vols = scale_volumes(
            [gradient_volume(g, args.reduce) for g in results], args.scale, joint=not args.per_image
        )
        written = []
        for k, (g, vol) in enumerate(zip(results, vols)):
            vox = vox_dir / f"{k:02d}_{safe_file_name(g.name, 'x')}.vox"
            with staged(vox, "--vox-dir") as tmp:
                write_vox(tmp, vol, rescale=False)
            written.append(str(vox))
        files["vox"] = written
    if npy:
        with staged(npy, "--npy") as tmp:
            np.save(tmp, np.stack([g.gradient for g in results]).astype(np.float32))
        files["npy"] = str(npy)
    rows: list[dict[str, Any]] = [
        {
            "image": g.name,
            "predicted": g.predicted,
            "predicted_label": model.label(g.predicted),
            "correct": g.correct,
            "logit": g.logit,
            "gradient_norm": g.norm,
        }
        for g in results
    ]
    if args.json:
        shape = list(results[0].gradient.shape)
        print_json(
            {
                "layer": args.layer,
                "target": target,
                "weight_shape": shape,
                "images": rows,
                "files": files,
            }
        )
        return 0
    print(
        f"d logit[{target}] ({model.label(target)}) / d {args.layer}.weight  {tuple(results[0].gradient.shape)}"
    )
    print(f"  {'image':<28} {'predicted':<32} {'':7} {'logit':>8} {'|grad|':>10}")
    for r in rows:
        mark = "correct" if r["correct"] else "wrong"
        pred = f"{r['predicted']} {r['predicted_label']}"[:32]
        print(
            f"  {r['image'][:28]:<28} {pred:<32} {mark:7} {r['logit']:8.3f} {r['gradient_norm']:10.4g}"
        )
    _print_files(files)
    return 0


def prune(args: argparse.Namespace) -> int:
    """Importance of a layer's filters for a class, and the pruning sweep."""
    from .importance import importance_grid, plot_sweep, pruning_sweep

    plots = figure_suffixes()
    _check_outputs(args, {"--out": ("out", plots), "--grid": ("grid", plots)})
    model = model_from_args(args)
    target = model.class_index(args.target)
    for t in args.thresholds or []:
        if t < 0:
            raise CnnscopeError(
                f"threshold {t} is negative (thresholds are on the importance normalised to "
                "[0, 1]; above 1 every filter is zeroed)"
            )
    sweep = pruning_sweep(
        model,
        args.directory,
        args.layer,
        target,
        thresholds=args.thresholds,
        importance_dir=args.importance_dir,
        through_bn=not args.conv_only,
    )
    files = {}
    out = args.out or f"prune-{safe_file_name(args.layer, 'x')}-{target}.png"
    with staged(out, "--out") as tmp:
        plot_sweep(sweep, tmp)
    files["plot"] = out
    if args.grid:
        with staged(args.grid, "--grid") as tmp:
            importance_grid(sweep.importance, tmp)
        files["grid"] = args.grid
    if args.json:
        print_json({**sweep.to_dict(), "files": files})
        return 0
    n = len(sweep.importance.values)
    print(
        f"{args.layer}: {n} filters ranked for class {target} ({model.label(target)}) on "
        f"{sweep.importance.count} images; accuracy on {sweep.images} images "
        f"({sweep.target_images} of class {target})"
    )
    print(f"  {'threshold':>9} {'zeroed':>7} {'accuracy':>9} {'class ' + str(target):>10}")
    for t, p, a, ta in zip(sweep.thresholds, sweep.pruned, sweep.accuracy, sweep.target_accuracy):
        cls = f"{ta:10.1%}" if ta is not None else f"{'-':>10}"
        print(f"  {t:9.3f} {p:7d} {a:9.1%} {cls}")
    for key, row in sweep.single.items():
        ta = row["target_accuracy"]
        cls = f", class {target} {ta:.1%}" if ta is not None else ""
        print(
            f"  only the {key} important filter ({row['filter']}) zeroed: {row['accuracy']:.1%}{cls}"
        )
    _print_files(files)
    return 0


def filters(args: argparse.Namespace) -> int:
    """First-layer filters as an RGB grid."""
    from .filters import filter_grid

    check_output(args.out, "--out", suffixes=image_suffixes())
    model = model_from_args(args)
    m = filter_grid(model, args.layer, args.normalize)
    path = _save_png(m.image, args.out)
    print(f"{m.layer}: {len(m.tiles)} filters; wrote {path}")
    return 0
