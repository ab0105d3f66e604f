"""Does the search pay? arborseg (one campaign: its top-rung survivor and a post-hoc ensemble) vs two fixed networks.

Issues 8 and 14. On VNC mitochondria, VNC 5-class and ISBI 2012 membranes, per dataset and seed on the same
machine, compare

* baseline A: the bootstrapping paper's thin 3D U-Net (``search_spaces/portfolio/thin3d_paper.yaml``), T steps;
* baseline B: a 2D U-Net with nnU-Net's 2d configuration and recipe (SGD + Nesterov, poly LR, CE + Dice, deep
  supervision: ``search_spaces/portfolio/unet2d_nnunet.yaml``), T steps;
* baseline B at T/2 (its LR schedule planned for T/2): the plateau check. B is near its plateau at T when its
  eval-far mIoU at T/2 and at T are within 3 % (relative);
* arborseg best: the top-rung survivor of one campaign (the COMPLETE trial with the best validation value,
  trained to the top rung = T steps by continuation from its checkpoints; no retrain);
* arborseg ensemble: ``arborseg ensemble RUN_DIR`` post hoc (Caruana selection among the campaign's trained
  trials on validation; no training).

The campaign searches the union of ``search_spaces/hybrid_2d3d.yaml`` and ``search_spaces/thin3d_unet.yaml`` (one
structural ``oneof``, written by the script) with **both baselines' trees in its portfolio** (trained first, so the
campaign can only end below a baseline by noise), asynchronous successive halving (``first_rung``, ``eta``,
``rungs`` the same for every dataset; the top rung is T), no pruner, and ``total_steps`` = a stated multiple of T.
**Every arborseg arm is charged the whole campaign** (``campaign_multiple`` x T planned steps; the steps used are
read from the trial folders), against T for A and B. Every network is an arborseg module tree trained, predicted
and scored by ``arborseg.train.trainer.train_and_score``, at its own window, with the same batch size; searched
trees may cost at most as much per window as the costlier baseline (the campaign's ``budget.max_gflops``).
Inference cost per arm: members x forward GFLOPs per window (and per output voxel).

One command, resumable (finished pieces are skipped; a killed campaign resumes from its storage)::

    python benchmarks/bench_search_vs_baselines.py --budget cpu_sh       # 3 datasets x 3 seeds, 2 idle CPU cores
    python benchmarks/bench_search_vs_baselines.py --budget cpu_sh --estimate-only   # the wall-time estimate
    python benchmarks/bench_search_vs_baselines.py --budget gpu          # one GPU (local executor)
    python benchmarks/bench_search_vs_baselines.py --budget tiny --datasets vnc_mito --seeds 1   # smoke test

A cell (one dataset and seed) whose pieces have all finished is recorded in
``benchmarks/results/search_vs_baselines_<budget>_cells/<dataset>_s<seed>.json`` (its scores, accounting, rank
correlations, learning curves and seconds, with the code revision): committed, these records let the run go on in
another session or a clean clone, where the work dir is gone; a recorded cell is not trained again (delete its
record to run it again). ``--cells isbi2012:1 ...`` runs only the named cells, one at a time finishing sooner than
all of them side by side.

The estimate printed first comes from the seconds per step and per job measured by earlier runs
(``benchmarks/results/search_vs_baselines_*.json`` at the same batch size), not from running anything.

Outputs: ``benchmarks/results/search_vs_baselines_<budget>.csv`` (every score of every arm, seed and region),
``..._summary.csv`` (mean, std over seeds), ``..._accounting.csv`` (steps planned and used, seconds, inference cost),
``..._ranks.csv`` (Spearman rank correlations per rung and campaign), ``.json`` (all of it, with learning curves,
the plateau check and the verdict), ``.png`` (scores) and ``_curves.png`` (validation learning curves), and the
block of this budget in the section "## Search vs fixed baselines" of ``benchmarks/README.md`` (``--budget tiny``
writes no README). Work folders go to ``runs/bench_search_vs_baselines/<budget>/``. The budgets ``cpu`` and
``cpu150`` (the design before issue 14: best tree retrained from scratch, ensembles of newly trained members) are
retired: their result files stay in ``benchmarks/results/`` and their README blocks stay as written.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

import yaml

from arborseg.runs import ENSEMBLE_FILE, TRIALS_DIR, TrialFolder, ensemble_dir

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
README = HERE / "README.md"
SECTION = "## Search vs fixed baselines"


def markers(budget: str) -> tuple[str, str]:
    """The README block of one budget lies between these two lines."""
    return f"<!-- bench_search_vs_baselines:{budget}:begin -->", f"<!-- bench_search_vs_baselines:{budget}:end -->"


DATASETS = {  # name -> data YAML shipped in examples/
    "vnc_mito": "examples/vnc_mito.yaml",
    "vnc_5class": "examples/vnc_5class.yaml",
    "isbi2012": "examples/isbi2012_membrane.yaml",
}
SPACES = ("search_spaces/hybrid_2d3d.yaml", "search_spaces/thin3d_unet.yaml")
BASELINES = {"baseline_A": "search_spaces/portfolio/thin3d_paper.yaml",
             "baseline_B": "search_spaces/portfolio/unet2d_nnunet.yaml"}
# baseline pieces: arm -> (tree arm, fraction of T)
BASELINE_RUNS = {"baseline_A": ("baseline_A", 1.0), "baseline_B": ("baseline_B", 1.0),
                 "baseline_B_half": ("baseline_B", 0.5)}
ARMS = ("baseline_A", "baseline_B", "baseline_B_half", "arborseg_best", "arborseg_ensemble")
ARM_LABELS = {"baseline_A": "A: thin 3D U-Net (paper)", "baseline_B": "B: 2D U-Net (nnU-Net recipe)",
              "baseline_B_half": "B at T/2 (plateau check)", "arborseg_best": "arborseg best (top-rung survivor)",
              "arborseg_ensemble": "arborseg ensemble (post hoc)"}
OURS = ("arborseg_best", "arborseg_ensemble")
REPORT_REGIONS = ("eval_near", "eval_far")
ENSEMBLE_NAME = "bench"
PLATEAU_TOLERANCE = 0.03  # B is near its plateau when its eval-far mIoU at T/2 is within 3 % of that at T

# A budget, the same for every dataset. first_rung, eta, rungs: the campaign's successive halving; its top rung
# T = first_rung * eta**(rungs - 1) is also the steps of A and B (B/2: T // 2). campaign_multiple: the campaign's
# budget.total_steps = campaign_multiple * T (random trees: as many as that leaves after the portfolio's 2 trees
# and the refine_top x refine_trials refinements, unless random_trees is given). batch: every network's batch size. cap: searched trees cost at
# most the costlier baseline's forward GFLOPs per window. crop: validation and eval regions cut to a centred xy
# crop (None: the whole regions of examples/*.yaml); training draws windows from the whole training region.
# local: slots = CPU processes in flight (a campaign counts as campaign_workers; 3 slots on 2 cores keep both
# busy while a campaign's top rung trains one trial alone).
BUDGETS: dict[str, dict[str, Any]] = {
    # smoke test: a few minutes on 2 idle cores (rungs 2, 4, 8 steps; 2 random trees, not as many as fit)
    "tiny": {"first_rung": 2, "eta": 2, "rungs": 3, "campaign_multiple": 4, "random_trees": 2, "refine_top": 1,
             "refine_trials": 1, "batch": 2, "cap": True, "crop": {"vnc": 128, "isbi": 128},
             "local": {"slots": 3, "threads_per_job": 1, "campaign_workers": 2, "timeout_min": 60}},
    # 3 datasets x 3 seeds in about 2-3 hours on 2 idle cores (the estimate is printed first); rungs 24, 72, 216
    # steps: T = 216, the campaign 4 T = 864 steps: the 2 portfolio trees train to the top (2 T), the other 2 T are
    # halved among 6 random trees and 1 x 2 refinements (10 trials at the first rung, 4 at the second, 3 at the top)
    "cpu_sh": {"first_rung": 24, "eta": 3, "rungs": 3, "campaign_multiple": 4, "refine_top": 1, "refine_trials": 2,
               "batch": 2, "cap": True, "crop": {"vnc": 256, "isbi": 256},
               "local": {"slots": 3, "threads_per_job": 1, "campaign_workers": 2, "timeout_min": 240}},
    # one GPU: rungs 1000, 3000, 9000 steps; two jobs share it, 8 CPU threads each
    "gpu": {"first_rung": 1000, "eta": 3, "rungs": 3, "campaign_multiple": 4, "refine_top": 2, "refine_trials": 2,
            "batch": 4, "cap": True, "crop": None,
            "local": {"slots": 2, "threads_per_job": 8, "campaign_workers": 2, "timeout_min": 24 * 60,
                      "gpus_per_node": 1}},
}
RETIRED = {
    "cpu": "T = 150, batch 2, capped (run 2026-11-23): best tree retrained from scratch, ensemble of newly trained "
           "members",
    "cpu150": "T = 150, batch 4, no cap (run 2026-11-23): best tree retrained from scratch, ensemble of newly "
              "trained members",
}
# where measured seconds are missing (estimate): seconds per step and forward GFLOP per window at batch 2, and
# seconds of a job's start, evaluation and writing; replaced by the numbers of earlier runs when there are any
DEFAULT_RATE, DEFAULT_OVERHEAD, MIN_STEP_SECONDS = 0.09, 25.0, 0.1


# ---------------------------------------------------------------------------------------------- budget
def plan(b: dict) -> dict[str, Any]:
    """The planned steps of every piece for one dataset and seed, and the campaign's successive-halving plan."""
    from arborseg.campaign.budget import make_plan, normalise_budget

    T = b["first_rung"] * b["eta"] ** (b["rungs"] - 1)
    camp = campaign_budget(b, None)
    rp = make_plan(normalise_budget(camp, "bench budget"), portfolio=len(BASELINES))
    return {"T": T, "half": T // 2, "rung_steps": list(rp.rung_steps), "eta": b["eta"],
            "campaign_multiple": b["campaign_multiple"], "campaign_total": camp["total_steps"],
            "campaign_planned": rp.cost(), "configs": rp.configs, "portfolio": rp.portfolio,
            "random_trees": rp.random_trees, "refine": rp.refine, "rung_sizes": list(rp.promotions()),
            "campaign_jobs": rp.jobs(), "describe": rp.describe()}


def campaign_budget(b: dict, max_gflops: float | None) -> dict[str, Any]:
    T = b["first_rung"] * b["eta"] ** (b["rungs"] - 1)
    return {"total_steps": b["campaign_multiple"] * T, "first_rung": b["first_rung"], "eta": b["eta"],
            "rungs": b["rungs"], "refine_top": b["refine_top"], "refine_trials": b["refine_trials"],
            **({"random_trees": b["random_trees"]} if "random_trees" in b else {}), "max_gflops": max_gflops}


# ---------------------------------------------------------------------------------------------- files
def union_space(paths: tuple[str, ...]) -> dict:
    """One search space whose root chooses (structurally) between the roots of ``paths``.

    Each space's ``defaults`` move onto its own branch (inherited values apply below the node that sets
    them); window and training distributions must agree (they do for hybrid_2d3d and thin3d_unet). The
    spaces' portfolios are left out: the campaign lists the baselines' trees itself."""
    spaces = [yaml.safe_load((ROOT / p).read_text()) for p in paths]
    first = spaces[0]
    definitions, branches = {}, []
    for path, space in zip(paths, spaces):
        for key in ("window", "training"):
            if space.get(key) != first.get(key):
                raise SystemExit(f"{path}: {key} differs from {paths[0]}; cannot form the union space")
        for name, node in (space.get("definitions") or {}).items():
            if name in definitions:
                raise SystemExit(f"{path}: definition {name!r} is also in another space")
            definitions[name] = node
        branches.append({**(space.get("defaults") or {}), **space["root"]})
    return {"name": "bench_" + "_or_".join(s["name"] for s in spaces),
            "description": "union of " + ", ".join(paths) + " (written by benchmarks/bench_search_vs_baselines.py)",
            "window": first["window"], "training": first["training"], "definitions": definitions,
            "root": {"type": "sequence", "children": [{"oneof": branches}]}}


def write_if_changed(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


def data_yaml(ds: str, budget: dict, out: Path) -> Path:
    """The dataset's example YAML with absolute paths and, for small budgets, cropped eval regions."""
    from arborseg.data import load_data_config

    src = ROOT / DATASETS[ds]
    raw = yaml.safe_load(src.read_text())
    for key in ("raw", "labels"):
        found = next((c for c in (ROOT / raw[key], src.parent / raw[key]) if c.exists()), None)
        if found is None:
            raise SystemExit(f"{src}: {key} {raw[key]} not found (see ../shared/data/README.md)")
        raw[key] = str(found.resolve())
    crop = (budget.get("crop") or {}).get("isbi" if ds.startswith("isbi") else "vnc")
    if crop:
        shape = load_data_config(src).shape
        for name, region in raw["regions"].items():
            if name == "train":
                continue
            for axis, size in (("y", shape[1]), ("x", shape[2])):
                c = min(crop, size)
                start = (size - c) // 2
                region[axis] = [start, start + c]
    raw["name"] = f"bench_{ds}"
    path = write_if_changed(out / "data" / f"{ds}.yaml", yaml.safe_dump(raw, sort_keys=False))
    load_data_config(path)  # validate now
    return path


def baseline_gflops(n_classes: int) -> dict[str, float]:
    """Forward GFLOPs of each baseline over one window (its own), rounded up to 3 decimals so that a cap made
    from them never leaves the baseline's own tree out of the portfolio."""
    from arborseg.nn import forward_gflops
    from arborseg.tree import ModuleTree

    return {arm: math.ceil(forward_gflops(ModuleTree.load(ROOT / path), n_classes) * 1000) / 1000
            for arm, path in BASELINES.items()}


def campaign_yaml(ds: str, seed: int, budget: dict, data: Path, space: Path, executor: dict, out: Path,
                  max_gflops: float | None) -> Path:
    camp = {"name": f"{ds}_s{seed}", "description": f"bench_search_vs_baselines {ds} seed {seed}",
            "data": str(data), "space": str(space), "budget": campaign_budget(budget, max_gflops),
            "portfolio": [str((ROOT / p).resolve()) for p in BASELINES.values()],
            "objective": {"metric": "fg_iou"}, "sampler": {"name": "tpe", "seed": seed}, "pruner": {"name": "none"},
            "executor": executor, "storage": "journal" if executor["kind"] == "slurm" else "sqlite",
            "train": {"seed": seed, "overlays": False, "overrides": {"batch_size": budget["batch"]}},
            "seed": seed}
    return write_if_changed(out / "campaigns" / f"{ds}_s{seed}.yaml", yaml.safe_dump(camp, sort_keys=False))


# ---------------------------------------------------------------------------------------------- jobs
def _checkpointable():
    from arborseg.jobs.checkpointable import CheckpointableJob

    return CheckpointableJob


@dataclass
class TrainPiece(_checkpointable()):  # type: ignore[misc]
    """One network trained and scored (a submitit job; requeued after preemption or timeout, it resumes
    from its checkpoint: arborseg's CheckpointableJob, as campaign trials)."""

    tree_file: str
    data_file: str
    settings: dict
    out_dir: str

    def run(self) -> dict:
        from arborseg.data import load_data_config
        from arborseg.train.settings import TrainSettings
        from arborseg.train.trainer import train_and_score
        from arborseg.tree import ModuleTree

        result = train_and_score(ModuleTree.load(self.tree_file), load_data_config(self.data_file),
                                 TrainSettings.from_dict(self.settings), self.out_dir, progress=False)
        return {"steps": result["steps"], "train_seconds": result["train_seconds"]}


def train_settings(steps: int, seed: int, batch: int, eval_every: int) -> dict:
    """A baseline's training: ``steps`` with the LR schedule planned for them, validated every ``eval_every``."""
    return {"steps": steps, "eval_every": min(eval_every, steps), "seed": seed, "objective": "fg_iou",
            "fn_mode": "2d", "overlays": False, "overrides": {"batch_size": batch}}


@dataclass
class Piece:
    key: str
    kind: str  # "job" | "cmd"
    slots: int
    deps: tuple[str, ...] = ()
    done: Any = None  # () -> bool
    start: Any = None  # () -> handle
    log: Path | None = None
    state: str = "pending"
    handle: Any = None
    started: float = 0.0
    reason: str = ""


class Runner:
    """Runs pieces with dependencies, at most ``slots`` CPU slots (or jobs) in flight; skips finished ones."""

    def __init__(self, slots: int, record: Path, on_finish=None) -> None:
        self.on_finish = on_finish or (lambda: None)
        self.slots = slots
        self.record = record
        self.times: dict = json.loads(record.read_text()) if record.exists() else {}

    def run(self, pieces: list[Piece]) -> dict[str, str]:
        from arborseg.jobs.outcome import job_outcome

        status: dict[str, str] = {}
        for p in pieces:
            if p.done():
                p.state = status[p.key] = "done"
        pending = [p for p in pieces if p.state == "pending"]
        running: list[Piece] = []
        while pending or running:
            used = sum(p.slots for p in running)
            for p in list(pending):
                bad = [d for d in p.deps if status.get(d) in ("failed", "skipped")]
                if bad:
                    p.state = status[p.key] = "skipped"
                    p.reason = f"needs {', '.join(bad)}"
                    print(f"[skip] {p.key}: {p.reason}", flush=True)
                    pending.remove(p)
                    continue
                if any(status.get(d) != "done" for d in p.deps):
                    continue
                if running and used + p.slots > self.slots:
                    break  # first come, first served among ready pieces (no starving the wide ones)
                print(f"[start] {p.key}", flush=True)
                p.started = time.time()
                try:
                    p.handle = p.start()
                except Exception as exc:  # a piece failing must not stop the others
                    p.state = status[p.key] = "failed"
                    p.reason = f"{type(exc).__name__}: {exc}"
                    print(f"[fail] {p.key}: {p.reason}", flush=True)
                    pending.remove(p)
                    continue
                pending.remove(p)
                running.append(p)
                used += p.slots
            still = []
            for p in running:
                finished, ok, reason = False, False, ""
                if p.kind == "job":
                    out = job_outcome(p.handle)
                    if out is not None:
                        finished, ok, reason = True, out.ok, f"{out.reason} (log {out.log})"
                else:
                    rc = p.handle.poll()
                    if rc is not None:
                        finished, ok, reason = True, rc == 0, f"exit {rc}; log {p.log}"
                if not finished:
                    still.append(p)
                    continue
                ok = ok and p.done()
                p.state = status[p.key] = "done" if ok else "failed"
                wall = time.time() - p.started
                self.times[p.key] = {"wall_s": round(wall, 1), "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
                self.record.write_text(json.dumps(self.times, indent=1))
                print(f"[{'done' if ok else 'FAIL'}] {p.key} ({wall:.0f} s)" + ("" if ok else f": {reason}"),
                      flush=True)
                self.on_finish()
            running = still
            if running:
                time.sleep(1.0)
        return status


class _MarkOnSuccess:
    """A campaign subprocess; writes the done marker when it exits 0 (all its trials ran)."""

    def __init__(self, proc: subprocess.Popen, marker: Path) -> None:
        self.proc, self.marker = proc, marker

    def poll(self):
        rc = self.proc.poll()
        if rc == 0 and not self.marker.exists():
            self.marker.write_text(time.strftime("%Y-%m-%d %H:%M:%S"))
        return rc


# ---------------------------------------------------------------------------------------------- estimate
def measured_rates(batch: int) -> dict[str, Any]:
    """Seconds per step and forward GFLOP per window of each baseline tree, and seconds per job beyond its
    training steps, from the earlier runs in ``benchmarks/results/search_vs_baselines_*.json`` at this batch
    size that ran on an idle-ish machine (load below its CPU count) with at least 50 steps per piece."""
    import statistics

    rates: dict[str, list[float]] = {}
    overheads: list[float] = []
    sources = []
    for path in sorted(RESULTS.glob("search_vs_baselines_*.json")):
        try:
            r = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        runs = r.get("invocations") or []
        if (r.get("budget") or {}).get("batch") != batch or r.get("budget_name") == "tiny" or not runs:
            continue
        mach = runs[0].get("machine") or {}
        if mach.get("gpu") or (mach.get("load_avg") or [99])[0] >= (mach.get("cpus") or 1):
            continue
        used = False
        for a in r.get("accounting") or []:
            own, secs, gf = a.get("own_steps"), a.get("train_seconds"), a.get("gflops_per_window")
            if a.get("arm", "").startswith("baseline") and own and own >= 50 and secs and gf:
                rates.setdefault(structure(str(a["tree"])), []).append(secs / own / gf)
                used = True
        over = job_overhead(r)
        if over is not None:
            overheads.append(over)
        if used:
            sources.append(path.name)
    per_tree = {t: statistics.median(v) for t, v in rates.items()}
    return {"per_tree": per_tree, "pooled": max(per_tree.values(), default=DEFAULT_RATE),
            "overhead": max(overheads, default=DEFAULT_OVERHEAD), "sources": sources}


def structure(tree_name: str) -> str:
    """A tree name without its id (``t3d-d4w32z3``): the same network at another window has the same seconds per
    step and GFLOP, about."""
    return tree_name.rsplit("-", 1)[0]


def job_overhead(r: dict) -> float | None:
    """Seconds per job beyond training (start, validation, evaluation, writing) of one earlier run: its wall
    time on its CPUs minus its train seconds, over its jobs; None for a run not finished in one invocation."""
    runs = r.get("invocations") or []
    if len(runs) != 1 or r.get("unfinished") or not runs[0].get("wall_min"):
        return None
    cpus = min(int(runs[0]["machine"].get("cpus") or 1), int((r["budget"].get("local") or {}).get("slots", 1)))
    if "machine_time" in r:  # this design: recorded as it ran
        mt = r["machine_time"]
        train, jobs = mt["train_seconds"], mt["jobs"]
    else:  # the retired design: baselines, campaign + retrain, campaign + new members (campaign counted once)
        train, jobs = 0.0, 0
        cells: dict[tuple, dict] = {}
        for a in r.get("accounting") or []:
            cells.setdefault((a["dataset"], a["seed"]), {})[a["arm"]] = a
        for arms in cells.values():
            best, ens = arms.get("arborseg_best") or {}, arms.get("arborseg_ensemble") or {}
            train += sum((arms.get(k) or {}).get("train_seconds") or 0 for k in BASELINES)
            train += max(best.get("train_seconds") or 0, ens.get("train_seconds") or 0)
            member = (r.get("plan") or {}).get("ensemble_member") or 1
            jobs += len(BASELINES) + (best.get("campaign_trials") or 0) + 1 + (ens.get("own_steps") or 0) // member
    return max(0.0, (runs[0]["wall_min"] * 60 * cpus - train) / jobs) if jobs else None


def random_tree_gflops(space: Path, n: int, seed: int, cap: float | None, n_classes: int) -> list[float]:
    """Forward GFLOPs of the campaign's random trees (the driver's draw: deterministic for the seed and cap)."""
    from arborseg.nn import forward_gflops
    from arborseg.space.sampler import sample_distinct

    cost: dict[str, float] = {}

    def gf(tree) -> float:
        if tree.id not in cost:
            cost[tree.id] = forward_gflops(tree, n_classes)
        return cost[tree.id]

    trees = sample_distinct(str(space), n, seed, accept=None if cap is None else (lambda t: gf(t) <= cap))
    return [gf(t) for t in trees]


def estimate(b: dict, p: dict, cells: list[tuple[str, int]], space: Path, costs: dict, caps: dict,
             names: dict[str, str], done: set[str], cores: int) -> dict[str, Any]:
    """Wall time of the pieces not yet done on ``cores`` idle cores: every piece's steps at the measured
    seconds per step and GFLOP (the baselines' own trees; the pooled, costlier rate for searched trees), plus the
    measured seconds per job; promoted trials cost the mean of the campaign's first-rung configurations."""
    rates = measured_rates(b["batch"])

    def step_s(tree_name: str | None, gflops: float) -> float:
        rate = rates["per_tree"].get(structure(tree_name or ""), rates["pooled"])
        return max(MIN_STEP_SECONDS, rate * gflops * b["batch"] / 2)  # rates are measured at batch 2

    over = rates["overhead"]
    total, by_kind = 0.0, {"baselines": 0.0, "campaigns": 0.0, "ensembles": 0.0}
    random_cache: dict[int, list[float]] = {}
    for ds, seed in cells:
        c = costs[ds]
        for arm, (tree_arm, frac) in BASELINE_RUNS.items():
            if f"{ds}/s{seed}/{arm}" not in done:
                by_kind["baselines"] += int(p["T"] * frac) * step_s(names[tree_arm], c[tree_arm]) + over
        if f"{ds}/s{seed}/campaign" not in done:
            if seed not in random_cache:
                random_cache[seed] = random_tree_gflops(space, p["random_trees"], seed, caps[ds], 2)
            first = [step_s(names[a], c[a]) for a in BASELINES] + [step_s(None, g) for g in random_cache[seed]]
            mean = sum(first) / len(first)
            first += [mean] * p["refine"]
            secs = p["rung_steps"][0] * sum(first)
            prev = p["rung_steps"][0]
            for n, r in zip(p["rung_sizes"][1:], p["rung_steps"][1:]):
                secs += n * (r - prev) * mean
                prev = r
            by_kind["campaigns"] += secs + p["campaign_jobs"] * over
        if f"{ds}/s{seed}/ensemble" not in done:
            by_kind["ensembles"] += over
    total = sum(by_kind.values())
    per_tree = {names[a]: round(step_s(names[a], costs[cells[0][0]][a]), 2) for a in BASELINES} if cells else {}
    return {"minutes": round(total / cores / 60, 1), "core_minutes": {k: round(v / 60, 1) for k, v in by_kind.items()},
            "cores": cores, "seconds_per_step": per_tree, "pooled_rate": round(rates["pooled"], 4),
            "job_overhead_s": round(over, 1), "sources": rates["sources"],
            "random_tree_gflops": {s: [round(g, 2) for g in v] for s, v in random_cache.items()}}


def estimate_line(e: dict) -> str:
    steps = ", ".join(f"{k} {v} s" for k, v in e["seconds_per_step"].items())
    return (f"estimate: about {e['minutes']} min on {e['cores']} idle cores for what is not finished ("
            + ", ".join(f"{k} {v} core-min" for k, v in e["core_minutes"].items())
            + f"); seconds per step: {steps}, searched trees {e['pooled_rate']} s per GFLOP per window at batch 2;"
            f" {e['job_overhead_s']} s per job beyond training; from "
            + (", ".join(e["sources"]) or "built-in defaults (no earlier run at this batch)"))


# ---------------------------------------------------------------------------------------------- collect
def campaign_table(run_dir: Path):
    from arborseg.table import read_run, run_table

    return run_table([], campaigns=[read_run(run_dir)])


def best_trial(table) -> dict | None:
    """The top-rung survivor: the COMPLETE trial with the best validation value (None when there is none)."""
    infos: dict[str, dict] = table.attrs.get("campaigns") or {}
    direction = next(iter(infos.values()), {}).get("direction", "maximize")
    done = table[(table["state"] == "COMPLETE") & table["value"].notna()]
    if done.empty:
        return None
    done = done.sort_values(["value", "trial_id"], ascending=[direction != "maximize", True], kind="stable")
    return done.iloc[0].to_dict()


def folder_steps(folder: Path) -> int:
    """Steps a trial folder trained: metrics.json, else its checkpoint (a trial stopped mid-rung)."""
    trial = TrialFolder(folder)
    if trial.metrics_path.is_file():
        return int(json.loads(trial.metrics_path.read_text()).get("steps", 0))
    if trial.checkpoint_path.is_file():
        import torch

        return int(torch.load(trial.checkpoint_path, map_location="cpu", weights_only=False)["step"])
    return 0


def voxels_per_step(tree_file: Path, batch: int) -> int:
    from arborseg.tree import ModuleTree

    return batch * math.prod(ModuleTree.load(tree_file).window)


def campaign_usage(run_dir: Path, table, batch: int) -> dict[str, Any]:
    """Steps, seconds and voxels every trial of the campaign trained (all rungs), read from the trial folders."""
    root = run_dir / TRIALS_DIR
    trials = [TrialFolder(t) for t in sorted(root.glob("*"))] if root.is_dir() else []
    steps, secs, vox = 0, 0.0, 0
    for t in trials:
        s = folder_steps(t.path)
        steps += s
        if t.metrics_path.is_file():
            secs += float(json.loads(t.metrics_path.read_text()).get("train_seconds", 0.0))
        if t.tree_path.is_file():
            vox += s * voxels_per_step(t.tree_path, batch)
    states = table["state"].value_counts().to_dict() if not table.empty else {}
    return {"steps": steps, "trials": len(trials), "states": {str(k): int(v) for k, v in states.items()},
            "train_seconds": round(secs, 1), "voxels": vox}


def tree_cost(tree_file: Path, n_classes: int) -> tuple[float, float]:
    """(forward GFLOPs per window, forward MFLOPs per window voxel) of a tree at its own window."""
    from arborseg.nn import forward_gflops
    from arborseg.tree import ModuleTree

    tree = ModuleTree.load(tree_file)
    g = forward_gflops(tree, n_classes)
    return g, g * 1000 / math.prod(tree.window)


def metric_rows(scores: dict[str, dict], base: dict) -> list[dict]:
    rows = []
    for region, metrics in scores.items():
        for metric, value in metrics.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            keep = metric in ("miou", "fg_iou", "fn_401", "fp_401") or metric.startswith(("iou/", "fn_401/",
                                                                                          "fp_401/",
                                                                                          "positive_fraction/"))
            if keep:
                rows.append({**base, "region": region, "metric": metric, "value": float(value)})
    return rows


def history(folder: Path) -> list[list[float]]:
    """[[step, validation objective], ...] of a trained folder (empty when it has none)."""
    path = TrialFolder(folder).path / "history.json"
    if not path.is_file():
        return []
    return [[h["step"], h["fg_iou"]] for h in json.loads(path.read_text()) if "step" in h and "fg_iou" in h]


def collect_cell(work: Path, ds: str, seed: int, n_classes: int, b: dict, p: dict) -> dict[str, Any]:
    """Score rows, accounting rows, rank correlations, learning curves and machine time of one cell's finished
    pieces, read from the work dir."""
    import pandas as pd

    from arborseg.table import RUNG_PREFIX, rank_correlations

    rows: list[dict] = []
    acct: list[dict] = []
    ranks: list[dict] = []
    cur: dict[str, Any] = {}
    train_seconds, jobs = 0.0, 0
    out = {"dataset": ds, "seed": seed, "rows": rows, "accounting": acct, "ranks": ranks, "curves": cur}

    def done() -> dict[str, Any]:
        return {**out, "train_seconds": round(train_seconds, 1), "jobs": jobs}

    cell = work / ds / f"s{seed}"
    run_dir = cell / "runs" / f"{ds}_s{seed}"
    for arm, (_, frac) in BASELINE_RUNS.items():
        folder = TrialFolder(cell / arm)
        if not folder.metrics_path.is_file():
            continue
        m = json.loads(folder.metrics_path.read_text())
        g, mv = tree_cost(folder.tree_path, n_classes)
        own = int(m["steps"])
        acct.append({"dataset": ds, "seed": seed, "arm": arm, "tree": m["tree_name"], "family": m["family"],
                     "params": m["params"], "window": m["window"], "planned_steps": int(p["T"] * frac),
                     "steps_used": own, "own_steps": own, "train_seconds": m["train_seconds"],
                     "voxels": own * voxels_per_step(folder.tree_path, b["batch"]), "members": 1,
                     "gflops_per_window": round(g, 3), "inference_gflops": round(g, 3),
                     "inference_mflops_per_voxel": round(mv, 3)})
        rows += metric_rows({r: v for r, v in m["regions"].items() if r in ("validation",) + REPORT_REGIONS},
                            {"dataset": ds, "seed": seed, "arm": arm})
        cur[arm] = history(folder.path)
        train_seconds += m["train_seconds"]
        jobs += 1
    if not (cell / "campaign.done").exists():
        return done()
    table = campaign_table(run_dir)
    use = campaign_usage(run_dir, table, b["batch"])
    train_seconds += use["train_seconds"]
    jobs += p["campaign_jobs"]
    charged = {"planned_steps": p["campaign_total"], "campaign_planned_steps": p["campaign_planned"],
               "steps_used": use["steps"], "campaign_trials": use["trials"],
               "campaign_states": use["states"], "train_seconds": use["train_seconds"],
               "voxels": use["voxels"]}
    rc = rank_correlations(table)
    ranks += [{"dataset": ds, "seed": seed, **r} for r in rc.drop(columns=["campaign"]).to_dict("records")]
    rung_cols = [f"{RUNG_PREFIX}{s}" for s in p["rung_steps"]]
    best = best_trial(table)
    cur["campaign"] = [{"trial_id": int(r["trial_id"]), "tree": r["tree_name"], "state": r["state"],
                        "phase": r.get("phase"), "survivor": best is not None and r["trial_id"] ==
                        best["trial_id"],
                        "values": [[s, r[c]] for s, c in zip(p["rung_steps"], rung_cols)
                                   if c in r and pd.notna(r[c])]}
                       for r in table.to_dict("records")]
    if best is not None:
        folder = TrialFolder(Path(str(best["artifact_dir"])))
        m = json.loads(folder.metrics_path.read_text())
        g, mv = tree_cost(folder.tree_path, n_classes)
        acct.append({"dataset": ds, "seed": seed, "arm": "arborseg_best", "tree": m["tree_name"],
                     "family": m["family"], "params": m["params"], "window": m["window"],
                     "own_steps": int(m["steps"]) if pd.isna(best.get("steps_trained"))
                     else int(best["steps_trained"]),
                     "phase": best.get("phase"), "trial_id": int(best["trial_id"]), **charged,
                     "members": 1, "gflops_per_window": round(g, 3), "inference_gflops": round(g, 3),
                     "inference_mflops_per_voxel": round(mv, 3)})
        rows += metric_rows({r: v for r, v in m["regions"].items() if r in ("validation",) + REPORT_REGIONS},
                            {"dataset": ds, "seed": seed, "arm": "arborseg_best"})
    ens = ensemble_dir(run_dir, ENSEMBLE_NAME) / ENSEMBLE_FILE
    if ens.is_file():
        man = json.loads(ens.read_text())
        members = man.get("members") or []
        inf = man.get("inference") or {}
        gain = (((man.get("gain") or {}).get("regions") or {}).get("validation") or {}).get(
            man.get("objective")) or {}
        acct.append({"dataset": ds, "seed": seed, "arm": "arborseg_ensemble",
                     "tree": " + ".join(f"{x.get('tree_name')}(t{x.get('trial_id')})"
                                        + (f"*{x['count']}" if int(x.get("count") or 1) > 1 else "")
                                        for x in members),
                     "family": ",".join(sorted({str(x.get("family")) for x in members})),
                     "params": sum(int(x.get("params") or 0) for x in members),
                     "own_steps": int(man.get("training_steps") or 0), **charged,
                     "fusion": man.get("fusion"), "members": len(members),
                     "inference_gflops": round(float(inf.get("gflops") or math.nan), 3),
                     "inference_mflops_per_voxel": round(sum(
                         float(x.get("gflops") or 0) * 1000 / math.prod(x["window"]) for x in members), 3),
                     "val_gain": gain.get("gain"), "val_gain_ci": [gain.get("lo"), gain.get("hi")]})
        rows += metric_rows({r: v for r, v in (man.get("scores") or {}).items()
                             if r in ("validation",) + REPORT_REGIONS},
                            {"dataset": ds, "seed": seed, "arm": "arborseg_ensemble"})
        jobs += 1
    return done()


def cell_record_path(budget: str, ds: str, seed: int) -> Path:
    """Where a finished cell's results are kept in the repository, so that a later run (another session, a clean
    clone) uses them instead of training the cell again."""
    return RESULTS / f"search_vs_baselines_{budget}_cells" / f"{ds}_s{seed}.json"


def git_revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


#: what a cell record says about itself, not about the cell: a record whose cell is unchanged is not rewritten
#: (its ``code`` stays the revision that trained it)
RECORD_META = ("code", "source", "written")


def collect(work: Path, budget: str, datasets: list[str], seeds: list[int], b: dict, p: dict,
            complete: set[tuple[str, int]]) -> dict[str, Any]:
    """Every cell's results: from the work dir, or from its record in benchmarks/results/ when the work dir does
    not hold the whole cell. A cell whose pieces are all finished in the work dir (``complete``) gets its record
    written."""
    from arborseg.data import load_data_config

    got: dict[str, Any] = {"rows": [], "accounting": [], "ranks": [], "curves": {}}
    train_total, jobs = 0.0, 0
    def n_classes(ds: str) -> int:  # read only where a cell is collected from the work dir
        return len(load_data_config(work / "data" / f"{ds}.yaml").classes)

    for ds in datasets:
        for seed in seeds:
            record = cell_record_path(budget, ds, seed)
            if (ds, seed) in complete:
                cell = collect_cell(work, ds, seed, n_classes(ds), b, p)
                kept = json.loads(record.read_text()) if record.is_file() else {}
                if {k: v for k, v in kept.items() if k not in RECORD_META} != json.loads(json.dumps(cell, default=str)):
                    record.parent.mkdir(parents=True, exist_ok=True)  # new or changed: the revision that wrote it
                    record.write_text(json.dumps({**cell, "code": git_revision(), "source": str(work / ds / f"s{seed}"),
                                                  "written": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=1,
                                                 default=str))
            elif record.is_file():
                cell = json.loads(record.read_text())
            else:
                cell = collect_cell(work, ds, seed, n_classes(ds), b, p)
            for key in ("rows", "accounting", "ranks"):
                got[key] += cell[key]
            got["curves"].setdefault(ds, {})[str(seed)] = cell["curves"]
            train_total += cell["train_seconds"]
            jobs += cell["jobs"]
    return {**got, "machine_time": {"train_seconds": round(train_total, 1), "jobs": jobs}}


def summarise(rows: list[dict]) -> list[dict]:
    import numpy as np

    groups: dict[tuple, list[float]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["arm"], r["region"], r["metric"]), []).append(r["value"])
    out = []
    for (ds, arm, region, metric), values in sorted(groups.items()):
        v = np.asarray(values, dtype=float)
        v = v[~np.isnan(v)]
        out.append({"dataset": ds, "arm": arm, "region": region, "metric": metric, "n": int(v.size),
                    "mean": float(v.mean()) if v.size else float("nan"),
                    "std": float(v.std(ddof=1)) if v.size > 1 else float("nan"),
                    "min": float(v.min()) if v.size else float("nan"),
                    "max": float(v.max()) if v.size else float("nan")})
    return out


def rank_summary(ranks: list[dict]) -> list[dict]:
    """Per dataset and rung: Spearman (to the next rung and to the top) averaged over the campaigns (seeds)."""
    out: dict[tuple, dict] = {}
    for r in ranks:
        key = (r["dataset"], r["rung"])
        o = out.setdefault(key, {"dataset": r["dataset"], "rung": r["rung"], "steps": r["steps"],
                                 "top_steps": r["top_steps"], "reached": [], "n_top": [], "spearman_top": [],
                                 "n_next": [], "spearman_next": []})
        for k in ("reached", "n_top", "spearman_top", "n_next", "spearman_next"):
            o[k].append(r[k])
    for o in out.values():
        for k in ("spearman_top", "spearman_next"):
            vals = [v for v in o[k] if v is not None and not math.isnan(v)]
            o[k + "_mean"] = sum(vals) / len(vals) if vals else math.nan
    return list(out.values())


# ---------------------------------------------------------------------------------------------- judgement
def _index(summary: list[dict]) -> dict[tuple, dict]:
    return {(s["dataset"], s["arm"], s["region"], s["metric"]): s for s in summary}


def _ok(s: dict | None) -> TypeGuard[dict]:
    return s is not None and s["n"] > 0 and not math.isnan(s["mean"])


def _std(s: dict) -> float:
    return 0.0 if math.isnan(s["std"]) else s["std"]


def plateau(summary: list[dict], datasets: list[str]) -> dict[str, dict]:
    """B's eval-far mIoU at T/2 and at T per dataset, and whether they are within 3 % (relative)."""
    index, out = _index(summary), {}
    for ds in datasets:
        half, full = index.get((ds, "baseline_B_half", "eval_far", "miou")), index.get((ds, "baseline_B", "eval_far",
                                                                                        "miou"))
        if not _ok(half) or not _ok(full) or full["mean"] == 0:
            continue
        rel = (full["mean"] - half["mean"]) / full["mean"]
        out[ds] = {"half": half["mean"], "half_std": half["std"], "full": full["mean"], "full_std": full["std"],
                   "relative_gain": rel, "near_plateau": abs(rel) <= PLATEAU_TOLERANCE, "n": min(half["n"], full["n"])}
    return out


def plateau_lines(pl: dict[str, dict], p: dict) -> list[str]:
    lines = [f"- {ds}: B eval-far mIoU {v['half']:.3f} at T/2 = {p['half']} steps, {v['full']:.3f} at T = {p['T']} "
             f"({v['relative_gain']:+.1%} relative): "
             + ("near its plateau (within 3 %)" if v["near_plateau"] else "NOT near its plateau (more than 3 %)")
             for ds, v in pl.items()]
    return lines or ["- (B at T/2 and T not both finished yet)"]


def goal(summary: list[dict], datasets: list[str]) -> tuple[list[str], dict[str, Any]]:
    """Issue 14's goal on eval-far: arborseg's better arm (by mean mIoU) is never below B by more than the
    larger seed std, is above B by more than that on at least 2 of 3 datasets, and its FN-401 is no worse
    (mean at most B's + the larger seed std of FN-401; strictly lower-or-equal is shown too)."""
    index = _index(summary)
    per: dict[str, dict] = {}
    lines = []
    for ds in datasets:
        b = index.get((ds, "baseline_B", "eval_far", "miou"))
        ours: dict[str, dict] = {}
        for a in OURS:
            found = index.get((ds, a, "eval_far", "miou"))
            if _ok(found):
                ours[a] = found
        if not _ok(b) or not ours:
            lines.append(f"- {ds}: not enough finished results")
            continue
        assert b is not None
        arm = max(ours, key=lambda a: ours[a]["mean"])
        o = ours[arm]
        noise = max(_std(o), _std(b))
        gap = o["mean"] - b["mean"]
        fo, fb = index.get((ds, arm, "eval_far", "fn_401")), index.get((ds, "baseline_B", "eval_far", "fn_401"))
        fn_strict = fn_ok = fn_ours = fn_b = None
        fn = "-"
        if _ok(fo) and _ok(fb):
            fn_ours, fn_b = fo["mean"], fb["mean"]
            fn_strict = fo["mean"] <= fb["mean"]
            fn_ok = fo["mean"] <= fb["mean"] + max(_std(fo), _std(fb))
            fn = f"{fo['mean']:.2f} vs {fb['mean']:.2f}: " + (
                "no worse" if fn_strict else "worse, within the spread" if fn_ok else "WORSE")
        n = min(o["n"], b["n"])
        per[ds] = {"arm": arm, "ours": o["mean"], "ours_std": o["std"], "B": b["mean"], "B_std": b["std"],
                   "gap": gap, "noise": noise, "below": gap < -noise, "above": gap > noise, "n": n,
                   "fn_401_ours": fn_ours, "fn_401_B": fn_b, "fn_401_no_worse": fn_ok,
                   "fn_401_strictly_no_worse": fn_strict}
        word = "above B" if gap > noise else "below B" if gap < -noise else "within the seed spread of B"
        lines.append(f"- {ds}: {ARM_LABELS[arm]} {o['mean']:.3f} ± {_std(o):.3f} vs B {b['mean']:.3f} ± "
                     f"{_std(b):.3f} eval-far mIoU ({gap:+.3f}, larger std {noise:.3f}): {word}"
                     + ("" if n >= 2 else " (one seed only)") + f"; FN-401 {fn}")
    complete = len(per) == len(datasets) == 3 and all(v["n"] >= 2 for v in per.values())
    met = complete and not any(v["below"] for v in per.values()) and sum(v["above"] for v in per.values()) >= 2 \
        and all(v["fn_401_no_worse"] for v in per.values())
    verdict = ("GOAL MET" if met else "goal NOT met") if complete else "goal not decided (needs 3 datasets x >= 2 seeds)"
    lines.append(f"- **{verdict}**: never below B by more than the larger seed std on eval-far mIoU ("
                 f"{sum(not v['below'] for v in per.values())} of {len(per)}), above B by more than it on >= 2 of 3 "
                 f"({sum(v['above'] for v in per.values())}), FN-401 no worse "
                 f"({sum(bool(v['fn_401_no_worse']) for v in per.values())} of {len(per)})")
    return lines, {"datasets": per, "complete": complete, "met": met, "verdict": verdict}


# ---------------------------------------------------------------------------------------------- outputs
COLORS = {"baseline_A": "#8c8c8c", "baseline_B": "#4c72b0", "baseline_B_half": "#9db4d8",
          "arborseg_best": "#dd8452", "arborseg_ensemble": "#c44e52"}


def plot(summary: list[dict], rows: list[dict], datasets: list[str], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    metrics = (("miou", "mIoU (higher is better)"), ("fn_401", "FN-401, % of voxels (lower is better)"),
               ("fp_401", "FP-401, % of voxels (lower is better)"))
    fig, axes = plt.subplots(len(metrics), len(datasets), figsize=(max(7.0, 4.2 * len(datasets)), 3.2 * len(metrics)),
                             squeeze=False)
    index = _index(summary)
    width = 0.8 / len(ARMS)
    for i, (metric, label) in enumerate(metrics):
        for j, ds in enumerate(datasets):
            ax = axes[i][j]
            for k, arm in enumerate(ARMS):
                xs = np.arange(len(REPORT_REGIONS)) + (k - (len(ARMS) - 1) / 2) * width
                means = [index.get((ds, arm, r, metric), {}).get("mean", np.nan) for r in REPORT_REGIONS]
                stds = [index.get((ds, arm, r, metric), {}).get("std", np.nan) for r in REPORT_REGIONS]
                ax.bar(xs, means, width, yerr=np.nan_to_num(stds), color=COLORS[arm], capsize=2,
                       label=ARM_LABELS[arm] if (i, j) == (0, 0) else None)
                for x, region in zip(xs, REPORT_REGIONS):
                    pts = [r["value"] for r in rows if (r["dataset"], r["arm"], r["region"], r["metric"])
                           == (ds, arm, region, metric)]
                    ax.plot([x] * len(pts), pts, "k.", ms=3)
            ax.set_xticks(range(len(REPORT_REGIONS)), [r.replace("eval_", "eval-") for r in REPORT_REGIONS])
            if i == 0:
                ax.set_title(ds)
            if j == 0:
                ax.set_ylabel(label, fontsize=8)
    fig.legend(loc="lower center", ncol=min(len(ARMS), 3), fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.06 if len(datasets) > 1 else 0.1, 1, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_curves(curves: dict, datasets: list[str], path: Path, title: str) -> Path:
    """Validation fg-IoU against train steps: A, B, B/2 (every seed), every campaign trial through its rungs
    (thin), the top-rung survivor (thick)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(datasets), figsize=(max(6.0, 4.6 * len(datasets)), 3.6), squeeze=False)
    for j, ds in enumerate(datasets):
        ax = axes[0][j]
        labelled: set[str] = set()
        for cur in (curves.get(ds) or {}).values():
            for arm in BASELINE_RUNS:
                pts = [pt for pt in cur.get(arm) or [] if pt[1] is not None]
                if pts:
                    ax.plot(*zip(*pts), color=COLORS[arm], lw=1.2, ls="--" if arm.endswith("half") else "-",
                            label=None if arm in labelled else ARM_LABELS[arm])
                    labelled.add(arm)
            for t in cur.get("campaign") or []:
                if not t["values"]:
                    continue
                key = "arborseg_best" if t["survivor"] else "trial"
                ax.plot(*zip(*t["values"]), marker="o", ms=3 if t["survivor"] else 2, lw=2.2 if t["survivor"] else 0.6,
                        color=COLORS["arborseg_best"], alpha=1.0 if t["survivor"] else 0.45,
                        label=None if key in labelled else ("top-rung survivor" if t["survivor"] else
                                                            "campaign trials (rungs)"))
                labelled.add(key)
        ax.set_title(ds)
        ax.set_xlabel("train steps")
        if j == 0:
            ax.set_ylabel("validation fg-IoU")
        ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _or(value: Any, default: str = "?") -> Any:
    return default if value is None else value


def fmt(s: dict | None, digits: int = 3) -> str:
    if not _ok(s):
        return "-"
    assert s is not None
    spread = "" if math.isnan(s["std"]) else f" ± {s['std']:.{digits}f}"
    return f"{s['mean']:.{digits}f}{spread}"


def machine() -> dict:
    import torch

    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cpus": os.cpu_count(), "gpu": gpu, "torch": torch.__version__,
            "python": platform.python_version(), "load_avg": [round(x, 2) for x in os.getloadavg()]}


def _mean(values: list) -> float:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(vals) / len(vals) if vals else math.nan


def readme_block(result: dict, datasets: list[str], png: Path, curves_png: Path, csv: Path) -> list[str]:
    b, p = result["budget"], result["plan"]
    summary, acct = result["summary"], result["accounting"]
    index = _index(summary)
    L = [f"Command: `{result['command']}`", ""]
    runs = result["invocations"]
    m0 = runs[0]["machine"]
    L.append(f"Machine: {m0['cpu'] or 'unknown CPU'}, {m0['cpus']} CPUs, GPU: {m0['gpu'] or 'none'}, torch "
             f"{m0['torch']}, Python {m0['python']}. Estimate before the first run: "
             f"{_or((result.get('estimate_first') or {}).get('minutes'))} min. Invocations (this command, resumed): "
             + "; ".join(f"{r['started']} load {r['machine']['load_avg'][0]}→{r.get('load_end', '?')}, "
                         f"wall {r.get('wall_min', '?')} min, CPU {_or(r.get('cpu_min'))} min"
                         + (f" ({r['note']})" if r.get("note") else "") for r in runs) + ".")
    L.append(f"Finished pieces: {result['finished']} of {result['pieces']}"
             + (f"; not finished: {', '.join(result['unfinished'][:12])}"
                + (" ..." if len(result['unfinished']) > 12 else "") if result["unfinished"] else "") + ".")
    L += ["", "This design (issue 14) replaces the retired budgets `cpu` and `cpu150` below (best tree retrained "
          "from scratch, ensembles of newly trained members); their result files stay in `results/`.", "",
          f"Budget `{result['budget_name']}`, per dataset and seed (seeds {result['seeds']}): T = {p['T']} steps, "
          f"batch {b['batch']} for every network, each at its own window. The campaign: union space + portfolio "
          f"(A's and B's trees), successive halving with rungs {p['rung_steps']} steps (first_rung "
          f"{b['first_rung']}, eta {p['eta']}, the same for every dataset; promoted trials continue from their "
          f"checkpoints, the LR schedule planned for the top rung T), no pruner, "
          f"**budget.total_steps = {p['campaign_multiple']} x T = {p['campaign_total']} steps**; plan: {p['configs']} "
          f"trials start ({p['portfolio']} portfolio, {p['random_trees']} random trees, {p['refine']} refinements), "
          f"{' / '.join(map(str, p['rung_sizes']))} trials train to {' / '.join(map(str, p['rung_steps']))} steps: "
          f"{p['campaign_planned']} planned steps. **Every arborseg arm is charged the whole campaign** "
          f"({p['campaign_multiple']} x T planned), against T for A and B.", "",
          "| arm | what trains | planned steps | steps used (mean) | inference: members x GFLOPs per window | "
          "MFLOPs per voxel |", "| --- | --- | --- | --- | --- | --- |"]
    what = {"baseline_A": "the fixed tree, one run", "baseline_B": "the fixed tree, nnU-Net recipe, one run",
            "baseline_B_half": "B with its schedule planned for T/2",
            "arborseg_best": "the campaign; its top-rung survivor (best validation value), no retrain",
            "arborseg_ensemble": f"the same campaign; `arborseg ensemble RUN --name {ENSEMBLE_NAME}` post hoc "
                                 "(Caruana selection on validation), no training"}
    planned = {"baseline_A": p["T"], "baseline_B": p["T"], "baseline_B_half": p["half"],
               "arborseg_best": f"{p['campaign_total']} ({p['campaign_planned']} in the plan)",
               "arborseg_ensemble": f"{p['campaign_total']} + 0"}
    for arm in ARMS:
        a_rows = [a for a in acct if a["arm"] == arm]
        members = _mean([a["members"] for a in a_rows])
        L.append(f"| {ARM_LABELS[arm]} | {what[arm]} | {planned[arm]} | "
                 + (f"{_mean([a['steps_used'] for a in a_rows]):.0f}" if a_rows else "-") + " | "
                 + (f"{members:.1f} x, {_mean([a['inference_gflops'] for a in a_rows]):.1f} GFLOPs" if a_rows
                    else "-") + " | "
                 + (f"{_mean([a['inference_mflops_per_voxel'] for a in a_rows]):.3f}" if a_rows else "-") + " |")
    caps, costs = result.get("max_gflops") or {}, result.get("baseline_gflops") or {}
    if costs:
        L += ["", "Forward GFLOPs per window: " + "; ".join(
            f"{ds}: " + ", ".join(f"{arm.replace('baseline_', '')} {g:.1f}" for arm, g in c.items())
            for ds, c in costs.items()) + (". Searched trees are capped at the costlier baseline (`budget.max_gflops`)."
                                           if any(v is not None for v in caps.values()) else ". No cap.")]
    crop = b.get("crop")
    L += ["", "Regions: those of `examples/vnc_mito.yaml`, `examples/vnc_5class.yaml`, "
          "`examples/isbi2012_membrane.yaml`" + (f"; validation and eval regions cut to a centred "
                                                 f"{crop['vnc']} x {crop['vnc']} (VNC) / {crop['isbi']} x "
                                                 f"{crop['isbi']} (ISBI) xy crop (training sees the whole training "
                                                 "region)" if crop else "")
          + ". Scores: `arborseg.metrics.score_segmentation` (FN-401/FP-401: % of region voxels in error "
          "components of >= 401 voxels per slice). Mean ± std over seeds (n in the CSV)."]
    for ds in datasets:
        classes = result["classes"][ds]
        L += ["", f"**{ds}**", "", "| arm | region | mIoU | FN-401 | FP-401 | " + " | ".join(
            f"IoU {c}" for c in classes) + " | steps used | train s |",
            "| --- | --- | --- | --- | --- | " + " | ".join("---" for _ in classes) + " | --- | --- |"]
        for arm in ARMS:
            a_rows = [a for a in acct if a["dataset"] == ds and a["arm"] == arm]
            steps = f"{_mean([a['steps_used'] for a in a_rows]):.0f}" if a_rows else "-"
            secs = f"{_mean([a['train_seconds'] for a in a_rows]):.0f}" if a_rows else "-"
            for region in REPORT_REGIONS:
                cells = [fmt(index.get((ds, arm, region, "miou"))), fmt(index.get((ds, arm, region, "fn_401")), 2),
                         fmt(index.get((ds, arm, region, "fp_401")), 2)]
                cells += [fmt(index.get((ds, arm, region, f"iou/{c}"))) for c in classes]
                L.append(f"| {ARM_LABELS[arm]} | {region.replace('eval_', 'eval-')} | " + " | ".join(cells)
                         + f" | {steps} | {secs} |")
    L += ["", "Is B near its plateau at T? (eval-far mIoU, mean over seeds, at T/2 and T, each with its own "
          "schedule):", ""] + plateau_lines(result["plateau"], p)
    L += ["", "Is the cheap ranking trustworthy? Spearman rank correlation of each rung's validation values with the "
          "top rung's (and the next rung's), over the trials that reached both; mean over the seeds' campaigns "
          "(n per seed):", "", "| dataset | rung (steps) | reached | vs top: n | vs top: Spearman | vs next: n | "
          "vs next: Spearman |", "| --- | --- | --- | --- | --- | --- | --- |"]
    def per_seed(values: list) -> str:
        return " / ".join(str(v) for v in values)

    def rho(value: float) -> str:
        return "-" if value is None or math.isnan(value) else f"{value:.2f}"

    for r in result["rank_summary"]:
        L.append(f"| {r['dataset']} | {r['rung']} ({r['steps']}) | {per_seed(r['reached'])} | {per_seed(r['n_top'])} "
                 f"| {rho(r['spearman_top_mean'])} | {per_seed(r['n_next'])} | {rho(r['spearman_next_mean'])} |")
    if not result["rank_summary"]:
        L.append("| (no finished campaign yet) | | | | | | |")
    L += ["", f"![search vs baselines]({png.relative_to(HERE)})", "",
          f"![validation learning curves]({curves_png.relative_to(HERE)})", "",
          f"All numbers: `{csv.relative_to(HERE)}` (one row per dataset, seed, arm, region, metric), "
          f"`{csv.with_name(csv.stem + '_summary.csv').relative_to(HERE)}`, "
          f"`{csv.with_name(csv.stem + '_accounting.csv').relative_to(HERE)}` (steps planned and used, train "
          "seconds, voxels, trees, members, inference cost), "
          f"`{csv.with_name(csv.stem + '_ranks.csv').relative_to(HERE)}`, `{csv.with_suffix('.json').relative_to(HERE)}`"
          " (with learning curves).", "",
          "The goal (issue 14; generated): arborseg's better arm by mean eval-far mIoU vs B; \"larger std\" is the "
          "larger of the two seed standard deviations:", ""]
    L += result["goal_lines"]
    return L


def write_readme(budget_name: str, lines: list[str]) -> None:
    BEGIN, END = markers(budget_name)
    block = "\n".join([BEGIN, "", *lines, "", END])
    text = README.read_text() if README.exists() else "# Benchmarks\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    elif SECTION in text:  # a new budget: its block goes right after the section's introduction
        start = text.index(SECTION)
        end = text.find("\n## ", start + len(SECTION))
        end = len(text) if end < 0 else end + 1
        sub = text.find("\n### ", start, end)  # before the older budgets' blocks and their headings
        at = sub + 1 if sub >= 0 else end
        heading = f"### {budget_name} budget: latest run\n\n"
        text = text[:at].rstrip() + "\n\n" + heading + block + "\n\n" + text[at:].lstrip("\n")
    else:
        text = text.rstrip() + f"\n\n{SECTION}\n\n{block}\n"
    README.write_text(text)


def write_csv(path: Path, records: list[dict]) -> None:
    import csv

    keys: list[str] = []
    for r in records:
        keys += [k for k in r if k not in keys]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(records)


# ---------------------------------------------------------------------------------------------- main
def merged_invocations(results_json: Path, work_log: Path) -> list[dict]:
    """The invocations of this budget: those recorded in its last results file (earlier sessions, work dirs not
    kept) and those of the work dir, once each, in start order."""
    runs: dict[str, dict] = {}
    for path, key in ((results_json, "invocations"), (work_log, None)):
        if path.is_file():
            data = json.loads(path.read_text())
            for r in (data.get(key) or [] if key else data):
                if r.get("started", "?") != "?":
                    runs[r["started"]] = r
    return [runs[k] for k in sorted(runs)]


def parse_cell(text: str, datasets: list[str], seeds: list[int]) -> tuple[str, int]:
    """``vnc_mito:1`` -> ("vnc_mito", 1), one of the benchmark's dataset x seed cells."""
    ds, _, seed = text.partition(":")
    if ds not in datasets or not seed.isdigit() or int(seed) not in seeds:
        raise SystemExit(f"--cells {text}: write DATASET:SEED with DATASET in {datasets} and SEED in {seeds}")
    return ds, int(seed)


def parse_option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise SystemExit(f"--executor-option {text!r}: write KEY=VALUE")
    return key, yaml.safe_load(value)


def log_invocation(work: Path, started: float, argv: list[str] | None, estimate_min: float | None = None) -> None:
    """Add or update this invocation in WORK/invocations.json (wall and CPU minutes so far, load)."""
    path = work / "invocations.json"
    runs = json.loads(path.read_text()) if path.exists() else []
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started))
    entry = next((r for r in runs if r["started"] == stamp), None)
    if entry is None:
        entry = {"started": stamp, "machine": {**machine(), "load_avg": previous_load},
                 "argv": sys.argv[1:] if argv is None else argv}
        runs.append(entry)
    if estimate_min is not None:
        entry["estimate_min"] = estimate_min
    entry.update({"wall_min": round((time.time() - started) / 60, 1),
                  "cpu_min": round(sum(os.times()[:4]) / 60, 1), "load_end": round(os.getloadavg()[0], 2),
                  "updated": time.strftime("%Y-%m-%d %H:%M:%S")})
    path.write_text(json.dumps(runs, indent=1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", choices=sorted(BUDGETS) + sorted(RETIRED), default="cpu_sh")
    ap.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    ap.add_argument("--cells", nargs="+", metavar="DATASET:SEED",
                    help="run only these cells (e.g. isbi2012:1); the outputs still cover --datasets x --seeds")
    ap.add_argument("--executor", choices=("local", "slurm", "debug"), default="local")
    ap.add_argument("--executor-option", action="append", default=[], metavar="KEY=VALUE",
                    help="extra executor option for every job (e.g. partition=gpu, gpus_per_node=1)")
    ap.add_argument("--slots", type=int, help="CPU slots in flight (default: the budget's; slurm: 64)")
    ap.add_argument("--work-dir", help="default runs/bench_search_vs_baselines/<budget>")
    ap.add_argument("--no-readme", action="store_true", help="do not write the README block")
    ap.add_argument("--collect-only", action="store_true", help="only gather finished results and write outputs")
    ap.add_argument("--estimate-only", action="store_true", help="print the plan and the wall-time estimate, stop")
    args = ap.parse_args(argv)
    if args.budget in RETIRED:
        raise SystemExit(f"budget {args.budget} is retired ({RETIRED[args.budget]}); its results stay in "
                         f"benchmarks/results/search_vs_baselines_{args.budget}.*; run --budget cpu_sh")

    started = time.time()
    b = BUDGETS[args.budget]
    p = plan(b)
    seeds = list(range(args.seeds))
    work = Path(args.work_dir or ROOT / "runs" / "bench_search_vs_baselines" / args.budget).resolve()
    work.mkdir(parents=True, exist_ok=True)
    local = b["local"]
    extra = dict(parse_option(o) for o in args.executor_option)
    env = {"PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    gpu = {"gpus_per_node": local["gpus_per_node"]} if "gpus_per_node" in local else {}
    if args.executor == "slurm":
        job_opts = {"timeout_min": 240, "env": env, **extra}
        camp_exec = {"kind": "slurm", "workers": 8, "timeout_min": 240, **extra}
        slots = args.slots or 64
        weights = {"job": 1, "campaign": 1, "ensemble": 1}
    else:
        job_opts = {"timeout_min": local["timeout_min"], "threads_per_job": local["threads_per_job"], "env": env,
                    **gpu, **extra}
        camp_exec = {"kind": args.executor, "workers": local["campaign_workers"], "timeout_min": local["timeout_min"],
                     **gpu, **{k: v for k, v in extra.items() if k != "env"}}
        slots = args.slots or local["slots"]
        weights = {"job": 1, "campaign": min(slots, local["campaign_workers"]), "ensemble": 1}
    print(f"budget {args.budget}: T = {p['T']} steps (B/2: {p['half']}), batch {b['batch']}; campaign total_steps "
          f"= {p['campaign_multiple']} x T = {p['campaign_total']}, every arborseg arm charged all of it; "
          f"{p['describe']}; work dir {work}", flush=True)

    space = write_if_changed(work / "space_hybrid_or_thin3d.yaml", yaml.safe_dump(union_space(SPACES),
                                                                                  sort_keys=False))
    from arborseg.campaign.config import load_campaign
    from arborseg.data import load_data_config
    from arborseg.space import load_space
    from arborseg.tree import ModuleTree

    load_space(space)
    data = {ds: data_yaml(ds, b, work) for ds in args.datasets}
    classes = {ds: list(load_data_config(data[ds]).classes) for ds in args.datasets}
    costs = {ds: baseline_gflops(len(classes[ds])) for ds in args.datasets}
    caps = {ds: max(costs[ds].values()) if b.get("cap") else None for ds in args.datasets}
    names = {arm: ModuleTree.load(ROOT / path).name for arm, path in BASELINES.items()}
    print("forward GFLOPs per window: " + "; ".join(f"{ds} {c}" for ds, c in costs.items())
          + ("; searched trees capped at the costlier baseline" if b.get("cap") else "; no cap"), flush=True)

    all_cells = [(ds, seed) for ds in args.datasets for seed in seeds]
    recorded = {c for c in all_cells if cell_record_path(args.budget, *c).is_file()}
    chosen = [parse_cell(c, args.datasets, seeds) for c in args.cells] if args.cells else all_cells
    cells = [c for c in all_cells if c in chosen and c not in recorded]
    if recorded:
        print(f"{len(recorded)} cell(s) kept from earlier runs (delete a record to run its cell again): "
              + ", ".join(str(cell_record_path(args.budget, *c).relative_to(ROOT)) for c in sorted(recorded)),
              flush=True)
    camps = {}
    for ds, seed in cells:
        cell = work / ds / f"s{seed}"
        camps[(ds, seed)] = campaign_yaml(ds, seed, b, data[ds], space, camp_exec, cell, caps[ds])
        cfg = load_campaign(camps[(ds, seed)])  # the union space plus the portfolio, checked against the data
        if cfg.plan().describe() != p["describe"]:
            raise SystemExit(f"{camps[(ds, seed)]}: the campaign plans {cfg.plan().describe()!r}, not the budget's "
                             f"{p['describe']!r}")

    def done_checks(ds: str, seed: int) -> dict[str, Path]:
        cell = work / ds / f"s{seed}"
        run_dir = cell / "runs" / f"{ds}_s{seed}"
        return {**{arm: cell / arm / "metrics.json" for arm in BASELINE_RUNS}, "campaign": cell / "campaign.done",
                "ensemble": ensemble_dir(run_dir, ENSEMBLE_NAME) / ENSEMBLE_FILE}

    finished_now = {f"{ds}/s{seed}/{k}" for ds, seed in cells for k, f in done_checks(ds, seed).items() if f.exists()}
    est = estimate(b, p, cells, space, costs, caps, names, finished_now,
                   cores=min(os.cpu_count() or 1, slots) if args.executor == "local" else slots)
    print(estimate_line(est), flush=True)
    if args.estimate_only:
        return 0

    pieces: list[Piece] = []
    if not args.collect_only:
        from arborseg.jobs.executors import make_executor

        executor = make_executor(args.executor, work / "jobs", job_opts)

        def job_piece(key: str, tree_file: Path, data_file: Path, settings: dict, out_dir: Path) -> Piece:
            def start():
                return executor.submit(TrainPiece(str(tree_file), str(data_file), settings, str(out_dir)))
            return Piece(key, "job", weights["job"], (), lambda: TrialFolder(out_dir).metrics_path.is_file(), start)

        def cmd_piece(key: str, cmd: list, log: Path, done, weight: int, deps: tuple[str, ...] = (),
                      marker: Path | None = None) -> Piece:
            def start():
                log.parent.mkdir(parents=True, exist_ok=True)
                with open(log, "a") as fh:
                    fh.write(f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(map(str, cmd))}\n")
                    fh.flush()
                    proc = subprocess.Popen([str(c) for c in cmd], stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
                return _MarkOnSuccess(proc, marker) if marker is not None else proc
            return Piece(key, "cmd", weight, deps, done, start, log)

        cli = [sys.executable, "-m", "arborseg.cli", "-q"]
        for ds, seed in cells:  # campaigns first: the longest pieces, the baselines fill the free slots
            cell = work / ds / f"s{seed}"
            checks = done_checks(ds, seed)
            ckey = f"{ds}/s{seed}/campaign"
            pieces.append(cmd_piece(ckey, cli + ["search", camps[(ds, seed)], "--runs-dir", cell / "runs", "--top",
                                                 "20"], cell / "campaign.log", checks["campaign"].exists,
                                    weights["campaign"], marker=checks["campaign"]))
            for arm, (tree_arm, frac) in BASELINE_RUNS.items():
                pieces.append(job_piece(f"{ds}/s{seed}/{arm}", ROOT / BASELINES[tree_arm], data[ds],
                                        train_settings(int(p["T"] * frac), seed, b["batch"], b["first_rung"]),
                                        cell / arm))
            pieces.append(cmd_piece(f"{ds}/s{seed}/ensemble", cli + ["ensemble", cell / "runs" / f"{ds}_s{seed}",
                                                                     "--name", ENSEMBLE_NAME],
                                    cell / "ensemble.log", checks["ensemble"].is_file, weights["ensemble"], (ckey,)))
        log_invocation(work, started, argv, est["minutes"])
        Runner(slots, work / "piece_times.json", lambda: log_invocation(work, started, argv)).run(pieces)
        log_invocation(work, started, argv)

    # ------------------------------------------------------------------ outputs
    complete = {c for c in all_cells if all(f.exists() for f in done_checks(*c).values())}
    unfinished = [f"{ds}/s{seed}/{k}" for ds, seed in all_cells if (ds, seed) not in complete | recorded
                  for k, f in done_checks(ds, seed).items() if not f.exists()]
    total = len(all_cells) * (len(BASELINE_RUNS) + 2)
    got = collect(work, args.budget, args.datasets, seeds, b, p, complete)
    summary = summarise(got["rows"])
    pl = plateau(summary, args.datasets)
    goal_lines, goal_result = goal(summary, args.datasets)
    ranks = rank_summary(got["ranks"])
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"search_vs_baselines_{args.budget}"
    write_csv(stem.with_suffix(".csv"), got["rows"])
    write_csv(stem.with_name(stem.name + "_summary.csv"), summary)
    write_csv(stem.with_name(stem.name + "_accounting.csv"), got["accounting"])
    write_csv(stem.with_name(stem.name + "_ranks.csv"), got["ranks"])
    invocations = merged_invocations(stem.with_suffix(".json"), work / "invocations.json")
    command = "python benchmarks/bench_search_vs_baselines.py --budget " + args.budget + (
        f" --seeds {args.seeds}" if args.seeds != 3 else "") + (
        f" --datasets {' '.join(args.datasets)}" if args.datasets != list(DATASETS) else "") + (
        f" --executor {args.executor}" if args.executor != "local" else "")
    first_est = next((r.get("estimate_min") for r in invocations if r.get("estimate_min") is not None), None)
    result = {"budget_name": args.budget, "work_dir": str(work), "budget": b, "plan": p,
              "campaign_multiple": p["campaign_multiple"], "campaign_total_steps": p["campaign_total"],
              "charging": "every arborseg arm is charged the whole campaign: budget.total_steps = "
                          f"{p['campaign_multiple']} x T = {p['campaign_total']} steps planned, vs T = {p['T']} for A "
                          "and B",
              "seeds": seeds, "datasets": args.datasets, "command": command,
              "invocations": invocations or [{"started": "?", "machine": machine()}],
              "estimate": est, "estimate_first": {"minutes": first_est if first_est is not None else est["minutes"]},
              "finished": total - len(unfinished), "pieces": total, "unfinished": unfinished, "classes": classes,
              "machine_time": got["machine_time"], "accounting": got["accounting"], "summary": summary,
              "plateau": pl, "rank_correlations": got["ranks"], "rank_summary": ranks, "goal": goal_result,
              "goal_lines": goal_lines, "curves": got["curves"], "rows": got["rows"],
              "baselines": dict(BASELINES), "spaces": list(SPACES), "baseline_gflops": costs, "max_gflops": caps}
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str))
    png = plot(summary, got["rows"], args.datasets, stem.with_suffix(".png"),
               f"search vs fixed baselines, budget {args.budget}: T = {p['T']} steps for A and B, the campaign "
               f"{p['campaign_multiple']} x T, batch {b['batch']}")
    curves_png = plot_curves(got["curves"], args.datasets, stem.with_name(stem.name + "_curves.png"),
                             f"validation fg-IoU vs train steps, budget {args.budget} (rungs {p['rung_steps']})")
    if not args.no_readme and args.budget != "tiny":
        write_readme(args.budget, readme_block(result, args.datasets, png, curves_png, stem.with_suffix(".csv")))
    print(f"\nwrote {stem.with_suffix('.csv')}, _summary.csv, _accounting.csv, _ranks.csv, .json, .png, _curves.png"
          + ("" if args.no_readme or args.budget == "tiny" else f" and the {args.budget} block in {README}"))
    index = _index(summary)
    print(f"\n{'dataset':11s} {'arm':34s} {'region':9s} {'mIoU':>15s} {'FN-401':>13s} {'steps used':>10s} "
          f"{'inference GFLOPs':>16s}")
    for ds in args.datasets:
        for arm in ARMS:
            a_rows = [a for a in got["accounting"] if a["dataset"] == ds and a["arm"] == arm]
            used = f"{_mean([a['steps_used'] for a in a_rows]):.0f}" if a_rows else "-"
            inf = f"{_mean([a['members'] for a in a_rows]):.1f} x {_mean([a['inference_gflops'] for a in a_rows]):.1f}" \
                if a_rows else "-"
            for region in REPORT_REGIONS:
                if (ds, arm, region, "miou") in index:
                    print(f"{ds:11s} {ARM_LABELS[arm]:34s} {region:9s} {fmt(index[(ds, arm, region, 'miou')]):>15s} "
                          f"{fmt(index.get((ds, arm, region, 'fn_401')), 2):>13s} {used:>10s} {inf:>16s}")
    print(f"\nplanned: A, B {p['T']} steps; B/2 {p['half']}; every arborseg arm {p['campaign_total']} "
          f"({p['campaign_multiple']} x T; {p['campaign_planned']} in the plan)")
    print("\nB near its plateau at T (eval-far mIoU at T/2 vs T, within 3 % relative):")
    for line in plateau_lines(pl, p):
        print(line)
    print("\nSpearman rank correlation with the top rung (mean over seeds):")
    for r in ranks:
        print(f"- {r['dataset']} rung {r['rung']} ({r['steps']} steps): reached {r['reached']}, n_top {r['n_top']}, "
              f"rho_top {r['spearman_top_mean']:.2f}, rho_next {r['spearman_next_mean']:.2f}")
    print("\ngoal (issue 14):")
    for line in goal_lines:
        print(line)
    return 0 if not unfinished else 1


previous_load = [round(x, 2) for x in os.getloadavg()]

if __name__ == "__main__":
    # run as the named module so that the job objects pickle as bench_search_vs_baselines.TrainPiece,
    # importable in the jobs (whose PYTHONPATH holds benchmarks/)
    sys.path.insert(0, str(HERE))
    import bench_search_vs_baselines as _bench

    sys.exit(_bench.main())
