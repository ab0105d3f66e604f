"""`arborseg search` (run or resume a campaign) and `arborseg status` (its progress)."""

from __future__ import annotations

import argparse

from arborseg.cli.options import require_positive


def _search(args: argparse.Namespace) -> int:
    from arborseg.campaign.config import load_campaign
    from arborseg.campaign.driver import Campaign
    from arborseg.table import format_table, run_table

    require_positive(args, "max_trials", "top")
    cfg = load_campaign(args.campaign).with_overrides(executor=args.executor, warm_workers=args.warm_workers)
    campaign = Campaign(cfg, args.runs_dir, max_trials=args.max_trials, progress=not args.quiet)
    print(campaign.plan.describe(), flush=True)
    run_dir = campaign.run()
    table = run_table([run_dir])
    print(format_table(table, top=args.top, objective=cfg.objective, direction=cfg.direction))
    done = table[table["state"] == "COMPLETE"] if "state" in table else table
    if len(done):
        best = done.sort_values("value", ascending=cfg.direction == "minimize", kind="stable").iloc[0]
        print(f"best trial: {best['trial_id']} {best['tree_name']} ({best['family']}), {cfg.objective} "
              f"{best['value']:.4f} on validation after {int(best['steps'])} steps "
              f"(model: {best['artifact_dir']}/model.pt)")
    print(f"run folder: {run_dir}  (arborseg status {run_dir}; arborseg table {run_dir})")
    return 0


def _status(args: argparse.Namespace) -> int:
    from arborseg.table import campaign_status

    print(campaign_status(args.run_dir))
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add `arborseg search` and `arborseg status` to the `arborseg` parser."""
    p = sub.add_parser("search", help="run (or resume) a search campaign")
    p.add_argument("campaign", help="a campaign YAML (see examples/quickstart.yaml)")
    p.add_argument("--executor", choices=("debug", "local", "slurm"), help="override the campaign's executor")
    p.add_argument("--warm-workers", action=argparse.BooleanOptionalAction, default=None,
                   help="run trials on long-lived worker jobs that take trial after trial (local/slurm; default: "
                        "the campaign's executor.warm_workers, else one job per trial)")
    p.add_argument("--max-trials", type=int, help="start at most N new jobs in this run (each rung a trial trains is one job; resume later)")
    p.add_argument("--runs-dir", default="runs", help="where campaign folders live (default runs/)")
    p.add_argument("--top", type=int, default=10, help="rows of the run table to print at the end")
    p.set_defaults(handler=_search)

    p = sub.add_parser("status", help="progress of a campaign: trials by state, best so far, running jobs")
    p.add_argument("run_dir")
    p.set_defaults(handler=_status)
