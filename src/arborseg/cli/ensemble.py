"""CLI command `arborseg ensemble`: members of a campaign's best trees, fused, scored, with gains."""

from __future__ import annotations

import argparse
import math
from typing import Any

REGION_COLUMNS = ("validation", "eval_near", "eval_far")


def _num(value: Any, width: int = 10) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-".rjust(width)
    return f"{value:.4f}".rjust(width)


def format_ensemble(manifest: dict[str, Any]) -> str:
    """The terminal summary: every member and the ensemble on each region, then the gains with intervals."""
    objective = manifest["objective"]
    regions = [r for r in REGION_COLUMNS if r in manifest["scores"]]
    head = f"{'member':18s} {'tree':22s} {'seed':>4s} {'weight':>6s} {'state':8s}" + \
        "".join(f" {r:>10s}" for r in regions)
    lines = [f"ensemble {manifest['name']}: {manifest['fusion']} fusion, {manifest['selection']} selection, "
             f"{len(manifest['members'])} of {len(manifest['candidates'])} members; {objective} "
             f"({manifest['direction']}) per region", head, "-" * len(head)]
    for c in manifest["candidates"]:
        scores = c.get("scores") or {}
        lines.append(f"{c['key']:18s} {c['tree_name'][:22]:22s} {c['seed']:>4d} {c['weight']:>6.3f} "
                     f"{c['state']:8s}" + "".join(" " + _num((scores.get(r) or {}).get(objective)) for r in regions))
    lines.append(f"{'ENSEMBLE':18s} {manifest['name'][:22]:22s} {'':>4s} {1.0:>6.3f} {'':8s}"
                 + "".join(" " + _num(manifest["scores"][r].get(objective)) for r in regions))
    tried = ", ".join(f"{f} {v:.4f}" for f, v in manifest.get("validation", {}).items())
    if tried:
        lines.append(f"validation {objective} by fusion: {tried}")
    gain = manifest.get("gain") or {}
    if gain.get("regions"):
        lines.append(f"gain over the best single member ({gain['baseline']}), ensemble - member, mean over "
                     f"slices [95% bootstrap CI, {gain['n_boot']} resamples]:")
        for region, metrics in gain["regions"].items():
            parts = []
            for metric, g in metrics.items():
                mark = " *" if g.get("improved") else ""
                parts.append(f"{metric} {g['gain']:+.4f} [{g['lo']:+.4f}, {g['hi']:+.4f}]{mark}")
            first: dict[str, Any] = next(iter(metrics.values()), {})
            n = first.get("slices", 0)
            lines.append(f"  {region:10s} ({n} slices)  " + "   ".join(parts))
        lines.append("  (* the whole interval is on the better side of 0; for fn_*/fp_* lower is better)")
    failed = [c for c in manifest["candidates"] if c["state"] != "COMPLETE"]
    for c in failed:
        lines.append(f"failed: {c['key']} ({c['tree_name']}, seed {c['seed']}): {c.get('reason', '')}")
    return "\n".join(lines)


def _ensemble(args: argparse.Namespace) -> int:
    from arborseg.ensemble import EnsembleSettings, build_ensemble

    settings = EnsembleSettings(top=args.top, seeds=args.seeds, fusion=args.fusion, selection=args.selection,
                                name=args.name, executor=args.executor, steps=args.steps, bootstrap=args.bootstrap,
                                rounds=args.rounds, reuse=not args.no_reuse, progress=not args.quiet)
    result = build_ensemble(args.run_dir, settings)
    print(format_ensemble(result.manifest))
    print(f"ensemble folder: {result.dir}  (arborseg table {result.manifest['campaign']})")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add `arborseg ensemble` to the `arborseg` parser."""
    p = sub.add_parser(
        "ensemble", help="train seeds of a campaign's best trees, fuse them, score the ensemble",
        description="Pick the K best distinct trees of a campaign by its objective on validation, train M members "
                    "per tree with different seeds (jobs through the campaign's executor; a rerun trains nothing "
                    "that is finished), choose members (greedy forward selection with replacement) and the fusion "
                    "on validation, score the ensemble and every member on eval_near and eval_far and report the "
                    "gain over the best single member with bootstrap intervals over eval slices. Results go to "
                    "RUN_DIR/ensembles/NAME/ and appear in `arborseg table RUN_DIR`.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a campaign folder (runs/<name>/)")
    p.add_argument("--top", type=int, default=3, metavar="K", help="best distinct trees to use (default 3)")
    p.add_argument("--seeds", type=int, default=2, metavar="M", help="members per tree, seeds s, s+1, ... "
                                                                     "from the campaign's train seed (default 2)")
    p.add_argument("--fusion", choices=("mean", "max", "vote", "weighted", "auto"), default="auto",
                   help="how member probabilities are fused; weighted: weights fitted on validation (class-balanced "
                        "log-loss); auto (default): the best of the four on validation")
    p.add_argument("--selection", choices=("greedy", "all"), default="greedy",
                   help="greedy forward selection with replacement on validation (default) or every member")
    p.add_argument("--name", help="ensemble name, the folder under RUN_DIR/ensembles/ (default top{K}x{M})")
    p.add_argument("--executor", choices=("debug", "local", "slurm"), help="override the campaign's executor")
    p.add_argument("--steps", type=int, help="training steps per member (default: the campaign's budget.steps)")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="bootstrap resamples (default 1000)")
    p.add_argument("--rounds", type=int, help="greedy selection rounds after the first pick (default 2 x members)")
    p.add_argument("--no-reuse", action="store_true",
                   help="train every member, even one equal to a campaign trial (same tree, seed and steps)")
    p.set_defaults(handler=_ensemble)
