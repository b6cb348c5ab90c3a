"""``cnnscope index`` (build or update a dataset index) and ``cnnscope examples`` (read one).

``cnnscope index`` also runs under ``torchrun --nproc_per_node N -m cnnscope index ...``:
every rank takes a share of the batches and rank 0 merges and writes the index.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cli.common import add_model_args, device_from, model_from_args, print_json
from ..errors import CnnscopeError
from .build import DEFAULT_TOP_K, run_build
from .default import default_index_path
from .distributed import distributed_run, rank_and_world
from .reader import open_index


def register(subparsers) -> None:
    """Add ``index`` and ``examples``."""
    p = subparsers.add_parser(
        "index",
        help="find each unit's top examples in a folder of images (resumable, incremental)",
        description="Stream a folder of images (recursively) through the model and keep, for "
        "every unit of the chosen layers, the top-k images and positions. Rerunning the same "
        "command resumes an interrupted build or adds new images. Works under torchrun.",
    )
    p.add_argument(
        "folder",
        nargs="?",
        metavar="DIR",
        help="folder of images (default: the built-in gallery with flips, crops and scales)",
    )
    p.add_argument(
        "--layers",
        nargs="+",
        metavar="LAYER",
        help="layers to index, space or comma separated (default: the model's main layers)",
    )
    p.add_argument(
        "--top-k", type=int, default=DEFAULT_TOP_K, help="examples per unit (default: 16)"
    )
    p.add_argument(
        "--out",
        metavar="INDEX",
        help="index folder (required with DIR; default for the gallery: the data folder)",
    )
    p.add_argument("--batch-size", type=int, help="images per forward (default: 32)")
    p.add_argument("--workers", type=int, help="image decoding processes (default: cores / 2)")
    p.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also index flips, crops and scales of each image (default: gallery only)",
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=10,
        metavar="N",
        help="save the running state every N batches (default: 10)",
    )
    p.add_argument("--rebuild", action="store_true", help="start over, ignoring what is there")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    add_model_args(p)
    p.set_defaults(func=index_command)

    p = subparsers.add_parser(
        "examples",
        help="a unit's top dataset examples from an index (and its grid image)",
        description="Print a unit's top examples (image, position, strength), strongest "
        "first; --grid also renders its image patches and reconstructions.",
    )
    p.add_argument("index", metavar="INDEX", help="index folder written by cnnscope index")
    p.add_argument("unit", metavar="UNIT", help="LAYER:CHANNEL, e.g. blocks.4:7")
    p.add_argument("--json", action="store_true", help="print JSON for machines")
    p.add_argument("--grid", metavar="PNG", help="write the unit's grid image here")
    p.add_argument(
        "--crop",
        choices=["support", "field"],
        default="support",
        help="grid crops: reconstruction support (default) or receptive field",
    )
    p.add_argument("--tile", type=int, default=96, help="grid tile size in pixels (default: 96)")
    p.add_argument("--images", metavar="DIR", help="where the indexed folder is now, if it moved")
    add_model_args(p)
    p.set_defaults(func=examples_command, model=None)


def layer_names(values: list[str] | None) -> list[str] | None:
    """The names of a ``--layers`` option, space or comma separated; ``None`` for none.

    Examples
    --------
    >>> layer_names(["blocks.4,blocks.6", " head_act"]), layer_names([","])
    (['blocks.4', 'blocks.6', 'head_act'], None)
    """
    names = [n.strip() for v in values or () for n in v.split(",") if n.strip()]
    return names or None


def index_command(args: argparse.Namespace) -> int:
    """Build or update an index and print what was done."""
    layers = layer_names(args.layers)
    if args.folder is None and layers and Path(layers[-1]).is_dir():
        raise CnnscopeError(
            f"{layers[-1]!r} looks like the image folder: write DIR before --layers"
        )
    with distributed_run(device_from(args.device)) as (device, _):
        model = model_from_args(args)
        model.module.to(device)
        if args.out:
            out = Path(args.out)
        elif args.folder is None:
            out = default_index_path(model)
        else:
            raise CnnscopeError("give --out INDEX: the folder to write the index to")
        spec = {
            "model": args.model,
            "weights": str(Path(args.weights).resolve()) if args.weights else None,
        }
        result = run_build(
            model,
            args.folder,
            layers,
            top_k=args.top_k,
            out=out,
            batch_size=args.batch_size,
            workers=args.workers,
            augment=args.augment,
            checkpoint_every=args.checkpoint_every,
            model_spec=spec,
            rebuild=args.rebuild,
            show_progress=sys.stderr.isatty() and not args.json,
        )
        if rank_and_world()[0] == 0:
            _report(args, result)
    return 0


def _report(args, result) -> None:
    skipped = result.skipped
    if args.json:
        print_json(
            {
                "index": str(result.path),
                "processed": result.processed,
                "reused": result.reused,
                "skipped": skipped,
                "total": result.total,
                "up_to_date": result.up_to_date,
            }
        )
        return
    if result.up_to_date:
        print(f"index {result.path} is up to date ({result.total} images)")
        return
    print(
        f"indexed {result.processed} new images ({result.reused} already indexed, "
        f"{len(skipped)} skipped) into {result.path}"
    )
    if skipped:
        print(f"skipped {len(skipped)} unreadable image(s):")
        for s in skipped[:20]:
            print(f"  {s['image']}: {s['reason']}")
        if len(skipped) > 20:
            print(f"  ... and {len(skipped) - 20} more (see {result.path / 'index.json'})")


def examples_command(args: argparse.Namespace) -> int:
    """Print a unit's top examples; optionally render its grid."""
    ix = open_index(args.index, root=args.images)
    unit = ix.unit(args.unit)
    examples = ix.examples(unit)
    grid_file = None
    if args.grid:
        if args.model is not None:
            model = model_from_args(args)
        else:
            model = ix.load_model()
            model.module.to(device_from(args.device))
        from PIL import Image

        image = ix.grid(unit, model, crop=args.crop, tile=args.tile)
        grid_file = Path(args.grid)
        try:
            Image.fromarray(image).save(grid_file)
        except (OSError, ValueError) as exc:
            raise CnnscopeError(f"cannot write {grid_file}: {exc}") from None
    if args.json:
        print_json(
            {
                "index": str(ix.path),
                "unit": str(unit),
                "layer": unit.layer,
                "channel": unit.channel,
                "top_k": ix.top_k,
                "examples": [e.to_dict() for e in examples],
                "grid": None if grid_file is None else str(grid_file),
            }
        )
        return 0
    total = ix.manifest["images"]["indexed"]
    print(f"{unit}: top {len(examples)} of {total} images (index {ix.path})")
    print(f"{'rank':>4}  {'strength':>11}  {'y,x':>7}  image")
    for e in examples:
        pos = f"{e.position[0]},{e.position[1]}"
        print(f"{e.rank:>4}  {e.activation:>11.5g}  {pos:>7}  {e.image}")
    if grid_file is not None:
        print(f"grid written to {grid_file}")
    return 0
