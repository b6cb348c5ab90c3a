"""``cnnscope graph FOLDER --class NAME --out DIR``: a class's attribution graph.

Also runs under ``torchrun --nproc_per_node N -m cnnscope graph ...``: every rank takes a
share of the batches and rank 0 merges the sums and writes the graph.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..atomic import atomic_write
from ..cli.common import add_model_args, device_from, model_from_args, print_json
from ..engine import RULES
from ..errors import CnnscopeError
from ..index.cli import layer_names
from ..index.distributed import distributed_run, rank_and_world
from .build import SELECTIONS, build_graph
from .draw import draw_graph
from .export import export_graph_html
from .result import check_pruning, class_graph


def register(subparsers) -> None:
    """Add ``graph``."""
    p = subparsers.add_parser(
        "graph",
        help="a class's attribution graph over a folder of images (resumable, incremental)",
        description="Stream a folder of images through the model and add up, for one class, "
        "each unit's activation and influence on the class score and the influence of each "
        "unit on the units above it; write the pruned graph (graph.json), its picture "
        "(graph.png) and a page that opens in any browser (graph.html) to --out. Rerunning resumes an interrupted pass or adds new images. "
        "Works under torchrun.",
    )
    p.add_argument("folder", metavar="FOLDER", help="folder of images (searched recursively)")
    p.add_argument(
        "--class", dest="target", required=True, metavar="NAME", help="class name or index"
    )
    p.add_argument("--out", required=True, metavar="DIR", help="graph folder (state and output)")
    p.add_argument(
        "--layers", nargs="+", metavar="LAYER", help="chain layers (default: the model's)"
    )
    p.add_argument(
        "--select",
        choices=SELECTIONS,
        default="all",
        help="sum every image (all, default) or only those predicted as the class",
    )
    p.add_argument(
        "--edge-k",
        type=int,
        default=2,
        help="top units per layer and image whose edges are computed (default: %(default)s)",
    )
    p.add_argument(
        "--rule",
        choices=RULES,
        default="gradient",
        help="backward rule of the gradients (default: gradient, the true gradient)",
    )
    p.add_argument("--examples", type=int, default=8, help="top images kept per unit (default: 8)")
    p.add_argument("--units", type=int, default=6, help="nodes shown per layer (default: 6)")
    p.add_argument(
        "--edges", type=int, default=3, help="edges shown per node (default: %(default)s)"
    )
    p.add_argument(
        "--min-share",
        type=float,
        default=0.05,
        help="smallest edge shown, as a share of the strongest edge between the same two "
        "layers (default: 0.05)",
    )
    p.add_argument("--batch-size", type=int, help="images per forward (default: 32)")
    p.add_argument("--workers", type=int, default=0, help="image decoding processes (default: 0)")
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=10,
        metavar="N",
        help="save the running sums every N batches (default: 10)",
    )
    p.add_argument(
        "--html",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also write graph.html, a self-contained page of the graph (default: yes; "
        "--no-html removes an older one)",
    )
    p.add_argument("--rebuild", action="store_true", help="start over, ignoring what is there")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    add_model_args(p)
    p.set_defaults(func=graph_command)


def graph_command(args: argparse.Namespace) -> int:
    """Run (or resume, or update) the pass, then write graph.json, graph.png and graph.html."""
    check_pruning(args.units, args.edges, args.min_share)
    if not Path(args.folder).is_dir():
        raise CnnscopeError(f"image folder not found: {args.folder}")
    with distributed_run(device_from(args.device)) as (device, _):
        model = model_from_args(args)
        model.module.to(device)
        run = build_graph(
            model,
            args.folder,
            args.target,
            out=args.out,
            layers=layer_names(args.layers),
            select=args.select,
            edge_k=args.edge_k,
            rule=args.rule,
            examples=args.examples,
            batch_size=args.batch_size,
            workers=args.workers,
            checkpoint_every=args.checkpoint_every,
            rebuild=args.rebuild,
            show_progress=sys.stderr.isatty() and not args.json,
        )
        if rank_and_world()[0] == 0:
            _write(args, run)
    return 0


def _write(args, run) -> None:
    graph = class_graph(run.path, units=args.units, edges=args.edges, min_share=args.min_share)
    data = json.dumps(graph.to_dict(), indent=1) + "\n"
    atomic_write(run.path / "graph.json", data.encode("utf-8"))
    draw_graph(graph, run.path / "graph.png")
    page = run.path / "graph.html"
    if args.html:
        export_graph_html(graph, page)
    else:  # no page left behind that shows older sums
        page.unlink(missing_ok=True)
    summary = {
        "graph": str(run.path / "graph.json"),
        "picture": str(run.path / "graph.png"),
        "page": str(page) if args.html else None,
        "class": {"index": graph.class_index, "label": graph.label},
        "processed": run.processed,
        "reused": run.reused,
        "skipped": run.skipped,
        "total": run.total,
        "included": run.included,
        "up_to_date": run.up_to_date,
    }
    if args.json:
        print_json(summary)
        return
    what = "up to date" if run.up_to_date else f"{run.processed} new images, {run.reused} reused"
    print(
        f"graph of {graph.label!r} over {run.included} of {run.total} images ({what}, "
        f"{len(run.skipped)} skipped): {len(graph.nodes)} nodes, {len(graph.edges)} edges "
        f"in {run.path / 'graph.json'}"
    )
