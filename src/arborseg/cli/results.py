"""CLI commands about results: `arborseg table`, `arborseg plots` and `arborseg report`."""

from __future__ import annotations

import argparse

from arborseg.cli.options import require_positive

# kept here (not imported from table/plots) so that building the parser does not import pandas
TABLE_FORMATS = ("terminal", "csv", "md", "html", "parquet", "json")
PLOT_NAMES = ("history", "pareto", "fn_curves", "importance", "near_far", "rungs")
WHERE_HELP = ("keep rows where this pandas query holds, e.g. \"state == 'COMPLETE' and params < 1e6\"; dotted "
              "column names may be bare or in backticks: \"`eval_far.fn_401` < 1\" (applied before --group-by)")


def _load(args: argparse.Namespace, ensembles: bool = False):
    from arborseg.table import filter_table, read_runs, run_table

    runs = read_runs(args.run_dirs)
    return runs, filter_table(run_table([], campaigns=runs, ensembles=ensembles), getattr(args, "where", None))


def _table(args: argparse.Namespace) -> int:
    from arborseg.errors import CampaignError
    from arborseg.table import (
        campaign_summary,
        format_table,
        group_table,
        select_columns,
        sort_table,
        table_direction,
        table_objective,
        top_rows,
        write_table,
    )

    if args.summary and args.group_by:
        raise CampaignError("--summary and --group-by are two different views: give one of them")
    _, table = _load(args, ensembles=not (args.summary or args.group_by or args.no_ensembles))
    if args.list_columns:
        print("\n".join(str(c) for c in table.columns))
        return 0
    if args.summary:
        table = campaign_summary(table)
    elif args.group_by:
        table = group_table(table, args.group_by)
    table = sort_table(table, args.sort, args.ascending if args.sort else (True if args.ascending else None))
    table = top_rows(table, args.top)
    fmt = args.format
    if fmt in (None, "terminal") and not args.out:
        columns = None
        if args.columns:
            columns = list(select_columns(table, args.columns).columns)
        objective = table_objective(table) if not (args.summary or args.group_by) else None
        print(format_table(table, top=None, objective=objective, direction=table_direction(table), columns=columns,
                           order=False))
        return 0
    print(write_table(select_columns(table, args.columns), args.out, fmt))
    return 0


def _plots(args: argparse.Namespace) -> int:
    require_positive(args, "top_trees")
    from arborseg.viz.plots import make_plots

    runs, table = _load(args)
    written = make_plots(table, args.out, campaigns=runs, formats=args.format, top=args.top_trees,
                         evaluator=args.importance, which=args.only or PLOT_NAMES)
    for name, paths in written.items():
        print(f"{name:11s} " + "  ".join(str(p) for p in paths))
    return 0


def _report(args: argparse.Namespace) -> int:
    require_positive(args, "top")
    from arborseg.viz.report import build_report

    index = build_report(args.run_dirs, args.out, top=args.top, title=args.title, where=args.where,
                         formats=tuple(args.format), evaluator=args.importance)
    print(f"report: {index}  (open it in a browser; the folder {index.parent} is self-contained)")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add the result commands to the `arborseg` parser."""
    p = sub.add_parser("table", help="the run table of one or more campaigns: sort, filter, group, export",
                       description="One row per trial (campaign, state, tree, family, size, hyperparameters, every "
                                   "metric, time, failure reason), best first. RUN_DIR is a campaign folder or a "
                                   "folder of campaigns (runs/).")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--where", metavar="EXPR", help=WHERE_HELP)
    p.add_argument("--sort", metavar="COL", help="sort by this column (descending unless --ascending); default: best "
                                                 "first by the campaign objective")
    p.add_argument("--ascending", action="store_true", help="sort ascending")
    p.add_argument("--group-by", choices=("tree", "family"),
                   help="one row per tree (seeds and refinements pooled) or per family: mean and std of every "
                        "number over the completed trials, counts by state, the best value")
    p.add_argument("--summary", action="store_true",
                   help="one row per campaign: trials by state, nets, max / mean / best objective, best tree")
    p.add_argument("--top", type=int, metavar="K", help="only the first K rows (after sorting)")
    p.add_argument("--columns", metavar="LIST", help="comma-separated columns or patterns, e.g. "
                                                     "'tree_name,value,eval_far.fn_*,param.*'")
    p.add_argument("--list-columns", action="store_true", help="print the column names and stop")
    p.add_argument("--no-ensembles", action="store_true",
                   help="leave out the rows of ensembles (state ENSEMBLE; never in --summary or --group-by)")
    p.add_argument("--format", choices=TABLE_FORMATS, default=None,
                   help="terminal (default), csv, md, html, parquet (needs pyarrow) or json; with --out the "
                        "suffix chooses when --format is not given")
    p.add_argument("--out", metavar="FILE", help="write to this file instead of the terminal")
    p.set_defaults(handler=_table)

    p = sub.add_parser("plots", help="plots of one or more campaigns (PNG and SVG)")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the plot files")
    p.add_argument("--where", metavar="EXPR", help=WHERE_HELP)
    p.add_argument("--format", nargs="+", choices=("png", "svg", "pdf"), default=["png", "svg"])
    p.add_argument("--only", nargs="+", choices=PLOT_NAMES, help="only these plots")
    p.add_argument("--top-trees", type=int, default=5, help="trees in the FN-n plot (default 5)")
    p.add_argument("--importance", choices=("auto", "fanova", "mdi", "ped-anova"), default="auto",
                   help="importance evaluator (fanova and mdi need scikit-learn; auto: fanova if present, else "
                        "PED-ANOVA)")
    p.set_defaults(handler=_plots)

    p = sub.add_parser("report", help="a static HTML report of one or more campaigns (share the folder)")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", required=True, metavar="DIR", help="report folder (index.html and its images)")
    p.add_argument("--top", type=int, default=5, help="best trees shown with pictures and overlays (default 5)")
    p.add_argument("--title", help="page title")
    p.add_argument("--where", metavar="EXPR", help=WHERE_HELP)
    p.add_argument("--format", nargs="+", choices=("png", "svg"), default=["png", "svg"],
                   help="plot files written (the page shows PNG and links SVG)")
    p.add_argument("--importance", choices=("auto", "fanova", "mdi", "ped-anova"), default="auto")
    p.set_defaults(handler=_report)
