"""``cnnscope dream``, ``cnnscope visualize``, ``cnnscope invert`` and ``cnnscope classimage``.

``dream`` takes every cnn-vis option with the same meaning; each option is accepted
both with dashes (``--tv-reg``) and with cnn-vis's underscores (``--tv_reg``). The
mapping is documented in docs/synthesis.md.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..errors import CnnscopeError
from .config import SynthesisConfig, parse_behaviors

log = logging.getLogger(__name__)

# (dest, flags, type, help) of every SynthesisConfig option exposed by `dream`.
_FLOAT, _INT, _STR = float, int, str


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


_DREAM_OPTIONS = [
    # group, dest, flags, type, help
    (
        "objective",
        "objective",
        ["--objective"],
        _STR,
        "objective expression (overrides --image-type), e.g. 'blocks.9:5 - 0.5*deepdream(blocks.10)'",
    ),
    ("objective", "batch", ["--batch"], _INT, "images rendered together (default 1)"),
    (
        "initialization",
        "initial_image",
        _flag("--initial-image"),
        _STR,
        "image file or gallery name to start from (default: blurred Gaussian noise)",
    ),
    (
        "initialization",
        "init_scale",
        _flag("--initialization-scale", "--init-scale"),
        _FLOAT,
        "std of the initial noise, pixel units (default 1)",
    ),
    (
        "initialization",
        "init_blur",
        _flag("--initialization-blur", "--init-blur"),
        _FLOAT,
        "std (pixels) of the Gaussian blur of the initial noise (default 0)",
    ),
    ("initialization", "param", ["--param"], _STR, "parameterization: pixel (default) or fft"),
    (
        "initialization",
        "fft_decay",
        _flag("--fft-decay"),
        _FLOAT,
        "spectrum scaling exponent of fft (default 1)",
    ),
    ("resize", "initial_size", _flag("--initial-size"), _STR, "xF or HxW (default: the base size)"),
    ("resize", "final_size", _flag("--final-size"), _STR, "xF or HxW (default: the initial size)"),
    ("resize", "num_sizes", _flag("--num-sizes"), _INT, "number of sizes (default 1)"),
    ("resize", "resize_type", _flag("--resize-type"), _STR, "geometric (default) or linear"),
    (
        "resize",
        "tile_size",
        _flag("--tile-size"),
        _STR,
        "HxW of the windows (default: the model input)",
    ),
    ("resize", "batch_size", _flag("--batch-size"), _INT, "tiles per forward pass (default 1)"),
    (
        "optimization",
        "optimizer",
        ["--optimizer"],
        _STR,
        "rmsprop (default, as cnn-vis), adam or sgd",
    ),
    (
        "optimization",
        "learning_rate",
        _flag("--learning-rate", "--lr"),
        _FLOAT,
        "learning rate (default 1)",
    ),
    (
        "optimization",
        "decay_rate",
        _flag("--decay-rate"),
        _FLOAT,
        "RMSProp decay rate (default 0.95)",
    ),
    ("optimization", "betas", ["--betas"], _pair, "Adam betas, e.g. 0.9,0.999"),
    ("optimization", "momentum", ["--momentum"], _FLOAT, "SGD momentum (default 0)"),
    (
        "optimization",
        "learning_rate_decay_iter",
        _flag("--learning-rate-decay-iter"),
        _INT,
        "decay the learning rate every this many steps (default 100)",
    ),
    (
        "optimization",
        "learning_rate_decay_fraction",
        _flag("--learning-rate-decay-fraction", "--learning-rate-decay-factor"),
        _FLOAT,
        "multiply the learning rate by this at each decay (default 1)",
    ),
    (
        "optimization",
        "num_steps",
        _flag("--num-steps", "--steps"),
        _INT,
        "steps per size (default 1000)",
    ),
    (
        "amplification",
        "l1_weight",
        _flag("--l1-weight", "--amplify-l1-weight"),
        _FLOAT,
        "amplify_layer: weight of |a| in the injected gradient (default 1)",
    ),
    (
        "amplification",
        "l2_weight",
        _flag("--l2-weight", "--amplify-l2-weight"),
        _FLOAT,
        "amplify_layer: weight of clip(a) (default 1)",
    ),
    (
        "amplification",
        "amplify_clip",
        _flag("--grad-clip", "--amplify-grad-clip"),
        _FLOAT,
        "amplify_layer: the clip value c (default 5)",
    ),
    ("p-norm", "alpha", ["--alpha"], _FLOAT, "p-norm exponent (default 6)"),
    ("p-norm", "p_scale", _flag("--p-scale"), _FLOAT, "p-norm scale (default 1)"),
    ("p-norm", "p_reg", _flag("--p-reg"), _FLOAT, "p-norm weight (default 1e-4)"),
    ("p-norm", "alpha_aux", _flag("--alpha-aux"), _FLOAT, "auxiliary p-norm exponent (default 6)"),
    ("p-norm", "p_scale_aux", _flag("--p-scale-aux"), _FLOAT, "auxiliary p-norm scale (default 1)"),
    (
        "p-norm",
        "p_reg_aux",
        _flag("--p-reg-aux"),
        _FLOAT,
        "auxiliary p-norm weight (default 0: off)",
    ),
    ("total variation", "beta", ["--beta"], _FLOAT, "TV exponent (default 2)"),
    ("total variation", "tv_reg", _flag("--tv-reg"), _FLOAT, "TV weight (default 0.5)"),
    ("total variation", "tv_reg_scale", _flag("--tv-reg-scale"), _FLOAT, "TV scale (default 1)"),
    (
        "total variation",
        "tv_reg_step",
        _flag("--tv-reg-step"),
        _FLOAT,
        "add this to the TV weight every --tv-reg-step-iter steps (default 0)",
    ),
    ("total variation", "tv_reg_step_iter", _flag("--tv-reg-step-iter"), _INT, "(default 50)"),
    (
        "total variation",
        "tv_grad_operator",
        _flag("--tv-grad-operator"),
        _STR,
        "naive (default), sobel or sobel_squish",
    ),
    ("other priors", "l1_decay", _flag("--l1-decay"), _FLOAT, "L1 decay weight (default 0)"),
    (
        "other priors",
        "l2_decay",
        _flag("--l2-decay"),
        _FLOAT,
        "L2 decay (weight decay) (default 0)",
    ),
    (
        "other priors",
        "blur_every",
        _flag("--blur-every"),
        _INT,
        "Gaussian-blur the image every N steps (0: off)",
    ),
    (
        "other priors",
        "blur_sigma",
        _flag("--blur-sigma"),
        _FLOAT,
        "std of that blur in pixels (default 1)",
    ),
    (
        "other priors",
        "clip_grad_norm",
        _flag("--clip-grad-norm"),
        _FLOAT,
        "clip the image gradient's L2 norm to this (0: off)",
    ),
    (
        "other priors",
        "grad_blur",
        _flag("--grad-blur"),
        _FLOAT,
        "Gaussian-blur the objective's image gradient with this std in pixels (0: off)",
    ),
    (
        "transforms",
        "pad",
        ["--pad"],
        _INT,
        "pad pixels on each side before each forward (default 0)",
    ),
    (
        "transforms",
        "pad_mode",
        _flag("--pad-mode"),
        _STR,
        "constant (mean colour), reflect or replicate",
    ),
    ("transforms", "jitter", ["--jitter"], _INT, "random crop of up to N pixels (default 0)"),
    ("transforms", "scales", ["--scales"], _floats, "random scale factors, e.g. 0.95,1,1.05"),
    ("transforms", "angles", ["--angles"], _floats, "random rotations in degrees, e.g. -5,0,5"),
    (
        "transforms",
        "jitter2",
        ["--jitter2"],
        _INT,
        "a second jitter after scale/rotate (default 0)",
    ),
    ("output", "output_iter", _flag("--output-iter"), _INT, "act every N steps (default 50)"),
    ("output", "seed", ["--seed"], _INT, "random seed (default 0)"),
]

#: Options that shape the amplify objective rather than being SynthesisConfig fields.
_AMPLIFY = ("l1_weight", "l2_weight", "amplify_clip")

_BOOL_OPTIONS = [
    (
        "resize",
        "use_pixel_learning_rates",
        _flag("--use-pixel-learning-rates"),
        "divide each pixel's step by the number of tiles covering it",
    ),
    (
        "output",
        "rescale_image",
        _flag("--rescale-image"),
        "min-max stretch the output instead of clipping",
    ),
    (
        "resize",
        "keep_detail",
        _flag("--keep-detail"),
        "at each new size start from the photo at that size plus the upscaled changes (DeepDream octaves)",
    ),
    (
        "other priors",
        "clamp_pixels",
        _flag("--clamp-pixels"),
        "clip pixels to 0..255 after each step",
    ),
    (
        "other priors",
        "raw_priors",
        _flag("--raw-priors"),
        "take --p-reg, --p-reg-aux, --tv-reg as they are instead of dividing them by the "
        "model's input std (cnn-vis's numbers were set for Caffe models that read 0..255 pixels)",
    ),
    (
        "output",
        "quirks",
        ["--quirks"],
        "reproduce cnn-vis's quirks: raw prior weights, x1.2 contrast at each conversion, uint8 "
        "resizes, per-tile priors, channel blur",
    ),
]


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
    for group, dest, flags, typ, text in _DREAM_OPTIONS:
        if group not in groups:
            groups[group] = p.add_argument_group(group)
        groups[group].add_argument(*flags, dest=dest, type=typ, default=None, help=text)
    for group, dest, flags, text in _BOOL_OPTIONS:
        if group not in groups:
            groups[group] = p.add_argument_group(group)
        groups[group].add_argument(*flags, dest=dest, action="store_true", default=None, help=text)
    groups["initialization"].add_argument(
        "--no-decorrelate",
        dest="decorrelate",
        action="store_false",
        default=None,
        help="fft: plain RGB instead of decorrelated colour",
    )
    groups["resize"].add_argument(
        "--no-tile",
        dest="tile",
        action="store_false",
        default=None,
        help="feed the whole image at once instead of tiles",
    )
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

    p = subparsers.add_parser("invert", help="reconstruct an image from a layer's representation")
    p.add_argument("image", metavar="IMAGE", help="image file or gallery name")
    p.add_argument("--layer", required=True, help="the layer to invert")
    add_model_args(p)
    p.add_argument("--steps", type=int, default=200, help="optimisation steps (default 200)")
    p.add_argument(
        "--output", "-o", default="inversion.png", help="output image (default inversion.png)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--alpha", type=float, help="alpha-norm exponent (default 6)")
    p.add_argument("--p-reg", type=float, help="alpha-norm weight (default 4e-5)")
    p.add_argument("--beta", type=float, help="TV exponent (default 2)")
    p.add_argument("--tv-reg", type=float, help="TV weight (default 2e-8)")
    p.add_argument("--lr", type=float, help="learning rate (default 12)")
    _add_output_iter(p)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=invert_cmd)

    p = subparsers.add_parser("classimage", help="an image that the model scores high for a class")
    p.add_argument("cls", metavar="CLASS", help="class name or index, e.g. tabby or 281")
    add_model_args(p)
    p.add_argument("--steps", type=int, default=200, help="optimisation steps (default 200)")
    p.add_argument("--size", type=int, help="image size (default: the model input)")
    p.add_argument("--output", "-o", default="class.png", help="output image (default class.png)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--blur-every", type=int, help="blur every N steps (default 10)")
    p.add_argument("--blur-sigma", type=float, help="blur std in pixels (default 0.5)")
    p.add_argument("--l2-decay", type=float, help="L2 decay (default 3e-8)")
    p.add_argument("--clip-grad-norm", type=float, help="image gradient norm clip (default 1)")
    p.add_argument("--lr", type=float, help="learning rate (default 0.05, Adam on the spectrum)")
    _add_output_iter(p)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=classimage_cmd)


def _add_output_iter(p: argparse.ArgumentParser) -> None:
    """``--output-iter N`` of visualize, invert and classimage: dream's ``--output-iter``
    with ``--iter-behavior save``, a snapshot ``STEM_SIZE_STEP.png`` every N steps."""
    p.add_argument(
        *_flag("--output-iter"),
        dest="output_iter",
        type=_INT,
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
    given = {
        dest: getattr(args, dest)
        for _, dest, *_ in _DREAM_OPTIONS + [(None, "decorrelate"), (None, "tile")]
        if dest not in _AMPLIFY and getattr(args, dest, None) is not None
    }
    for _, dest, *_ in _BOOL_OPTIONS:
        if getattr(args, dest) is not None:
            given[dest] = True
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
    if "betas" in given:
        given["betas"] = tuple(given["betas"])
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
    from .presets import PRESETS
    from .render import synthesize

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
    from .objectives import Diversity, unit_objective
    from .outputs import save_result, write_png
    from .render import synthesize

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
def _given(**options) -> dict:
    """The options that were given (not ``None``)."""
    return {k: v for k, v in options.items() if v is not None}


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
    overrides = _given(
        alpha=args.alpha,
        p_reg=args.p_reg,
        beta=args.beta,
        tv_reg=args.tv_reg,
        learning_rate=args.lr,
        **snapshot,
    )
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
    overrides = _given(
        blur_every=args.blur_every,
        blur_sigma=args.blur_sigma,
        l2_decay=args.l2_decay,
        clip_grad_norm=args.clip_grad_norm,
        learning_rate=args.lr,
        **snapshot,
    )
    cls = model.class_index(args.cls)
    result = class_image(
        model, cls, args.steps, args.size, args.seed, progress=not args.no_progress, **overrides
    )
    return _save_single(result, model, args.output, behaviors)
