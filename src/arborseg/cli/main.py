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
    from arborseg.cli.space_commands import validate

    print(validate(args.file))
    return 0


@command("space sample")
def _space_sample(args: argparse.Namespace) -> int:
    from arborseg.cli.space_commands import sample

    lines = sample(args.file, args.n, args.seed, args.out, args.classes, pictures=not args.no_pictures)
    for line in lines:
        print(line)
    print(f"wrote {len(lines)} trees to {args.out}/" + ("" if len(lines) == args.n else
                                                        f" (the space has no {args.n} distinct trees within the draws)"))
    return 0


@command("space show")
def _space_show(args: argparse.Namespace) -> int:
    from arborseg.cli.space_commands import show

    text, picture = show(args.tree, args.out, args.classes)
    print(text)
    print(f"picture: {picture}")
    return 0


# ---------------------------------------------------------------------- train
@command("train")
def _train(args: argparse.Namespace) -> int:
    from pathlib import Path

    import yaml

    from arborseg.data import load_data_config
    from arborseg.train.settings import TrainSettings
    from arborseg.train.trainer import train_and_score
    from arborseg.tree import ModuleTree

    tree = ModuleTree.load(args.tree)
    data = load_data_config(args.data)
    settings = {"steps": args.steps, "seed": args.seed, "device": args.device, "objective": args.objective,
                "eval_every": args.eval_every or max(1, args.steps // 5)}
    overrides = {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ArborsegError(f"--set {item!r}: write KEY=VALUE, e.g. --set lr=0.001")
        overrides[key] = yaml.safe_load(value)
    if args.batch_size:
        overrides["batch_size"] = args.batch_size
    settings["overrides"] = overrides
    if args.error_weights:
        settings["error_weighting"] = {"prediction": args.error_weights, "mode": args.error_mode,
                                       "weight": args.error_weight}
    out = Path(args.out or f"runs/train/{tree.name}")
    result = train_and_score(tree, data, TrainSettings.from_dict(settings), out)
    for region, scores in result["regions"].items():
        keys = [k for k in ("miou", "fg_iou", "fn_401", "fp_401", "rand_error") if k in scores]
        print(f"{region:11s} " + "  ".join(f"{k}={scores[k]:.4f}" for k in keys))
    print(f"trained {result['steps']} steps in {result['train_seconds']:.1f}s; artifacts in {out}/")
    return 0


# ---------------------------------------------------------------------- campaigns
@command("search")
def _search(args: argparse.Namespace) -> int:
    from arborseg.campaign.config import load_campaign
    from arborseg.campaign.driver import Campaign
    from arborseg.table import format_table, run_table

    cfg = load_campaign(args.campaign).with_overrides(executor=args.executor)
    run_dir = Campaign(cfg, args.runs_dir, max_trials=args.max_trials, progress=not args.quiet).run()
    table = run_table([run_dir])
    print(format_table(table, top=args.top, objective=cfg.objective, direction=cfg.direction))
    print(f"run folder: {run_dir}  (arborseg status {run_dir}; arborseg table {run_dir})")
    return 0


@command("status")
def _status(args: argparse.Namespace) -> int:
    from arborseg.table import campaign_status

    print(campaign_status(args.run_dir))
    return 0


# modules that add further commands (results, ensembles, bundles, bootstrapping)
CLI_MODULES: tuple[str, ...] = ("cli.results", "cli.ensemble", "cli.bundle", "cli.bootstrap")


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

    p = sub.add_parser("train", help="train and score one module tree on a data YAML")
    p.add_argument("tree", help="a tree YAML (from `arborseg space sample`)")
    p.add_argument("--data", required=True, help="a data YAML (see examples/)")
    p.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    p.add_argument("--out", help="output folder (default runs/train/<tree name>)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    p.add_argument("--objective", default="fg_iou", help="validation metric reported while training")
    p.add_argument("--eval-every", type=int, help="validate every N steps (default steps/5)")
    p.add_argument("--batch-size", type=int, help="override the tree's batch size")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a training value of the tree, e.g. --set lr=0.001 (repeatable)")
    p.add_argument("--error-weights", metavar="PREDICTION",
                   help="a previous prediction (label volume): upweight the voxels it got wrong")
    p.add_argument("--error-mode", choices=("all", "fn"), default="all",
                   help="upweight all errors or only false negatives (default all)")
    p.add_argument("--error-weight", type=float, default=5.0, help="weight of those voxels (default 5)")

    p = sub.add_parser("search", help="run (or resume) a search campaign")
    p.add_argument("campaign", help="a campaign YAML (see examples/quickstart.yaml)")
    p.add_argument("--executor", choices=("debug", "local", "slurm"), help="override the campaign's executor")
    p.add_argument("--max-trials", type=int, help="start at most N new trials in this run (resume later)")
    p.add_argument("--runs-dir", default="runs", help="where campaign folders live (default runs/)")
    p.add_argument("--top", type=int, default=10, help="rows of the run table to print at the end")

    p = sub.add_parser("status", help="progress of a campaign: trials by state, best so far, running jobs")
    p.add_argument("run_dir")

    import importlib

    for name in CLI_MODULES:  # each adds its commands with add_parsers(sub, command)
        importlib.import_module(f"arborseg.{name}").add_parsers(sub, command)
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
