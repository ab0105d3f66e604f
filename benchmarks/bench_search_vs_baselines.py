"""Does the search pay? arborseg (campaign + best tree retrained + ensemble) vs two fixed networks.

Issue 8. On VNC mitochondria, VNC 5-class and ISBI 2012 membranes, at the same total number of training
steps per seed on the same machine, compare

* baseline A: the bootstrapping paper's thin 3D U-Net (``search_spaces/portfolio/thin3d_paper.yaml``);
* baseline B: a 2D U-Net with nnU-Net's 2d configuration and training recipe
  (``search_spaces/portfolio/unet2d_nnunet.yaml``);
* arborseg: a campaign over the union of ``search_spaces/hybrid_2d3d.yaml`` and ``search_spaces/thin3d_unet.yaml``,
  its best tree retrained from scratch, and ``arborseg ensemble`` of its best trees.

Every network is an arborseg module tree built by ``arborseg.nn.builder`` and trained, predicted and scored by
``arborseg.train.trainer.train_and_score`` (the campaign's trials and the ensemble's members go through the same code),
so the arms differ only in the tree and in how the steps are spent.

Budget accounting, per dataset and seed (``T`` = ``total_steps`` of the budget)::

    baseline A            T steps, one network
    baseline B            T steps, one network
    arborseg campaign     N trials x s steps (planned; pruned trials stop early and use fewer)
    arborseg best         campaign + one retrain of the best tree (by the validation objective) for T - N*s steps
    arborseg ensemble     campaign + K trees x M seeds members of (T - N*s) // (K*M) steps each
                          (members that are campaign trials, same tree, seed and steps, are reused, free)

So "arborseg best" and "arborseg ensemble" are two readings of one search, each charged the campaign plus its
own training, each at most T; the steps actually used are measured and written next to every score. The batch
size (the budget's ``batch``) is the same for every network, and with the budget's ``cap`` searched trees may
cost at most as much per window as the costlier baseline; windows differ (they are part of each tree), so
voxels seen per step and seconds per step are reported too.

One command, resumable (finished pieces are skipped; a killed run continues where it stopped)::

    python benchmarks/bench_search_vs_baselines.py --budget cpu            # T = 150, batch 2, capped: ~40 min on 2 idle cores
    python benchmarks/bench_search_vs_baselines.py --budget gpu            # one GPU (local executor)
    python benchmarks/bench_search_vs_baselines.py --budget gpu --executor slurm \
        --executor-option partition=gpu --executor-option gpus_per_node=1 --executor-option cpus_per_task=8

Outputs: ``benchmarks/results/search_vs_baselines_<budget>.csv`` (every score of every arm, seed and region),
``..._summary.csv`` (mean, std over seeds), ``.json`` (all of it with accounting and machine), ``.png`` (plot),
and the section "## Search vs fixed baselines" of ``benchmarks/README.md`` (``--budget tiny`` writes no README).
Work folders (campaigns, trials, ensembles, models) go to ``runs/bench_search_vs_baselines/<budget>/``.
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
from typing import Any

import yaml

from arborseg.runs import ENSEMBLE_FILE, MEMBERS_DIR, TRIALS_DIR, RunFolder, TrialFolder, ensemble_dir

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
ARMS = ("baseline_A", "baseline_B", "arborseg_best", "arborseg_ensemble")
ARM_LABELS = {"baseline_A": "A: thin 3D U-Net (paper)", "baseline_B": "B: 2D U-Net (nnU-Net-style)",
              "arborseg_best": "arborseg best tree, retrained", "arborseg_ensemble": "arborseg ensemble"}
REPORT_REGIONS = ("eval_near", "eval_far")
ENSEMBLE_NAME = "bench"

# T: total train steps per arm and seed. batch: batch size of every network in every arm (the trees carry no
# batch size, so this is the only one). cap: searched trees may cost at most as much per window (forward
# GFLOPs) as the costlier baseline, so that equal steps are not unequal compute (the campaign's max_gflops).
# campaign: the campaign's budget block. top/ens_seeds: ensemble size. crop: validation and eval regions cut
# to a centred crop of this many xy pixels (None: whole regions as in examples/*.yaml); training always draws
# windows from the whole training region.
BUDGETS: dict[str, dict[str, Any]] = {
    "tiny": {"total_steps": 16, "batch": 4, "cap": True,
             "campaign": {"random_trees": 2, "refine_top": 1, "refine_trials": 1, "steps": 4, "eval_every": 2},
             "pruner": {"name": "none"}, "top": 2, "ens_seeds": 2, "crop": {"vnc": 128, "isbi": 128},
             "baseline_windows": {"baseline_A": [3, 64, 64]},
             "local": {"slots": 2, "threads_per_job": 1, "campaign_workers": 2, "timeout_min": 60}},
    # the CPU size (~45 min on 2 idle cores). cpu150 below took about 2 hours there, most of it in searched
    # trees whose windows (up to 5 x 128 x 128) cost 2-16x a baseline step: now the cap, batch 2 for every
    # arm and a smaller VNC eval crop; the steps and their split between search and training are unchanged
    "cpu": {"total_steps": 150, "batch": 2, "cap": True,
            "campaign": {"random_trees": 4, "refine_top": 1, "refine_trials": 1, "steps": 15, "eval_every": 5},
            "pruner": {"name": "median", "n_startup_trials": 2, "n_warmup_steps": 5}, "top": 2, "ens_seeds": 2,
            "crop": {"vnc": 256, "isbi": 256}, "baseline_windows": {"baseline_A": [3, 64, 64]},
            "local": {"slots": 2, "threads_per_job": 1, "campaign_workers": 2, "timeout_min": 240}},
    # the first CPU size (run 2026-11-23 as "cpu": 44 of 45 pieces, about 2 hours on 2 cores)
    "cpu150": {"total_steps": 150, "batch": 4, "cap": False,
               "campaign": {"random_trees": 4, "refine_top": 1, "refine_trials": 1, "steps": 15, "eval_every": 5},
               "pruner": {"name": "median", "n_startup_trials": 2, "n_warmup_steps": 5}, "top": 2, "ens_seeds": 2,
               "crop": {"vnc": 384, "isbi": 256}, "baseline_windows": {"baseline_A": [3, 64, 64]},
               "local": {"slots": 2, "threads_per_job": 1, "campaign_workers": 2, "timeout_min": 240}},
    "gpu": {"total_steps": 20000, "batch": 4, "cap": True,
            "campaign": {"random_trees": 16, "refine_top": 2, "refine_trials": 4, "steps": 400, "eval_every": 100},
            "pruner": {"name": "median", "n_startup_trials": 4, "n_warmup_steps": 100}, "top": 3, "ens_seeds": 2,
            "crop": None,
            # one GPU: two jobs share it (these nets are small), 8 CPU threads each for augmentation and metrics
            "local": {"slots": 2, "threads_per_job": 8, "campaign_workers": 2, "timeout_min": 24 * 60,
                      "gpus_per_node": 1}},
}


# ---------------------------------------------------------------------------------------------- budget
def campaign_trials(b: dict) -> int:
    c = b["campaign"]
    return c["random_trees"] + c["refine_top"] * c["refine_trials"]


def plan(b: dict) -> dict[str, int]:
    """The planned steps of every piece for one dataset and seed."""
    T = b["total_steps"]
    campaign = campaign_trials(b) * b["campaign"]["steps"]
    rest = T - campaign
    if rest < b["top"] * b["ens_seeds"]:
        raise SystemExit(f"budget: the campaign ({campaign} steps) leaves {rest} of {T} steps: too few to retrain")
    return {"total": T, "baseline": T, "campaign": campaign, "best_retrain": rest,
            "ensemble_member": rest // (b["top"] * b["ens_seeds"]), "ensemble_members": b["top"] * b["ens_seeds"]}


# ---------------------------------------------------------------------------------------------- files
def union_space(paths: tuple[str, ...]) -> dict:
    """One search space whose root chooses (structurally) between the roots of ``paths``.

    Each space's ``defaults`` move onto its own branch (inherited values apply below the node that sets
    them); window and training distributions must agree (they do for hybrid_2d3d and thin3d_unet)."""
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
    path = out / "data" / f"{ds}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(raw, sort_keys=False)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    load_data_config(path)  # validate now
    return path


def baseline_gflops(budget: dict, n_classes: int) -> dict[str, float]:
    """Forward GFLOPs of each baseline over one window (the window the budget trains it with)."""
    from arborseg.nn import forward_gflops
    from arborseg.tree import ModuleTree

    out = {}
    for arm, path in BASELINES.items():
        window = (budget.get("baseline_windows") or {}).get(arm)
        out[arm] = round(forward_gflops(ModuleTree.load(ROOT / path), n_classes, window and tuple(window)), 3)
    return out


def campaign_yaml(ds: str, seed: int, budget: dict, data: Path, space: Path, executor: dict, out: Path,
                  max_gflops: float | None) -> Path:
    camp = {"name": f"{ds}_s{seed}", "description": f"bench_search_vs_baselines {ds} seed {seed}",
            "data": str(data), "space": str(space), "budget": {**budget["campaign"], "max_gflops": max_gflops},
            "objective": {"metric": "fg_iou"}, "sampler": {"name": "tpe", "seed": seed}, "pruner": budget["pruner"],
            "executor": executor, "storage": "journal" if executor["kind"] == "slurm" else "sqlite",
            "train": {"seed": seed, "overlays": False, "overrides": {"batch_size": budget["batch"]}},
            "seed": seed}
    path = out / "campaigns" / f"{ds}_s{seed}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(camp, sort_keys=False)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


# ---------------------------------------------------------------------------------------------- jobs
def _checkpointable():
    from arborseg.jobs.checkpointable import CheckpointableJob

    return CheckpointableJob


@dataclass
class TrainPiece(_checkpointable()):
    """One network trained and scored (a submitit job; requeued after preemption or timeout, it resumes
    from its checkpoint: arborseg's CheckpointableJob, as campaign trials)."""

    tree_file: str
    data_file: str
    settings: dict
    out_dir: str
    window: list | None = None  # train/predict this tree with another window (same modules and values)

    def run(self) -> dict:
        from arborseg.data import load_data_config
        from arborseg.train.settings import TrainSettings
        from arborseg.train.trainer import train_and_score
        from arborseg.tree import ModuleTree

        tree = ModuleTree.load(self.tree_file)
        if self.window:
            tree = tree.with_window(tuple(self.window))
        result = train_and_score(tree, load_data_config(self.data_file),
                                 TrainSettings.from_dict(self.settings), self.out_dir, progress=False)
        return {"steps": result["steps"], "train_seconds": result["train_seconds"]}


def train_settings(steps: int, seed: int, batch: int, eval_every: int | None = None) -> dict:
    return {"steps": steps, "eval_every": eval_every or steps, "seed": seed, "objective": "fg_iou",
            "fn_mode": "2d", "overlays": False, "overrides": {"batch_size": batch}}


@dataclass
class Piece:
    key: str
    kind: str  # "job" | "cmd" | "func"
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
                elif p.kind == "cmd":
                    rc = p.handle.poll()
                    if rc is not None:
                        finished, ok, reason = True, rc == 0 and p.done(), f"exit {rc}; log {p.log}"
                else:  # func: already ran in start()
                    finished, ok, reason = True, bool(p.handle) and p.done(), str(p.handle)
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


# ---------------------------------------------------------------------------------------------- collect
def best_tree(run_dir: Path) -> Path:
    """tree.yaml of the campaign's best COMPLETE trial by its validation objective."""
    from arborseg.table import read_run, run_table

    camp = read_run(run_dir)
    table = run_table([], campaigns=[camp])
    done = table[(table["state"] == "COMPLETE") & table["value"].notna()]
    if done.empty:
        raise RuntimeError(f"{run_dir}: no COMPLETE trial")
    direction = RunFolder.open(run_dir).manifest["direction"]
    done = done.sort_values(["value", "trial_id"], ascending=[direction != "maximize", True])
    return TrialFolder(str(done.iloc[0]["artifact_dir"])).tree_path


def trial_steps(folder: Path) -> int:
    """Steps a trial (or member) folder trained: from metrics.json, else its last checkpoint (pruned)."""
    trial = TrialFolder(folder)
    if trial.metrics_path.is_file():
        return int(json.loads(trial.metrics_path.read_text()).get("steps", 0))
    if trial.checkpoint_path.is_file():
        import torch

        return int(torch.load(trial.checkpoint_path, map_location="cpu", weights_only=False)["step"])
    return 0


def trial_seconds(folder: Path) -> float:
    metrics = TrialFolder(folder).metrics_path
    if metrics.is_file():
        return float(json.loads(metrics.read_text()).get("train_seconds", 0.0))
    return float("nan")


def voxels_per_step(tree_file: Path, batch: int) -> int:
    from arborseg.tree import ModuleTree

    return batch * math.prod(ModuleTree.load(tree_file).window)


def campaign_usage(run_dir: Path, batch: int) -> dict[str, Any]:
    root = run_dir / TRIALS_DIR
    trials = [TrialFolder(t) for t in sorted(root.glob("*"))] if root.is_dir() else []
    steps = [trial_steps(t.path) for t in trials]
    secs = [trial_seconds(t.path) for t in trials]
    vox = sum(s * voxels_per_step(t.tree_path, batch) for s, t in zip(steps, trials) if t.tree_path.is_file())
    return {"steps": sum(steps), "trials": len(trials), "complete": sum(t.metrics_path.is_file() for t in trials),
            "train_seconds": round(sum(s for s in secs if not math.isnan(s)), 1), "voxels": vox}


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


def collect(work: Path, datasets: list[str], seeds: list[int], b: dict) -> tuple[list[dict], list[dict]]:
    """(score rows, accounting rows) from every finished piece."""
    from arborseg.data import load_data_config
    from arborseg.nn import forward_gflops
    from arborseg.tree import ModuleTree

    rows, acct = [], []
    p = plan(b)
    for ds in datasets:
        n_classes = len(load_data_config(work / "data" / f"{ds}.yaml").classes)
        for seed in seeds:
            cell = work / ds / f"s{seed}"
            run_dir = cell / "runs" / f"{ds}_s{seed}"
            camp = campaign_usage(run_dir, b["batch"]) if (cell / "campaign.done").exists() else None
            for arm in ARMS:
                base = {"dataset": ds, "seed": seed, "arm": arm}
                info: dict[str, Any] = {**base, "planned_steps": None, "steps_used": None, "train_seconds": None}
                scores = None
                if arm.startswith("baseline") or arm == "arborseg_best":
                    folder = TrialFolder(cell / ("best" if arm == "arborseg_best" else arm))
                    if not folder.metrics_path.is_file() or (arm == "arborseg_best" and camp is None):
                        continue
                    m = json.loads(folder.metrics_path.read_text())
                    scores = m["regions"]
                    tree = ModuleTree.load(folder.tree_path)
                    own = int(m["steps"])
                    vox = own * voxels_per_step(folder.tree_path, b["batch"])
                    info.update(tree=tree.name, family=tree.family, params=m["params"], window=m["window"],
                                gflops_per_window=round(forward_gflops(tree, n_classes), 2),
                                train_seconds=m["train_seconds"], own_steps=own)
                    if arm == "arborseg_best":
                        info.update(planned_steps=p["campaign"] + p["best_retrain"], steps_used=camp["steps"] + own,
                                    campaign_steps=camp["steps"], campaign_trials=camp["trials"],
                                    train_seconds=round(camp["train_seconds"] + m["train_seconds"], 1),
                                    voxels=camp["voxels"] + vox)
                    else:
                        info.update(planned_steps=p["baseline"], steps_used=own, voxels=vox)
                else:
                    ens_dir = ensemble_dir(run_dir, ENSEMBLE_NAME)
                    if camp is None or not (ens_dir / ENSEMBLE_FILE).is_file():
                        continue
                    man = json.loads((ens_dir / ENSEMBLE_FILE).read_text())
                    scores = man.get("scores") or {}
                    new_steps, new_secs, new_vox, reused = 0, 0.0, 0, 0
                    for member in sorted((ens_dir / MEMBERS_DIR).glob("*")):
                        state = {}
                        if (member / "state.json").is_file():
                            state = json.loads((member / "state.json").read_text())
                        if state.get("reused_from"):
                            reused += 1
                            continue
                        s = trial_steps(member)
                        new_steps += s
                        sec = trial_seconds(member)
                        new_secs += 0.0 if math.isnan(sec) else sec
                        if TrialFolder(member).tree_path.is_file():
                            new_vox += s * voxels_per_step(TrialFolder(member).tree_path, b["batch"])
                    selected = man.get("members") or []
                    info.update(tree=" + ".join(f"{m.get('tree_name')}/s{m.get('seed')}" for m in selected),
                                family=",".join(sorted({str(m.get('family')) for m in selected})),
                                params=sum(int(m.get("params") or 0) for m in selected),
                                planned_steps=p["campaign"] + p["ensemble_member"] * p["ensemble_members"],
                                steps_used=camp["steps"] + new_steps, campaign_steps=camp["steps"],
                                campaign_trials=camp["trials"], own_steps=new_steps, reused_members=reused,
                                members_selected=len(selected), fusion=man.get("fusion"),
                                train_seconds=round(camp["train_seconds"] + new_secs, 1),
                                voxels=camp["voxels"] + new_vox)
                rows += metric_rows({r: scores[r] for r in scores if r in ("validation",) + REPORT_REGIONS}, base)
                acct.append(info)
    return rows, acct


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


# ---------------------------------------------------------------------------------------------- outputs
def plot(summary: list[dict], rows: list[dict], datasets: list[str], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    metrics = (("miou", "mIoU (higher is better)"), ("fn_401", "FN-401, % of voxels (lower is better)"),
               ("fp_401", "FP-401, % of voxels (lower is better)"))
    fig, axes = plt.subplots(len(metrics), len(datasets), figsize=(4.2 * len(datasets), 3.2 * len(metrics)),
                             squeeze=False)
    colors = {"baseline_A": "#8c8c8c", "baseline_B": "#4c72b0", "arborseg_best": "#dd8452",
              "arborseg_ensemble": "#c44e52"}
    index = {(s["dataset"], s["arm"], s["region"], s["metric"]): s for s in summary}
    width = 0.8 / len(ARMS)
    for i, (metric, label) in enumerate(metrics):
        for j, ds in enumerate(datasets):
            ax = axes[i][j]
            for k, arm in enumerate(ARMS):
                xs = np.arange(len(REPORT_REGIONS)) + (k - (len(ARMS) - 1) / 2) * width
                means = [index.get((ds, arm, r, metric), {}).get("mean", np.nan) for r in REPORT_REGIONS]
                stds = [index.get((ds, arm, r, metric), {}).get("std", np.nan) for r in REPORT_REGIONS]
                ax.bar(xs, means, width, yerr=np.nan_to_num(stds), color=colors[arm], capsize=2,
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
    fig.legend(loc="lower center", ncol=min(len(ARMS), 2 * len(datasets)), fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.04 if len(datasets) > 1 else 0.07, 1, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _or(value: Any, default: str = "?") -> Any:
    return default if value is None else value


def fmt(s: dict | None, digits: int = 3) -> str:
    if not s or s["n"] == 0 or math.isnan(s["mean"]):
        return "-"
    spread = "" if math.isnan(s["std"]) else f" ± {s['std']:.{digits}f}"
    return f"{s['mean']:.{digits}f}{spread}"


def verdict(summary: list[dict], datasets: list[str]) -> list[str]:
    """Per dataset and eval region: the best arm by mean mIoU and by mean FN-401, and whether the gap to the
    best baseline exceeds the larger of the two seed standard deviations."""
    index = {(s["dataset"], s["arm"], s["region"], s["metric"]): s for s in summary}
    lines = []
    for ds in datasets:
        for region in REPORT_REGIONS:
            parts = []
            for metric, better in (("miou", max), ("fn_401", min)):
                cand = {arm: index.get((ds, arm, region, metric)) for arm in ARMS}
                cand = {a: s for a, s in cand.items() if s and s["n"] and not math.isnan(s["mean"])}
                if len(cand) < 2:
                    continue
                base = {a: s for a, s in cand.items() if a.startswith("baseline")}
                ours = {a: s for a, s in cand.items() if a.startswith("arborseg")}
                if not base or not ours:
                    continue
                bb = better(base, key=lambda a: base[a]["mean"])
                bo = better(ours, key=lambda a: ours[a]["mean"])
                gap = ours[bo]["mean"] - base[bb]["mean"]
                noise = max(0.0 if math.isnan(x) else x for x in (ours[bo]["std"], base[bb]["std"]))
                wins = gap > 0 if metric == "miou" else gap < 0
                word = "arborseg" if wins else ("tie" if gap == 0 else "baseline")
                n = min(ours[bo]["n"], base[bb]["n"])
                clear = ("one seed only" if n < 2 else "clear" if abs(gap) > noise else "within seed spread")
                parts.append(f"{metric}: {word} ({ARM_LABELS[bo] if wins else ARM_LABELS[bb]}), "
                             f"{ours[bo]['mean']:.3f} vs {base[bb]['mean']:.3f}, {clear}")
            if parts:
                lines.append(f"- {ds} {region}: " + "; ".join(parts))
    return lines


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


def write_readme(result: dict, summary: list[dict], acct: list[dict], datasets: list[str], png: Path,
                 csv: Path) -> None:
    b, p = result["budget"], result["plan"]
    index = {(s["dataset"], s["arm"], s["region"], s["metric"]): s for s in summary}
    BEGIN, END = markers(result["budget_name"])
    L = [BEGIN, "", f"Command: `{result['command']}`", ""]
    runs = result["invocations"]
    m0 = runs[0]["machine"]
    L.append(f"Machine: {m0['cpu'] or 'unknown CPU'}, {m0['cpus']} CPUs, GPU: {m0['gpu'] or 'none'}, torch "
             f"{m0['torch']}, Python {m0['python']}. " + "Invocations (this command, resumed): " + "; ".join(
                 f"{r['started']} load {r['machine']['load_avg'][0]}→{r.get('load_end', '?')}, "
                 f"wall {r.get('wall_min', '?')} min, CPU {_or(r.get('cpu_min'))} min"
                 + (f" ({r['note']})" if r.get("note") else "") for r in runs) + ".")
    L.append(f"Finished pieces: {result['finished']} of {result['pieces']}"
             + (f"; not finished: {', '.join(result['unfinished'][:12])}"
                + (" ..." if len(result['unfinished']) > 12 else "") if result["unfinished"] else "") + ".")
    L += ["", f"Budget `{result['budget_name']}`, per dataset and seed (seeds {result['seeds']}): T = "
          f"{p['total']} train steps per arm, batch {b['batch']} for every network.", "",
          "| arm | what trains | planned steps |", "| --- | --- | --- |",
          f"| A, B | the fixed tree, one run | {p['baseline']} |",
          f"| arborseg best | campaign ({campaign_trials(b)} trials x {b['campaign']['steps']} steps: "
          f"{b['campaign']['random_trees']} random trees, then {b['campaign']['refine_top']} x "
          f"{b['campaign']['refine_trials']} Optuna refinements; pruned trials stop early) + the best tree "
          f"retrained from scratch | {p['campaign']} + {p['best_retrain']} = {p['campaign'] + p['best_retrain']} |",
          f"| arborseg ensemble | the same campaign + `arborseg ensemble --top {b['top']} --seeds "
          f"{b['ens_seeds']} --steps {p['ensemble_member']}` ({p['ensemble_members']} members; members that "
          f"are campaign trials are reused) | {p['campaign']} + {p['ensemble_members']} x {p['ensemble_member']}"
          f" = {p['campaign'] + p['ensemble_member'] * p['ensemble_members']} |", ""]
    caps = result.get("max_gflops") or {}
    costs = result.get("baseline_gflops") or {}
    if costs:
        L.append("Forward GFLOPs per window: " + "; ".join(
            f"{ds}: " + ", ".join(f"{arm.replace('baseline_', '')} {g:.1f}" for arm, g in c.items())
            for ds, c in costs.items()) + (". Searched trees are capped at the costlier baseline (the campaign's "
                                           "`budget.max_gflops`), so that an arborseg step costs at most a "
                                           "baseline step." if any(v is not None for v in caps.values())
                                           else ". No cap on the searched trees."))
        L.append("")
    crop = b.get("crop")
    L.append("Regions: those of `examples/vnc_mito.yaml`, `examples/vnc_5class.yaml`, "
             "`examples/isbi2012_membrane.yaml`" + (f"; validation and eval regions cut to a centred "
                                                    f"{crop['vnc']} x {crop['vnc']} (VNC) / {crop['isbi']} x "
                                                    f"{crop['isbi']} (ISBI) xy crop to fit the CPU budget "
                                                    "(training sees the whole training region)" if crop else "")
             + ". Scores: `arborseg.metrics.score_segmentation` (FN-401/FP-401: % of region voxels in error "
             "components of >= 401 voxels per slice, mean over the non-background classes). Mean ± std over "
             "seeds (n in the CSV).")
    for ds in datasets:
        L += ["", f"**{ds}**", "", "| arm | region | mIoU | FN-401 | FP-401 | " + " | ".join(
            f"IoU {c}" for c in result["classes"][ds]) + " | steps used (mean) | train s (mean) |",
            "| --- | --- | --- | --- | --- | " + " | ".join("---" for _ in result["classes"][ds]) + " | --- | --- |"]
        for arm in ARMS:
            a_rows = [a for a in acct if a["dataset"] == ds and a["arm"] == arm]
            steps = f"{sum(a['steps_used'] for a in a_rows) / len(a_rows):.0f}" if a_rows else "-"
            secs = f"{sum(a['train_seconds'] for a in a_rows) / len(a_rows):.0f}" if a_rows else "-"
            for region in REPORT_REGIONS:
                cells = [fmt(index.get((ds, arm, region, "miou"))), fmt(index.get((ds, arm, region, "fn_401")), 2),
                         fmt(index.get((ds, arm, region, "fp_401")), 2)]
                cells += [fmt(index.get((ds, arm, region, f"iou/{c}"))) for c in result["classes"][ds]]
                L.append(f"| {ARM_LABELS[arm]} | {region.replace('eval_', 'eval-')} | " + " | ".join(cells)
                         + f" | {steps} | {secs} |")
    L += ["", f"![search vs baselines]({png.relative_to(HERE)})", "",
          f"All numbers: `{csv.relative_to(HERE)}` (one row per dataset, seed, arm, region, metric), "
          f"`{csv.with_name(csv.stem + '_summary.csv').relative_to(HERE)}`, "
          f"`{csv.with_suffix('.json').relative_to(HERE)}` (with the accounting of every arm and seed: steps "
          "used, train seconds, voxels seen, trees).", "", "Who wins (generated: the better arborseg arm vs the "
          "better baseline by mean; \"clear\" when the gap exceeds the larger seed std):", ""]
    L += verdict(summary, datasets) or ["- (not enough finished results yet)"]
    L += ["", END]
    text = README.read_text() if README.exists() else "# Benchmarks\n"
    block = "\n".join(L)
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    elif SECTION in text:  # a new budget: its block goes at the end of the section
        start = text.index(SECTION)
        end = text.find("\n## ", start + len(SECTION))
        end = len(text) if end < 0 else end + 1
        text = text[:end].rstrip() + "\n\n" + block + "\n\n" + text[end:]
    else:
        text = text.rstrip() + f"\n\n{SECTION}\n\n{block}\n"
    README.write_text(text)


# ---------------------------------------------------------------------------------------------- main
def ensemble_available() -> tuple[bool, str]:
    out = subprocess.run([sys.executable, "-m", "arborseg.cli", "ensemble", "--help"], capture_output=True, text=True)
    return out.returncode == 0, out.stdout


def parse_option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise SystemExit(f"--executor-option {text!r}: write KEY=VALUE")
    return key, yaml.safe_load(value)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", choices=sorted(BUDGETS), default="cpu")
    ap.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    ap.add_argument("--executor", choices=("local", "slurm", "debug"), default="local")
    ap.add_argument("--executor-option", action="append", default=[], metavar="KEY=VALUE",
                    help="extra executor option for every job (e.g. partition=gpu, gpus_per_node=1)")
    ap.add_argument("--slots", type=int, help="pieces/CPU slots in flight (default: the budget's; slurm: 64)")
    ap.add_argument("--work-dir", help="default runs/bench_search_vs_baselines/<budget>")
    ap.add_argument("--no-readme", action="store_true", help="do not write the README section")
    ap.add_argument("--collect-only", action="store_true", help="only gather finished results and write outputs")
    args = ap.parse_args(argv)

    started = time.time()
    b = BUDGETS[args.budget]
    p = plan(b)
    seeds = list(range(args.seeds))
    work = Path(args.work_dir or ROOT / "runs" / "bench_search_vs_baselines" / args.budget).resolve()
    work.mkdir(parents=True, exist_ok=True)
    local = b["local"]
    extra = dict(parse_option(o) for o in args.executor_option)
    env = {"PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    if args.executor == "slurm":
        job_opts = {"timeout_min": 240, "env": env, **extra}
        camp_exec = {"kind": "slurm", "workers": 8, "timeout_min": 240, **extra}
        slots = args.slots or 64
        weights = {"job": 1, "cmd": 1}
    else:
        job_opts = {"timeout_min": local["timeout_min"], "threads_per_job": local["threads_per_job"], "env": env,
                    **({"gpus_per_node": local["gpus_per_node"]} if "gpus_per_node" in local else {}), **extra}
        camp_exec = {"kind": args.executor, "workers": local["campaign_workers"], "timeout_min": local["timeout_min"],
                     **({"gpus_per_node": local["gpus_per_node"]} if "gpus_per_node" in local else {}),
                     **{k: v for k, v in extra.items() if k != "env"}}
        slots = args.slots or local["slots"]
        weights = {"job": 1, "cmd": min(slots, local["campaign_workers"])}  # a campaign/ensemble runs that many jobs
    print(f"budget {args.budget}: {p}; work dir {work}", flush=True)

    space = work / "space_hybrid_or_thin3d.yaml"
    space_text = yaml.safe_dump(union_space(SPACES), sort_keys=False)
    if not space.exists() or space.read_text() != space_text:
        space.write_text(space_text)
    from arborseg.space import load_space

    load_space(space)
    data = {ds: data_yaml(ds, b, work) for ds in args.datasets}

    from arborseg.data import load_data_config

    classes = {ds: list(load_data_config(data[ds]).classes) for ds in args.datasets}
    costs = {ds: baseline_gflops(b, len(classes[ds])) for ds in args.datasets}
    caps = {ds: max(costs[ds].values()) if b.get("cap") else None for ds in args.datasets}
    print("forward GFLOPs per window: " + "; ".join(f"{ds} {c}" for ds, c in costs.items())
          + ("; searched trees capped at the costlier baseline" if b.get("cap") else "; no cap"), flush=True)
    have_ensemble, ens_help = ensemble_available()
    pieces: list[Piece] = []
    if not args.collect_only:
        from arborseg.jobs.executors import make_executor

        executor = make_executor(args.executor, work / "jobs", job_opts)

        def job_piece(key, tree_file, data_file, settings, out_dir, deps=(), window=None):
            out_dir = Path(out_dir)

            def start():
                tf = tree_file() if callable(tree_file) else tree_file
                return executor.submit(TrainPiece(str(tf), str(data_file), settings, str(out_dir), window))
            return Piece(key, "job", weights["job"], tuple(deps), lambda: TrialFolder(out_dir).metrics_path.is_file(),
                         start)

        def cmd_piece(key, cmd, log, done, deps=()):
            def start():
                log.parent.mkdir(parents=True, exist_ok=True)
                with open(log, "a") as fh:
                    fh.write(f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(map(str, cmd))}\n")
                    fh.flush()
                    return subprocess.Popen([str(c) for c in cmd], stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
            return Piece(key, "cmd", weights["cmd"], tuple(deps), done, start, log)

        for ds in args.datasets:
            for seed in seeds:
                cell = work / ds / f"s{seed}"
                cell.mkdir(parents=True, exist_ok=True)
                for arm, tree in BASELINES.items():
                    pieces.append(job_piece(f"{ds}/s{seed}/{arm}", ROOT / tree, data[ds],
                                            train_settings(p["baseline"], seed, b["batch"]), cell / arm,
                                            window=(b.get("baseline_windows") or {}).get(arm)))
                camp = campaign_yaml(ds, seed, b, data[ds], space, camp_exec, cell, caps[ds])
                run_dir = cell / "runs" / f"{ds}_s{seed}"
                marker = cell / "campaign.done"

                def camp_done(run_dir=run_dir, marker=marker):
                    return marker.exists()

                ckey = f"{ds}/s{seed}/campaign"
                pc = cmd_piece(ckey, [sys.executable, "-m", "arborseg.cli", "-q", "search", camp, "--runs-dir",
                                      cell / "runs", "--top", "20"], cell / "campaign.log", camp_done)
                inner_start = pc.start

                def start_campaign(inner_start=inner_start, marker=marker):
                    proc = inner_start()
                    return _MarkOnSuccess(proc, marker)
                pc.start = start_campaign
                pc.done = lambda marker=marker: marker.exists()
                pieces.append(pc)
                pieces.append(job_piece(f"{ds}/s{seed}/best", lambda run_dir=run_dir: best_tree(run_dir), data[ds],
                                        train_settings(p["best_retrain"], seed, b["batch"]), cell / "best", deps=(ckey,)))
                ens_json = ensemble_dir(run_dir, ENSEMBLE_NAME) / ENSEMBLE_FILE
                if have_ensemble:
                    cmd = [sys.executable, "-m", "arborseg.cli", "-q", "ensemble", run_dir, "--top", b["top"],
                           "--seeds", b["ens_seeds"], "--name", ENSEMBLE_NAME, "--steps", p["ensemble_member"]]
                    if "--executor" in ens_help:
                        cmd += ["--executor", args.executor]
                    if "--train" in ens_help:  # the arm trains its members (post hoc is the default now)
                        cmd += ["--train"]
                    pieces.append(cmd_piece(f"{ds}/s{seed}/ensemble", cmd, cell / "ensemble.log",
                                            lambda ens_json=ens_json: ens_json.is_file(), deps=(ckey,)))
        if not have_ensemble:
            print("`arborseg ensemble` is not available yet: ensemble pieces are left for a later run "
                  "(rerun this command to add them)", flush=True)
        log_invocation(work, started, argv)
        status = Runner(slots, work / "piece_times.json", lambda: log_invocation(work, started, argv)).run(pieces)
        finished = sum(s == "done" for s in status.values())
        unfinished = [k for k, s in status.items() if s != "done"]
        if not have_ensemble:
            unfinished += [f"{ds}/s{seed}/ensemble" for ds in args.datasets for seed in seeds]
        total = len(pieces) + (0 if have_ensemble else len(args.datasets) * len(seeds))
    else:
        finished = total = 0
        unfinished = []

    # ------------------------------------------------------------------ outputs
    rows, acct = collect(work, args.datasets, seeds, b)
    summary = summarise(rows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"search_vs_baselines_{args.budget}"
    import csv as csvmod

    def write_csv(path: Path, records: list[dict]) -> None:
        keys: list[str] = []
        for r in records:
            keys += [k for k in r if k not in keys]
        with open(path, "w", newline="") as fh:
            w = csvmod.DictWriter(fh, fieldnames=keys)
            w.writeheader()
            w.writerows(records)

    write_csv(stem.with_suffix(".csv"), rows)
    write_csv(stem.with_name(stem.name + "_summary.csv"), summary)
    write_csv(stem.with_name(stem.name + "_accounting.csv"), acct)
    mach = machine()
    if not args.collect_only:
        log_invocation(work, started, argv)
    invocations = json.loads((work / "invocations.json").read_text()) if (work / "invocations.json").exists() else []
    if args.collect_only:  # what is finished, from the files every piece leaves when it is done
        unfinished = []
        for ds in args.datasets:
            for seed in seeds:
                cell, run_dir = work / ds / f"s{seed}", work / ds / f"s{seed}" / "runs" / f"{ds}_s{seed}"
                checks = {**{arm: cell / arm / "metrics.json" for arm in BASELINES},
                          "campaign": cell / "campaign.done", "best": cell / "best" / "metrics.json",
                          "ensemble": run_dir / "ensembles" / ENSEMBLE_NAME / "ensemble.json"}
                unfinished += [f"{ds}/s{seed}/{k}" for k, f in checks.items() if not f.exists()]
        total = len(args.datasets) * len(seeds) * (len(BASELINES) + 3)
        finished = total - len(unfinished)
    command = "python benchmarks/bench_search_vs_baselines.py --budget " + args.budget + (
        f" --seeds {args.seeds}" if args.seeds != 3 else "") + (
        f" --datasets {' '.join(args.datasets)}" if args.datasets != list(DATASETS) else "") + (
        f" --executor {args.executor}" if args.executor != "local" else "")
    result = {"budget_name": args.budget, "work_dir": str(work), "budget": b, "plan": p, "seeds": seeds,
              "datasets": args.datasets,
              "command": command, "invocations": invocations or [{"started": "?", "machine": mach}],
              "finished": finished, "pieces": total, "unfinished": unfinished,
              "classes": classes,
              "accounting": acct, "summary": summary, "rows": rows,
              "baselines": {k: str(v) for k, v in BASELINES.items()}, "spaces": list(SPACES),
              "baseline_gflops": costs, "max_gflops": caps}
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str))
    png = plot(summary, rows, args.datasets, stem.with_suffix(".png"),
               f"search vs fixed baselines, budget {args.budget}: T = {p['total']} steps per arm and seed, batch "
               f"{b['batch']}" + (", searched trees at most the costlier baseline's GFLOPs" if b.get("cap") else ""))
    if not args.no_readme and args.budget != "tiny":
        write_readme(result, summary, acct, args.datasets, png, stem.with_suffix(".csv"))
    print(f"\nwrote {stem.with_suffix('.csv')}, _summary.csv, _accounting.csv, .json, .png"
          + ("" if args.no_readme or args.budget == "tiny" else f" and the README section in {README}"))
    index = {(s["dataset"], s["arm"], s["region"], s["metric"]): s for s in summary}
    print(f"\n{'dataset':11s} {'arm':32s} {'region':9s} {'mIoU':>15s} {'FN-401':>13s} {'FP-401':>13s}")
    for ds in args.datasets:
        for arm in ARMS:
            for region in REPORT_REGIONS:
                if (ds, arm, region, "miou") in index:
                    print(f"{ds:11s} {ARM_LABELS[arm]:32s} {region:9s} {fmt(index[(ds, arm, region, 'miou')]):>15s} "
                          f"{fmt(index.get((ds, arm, region, 'fn_401')), 2):>13s} "
                          f"{fmt(index.get((ds, arm, region, 'fp_401')), 2):>13s}")
    for line in verdict(summary, args.datasets):
        print(line)
    return 0 if not unfinished else 1


def log_invocation(work: Path, started: float, argv: list[str] | None) -> None:
    """Add or update this invocation in WORK/invocations.json (wall and CPU minutes so far, load)."""
    path = work / "invocations.json"
    runs = json.loads(path.read_text()) if path.exists() else []
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started))
    entry = next((r for r in runs if r["started"] == stamp), None)
    if entry is None:
        entry = {"started": stamp, "machine": {**machine(), "load_avg": previous_load},
                 "argv": sys.argv[1:] if argv is None else argv}
        runs.append(entry)
    entry.update({"wall_min": round((time.time() - started) / 60, 1),
                  "cpu_min": round(sum(os.times()[:4]) / 60, 1), "load_end": round(os.getloadavg()[0], 2),
                  "updated": time.strftime("%Y-%m-%d %H:%M:%S")})
    path.write_text(json.dumps(runs, indent=1))


class _MarkOnSuccess:
    """A campaign subprocess; writes the done marker when it exits 0 (all its trials ran)."""

    def __init__(self, proc: subprocess.Popen, marker: Path) -> None:
        self.proc, self.marker = proc, marker

    def poll(self):
        rc = self.proc.poll()
        if rc == 0 and not self.marker.exists():
            self.marker.write_text(time.strftime("%Y-%m-%d %H:%M:%S"))
        return rc


previous_load = [round(x, 2) for x in os.getloadavg()]

if __name__ == "__main__":
    # run as the named module so that the job objects pickle as bench_search_vs_baselines.TrainPiece,
    # importable in the jobs (whose PYTHONPATH holds benchmarks/)
    sys.path.insert(0, str(HERE))
    import bench_search_vs_baselines as _bench

    sys.exit(_bench.main())
