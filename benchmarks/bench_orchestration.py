"""Campaign orchestration: what the driver and the executors add to each trial, and trials per hour.

Part 1, overhead per trial, debug vs local vs slurm, each of local and slurm also on warm workers
(``warm_workers: true``: long-lived worker jobs that take trial after trial), side by side: the same tiny campaign (synthetic
6 x 64 x 64 volume, ``--trials`` random trees, ``--tiny-steps`` steps, one worker so trials never overlap)
runs on each executor, rounds interleaved (debug, local, slurm, debug, ...) so a busy machine slows all
alike. For each trial, *driver-seen* is the time from ``study.ask()`` to ``study.tell()`` (Optuna's
datetime_start/datetime_complete) and *in job* is the ``wall_seconds`` the trial reports itself (model
build, training, scoring, artifacts); the overhead is the difference: job submission and process start
(Python + torch imports), data loading outside the timed part, polling (0.3 s driver loop; sacct at most
every 1 s for SLURM), result transfer, and the driver's bookkeeping.

Part 2, trials per hour on the quickstart campaign (examples/quickstart.yaml, budget cut down with
``--qs-trees/--qs-steps``, pruner off so every trial trains the same steps) with 1 and 2 local workers (one
process per trial) and 2 warm local workers.

    python benchmarks/bench_orchestration.py [--rounds 2] [--trials 3] [--tiny-steps 4]
        [--qs-trees 4] [--qs-steps 20] [--no-slurm] [--no-readme]
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _campaign_bench import (
    TINY_DATA,
    load,
    machine,
    quickstart_campaign,
    run_campaign,
    slurm_available,
    trial_records,
    update_readme,
)

SECTION = "Campaign orchestration"
EXECUTORS = {
    "debug": {"kind": "debug"},
    "local": {"kind": "local", "workers": 1, "timeout_min": 30},
    "slurm": {"kind": "slurm", "workers": 1, "partition": "debug", "cpus_per_task": 1, "mem_gb": 2,
              "timeout_min": 30},
}
EXECUTORS["warm-local"] = {**EXECUTORS["local"], "warm_workers": True}
EXECUTORS["warm-slurm"] = {**EXECUTORS["slurm"], "warm_workers": True}
#: part 2: (label, local workers, warm workers)
THROUGHPUT_ARMS = (("1 worker", 1, False), ("2 workers", 2, False), ("2 warm workers", 2, True))


def tiny_campaign(folder: Path, name: str, executor: dict, trials: int, steps: int) -> Path:
    cfg = {"name": name, "data": TINY_DATA, "space": str(Path(__file__).resolve().parents[1] / "search_spaces"
                                                           / "quickstart.yaml"),
           "budget": {"random_trees": trials, "refine_top": 0, "refine_trials": 0, "steps": steps,
                      "eval_every": steps},
           "objective": {"metric": "fg_iou"}, "pruner": {"name": "none"}, "executor": executor,
           "storage": "sqlite", "train": {"seed": 0, "overlays": False}}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def overhead(args, tmp: Path, kinds: list[str]) -> tuple[str, list[str]]:
    rows: dict[str, list[dict]] = {k: [] for k in kinds}
    walls: dict[str, list[float]] = {k: [] for k in kinds}
    for rnd in range(args.rounds):
        for kind in kinds:
            path = tiny_campaign(tmp, f"ovh_{kind}_{rnd}", EXECUTORS[kind], args.trials, args.tiny_steps)
            run_dir, wall = run_campaign(path, tmp / "runs")
            recs = trial_records(run_dir)
            bad = [r for r in recs if r["state"] != "COMPLETE"]
            if bad:
                sys.exit(f"{kind}: trials did not complete: {bad}")
            rows[kind] += recs
            walls[kind].append(wall)
            print(f"  round {rnd + 1}/{args.rounds} {kind:6s} campaign {wall:6.1f} s, overhead per trial "
                  + ", ".join(f"{r['driver_seconds'] - r['wall_seconds']:.2f}" for r in recs) + f"  (load {load()})",
                  file=sys.stderr, flush=True)
    lines = ["| executor | trials | in job (s, median) | driver-seen (s, median) | overhead (s, median) "
             "| overhead (s, min - max) | over debug (s, median) | campaign wall (s, median) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    base = statistics.median(r["driver_seconds"] - r["wall_seconds"] for r in rows["debug"])
    for kind in kinds:
        recs = rows[kind]
        over = [r["driver_seconds"] - r["wall_seconds"] for r in recs]
        lines.append(f"| {kind} | {len(recs)} | {statistics.median(r['wall_seconds'] for r in recs):.2f} "
                     f"| {statistics.median(r['driver_seconds'] for r in recs):.2f} | {statistics.median(over):.2f} "
                     f"| {min(over):.2f} - {max(over):.2f} | {statistics.median(over) - base:+.2f} "
                     f"| {statistics.median(walls[kind]):.1f} |")
    return "\n".join(lines), []


def throughput(args, tmp: Path) -> str:
    results: dict[str, list[tuple[int, float, float]]] = {arm[0]: [] for arm in THROUGHPUT_ARMS}
    for rnd in range(args.qs_rounds):
        order = THROUGHPUT_ARMS if rnd % 2 == 0 else THROUGHPUT_ARMS[::-1]
        for label, workers, warm in order:
            executor = {"kind": "local", "workers": workers, "timeout_min": 60, "warm_workers": warm}
            budget = {"random_trees": args.qs_trees, "refine_top": 0, "steps": args.qs_steps,
                      "eval_every": args.qs_steps}  # one rung, in place of the example's successive halving
            path = quickstart_campaign(tmp, f"qs_{label.replace(' ', '_')}_{rnd}", budget=budget,
                                       pruner={"name": "none"}, executor=executor)
            run_dir, wall = run_campaign(path, tmp / "runs")
            recs = trial_records(run_dir)
            done = sum(r["state"] == "COMPLETE" for r in recs)
            job = sum(r["wall_seconds"] or 0 for r in recs)
            results[label].append((done, wall, job))
            print(f"  quickstart round {rnd + 1}/{args.qs_rounds} {label}: {done} trials in {wall:.1f} s "
                  f"({3600 * done / wall:.0f}/h)  (load {load()})", file=sys.stderr, flush=True)
    lines = ["| local workers | threads per job | trials | campaign wall (s) | trials per hour | vs 2 workers "
             "| mean trial wall in job (s) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    from arborseg.jobs.executors import _cpu_count

    rate = {label: 3600 * sum(r[0] for r in runs) / sum(r[1] for r in runs) for label, runs in results.items()}
    for label, workers, _ in THROUGHPUT_ARMS:
        runs = results[label]
        done = sum(r[0] for r in runs)
        wall = sum(r[1] for r in runs)
        job = sum(r[2] for r in runs)
        lines.append(f"| {label} | {max(1, _cpu_count() // workers)} | {done} | {wall:.1f} "
                     f"| {rate[label]:.0f} | {rate[label] / rate['2 workers']:.2f}x | {job / max(done, 1):.1f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the overhead part")
    ap.add_argument("--trials", type=int, default=3, help="trials per campaign in the overhead part")
    ap.add_argument("--tiny-steps", type=int, default=4, help="train steps per trial in the overhead part")
    ap.add_argument("--qs-trees", type=int, default=4, help="quickstart random trees (no refinement)")
    ap.add_argument("--qs-steps", type=int, default=20, help="quickstart train steps per trial")
    ap.add_argument("--qs-rounds", type=int, default=1, help="interleaved rounds of 1 and 2 workers")
    ap.add_argument("--no-slurm", action="store_true", help="leave the slurm executor out")
    ap.add_argument("--no-readme", action="store_true", help="print only; do not update benchmarks/README.md")
    args = ap.parse_args()

    kinds = ["debug", "local", "warm-local", "slurm", "warm-slurm"]
    why_not = "left out (--no-slurm)" if args.no_slurm else slurm_available()
    if why_not:
        kinds = [k for k in kinds if "slurm" not in k]
        print(f"slurm executor: {why_not}", file=sys.stderr)
    load_before = load()
    t0 = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="arborseg-bench-orch-"))
    try:
        table1, _ = overhead(args, tmp, kinds)
        table2 = throughput(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    minutes = (time.time() - t0) / 60
    print(table1)
    print()
    print(table2)
    if args.no_readme:
        return
    cmd = "python benchmarks/bench_orchestration.py " + " ".join(sys.argv[1:])
    body = f"""Wall time a trial costs beyond its own work, per executor (one job per trial, or warm workers that take
trial after trial), and trials per hour with 1 and 2 local workers and 2 warm local workers. Machine: {machine()}, **shared with other engineers' jobs while it ran**: load average (1/5/15 min)
{load_before} before, {load()} after; the methods were interleaved (round by round) so the load hit them
alike, but absolute numbers are several times slower than on a quiet machine. {math.ceil(minutes)} min in all.

    {cmd.strip()}

**Overhead per trial** (tiny synthetic campaign, {args.trials} trials x {args.rounds} rounds per executor,
{args.tiny_steps} steps, one worker; SLURM: the local one-node cluster of ``../shared/tools/slurm_local.sh``,
1 CPU per job, so that a job of another user on the shared node does not hold it back). *In job*: the
trial's own ``wall_seconds``; *driver-seen*: ``study.ask()`` to ``study.tell()``; overhead = driver-seen -
in job (job submission, process start with Python + torch imports, polling, result transfer) plus what
a trial does before its timer starts (reading the trial, generating/loading the data, building the model).
*Over debug*: the overhead beyond the debug executor's, i.e. the cost of running the trial in its own
process or SLURM job. *warm-*: the same executor with ``warm_workers: true``: one worker job per campaign
here (one worker), whose first trial pays the process start and the others do not.

{table1}

**Trials per hour** on the quickstart campaign ({args.qs_trees} random trees, {args.qs_steps} steps each,
no pruning, no refinement; local executor; threads per job = cores / workers; *vs 2 workers*: trials per
hour against 2 workers with one process per trial):

{table2}

How to read it: the debug executor runs trials inside the driver, so its overhead is the driver's own
bookkeeping (storage writes, the 0.3 s poll) and the trial's set-up; the local executor starts two Python
processes per trial (submitit's controller, then the job with its torch and arborseg imports); SLURM starts
one job through sbatch, scheduling and ``srun`` and is seen through sacct (polled at most every 1 s), and a
job may also wait in the queue behind other users' jobs. With 2 cores, 2 local workers run 1 thread each
instead of 1 worker with 2 threads. Warm workers pay the process start, torch's lazy imports (``torch._dynamo``
on the first optimiser), matplotlib's import and the opening of the data once per worker instead of once per
trial; what is left is the queue (a file renamed by the worker that claims it, polled every 0.1 s) and the
driver's 0.3 s poll.
"""
    update_readme(SECTION, body)
    print(f"updated benchmarks/README.md (section '{SECTION}')", file=sys.stderr)


if __name__ == "__main__":
    main()
