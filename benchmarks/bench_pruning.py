"""Pruning: how many train steps the pruners save on the quickstart campaign, and what it costs in score.

The quickstart campaign (examples/quickstart.yaml: synthetic 12 x 192 x 192 volume, quickstart space;
budget cut down with ``--trees/--refine-top/--refine-trials/--steps/--eval-every`` to fit a shared
2-core machine) runs once per pruner with the same seeds (tree sampling, TPE sampler, training), pruners
interleaved when several ``--seeds`` are given. The debug executor runs trials one after the other in
the driver process, so every pruning decision sees the same finished trials whatever the machine load,
and the runs are reproducible.

Per run: trials COMPLETE / PRUNED, total train steps (a pruned trial counts the steps it trained before it
was stopped), the best objective (validation fg_iou), the steps trained until the run first reached its
own best, and until it first reached the best of the run without pruning (same seed).

    python benchmarks/bench_pruning.py [--seeds 0] [--pruners none median hyperband] [--trees 4]
        [--refine-top 1] [--refine-trials 2] [--steps 24] [--eval-every 8] [--no-readme]
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _campaign_bench import load, machine, quickstart_campaign, run_campaign, trial_records, update_readme

SECTION = "Pruning"


def pruner_options(name: str, eval_every: int) -> dict:
    if name == "median":  # quickstart.yaml: n_startup_trials 2, n_warmup_steps = one evaluation
        return {"name": "median", "n_startup_trials": 2, "n_warmup_steps": eval_every}
    if name == "hyperband":  # min_resource = eval_every, max_resource = steps (the driver's defaults)
        return {"name": "hyperband"}
    if name == "successive_halving":
        return {"name": "successive_halving"}
    return {"name": "none"}


def steps_to_reach(recs: list[dict], target: float | None) -> int | None:
    """Train steps spent (in the order trials ran) until a COMPLETE trial scored >= target."""
    if target is None:
        return None
    spent = 0
    for r in recs:
        spent += r["steps"]
        if r["state"] == "COMPLETE" and r["value"] is not None and r["value"] >= target - 1e-12:
            return spent
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="campaign + training seeds")
    ap.add_argument("--pruners", nargs="+", default=["none", "median", "hyperband"],
                    choices=["none", "median", "hyperband", "successive_halving"])
    ap.add_argument("--trees", type=int, default=4, help="phase A random trees")
    ap.add_argument("--refine-top", type=int, default=1)
    ap.add_argument("--refine-trials", type=int, default=2)
    ap.add_argument("--steps", type=int, default=24, help="train steps per trial")
    ap.add_argument("--eval-every", type=int, default=8, help="validation (pruning report) interval")
    ap.add_argument("--no-readme", action="store_true", help="print only; do not update benchmarks/README.md")
    args = ap.parse_args()
    if "none" not in args.pruners:
        args.pruners = ["none", *args.pruners]  # the reference

    load_before = load()
    t0 = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="arborseg-bench-prune-"))
    runs: dict[tuple[int, str], dict] = {}
    budget = {"random_trees": args.trees, "refine_top": args.refine_top, "refine_trials": args.refine_trials,
              "steps": args.steps, "eval_every": args.eval_every}
    try:
        for seed in args.seeds:
            order = args.pruners if seed % 2 == 0 else list(reversed(args.pruners))
            for pruner in order:
                path = quickstart_campaign(tmp, f"prune_{pruner}_{seed}", budget, seed=seed,
                                           sampler={"name": "tpe", "seed": seed},
                                           pruner=pruner_options(pruner, args.eval_every),
                                           executor={"kind": "debug"}, train={"seed": seed, "overlays": False})
                run_dir, wall = run_campaign(path, tmp / "runs")
                recs = trial_records(run_dir)
                values = [r["value"] for r in recs if r["state"] == "COMPLETE" and r["value"] is not None]
                best = max(values) if values else None
                runs[(seed, pruner)] = {"recs": recs, "wall": wall, "best": best}
                print(f"  seed {seed} {pruner:10s} {wall:6.1f} s, {sum(r['steps'] for r in recs)} steps, "
                      f"best {best if best is None else round(best, 4)}, states "
                      + "".join(r["state"][0] for r in recs) + f"  (load {load()})", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    lines = ["| seed | pruner | trials (complete / pruned / fail) | train steps | steps saved vs none | best fg_iou "
             "| steps to reach own best | steps to reach the no-pruning best | campaign wall (s) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for seed in args.seeds:
        ref = runs[(seed, "none")]
        ref_steps = sum(r["steps"] for r in ref["recs"])
        for pruner in args.pruners:
            run = runs[(seed, pruner)]
            recs = run["recs"]
            n = {s: sum(r["state"] == s for r in recs) for s in ("COMPLETE", "PRUNED", "FAIL")}
            steps = sum(r["steps"] for r in recs)
            own = steps_to_reach(recs, run["best"])
            to_ref = steps_to_reach(recs, ref["best"])
            best = "-" if run["best"] is None else f"{run['best']:.4f}"
            lines.append(f"| {seed} | {pruner} | {n['COMPLETE']} / {n['PRUNED']} / {n['FAIL']} | {steps} "
                         f"| {ref_steps - steps} ({100 * (ref_steps - steps) / max(ref_steps, 1):.0f} %) | {best} "
                         f"| {own if own is not None else '-'} | {to_ref if to_ref is not None else 'not reached'} "
                         f"| {run['wall']:.0f} |")
    table = "\n".join(lines)
    print(table)
    if args.no_readme:
        return
    minutes = math.ceil((time.time() - t0) / 60)
    cmd = "python benchmarks/bench_pruning.py " + " ".join(sys.argv[1:])
    body = f"""Train steps the pruners save on the quickstart campaign, run once per pruner with the same seeds
(tree sampling, TPE, training), on the debug executor (trials one after the other in the driver, so the
pruning decisions do not depend on timing). A pruned trial counts the steps it trained before it was stopped.

- budget: {args.trees} random trees + {args.refine_top} x {args.refine_trials} refinements, {args.steps} steps per \
trial, validation (the pruners' report) every {args.eval_every} steps
- median: ``MedianPruner(n_startup_trials=2, n_warmup_steps={args.eval_every})``; hyperband:
  ``HyperbandPruner(min_resource={args.eval_every}, max_resource={args.steps})``
- machine: {machine()}, **shared with other engineers' jobs while it ran**: load average (1/5/15 min)
  {load_before} before, {load()} after; wall times are only indicative, steps and scores do not depend on load
- {minutes} min in all:

      {cmd.strip()}

{table}

"Steps to reach" counts train steps in the order the trials ran, up to and including the first COMPLETE
trial at that score. Pruning changes which trials complete, so phase B (TPE, refining the best trees of
phase A) sees different data and may draw different values; a different best score with pruning is that,
not noise in training (which is seeded).
"""
    update_readme(SECTION, body)
    print(f"updated benchmarks/README.md (section '{SECTION}')", file=sys.stderr)


if __name__ == "__main__":
    main()
