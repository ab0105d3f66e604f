"""CLI command `arborseg ensemble`: a campaign's trained trials (post hoc) or members of its best trees trained
anew (--train), fused, scored, with gains and the inference cost."""

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
    posthoc = manifest.get("mode") == "posthoc"
    what = "trials chosen post hoc (no training)" if posthoc else "members"
    lines = [f"ensemble {manifest['name']}: {manifest['fusion']} fusion, {manifest['selection']} selection, "
             f"{len(manifest['members'])} of {len(manifest['candidates'])} {what}; {objective} "
             f"({manifest['direction']}) per region", head, "-" * len(head)]
    for c in manifest["candidates"]:
        scores = c.get("scores") or {}
        seed = c.get("seed")
        lines.append(f"{c['key']:18s} {c['tree_name'][:22]:22s} {seed if seed is not None else '-':>4} "
                     f"{c['weight']:>6.3f} "
                     f"{c['state']:8s}" + "".join(" " + _num((scores.get(r) or {}).get(objective)) for r in regions))
    lines.append(f"{'ENSEMBLE':18s} {manifest['name'][:22]:22s} {'':>4s} {1.0:>6.3f} {'':8s}"
                 + "".join(" " + _num(manifest["scores"][r].get(objective)) for r in regions))
    tried = ", ".join(f"{f} {v:.4f}" for f, v in manifest.get("validation", {}).items())
    if tried:
        lines.append(f"validation {objective} by fusion: {tried}")
    gain = manifest.get("gain") or {}
    if gain.get("regions"):
        single = "trial" if posthoc else "member"
        lines.append(f"gain over the best single {single} ({gain['baseline']}), ensemble - {single}, mean over "
                     f"slices [95% bootstrap CI, {gain['n_boot']} resamples]:")
        for region, metrics in gain["regions"].items():
            parts = []
            for metric, g in metrics.items():
                mark = " *" if g.get("improved") else ""
                parts.append(f"{metric} {g['gain']:+.4f} [{g['lo']:+.4f}, {g['hi']:+.4f}]{mark}")
            first: dict[str, Any] = next(iter(metrics.values()), {})
            n = first.get("slices", 0)
            lines.append(f"  {region:10s} ({n} slices)  " + "   ".join(parts))
        lines.append("  (* the whole interval is on the better side of 0; for fn_*/fp_* lower is better; the "
                     "validation gain is optimistic: the members were chosen there)")
    cost = manifest.get("inference") or {}
    if cost:
        lines.append(f"inference cost: {cost['members']} member(s), {cost['gflops']:.3f} GFLOPs per window "
                     "(sum of one forward pass of each member at its own window)")
    failed = [c for c in manifest["candidates"] if c["state"] != "COMPLETE"]
    for c in failed:
        lines.append(f"failed: {c['key']} ({c['tree_name']}, seed {c['seed']}): {c.get('reason', '')}")
    return "\n".join(lines)


TRAIN_ONLY = ("top", "seeds", "executor", "steps", "no_reuse")


def _ensemble(args: argparse.Namespace) -> int:
    from arborseg.ensemble import EnsembleSettings, build_ensemble, build_posthoc
    from arborseg.errors import ArborsegError

    if not args.train:
        given = [f"--{k.replace('_', '-')}" for k in TRAIN_ONLY if getattr(args, k) not in (None, False)]
        if given:
            raise ArborsegError(f"{', '.join(given)}: only with --train (without it the ensemble is chosen post hoc "
                                "among the trials already trained; --candidates N limits them)")
    elif args.candidates is not None:
        raise ArborsegError("--candidates: only without --train (with --train, --top K picks the trees)")
    settings = EnsembleSettings(top=args.top or 3, seeds=args.seeds or 2, fusion=args.fusion,
                                selection=args.selection, name=args.name, executor=args.executor, steps=args.steps,
                                bootstrap=args.bootstrap, rounds=args.rounds, reuse=not args.no_reuse,
                                progress=not args.quiet, candidates=args.candidates, init=args.init)
    result = build_ensemble(args.run_dir, settings) if args.train else build_posthoc(args.run_dir, settings)
    print(format_ensemble(result.manifest))
    print(f"ensemble folder: {result.dir}  (arborseg table {result.manifest['campaign']})")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add `arborseg ensemble` to the `arborseg` parser."""
    p = sub.add_parser(
        "ensemble", help="ensemble a campaign's trained trials post hoc (no training), or train members (--train)",
        description="By default post hoc, with no training: the candidates are the campaign's COMPLETE trials with "
                    "stored probabilities (all, or the best --candidates N); members are chosen on validation by "
                    "greedy forward selection with replacement (Caruana) started from the --init K best, with the "
                    "fusion rule. With --train: pick the K best distinct trees, train M members per tree with "
                    "different seeds (jobs through the campaign's executor; a rerun trains nothing that is "
                    "finished), then choose the same way. Either way the ensemble and every member are scored on "
                    "each region with the gain over the best single one (bootstrap intervals over slices) and the "
                    "inference cost. Results go to RUN_DIR/ensembles/NAME/ and appear in `arborseg table RUN_DIR`.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a campaign folder (runs/<name>/)")
    p.add_argument("--train", action="store_true",
                   help="train new members (K trees x M seeds) instead of choosing among the trained trials")
    p.add_argument("--candidates", type=int, metavar="N",
                   help="post hoc: the best N complete trials by the objective are candidates (default: all)")
    p.add_argument("--init", type=int, metavar="K",
                   help="greedy selection starts from the K best candidates (default 2 post hoc, 1 with --train)")
    p.add_argument("--top", type=int, metavar="K", help="--train: best distinct trees to use (default 3)")
    p.add_argument("--seeds", type=int, metavar="M", help="--train: members per tree, seeds s, s+1, ... "
                                                          "from the campaign's train seed (default 2)")
    p.add_argument("--fusion", choices=("mean", "max", "vote", "weighted", "auto"), default="auto",
                   help="how member probabilities are fused; weighted: weights fitted on validation (class-balanced "
                        "log-loss); auto (default): the best of the four on validation")
    p.add_argument("--selection", choices=("greedy", "all"), default="greedy",
                   help="greedy forward selection with replacement on validation (default) or every member")
    p.add_argument("--name", help="ensemble name, the folder under RUN_DIR/ensembles/ (default posthoc, "
                                  "posthoc{N} with --candidates N, top{K}x{M} with --train)")
    p.add_argument("--executor", choices=("debug", "local", "slurm"),
                   help="--train: override the campaign's executor")
    p.add_argument("--steps", type=int, help="--train: training steps per member (default: the campaign's "
                                             "budget.steps)")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="bootstrap resamples (default 1000)")
    p.add_argument("--rounds", type=int, help="greedy selection rounds after the first pick (default 2 x members)")
    p.add_argument("--no-reuse", action="store_true",
                   help="--train: train every member, even one equal to a campaign trial (same tree, seed, steps)")
    p.set_defaults(handler=_ensemble)
