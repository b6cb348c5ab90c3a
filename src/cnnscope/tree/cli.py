"""``cnnscope tree``: export one image's neuron tree as a self-contained HTML file."""

from __future__ import annotations

import argparse
import logging
import sys

from ..engine import LOGITS, Unit
from ..engine.rules import DEFAULT_RULE, RULE_TERMS
from ..errors import CnnscopeError
from ..vocabulary import help_line, names
from .explorer import Explorer
from .export import build_tree, count_nodes, tree_html
from .options import (
    DEFAULT_GAIN,
    DEFAULT_K,
    DEFAULT_SCORING,
    DEFAULT_SIGN,
    GAIN_TERMS,
    SCORING_TERMS,
    SIGN_TERMS,
)
from .paths import format_path, parse_path

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    """Add the ``tree`` subcommand."""
    from ..cli.common import add_model_args

    p = subparsers.add_parser(
        "tree",
        help="export an image's neuron tree as one self-contained HTML file",
        description="Expand the neuron tree of one image (seed cnn_treevis's path-conditioned "
        "children) and write it as a single HTML file with every picture inlined; it opens "
        "in any browser without a server or network.",
    )
    p.add_argument("image", metavar="IMAGE", help="image file or built-in gallery name")
    p.add_argument(
        "--root",
        help="root unit or path: LAYER:C, LAYER:C@Y,X, logits:CLASS or a path "
        "ROOT/UNIT/... (default: the top-1 class logit)",
    )
    p.add_argument("--depth", type=int, default=2, help="levels below the root (default: 2)")
    p.add_argument(
        "--k", type=int, default=DEFAULT_K, help=f"children per node (default: {DEFAULT_K})"
    )
    for flag, what, terms, default in (
        ("--rule", "backward rule", RULE_TERMS, DEFAULT_RULE),
        (
            "--gain",
            "gain of kept channels (pictures are each scaled alone)",
            GAIN_TERMS,
            DEFAULT_GAIN,
        ),
        ("--scoring", "how children are ranked", SCORING_TERMS, DEFAULT_SCORING),
        ("--sign", "which children", SIGN_TERMS, DEFAULT_SIGN),
    ):
        p.add_argument(
            flag, choices=names(terms), default=default, help=help_line(what, terms, default)
        )
    p.add_argument(
        "--no-zoom",
        action="store_true",
        help="whole pictures (default: each zoomed on where its node carries its evidence)",
    )
    p.add_argument("--layers", help="comma-separated chain of layers, top first")
    p.add_argument(
        "--no-faithfulness", action="store_true", help="skip the edge ablations (faster)"
    )
    p.add_argument("--draws", type=int, default=8, help="random ablations per edge (default: 8)")
    p.add_argument("--out", default="tree.html", help="output file (default: tree.html)")
    add_model_args(p)
    p.set_defaults(func=tree_command)


def tree_command(args: argparse.Namespace) -> int:
    """Build the tree and write the HTML file."""
    from ..cli.common import check_output, model_from_args, staged
    from ..images import resolve_image

    if args.depth < 0 or args.depth > 8:
        raise CnnscopeError(f"--depth must be between 0 and 8, not {args.depth}")
    if args.k < 1 or args.k > 32:
        raise CnnscopeError(f"--k must be between 1 and 32, not {args.k}")
    if args.draws < 1 or args.draws > 256:
        raise CnnscopeError(f"--draws must be between 1 and 256, not {args.draws}")
    out = check_output(args.out, "--out")
    if not out.parent.exists():
        raise CnnscopeError(f"--out: folder {str(out.parent)!r} does not exist")
    name, image = resolve_image(args.image)
    model = model_from_args(args)
    chain = [n.strip() for n in args.layers.split(",") if n.strip()] if args.layers else None
    ex = Explorer(model, chain)
    x = ex.input(image)
    preds = ex.predictions(x, 5)
    if args.root:
        root = ex.check_path(parse_path(args.root))
    else:
        root = (Unit(LOGITS, preds[0]["index"]),)
    tree = build_tree(
        ex,
        x,
        root,
        args.depth,
        args.k,
        args.rule,
        args.gain,
        args.scoring,
        args.sign,
        faithfulness=not args.no_faithfulness,
        draws=args.draws,
        zoom=not args.no_zoom,
        progress=sys.stderr.isatty(),
    )
    settings = {
        "image": name,
        "model": model.name,
        "root": format_path(root),
        "rule": args.rule,
        "gain": args.gain,
        "scoring": args.scoring,
        "children": args.sign,
        "zoom": "focus" if not args.no_zoom else "none",
        "chain": " > ".join(ex.chain),
    }
    page = tree_html(
        tree,
        model.preprocess_config.to_uint8(x),
        preds,
        settings,
        title=f"{name}: neuron tree of {format_path(root)}",
    )
    with staged(out, "--out") as tmp:
        tmp.write_text(page, encoding="utf-8")
    print(f"{out} ({count_nodes(tree)} nodes, {len(page) // 1024} KiB)")
    return 0
