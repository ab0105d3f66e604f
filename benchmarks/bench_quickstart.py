"""The whole quickstart campaign (``examples/quickstart.yaml``, what ``make quickstart`` searches), one job per trial
vs warm workers, in one run: wall time, trial jobs and train steps per hour, and the best tree (same seeds).

Each arm is a fresh run of the example as it is, with only ``warm_workers`` switched (``--warm-workers`` /
``--no-warm-workers`` on the command line do the same); arms alternate ``--rounds`` times.

    python benchmarks/bench_quickstart.py --rounds 1
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from _campaign_bench import HERE, QUICKSTART, load, machine, trial_records, update_readme

from arborseg.campaign.config import load_campaign
from arborseg.campaign.driver import Campaign

RESULTS = HERE / "results"


def run_arm(warm: bool, work: Path) -> dict:
    cfg = load_campaign(QUICKSTART).with_overrides(warm_workers=warm)
    runs = work / ("warm" if warm else "one-job")
    shutil.rmtree(runs, ignore_errors=True)
    campaign = Campaign(cfg, runs, progress=False)
    t0 = time.perf_counter()
    run_dir = campaign.run()
    wall = time.perf_counter() - t0
    records = trial_records(run_dir)
    jobs = campaign.plan.jobs()
    steps = sum(r["steps"] for r in records)
    best = campaign.best_value()
    top = max((r for r in records if r["value"] is not None), key=lambda r: r["value"], default=None)
    return {"mode": "warm workers" if warm else "one job per trial", "wall_s": round(wall, 1), "trials": len(records),
            "jobs": jobs, "jobs_per_hour": round(3600 * jobs / wall), "steps_per_hour": round(3600 * steps / wall),
            "best": None if best is None else round(best, 4), "best_tree": top["tree"] if top else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=1, help="times each arm runs (alternating)")
    ap.add_argument("--work", type=Path, default=Path("runs/bench_quickstart"))
    args = ap.parse_args()
    started = load()
    rows = [run_arm(warm, args.work) for _ in range(args.rounds) for warm in (False, True)]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "quickstart.json").write_text(json.dumps(rows, indent=1))
    base = [r for r in rows if r["mode"] == "one job per trial"]
    lines = [f"Command: `python benchmarks/bench_quickstart.py {' '.join(sys.argv[1:])}`", "",
             f"Machine: {machine()}; load average {started} when it started.", "",
             "`examples/quickstart.yaml` as it is (successive halving 30/90/270 steps, 2 local workers, seed 0), "
             "each arm a fresh run; only `warm_workers` differs.", "",
             "| mode | wall (s) | trials | trial jobs | jobs per hour | train steps per hour | vs one job per trial "
             "| best fg IoU | best tree |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        ref = sum(b["jobs_per_hour"] for b in base) / len(base)
        lines.append(f"| {r['mode']} | {r['wall_s']:.0f} | {r['trials']} | {r['jobs']} | {r['jobs_per_hour']} | "
                     f"{r['steps_per_hour']} | {r['jobs_per_hour'] / ref:.2f}x | {r['best']} | `{r['best_tree']}` |")
    text = "\n".join(lines)
    print(text)
    update_readme("Quickstart: one job per trial vs warm workers", text)


if __name__ == "__main__":
    main()
