"""Driver cost at scale: CPU seconds the campaign driver spends per trial, with trials that do no work.

Clusters with thousands of trials are not here, so the trials are simulated: the real campaign driver
(:class:`arborseg.campaign.driver.Campaign`, its Optuna storage, scheduler and executor) runs a one-rung campaign
whose trial jobs return a made-up result at once (``NoopTrialJob``: no data, no network, no training). What is
measured is the driver process's CPU time (its own plus its children's: sbatch, sacct, squeue), sampled as trials
finish, so the curve shows whether a trial costs more when thousands came before it (a step that rereads every
trial per poll would make it grow).

Runs (each a fresh campaign and storage):

* ``debug``: ``--trials`` (default 2000) trials on the debug executor (in the driver process), one per storage
  of ``--storages`` (sqlite, journal, postgres; postgres needs ``--postgres-url``);
* ``slurm``: ``--slurm-trials`` (default 400) trials on the one-node SLURM cluster with ``--slurm-workers``
  (default 200) jobs in flight, journal storage. Start the cluster with enough advertised CPUs for that
  many jobs at once, e.g. ``SLURM_LOCAL_CPUS=200 bash ../shared/tools/slurm_local.sh start``.

Writes ``results/scale.{json,csv,png}`` and the "Driver cost at scale" section of benchmarks/README.md::

    python benchmarks/bench_scale.py --postgres-url postgresql+psycopg2://postgres@127.0.0.1:5432/scale
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cloudpickle
from _campaign_bench import HERE, load, machine, quickstart_campaign, slurm_available, update_readme

from arborseg.campaign.config import load_campaign
from arborseg.campaign.driver import Campaign
from arborseg.campaign.job import TrialJob
from arborseg.log import get_logger
from arborseg.train.result import TrialOutcome

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # SLURM jobs get NoopTrialJob by value
log = get_logger("bench_scale")
RESULTS = HERE / "results"
SAMPLE_AT = (100, 200, 500, 1000, 1500, 2000)


@dataclass
class NoopTrialJob(TrialJob):
    """A trial job that trains nothing: it returns a result made up from its trial number, at once."""

    def run(self) -> TrialOutcome:
        value = (self.trial_id * 7919 % 1000) / 1000.0
        return TrialOutcome.complete({"objective_value": value, "params": 1, "flops_per_voxel": 1.0,
                                      "train_seconds": 0.0, "steps": int(self.settings["steps"]), "seed": 0,
                                      "regions": {}})


def driver_cpu() -> float:
    """CPU seconds of this process and its finished children (sbatch, sacct, squeue, ...)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class ScaleCampaign(Campaign):
    """The real driver, with :class:`NoopTrialJob` for its trial jobs and a CPU-time sample as trials finish."""

    samples: list[tuple[int, float, float]]

    def _prepare(self, item):
        run, job = super()._prepare(item)
        return run, NoopTrialJob(**{k: getattr(job, k) for k in TrialJob.__dataclass_fields__})

    def finish(self, run, job_result):
        out = super().finish(run, job_result)
        done = sum(1 for c in self.contenders.values() if c.done)
        if not self.samples or done > self.samples[-1][0]:
            self.samples.append((done, driver_cpu(), time.perf_counter()))
        return out


@dataclass
class Row:
    executor: str
    storage: str
    trials: int
    workers: int
    wall_s: float
    cpu_s: float
    cpu_ms_per_trial: float
    curve: list  # [trials done, ms of driver CPU per trial since the previous sample]


def run_one(work: Path, executor: dict, storage: str, trials: int, label: str) -> Row:
    budget = {"random_trees": trials, "refine_top": 0, "steps": 1, "eval_every": 1}
    path = quickstart_campaign(work, f"scale-{label}", budget=budget, executor=executor, storage=storage,
                               sampler={"name": "random", "seed": 0}, pruner={"name": "none"})
    campaign = ScaleCampaign(load_campaign(path), work / "runs", progress=False)
    campaign.samples = [(0, driver_cpu(), time.perf_counter())]
    t0, c0 = time.perf_counter(), driver_cpu()
    campaign.run()
    wall, cpu = time.perf_counter() - t0, driver_cpu() - c0
    curve, last = [], campaign.samples[0]
    for n, c, _ in campaign.samples[1:]:
        if n in SAMPLE_AT or n == campaign.samples[-1][0]:
            curve.append([n, round(1000 * (c - last[1]) / (n - last[0]), 2)])
            last = (n, c, 0.0)
    done = campaign.samples[-1][0]
    return Row(executor["kind"], "journal" if label == "slurm" else label, done,
               int(executor.get("workers", 1)), round(wall, 1), round(cpu, 1), round(1000 * cpu / max(done, 1), 2),
               curve)


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for r in rows:
        xs, ys = zip(*r.curve) if r.curve else ((), ())
        ax.plot(xs, ys, marker="o", label=f"{r.executor}, {r.storage}, {r.workers} in flight")
    ax.axhline(50, color="grey", ls="--", lw=1, label="goal: 50 ms")
    ax.set_xlabel("trials finished")
    ax.set_ylabel("driver CPU ms per trial (since the previous point)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    ax.set_title("Campaign driver cost per trial, no-op trials")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def markdown(rows: list[Row], args: argparse.Namespace, started_load: str) -> str:
    lines = [f"Command: `python benchmarks/bench_scale.py {' '.join(sys.argv[1:])}`", "",
             f"Machine: {machine()}; load average {started_load} when it started.", "",
             "The real driver, storage and executor; each trial job returns a made-up result at once (no training), "
             "so all the time is the driver's: its own CPU plus its children's (sbatch, sacct). One-rung campaigns "
             "of random trees (each tree sampled from the quickstart space and replayed through Optuna).", "",
             "| executor | storage | trials | in flight | wall (s) | driver CPU (s) | driver CPU per trial (ms) | "
             "per trial, by trials finished (ms) |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        curve = ", ".join(f"{n}: {ms:.1f}" for n, ms in r.curve)
        lines.append(f"| {r.executor} | {r.storage} | {r.trials} | {r.workers} | {r.wall_s:.0f} | {r.cpu_s:.1f} | "
                     f"{r.cpu_ms_per_trial:.1f} | {curve} |")
    lines += ["", "![driver CPU per trial](results/scale.png)"]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=2000, help="trials of each debug-executor campaign")
    ap.add_argument("--storages", nargs="+", default=["sqlite", "journal", "postgres"],
                    choices=["sqlite", "journal", "postgres"])
    ap.add_argument("--postgres-url", help="an empty PostgreSQL database (SQLAlchemy URL) for the postgres run")
    ap.add_argument("--slurm-trials", type=int, default=400, help="trials of the SLURM campaign (0: none)")
    ap.add_argument("--slurm-workers", type=int, default=200, help="SLURM jobs in flight")
    ap.add_argument("--work", type=Path, default=Path("runs/bench_scale"), help="campaign folders (replaced)")
    args = ap.parse_args()
    import shutil

    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    started_load = load()
    rows: list[Row] = []
    for storage in args.storages:
        if storage == "postgres" and not args.postgres_url:
            log.warning("postgres skipped: give --postgres-url (an empty database)")
            continue
        spec = args.postgres_url if storage == "postgres" else storage
        rows.append(run_one(args.work, {"kind": "debug"}, spec, args.trials, storage))
        log.info("%s", rows[-1])
    if args.slurm_trials:
        why = slurm_available()
        if why:
            log.warning("slurm skipped: %s", why)
        else:
            executor = {"kind": "slurm", "workers": args.slurm_workers, "cpus_per_task": 1, "mem_gb": 0.05,
                        "timeout_min": 10, "partition": "debug"}
            rows.append(run_one(args.work, executor, "journal", args.slurm_trials, "slurm"))
            log.info("%s", rows[-1])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scale.json").write_text(json.dumps([asdict(r) for r in rows], indent=1))
    import pandas as pd

    pd.DataFrame([{k: v for k, v in asdict(r).items() if k != "curve"} for r in rows]).to_csv(
        RESULTS / "scale.csv", index=False)
    plot(rows, RESULTS / "scale.png")
    text = markdown(rows, args, started_load)
    print(text)
    update_readme("Driver cost at scale", text)


if __name__ == "__main__":
    main()
