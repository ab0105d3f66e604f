"""The `arborseg` command: builds the parser from the command groups and dispatches.

Each command group (one module of this package) adds its subcommands with ``add_parsers(sub)`` and sets
each one's ``handler``, a thin shell over a library function; heavy imports stay inside the handlers so
that `arborseg --help` is fast. User mistakes (ArborsegError) are printed as one line on stderr with exit
code 2, never a traceback; Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import sys

from arborseg.cli import bootstrap, bundle, ensemble, pretrain, results, search, space, train
from arborseg.errors import ArborsegError
from arborseg.log import configure


def build_parser() -> argparse.ArgumentParser:
    """The `arborseg` parser with every command group, in the order `arborseg --help` lists them."""
    parser = argparse.ArgumentParser(prog="arborseg", description="Architecture search and ensembles for "
                                     "volume-EM segmentation.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    space.add_parsers(sub)
    train.add_parsers(sub)
    pretrain.add_parsers(sub)
    search.add_parsers(sub)  # search, status
    results.add_parsers(sub)  # table, plots, report
    ensemble.add_parsers(sub)
    bundle.add_parsers(sub)  # export, predict
    bootstrap.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one `arborseg` command line; the exit code."""
    args = build_parser().parse_args(argv)
    configure(-1 if args.quiet else args.verbose)
    try:
        return args.handler(args)
    except ArborsegError as exc:
        print(f"arborseg: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("arborseg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
