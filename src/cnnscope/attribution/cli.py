"""``cnnscope attribute``, ``cnnscope compare`` and ``cnnscope evaluate``."""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any

from ..cli.common import (
    add_images_arg,
    add_model_args,
    check_at_least,
    check_output,
    figure_suffixes,
    iter_images,
    model_from_args,
    print_json,
    staged,
)
from ..errors import CnnscopeError
from ..render import safe_file_name
from .api import attribute
from .figures import STYLES
from .registry import METHODS, get_method, method_names

log = logging.getLogger(__name__)

_IMAGE_BATCH = 8


def register(subparsers) -> None:
    """Add the attribution subcommands."""
    p = subparsers.add_parser(
        "attribute",
        help="explain a prediction: saliency, CAM and relevance maps as PNG / .npy",
        description="Write one picture per image of what the target (the top-1 class by "
        "default) owes to each pixel. Methods: see --list.",
    )
    add_images_arg(p)
    p.add_argument(
        "--method", "-m", default="guided_backprop", help="method name (default: guided_backprop)"
    )
    _common(p)
    p.add_argument("--out", default=".", help="folder of the PNGs (default: the current folder)")
    p.add_argument(
        "--style",
        help=f"rendering(s), comma-separated: {', '.join(STYLES)} (default: the method's own)",
    )
    p.add_argument("--cmap", help="matplotlib colormap of heatmap/overlay/seismic")
    p.add_argument(
        "--alpha", type=float, default=0.5, help="heatmap opacity of overlay (default 0.5)"
    )
    p.add_argument(
        "--save-npy",
        metavar="FILE",
        help="also write the raw float32 map of the (single) image: 3xHxW, or HxW for CAMs",
    )
    p.add_argument("--list", action="store_true", help="list the methods and exit")
    p.add_argument("--json", action="store_true", help="print what was written as JSON")
    p.set_defaults(func=attribute_command)

    p = subparsers.add_parser(
        "compare",
        help="several attribution methods side by side in one figure",
        description="A matplotlib figure: the image, then one map per method (one row per image).",
    )
    add_images_arg(p)
    p.add_argument(
        "--methods",
        default="gradient,guided_backprop,integrated_gradients,smoothgrad,grad_cam,lrp",
        help="comma-separated method names",
    )
    _common(p)
    p.add_argument(
        "--out",
        default="compare.png",
        help="figure file (.png, .pdf, .svg...; no suffix: .png is added), or an existing "
        "folder to write compare.png in (default: compare.png)",
    )
    p.add_argument("--dpi", type=int, default=100, help="figure resolution (default: 100)")
    p.set_defaults(func=compare_command)

    p = subparsers.add_parser(
        "evaluate",
        help="score attribution methods: deletion/insertion AUC, sanity check, axioms",
        description="One row per method: deletion AUC (lower is better), insertion AUC "
        "(higher is better), the randomisation sanity check (final Spearman rank "
        "correlation, lower is better), IG completeness and LRP conservation errors.",
    )
    add_images_arg(p)
    p.add_argument(
        "--methods", default="gradient,guided_backprop,integrated_gradients,grad_cam,lrp"
    )
    _common(p)
    p.add_argument("--steps", type=int, default=32, help="steps of the deletion/insertion curves")
    p.add_argument(
        "--sanity",
        type=int,
        default=0,
        metavar="STAGES",
        help="run the cascading randomisation check in STAGES steps (0: skip; it reruns each method)",
    )
    p.add_argument("--json", action="store_true", help="print JSON for machines")
    p.set_defaults(func=evaluate_command)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--target", "-t", help="class index or name, or a unit LAYER:CHANNEL[@Y,X] (default: top-1)"
    )
    p.add_argument(
        "--layer", "-l", help="layer of CAM methods (several: a,b,c) or where LRP relevance is read"
    )
    p.add_argument(
        "--opt",
        action="append",
        default=[],
        metavar="[METHOD.]KEY=VALUE",
        help="a method option, e.g. steps=64, base=guided_backprop, composite=epsilon_gamma_box "
        "(repeatable; prefix with a method name to set it for that method only)",
    )
    p.add_argument(
        "--quirks",
        action="store_true",
        help="reproduce pytorch-cnn-visualizations' quirks (Grad-CAM and Score-CAM from ones, "
        "its SmoothGrad noise and IG)",
    )
    # the old spelling of --quirks (issue 16), accepted with a warning
    p.add_argument("--legacy", action="store_true", help=argparse.SUPPRESS)
    p.add_argument(
        "--batch-size", type=int, help="rows per forward/backward chunk (default: automatic)"
    )
    add_model_args(p)


def _value(text: str):
    low = text.strip().lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if text.strip()[:1] in "[{":
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            raise CnnscopeError(f"bad option value {text!r}: not valid JSON") from None
    return text


def _options(pairs: list[str], methods: list[str]) -> dict[str, dict]:
    """``--opt`` values per method name (validated against each method's options)."""
    out: dict[str, dict] = {m: {} for m in methods}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise CnnscopeError(f"bad --opt {pair!r}: write KEY=VALUE or METHOD.KEY=VALUE")
        key = key.strip()
        scope, dot, name = key.rpartition(".")
        targets = methods
        if dot:
            owner = get_method(scope).name
            if owner not in methods:
                raise CnnscopeError(f"--opt {pair!r} is for {owner}, which is not being run")
            targets = [owner]
        else:
            name = key
        takers = [m for m in targets if name in METHODS[m].options]
        if not takers:
            names = ", ".join(sorted({o for m in targets for o in METHODS[m].options})) or "none"
            raise CnnscopeError(f"no method here has an option {name!r} (options: {names})")
        for m in takers:
            out[m][name] = _value(value)
    return out


def _methods(text: str) -> list[str]:
    names = [get_method(n).name for n in re.split(r"[,\s]+", text or "") if n]
    if not names:
        raise CnnscopeError("no methods given")
    return list(dict.fromkeys(names))


def _methods_and_options(args: argparse.Namespace) -> tuple[list[str], dict[str, dict]]:
    """``--methods`` and each one's ``--opt`` values, with ``--layer`` for those that take one."""
    methods = _methods(args.methods)
    opts = _options(args.opt, methods)
    if args.layer:
        for m in methods:
            if METHODS[m].uses_layer:
                opts[m].setdefault("layer", _layer(args.layer))
    return methods, opts


def _layer(text: str | None):
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",") if p.strip()]
    return parts[0] if len(parts) == 1 else parts


def _list_methods() -> int:
    print(f"{'method':<22} {'family':<9} {'output':<6} summary")
    for name in method_names():
        m = METHODS[name]
        print(f"{name:<22} {m.family:<9} {m.output:<6} {m.summary}")
        if m.options:
            opts = ", ".join(f"{k}={v!r}" for k, v in m.options.items())
            print(f"{'':<39} options: {opts}")
    return 0


def _kwargs(args, opts: dict, layer=None) -> dict:
    options = dict(opts)
    layer = options.pop("layer", layer)
    if args.legacy:  # warned once per command
        log.warning("--legacy is deprecated: use --quirks")
        args.quirks, args.legacy = True, False
    return {
        "target": args.target,
        "layer": layer,
        "quirks": args.quirks,
        "batch_size": args.batch_size,
        "progress": sys.stderr.isatty(),
        **options,
    }


def attribute_command(args: argparse.Namespace) -> int:
    """Write the attribution maps of each image."""
    if args.list:
        return _list_methods()
    method = get_method(args.method).name
    opts = _options(args.opt, [method])[method]
    styles = [s.strip() for s in (args.style or METHODS[method].style).split(",") if s.strip()]
    for s in styles:
        if s not in STYLES:
            raise CnnscopeError(f"unknown style {s!r}: choose one of {', '.join(STYLES)}")
    if args.alpha is not None and not 0 <= args.alpha <= 1:
        raise CnnscopeError(f"--alpha must be in [0, 1], got {args.alpha}")
    images = list(iter_images(args.images))
    if args.save_npy and len(images) != 1:
        raise CnnscopeError("--save-npy writes the map of one image: give exactly one")
    out = check_output(args.out, "--out", folder=True)
    npy = (
        check_output(Path(args.save_npy).with_suffix(".npy"), "--save-npy")
        if args.save_npy
        else None
    )
    model = model_from_args(args)
    written = []
    for start in range(0, len(images), _IMAGE_BATCH):
        batch = images[start : start + _IMAGE_BATCH]
        kwargs = _kwargs(args, opts, _layer(args.layer))
        attr = attribute(model, [img for _, img in batch], method, **kwargs)
        for (name, _), one in zip(batch, attr):
            files = []
            for style in styles:
                suffix = "" if len(styles) == 1 else f"_{style}"
                path = out / f"{safe_file_name(Path(name).stem, 'image')}_{method}{suffix}.png"
                with staged(path, "--out") as tmp:
                    one.save(tmp, style, cmap=args.cmap, alpha=args.alpha)
                files.append(str(path))
            if npy is not None:
                with staged(npy, "--save-npy") as tmp:
                    one.save(tmp)
                files.append(str(npy))
            row: dict[str, Any] = {
                "image": name,
                "method": method,
                "target": str(one.target),
                "files": files,
            }
            if "completeness" in one.meta:
                row["completeness"] = float(one.meta["completeness"])
            if "conservation" in one.meta:
                row["conservation"] = float(one.meta["conservation"])
                row["input_share"] = float(one.meta["input_share"])
            written.append(row)
            if not args.json:
                print(f"{name}: {method} for {one.target} -> {', '.join(files)}")
    if args.json:
        print_json(written)
    return 0


def compare_command(args: argparse.Namespace) -> int:
    """Draw several methods side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods, opts = _methods_and_options(args)
    out = _figure_path(args.out)
    images = list(iter_images(args.images))
    model = model_from_args(args)
    rows = []
    for name, img in images:
        panels = []
        for m in methods:
            attr = attribute(model, img, m, **_kwargs(args, opts[m]))
            panels.append((m, attr))
        rows.append((name, img, panels))
    cols = len(methods) + 1
    fig, axes = plt.subplots(
        len(rows), cols, figsize=(2.2 * cols, 2.6 * len(rows)), squeeze=False, layout="constrained"
    )
    for r, (name, _img, panels) in enumerate(rows):
        picture = panels[0][1].pictures[0]
        axes[r][0].imshow(picture)
        axes[r][0].set_title(f"{name}\n{panels[0][1].target}", fontsize=8)
        for c, (m, attr) in enumerate(panels, start=1):
            axes[r][c].imshow(attr.render())
            axes[r][c].set_title(METHODS[m].title, fontsize=8)
        for ax in axes[r]:
            ax.axis("off")
    try:
        with staged(out, "--out") as tmp:
            # bbox_inches="tight": the saved area grows to every title (two-line ones were cut)
            fig.savefig(tmp, dpi=args.dpi, bbox_inches="tight", pad_inches=0.08)
    finally:
        plt.close(fig)
    print(f"wrote {out} ({len(rows)} image(s) x {len(methods)} methods)")
    return 0


def _figure_path(text: str) -> Path:
    """``compare --out``: a figure file; an existing folder gets compare.png; no suffix, .png."""
    out = Path(text).expanduser()
    if out.is_dir():
        out = out / "compare.png"
    elif not out.suffix:
        out = out.with_suffix(".png")
    return check_output(out, "--out", suffixes=figure_suffixes())


def _fmt(v, width=9, digits=3) -> str:
    if v is None:
        return f"{'-':>{width}}"
    return f"{v:>{width}.{digits}f}"


def evaluate_command(args: argparse.Namespace) -> int:
    """Print one row of scores per method and image."""
    from .evaluate import evaluate

    methods, opts = _methods_and_options(args)
    check_at_least("--steps", args.steps, 1)
    check_at_least("--sanity", args.sanity, 0)
    model = model_from_args(args)
    results = []
    for name, img in iter_images(args.images):
        rows = evaluate(
            model,
            img,
            methods,
            args.target,
            steps=args.steps,
            sanity=args.sanity,
            options=opts,
            batch_size=args.batch_size,
        )
        for row in rows:
            row["image"] = name
        results.extend(rows)
        if not args.json:
            print(f"{name} (target {rows[0]['target']})")
            print(
                f"  {'method':<22} {'seconds':>8} {'deletion':>9} {'insertion':>9} "
                f"{'sanity':>9} {'complete':>9} {'conserve':>9}"
            )
            for row in rows:
                print(
                    f"  {row['method']:<22} {row['seconds']:>8.2f} {_fmt(row['deletion'])} "
                    f"{_fmt(row['insertion'])} {_fmt(row['sanity'])} "
                    f"{_fmt(row['completeness'], digits=4)} {_fmt(row['conservation'], digits=4)}"
                )
            for row in rows:
                if row.get("sanity_note"):
                    print(f"  {row['method']} sanity: {row['sanity_note']}")
    if args.json:
        print_json(results)
    return 0
