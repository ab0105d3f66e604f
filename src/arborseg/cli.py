"""The `arborseg` command. Each subcommand is a thin shell over a library function.

User mistakes (ArborsegError) are printed as one line on stderr with exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from arborseg.errors import ArborsegError
from arborseg.log import configure

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(name: str):
    def deco(fn):
        COMMANDS[name] = fn
        return fn
    return deco


# ---------------------------------------------------------------------- space
@command("space validate")
def _space_validate(args: argparse.Namespace) -> int:
    from arborseg.space.commands import validate

    print(validate(args.file))
    return 0


@command("space sample")
def _space_sample(args: argparse.Namespace) -> int:
    from arborseg.space.commands import sample

    for line in sample(args.file, args.n, args.seed, args.out, args.classes, pictures=not args.no_pictures):
        print(line)
    print(f"wrote {args.n} trees to {args.out}/")
    return 0


@command("space show")
def _space_show(args: argparse.Namespace) -> int:
    from arborseg.space.commands import show

    text, picture = show(args.tree, args.out, args.classes)
    print(text)
    print(f"picture: {picture}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="arborseg", description="Architecture search and ensembles for "
                                     "volume-EM segmentation.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    space = sub.add_parser("space", help="validate search spaces, sample and show module trees")
    space_sub = space.add_subparsers(dest="space_command", metavar="ACTION", required=True)
    p = space_sub.add_parser("validate", help="check a search-space YAML file")
    p.add_argument("file")
    p = space_sub.add_parser("sample", help="sample module trees from a space into tree YAML files (+ pictures)")
    p.add_argument("file")
    p.add_argument("--n", type=int, default=5, help="number of distinct trees (default 5)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed writes identical files")
    p.add_argument("--out", default="trees", help="output folder (default trees/)")
    p.add_argument("--classes", type=int, default=2, help="classes for the parameter/FLOP count (default 2)")
    p.add_argument("--no-pictures", action="store_true", help="skip the PNG picture of each tree")
    p = space_sub.add_parser("show", help="text summary and picture of a tree file")
    p.add_argument("tree")
    p.add_argument("--out", help="picture path (.png or .svg; default: next to the tree)")
    p.add_argument("--classes", type=int, default=2)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure(-1 if args.quiet else args.verbose)
    key = args.command
    for attr in ("space_command", "bootstrap_command"):
        if getattr(args, attr, None):
            key = f"{key} {getattr(args, attr)}"
    try:
        return COMMANDS[key](args)
    except ArborsegError as exc:
        print(f"arborseg: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("arborseg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
