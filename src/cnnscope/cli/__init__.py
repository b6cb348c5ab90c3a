"""The ``cnnscope`` command line: one subcommand per job, each a thin client of the engine.

Each feature module registers its subcommands through a ``register(subparsers)``
function listed in :data:`COMMAND_MODULES`. Every user error becomes one line on stderr
and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from ..errors import CnnscopeError

log = logging.getLogger("cnnscope")

#: Modules with a ``register(subparsers)`` function, in the order ``--help`` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "cnnscope.cli.core",
    "cnnscope.attribution.cli",
    "cnnscope.tree.cli",
    "cnnscope.server.cli",
    "cnnscope.index.cli",
    "cnnscope.graph.cli",
    "cnnscope.synthesis.cli",
    "cnnscope.views.cli",
)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and exit status 2."""

    def error(self, message: str) -> NoReturn:  # noqa: D102
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    """The full parser with every registered subcommand."""
    parser = _Parser(
        prog="cnnscope",
        description="See inside convolutional networks: attribution, neuron trees, dataset "
        "examples, feature synthesis and layer views for any PyTorch CNN.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cnnscope`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(levelname)s %(name)s: %(message)s",
    )
    # Python warnings (e.g. Pillow's about a corrupt EXIF block) only with -v: an error
    # stays one line
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.WARNING if args.verbose else logging.ERROR)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except CnnscopeError as err:
        sys.stderr.write(f"cnnscope {args.command}: error: {err}\n")
        return 2
    except BrokenPipeError:  # e.g. `cnnscope examples ... | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        sys.stderr.write("cnnscope: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
