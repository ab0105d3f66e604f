"""CLI commands about results: `arborseg table` (and, later, `arborseg report`)."""

from __future__ import annotations

import argparse


def _table(args: argparse.Namespace) -> int:
    from arborseg.table import format_table, run_table, write_table

    table = run_table(args.run_dirs)
    if args.out or args.format not in (None, "terminal"):
        print(write_table(table, args.out, args.format))
    else:
        print(format_table(table, top=args.top))
    return 0


def add_parsers(sub, command) -> None:
    """Add the result commands to the `arborseg` parser; ``command`` registers their functions."""
    p = sub.add_parser("table", help="the run table of one or more campaigns")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--format", choices=("terminal", "csv", "md", "html", "parquet", "json"), default=None)
    p.add_argument("--out", help="write to this file (format from --format or the suffix)")
    p.add_argument("--top", type=int, help="only the best N rows")
    command("table")(_table)
