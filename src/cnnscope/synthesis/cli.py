"""``cnnscope dream``, ``cnnscope visualize``, ``cnnscope invert`` and ``cnnscope classimage``.

``dream`` takes every cnn-vis option with the same meaning; each option is accepted
both with dashes (``--tv-reg``) and with cnn-vis's underscores (``--tv_reg``). The
mapping is documented in docs/synthesis.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import CnnscopeError
from .config import GROUPS, SynthesisConfig, parse_behaviors

log = logging.getLogger(__name__)


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad numbers {text!r}: write e.g. 0.9,1.0,1.1") from None


def _pair(text: str) -> tuple[float, float]:
    vals = _floats(text)
    if len(vals) != 2:
        raise argparse.ArgumentTypeError(f"bad pair {text!r}: write e.g. 0.9,0.999")
    return vals[0], vals[1]


def _flag(*names: str) -> list[str]:
    """``--tv-reg`` plus cnn-vis's ``--tv_reg`` spelling."""
    out = []
    for n in names:
        out.append(n)
        alt = "--" + n[2:].replace("-", "_")
        if alt != n:
            out.append(alt)
    return out


#: How ``dream`` reads a value of each :class:`SynthesisConfig` field type.
_PARSERS: dict[str, Callable[[str], Any]] = {"int": int, "float": float, "str": str, "str | None": str,
            "list[float]": _floats, "tuple[float, float]": _pair}  # fmt: skip


#: cnn-vis's options of the amplify objective (its ``l1``, ``l2``, ``clip``), not config fields.
_AMPLIFY_OPTIONS = (
    ("l1_weight", ("--l1-weight", "--amplify-l1-weight"),
     "amplify_layer: weight of |a| in the injected gradient (default 1)"),
    ("l2_weight", ("--l2-weight", "--amplify-l2-weight"),
     "amplify_layer: weight of clip(a) (default 1)"),
    ("amplify_clip", ("--grad-clip", "--amplify-grad-clip"),
     "amplify_layer: the clip value c (default 5)"),
)  # fmt: skip


def add_config_arguments(groups: dict[str, argparse._ArgumentGroup]) -> None:
    """One flag per :class:`SynthesisConfig` field, read from its :func:`~.config.option`.

    Every value defaults to ``None`` (not given), so that the options given override a
    preset or a ``--config`` record. A flag (bool field) switches the default: ``--name``
    for an option off by default, ``--no-name`` for one on by default.
    """
    for f in dataclasses.fields(SynthesisConfig):
        meta = f.metadata
        group = groups[meta["group"]]
        names = config_flags(f)
        if f.type == "bool":
            action = "store_false" if f.default else "store_true"
            group.add_argument(*_flag(*names), dest=f.name, action=action, default=None,
                               help=meta["help"])  # fmt: skip
        else:
            group.add_argument(*_flag(*names), dest=f.name, type=_PARSERS[str(f.type)],
                               default=None, help=meta["help"])  # fmt: skip


def config_flags(f: dataclasses.Field) -> tuple[str, ...]:
    """The dashed flags of a :class:`SynthesisConfig` field in ``cnnscope dream`` (each is
    also accepted with underscores): its :func:`~.config.option` flags, else ``--name``, or
    ``--no-name`` for a bool field that is on by default.

    Examples
    --------
    >>> fields = {f.name: f for f in dataclasses.fields(SynthesisConfig)}
    >>> config_flags(fields["tv_reg"]), config_flags(fields["tile"]), config_flags(fields["init_scale"])
    (('--tv-reg',), ('--no-tile',), ('--initialization-scale', '--init-scale'))
    """
    if f.metadata["flags"]:
        return tuple(f.metadata["flags"])
    negate = f.type == "bool" and f.default
    return (("--no-" if negate else "--") + f.name.replace("_", "-"),)


def given_config_options(args: argparse.Namespace) -> dict:
    """The :class:`SynthesisConfig` fields that ``args`` gives (not ``None``)."""
    given = {}
    for f in dataclasses.fields(SynthesisConfig):
        value = getattr(args, f.name, None)
        if value is not None:
            given[f.name] = tuple(value) if f.type.startswith("tuple") else value
    return given


def register(subparsers) -> None:
    """Add the synthesis subcommands."""
    from ..cli.common import add_model_args

    p = subparsers.add_parser(
        "dream",
        help="cnn-vis style synthesis: layer amplification, multiscale, tiled, from noise or a photo",
        description="Generate an image by gradient ascent, with every cnn-vis option "
        "(underscore spellings such as --tv_reg work too). See docs/synthesis.md.",
    )
    add_model_args(p)
    p.add_argument(
        "--gpu", type=int, help="cnn-vis style: GPU index, negative for CPU (overrides --device)"
    )
    g = p.add_argument_group("objective")
    g.add_argument(
        *_flag("--image-type"),
        dest="image_type",
        choices=["amplify_layer", "amplify_neuron"],
        help="amplify_layer (default) or amplify_neuron",
    )
    g.add_argument(
        *_flag("--target-layer"), dest="target_layer", help="layer (default blocks.9.expand_act)"
    )
    g.add_argument(
        *_flag("--target-neuron"),
        dest="target_neuron",
        type=int,
        help="channel for amplify_neuron (default 0)",
    )
    groups = {"objective": g}
    for name in GROUPS[1:]:
        groups[name] = p.add_argument_group(name)
    for dest, names, text in _AMPLIFY_OPTIONS:
        groups["amplification"].add_argument(*_flag(*names), dest=dest, type=float, help=text)
    add_config_arguments(groups)
    out = groups["output"]
    out.add_argument(
        *_flag("--output-file"),
        "-o",
        dest="output_file",
        default=None,
        help="final image (default out.png); a JSON record is written beside it",
    )
    out.add_argument(
        *_flag("--iter-behavior"),
        dest="iter_behavior",
        default=None,
        help="every --output-iter steps: save, print, show, plot_pix, gif joined by + (default save+print)",
    )
    out.add_argument("--gif", action="store_true", help="also write an animated GIF of the frames")
    out.add_argument(
        *_flag("--show-width"), dest="show_width", type=float, default=5.0, help="inches (show)"
    )
    out.add_argument(
        *_flag("--show-height"), dest="show_height", type=float, default=5.0, help="inches (show)"
    )
    out.add_argument(
        "--preset", help="start from a preset (see --list-presets); options given override it"
    )
    out.add_argument(
        "--quick", action="store_true", help="with --preset: its smaller, faster settings"
    )
    out.add_argument(
        "--config", help="rerun the JSON record saved beside an image (reproduces it exactly)"
    )
    out.add_argument("--list-presets", action="store_true", help="list the presets and exit")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=dream)

    p = subparsers.add_parser(
        "visualize", help="feature visualizations of units, rendered in one batch"
    )
    p.add_argument("units", nargs="+", metavar="UNIT", help="LAYER:CHANNEL or LAYER:CHANNEL@Y,X")
    add_model_args(p)
    p.add_argument("--steps", type=int, default=128, help="optimisation steps (default 128)")
    p.add_argument("--size", type=int, help="image size in pixels (default: the model input)")
    p.add_argument("--out", default="visualizations", help="output folder (default visualizations)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--param", choices=["fft", "pixel"], default="fft", help="parameterization (default fft)"
    )
    p.add_argument("--lr", type=float, help="learning rate (default 0.05 for fft)")
    p.add_argument(
        "--diversity",
        type=float,
        default=0.0,
        help="add WEIGHT*diversity(layer) so the images of the batch differ (default 0)",
    )
    _add_output_iter(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=visualize)

    p = _single_image_command(
        subparsers, "invert", "reconstruct an image from a layer's representation",
        "inversion.png", _INVERT_OPTIONS, invert_cmd,
    )  # fmt: skip
    p.add_argument("image", metavar="IMAGE", help="image file or gallery name")
    p.add_argument("--layer", required=True, help="the layer to invert")

    p = _single_image_command(
        subparsers, "classimage", "an image that the model scores high for a class",
        "class.png", _CLASS_OPTIONS, classimage_cmd,
    )  # fmt: skip
    p.add_argument("cls", metavar="CLASS", help="class name or index, e.g. tabby or 281")
    p.add_argument("--size", type=int, help="image size (default: the model input)")


#: ``invert``'s and ``classimage``'s own options, each a :class:`SynthesisConfig` field
#: that overrides the command's defaults: ``(field, flag, type, help)``.
_INVERT_OPTIONS = (
    ("alpha", "--alpha", float, "alpha-norm exponent (default 6)"),
    ("p_reg", "--p-reg", float, "alpha-norm weight (default 4e-5)"),
    ("beta", "--beta", float, "TV exponent (default 2)"),
    ("tv_reg", "--tv-reg", float, "TV weight (default 2e-8)"),
    ("learning_rate", "--lr", float, "learning rate (default 12)"),
)
_CLASS_OPTIONS = (
    ("blur_every", "--blur-every", int, "blur every N steps (default 10)"),
    ("blur_sigma", "--blur-sigma", float, "blur std in pixels (default 0.5)"),
    ("l2_decay", "--l2-decay", float, "L2 decay (default 3e-8)"),
    ("clip_grad_norm", "--clip-grad-norm", float, "image gradient norm clip (default 1)"),
    ("learning_rate", "--lr", float, "learning rate (default 0.05, Adam on the spectrum)"),
)


def _single_image_command(subparsers, name: str, help: str, output: str, options, func):
    """The parser of ``invert`` or ``classimage``: the model, ``--steps``, ``--output``,
    ``--seed``, the command's ``options`` (a table as :data:`_INVERT_OPTIONS`),
    ``--output-iter`` and ``--no-progress``."""
    from ..cli.common import add_model_args

    p = subparsers.add_parser(name, help=help)
    add_model_args(p)
    p.add_argument("--steps", type=int, default=200, help="optimisation steps (default 200)")
    p.add_argument("--output", "-o", default=output, help=f"output image (default {output})")
    p.add_argument("--seed", type=int, default=0)
    for dest, flag, kind, text in options:
        metavar = flag[2:].upper().replace("-", "_")
        p.add_argument(flag, dest=dest, type=kind, metavar=metavar, help=text)
    _add_output_iter(p)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=func)
    return p


def _given_options(args: argparse.Namespace, options) -> dict:
    """The fields of an option table (:data:`_INVERT_OPTIONS`) that ``args`` gives."""
    return {dest: getattr(args, dest) for dest, *_ in options if getattr(args, dest) is not None}


def _add_output_iter(p: argparse.ArgumentParser) -> None:
    """``--output-iter N`` of visualize, invert and classimage: dream's ``--output-iter``
    with ``--iter-behavior save``, a snapshot ``STEM_SIZE_STEP.png`` every N steps."""
    p.add_argument(
        *_flag("--output-iter"),
        dest="output_iter",
        type=int,
        metavar="N",
        help="also save a snapshot STEM_1_STEP.png every N steps, as dream (default: none)",
    )


def _snapshots(args: argparse.Namespace) -> tuple[dict, set[str]]:
    """The config override and save behaviours that ``--output-iter`` asks for (checked)."""
    from ..cli.common import check_at_least

    check_at_least("--output-iter", args.output_iter, 1)
    if args.output_iter is None:
        return {}, set()
    return {"output_iter": args.output_iter}, {"save"}


# ------------------------------------------------------------------------------ dream
def _amplify_objective(args, layer: str) -> str:
    l1 = 1.0 if args.l1_weight is None else args.l1_weight
    l2 = 1.0 if args.l2_weight is None else args.l2_weight
    c = 5.0 if args.amplify_clip is None else args.amplify_clip
    from .objectives import Amplify

    return Amplify(layer, l1, l2, c).spec


def dream_config(args: argparse.Namespace) -> tuple[SynthesisConfig, dict]:
    """The config that ``dream``'s arguments describe: defaults < preset < --config < options."""
    from .presets import get_preset

    opts = SynthesisConfig().to_dict()
    record: dict = {}
    if args.preset:
        preset = get_preset(args.preset)
        opts = preset.config(quick=args.quick).to_dict()
    elif args.quick:
        raise CnnscopeError("--quick needs --preset")
    if args.config:
        cfg, record = SynthesisConfig.load(args.config)
        opts = cfg.to_dict()
    given = given_config_options(args)
    amp_given = any(
        getattr(args, k) is not None for k in ("l1_weight", "l2_weight", "amplify_clip")
    )
    if args.image_type or args.target_layer or args.target_neuron is not None or amp_given:
        if "objective" in given:
            raise CnnscopeError("give either --objective or --image-type/--target-layer, not both")
        kind = args.image_type or "amplify_layer"
        layer = args.target_layer or _preset_layer(opts["objective"]) or "blocks.9.expand_act"
        if kind == "amplify_neuron":
            if amp_given:
                raise CnnscopeError(
                    "--l1-weight/--l2-weight/--grad-clip apply to amplify_layer only"
                )
            neuron = 0 if args.target_neuron is None else args.target_neuron
            if neuron < 0:
                raise CnnscopeError(f"--target-neuron must be >= 0, got {neuron}")
            given["objective"] = f"channel({layer}:{neuron}, reduce=sum)"
        else:
            if args.target_neuron is not None:
                raise CnnscopeError("--target-neuron needs --image-type amplify_neuron")
            given["objective"] = _amplify_objective(args, layer)
    opts.update(given)
    if not args.preset and not args.config and "objective" not in given:
        opts["objective"] = _amplify_objective(args, "blocks.9.expand_act")
    return SynthesisConfig.from_dict(opts).validate(), record


def _preset_layer(objective: str) -> str | None:
    if objective.startswith("amplify(") and "," in objective:
        return objective[len("amplify(") : objective.index(",")].strip()
    return None


def dream(args: argparse.Namespace) -> int:
    """Run ``cnnscope dream``."""
    from ..cli.common import model_from_args
    from .loop import synthesize
    from .presets import PRESETS

    if args.list_presets:
        for p in PRESETS.values():
            print(f"{p.name:<6} {p.title}")
            print(f"{'':<6} cnn-vis example {p.example}: {p.original}")
        return 0
    if args.gpu is not None:
        args.device = f"cuda:{args.gpu}" if args.gpu >= 0 else "cpu"
    cfg, record = dream_config(args)
    behaviors = parse_behaviors(
        args.iter_behavior if args.iter_behavior is not None else "save+print"
    )
    if args.gif:
        behaviors.add("gif")
    output = _checked_output(args.output_file or "out.png", "--output-file")
    if record.get("threads"):
        import torch

        # Reductions depend on the thread count: use the record's for a bitwise copy.
        torch.set_num_threads(int(record["threads"]))
    model = model_from_args(args)
    if record and record.get("model", {}).get("name") not in (None, model.name):
        log.warning(
            "the config was made with model %s, not %s", record["model"]["name"], model.name
        )

    def on_output(event: dict) -> None:
        stats = event["stats"]
        if "print" in behaviors:
            print(
                f"size {event['size_index'] + 1} step {event['step']}: "
                + ", ".join(f"{k} {v:.4g}" for k, v in stats.items() if isinstance(v, float)),
                flush=True,
            )
        if "show" in behaviors:
            _show(event["image"], model, cfg, args)

    result = synthesize(
        model,
        cfg,
        progress=not args.no_progress,
        callback=on_output,
        keep_frames=bool(behaviors & {"save", "gif"}),
        track_pixels="plot_pix" in behaviors,
    )
    index = int(record.get("index", 0)) if record else 0
    if record and len(result.pictures) > 1:
        result.pictures = [result.pictures[index]]
    paths = _save_staged(result, model, output, "--output-file", behaviors=behaviors)
    for path in paths:
        print(path)
    return 0


def _show(image, model, cfg, args) -> None:
    import matplotlib
    import matplotlib.pyplot as plt

    from .params import ImageSpace

    if matplotlib.get_backend().lower() in ("agg", "pdf", "svg", "ps", "cairo", "template"):
        log.warning("show: no interactive matplotlib backend; use save instead")
        return
    pic = ImageSpace.for_model(model).to_uint8(image, cfg.rescale_image)[0]
    plt.figure(figsize=(args.show_width, args.show_height))
    plt.imshow(pic)
    plt.axis("off")
    plt.show(block=False)
    plt.pause(0.001)


def _save_staged(result, model, output: str, option: str, **options) -> list[Path]:
    """:func:`save_result`, every file written whole or not at all (see ``staged``)."""
    from ..cli.common import staged
    from .outputs import save_result

    with staged(output, option) as tmp:
        paths = save_result(result, model, tmp, **options)
    return [Path(output).parent / p.name for p in paths]


def _checked_output(text: str, option: str) -> str:
    """An output image checked before the run (no suffix: ``.png`` is added on saving)."""
    from ..cli.common import check_output, image_suffixes

    check_output(text, option, suffixes=image_suffixes() | {""})
    return text


# ------------------------------------------------------------------------------ visualize
def _check_steps_and_size(args: argparse.Namespace) -> None:
    """``--steps`` >= 1 and ``--size`` (when given) >= 16, of visualize and classimage."""
    from ..cli.common import check_at_least

    check_at_least("--steps", args.steps, 1)
    check_at_least("--size", args.size, 16)


def visualize(args: argparse.Namespace) -> int:
    """Run ``cnnscope visualize``."""
    from ..cli.common import check_output, model_from_args, staged
    from ..engine import Unit
    from ..render import grid
    from .api import _safe_name, visualize_config
    from .loop import synthesize
    from .objectives import Diversity, unit_objective
    from .outputs import save_result, write_png

    _check_steps_and_size(args)
    snapshot, behaviors = _snapshots(args)
    units = [Unit.parse(u) for u in args.units]
    check_output(args.out, "--out", folder=True)
    model = model_from_args(args)
    overrides: dict = {"param": args.param, **snapshot}
    if args.lr is not None:
        overrides["learning_rate"] = args.lr
    elif args.param == "pixel":
        overrides["learning_rate"] = 2.0
    if args.diversity:
        if len({u.layer for u in units}) != 1:
            raise CnnscopeError("--diversity needs units of one layer")
        objective = " | ".join(
            (unit_objective(u) + args.diversity * Diversity(u.layer)).spec for u in units
        )
        overrides["objective"] = objective
    cfg = visualize_config(model, units, args.steps, args.size, args.seed, **overrides)
    result = synthesize(model, cfg, progress=not args.no_progress, keep_frames="save" in behaviors)
    out = Path(args.out)
    names = [str(u) for u in units]
    first = out / ("grid.png" if len(units) > 1 else f"{_safe_name(names[0])}.png")
    with staged(first, "--out") as tmp:
        if len(units) > 1:
            save_result(result, model, tmp.parent / "unit.png", names=names, behaviors=behaviors)
            write_png(grid(result.pictures), tmp)
            _drop_unit_prefix(tmp.parent)
        else:
            save_result(result, model, tmp, behaviors=behaviors)
    for name in names:
        print(out / f"{_safe_name(name)}.png")
    return 0


def _drop_unit_prefix(folder: Path) -> None:
    """Nicer names than ``unit_<label>...``: drop the ``unit_`` of every file written."""
    for path in list(folder.glob("unit_*")):
        path.replace(folder / path.name[len("unit_") :])


# ------------------------------------------------------------------------------ invert / class
def _save_single(result, model, output: str, behaviors: set[str]) -> int:
    for path in _save_staged(result, model, output, "--output", behaviors=behaviors):
        print(path)
    return 0


def invert_cmd(args: argparse.Namespace) -> int:
    """Run ``cnnscope invert``."""
    from ..cli.common import check_at_least, model_from_args
    from ..images import resolve_image
    from .api import invert

    check_at_least("--steps", args.steps, 1)
    snapshot, behaviors = _snapshots(args)
    resolve_image(args.image)  # one-line error for a bad image before loading the model
    _checked_output(args.output, "--output")
    model = model_from_args(args)
    overrides = {**_given_options(args, _INVERT_OPTIONS), **snapshot}
    result = invert(
        model,
        args.image,
        args.layer,
        args.steps,
        args.seed,
        progress=not args.no_progress,
        **overrides,
    )
    return _save_single(result, model, args.output, behaviors)


def classimage_cmd(args: argparse.Namespace) -> int:
    """Run ``cnnscope classimage``."""
    from ..cli.common import model_from_args
    from .api import class_image

    _check_steps_and_size(args)
    snapshot, behaviors = _snapshots(args)
    _checked_output(args.output, "--output")
    model = model_from_args(args)
    model.class_index(args.cls)
    overrides = {**_given_options(args, _CLASS_OPTIONS), **snapshot}
    cls = model.class_index(args.cls)
    result = class_image(
        model, cls, args.steps, args.size, args.seed, progress=not args.no_progress, **overrides
    )
    return _save_single(result, model, args.output, behaviors)
