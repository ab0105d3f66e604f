"""Shared pieces of the campaign benchmarks (bench_orchestration.py, bench_pruning.py).

Campaigns are written as real YAML files derived from ``examples/quickstart.yaml`` (or a tiny synthetic
volume), run in this process with :class:`arborseg.campaign.driver.Campaign`, and read back from their
Optuna storage and trial folders.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from _readme import cpu_model, update_readme  # noqa: F401 - shared by the benchmarks

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
QUICKSTART = ROOT / "examples" / "quickstart.yaml"
TINY_DATA = {"synthetic": {"seed": 2, "shape": [6, 64, 64]}, "classes": ["interior", "membrane", "mito"],
             "regions": {"train": {"z": [0, 3]}, "validation": {"z": [3, 4]}, "eval_near": {"z": [4, 5]},
                         "eval_far": {"z": [5, 6]}}}


def quickstart_campaign(folder: Path, name: str, budget: dict | None = None, **overrides: Any) -> Path:
    """examples/quickstart.yaml with absolute data/space paths, ``budget`` merged in (or, when it gives the old
    one-rung ``steps`` form, in place of the example's successive-halving budget) and keys replaced."""
    raw = yaml.safe_load(QUICKSTART.read_text())
    raw["data"] = str((QUICKSTART.parent / raw["data"]).resolve())
    raw["space"] = str((QUICKSTART.parent / raw["space"]).resolve())
    raw["name"] = name
    one_rung = budget is not None and "steps" in budget
    raw["budget"] = dict(budget or {}) if one_rung else {**raw["budget"], **(budget or {})}
    raw.update(overrides)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_campaign(path: Path, runs: Path) -> tuple[Path, float]:
    """Run a campaign to the end; (run folder, wall seconds)."""
    import time

    from arborseg.campaign.config import load_campaign
    from arborseg.campaign.driver import Campaign

    t0 = time.perf_counter()
    run_dir = Campaign(load_campaign(path), runs, progress=False).run()
    return run_dir, time.perf_counter() - t0


def trial_records(run_dir: Path) -> list[dict]:
    """One dict per trial in the order the driver asked them: state, value, steps trained, timings."""
    from arborseg.runs import RunFolder, TrialFolder

    out = []
    for _, t in RunFolder.open(run_dir).trials():
        metrics = TrialFolder(t.user_attrs.get("artifact_dir", "")).read_metrics() or {}
        if t.state.name == "COMPLETE":
            steps = int(t.user_attrs.get("steps", metrics.get("steps", 0)))
        else:  # pruned (or failed) at its last reported step
            steps = max(t.intermediate_values, default=0)
        seen = (t.datetime_complete - t.datetime_start).total_seconds() \
            if t.datetime_complete and t.datetime_start else float("nan")
        out.append({"task": t.user_attrs.get("task"), "state": t.state.name, "value": t.value, "steps": steps,
                    "started": t.datetime_start or datetime.max, "driver_seconds": seen,
                    "wall_seconds": metrics.get("wall_seconds"), "train_seconds": metrics.get("train_seconds"),
                    "tree": t.user_attrs.get("tree_name"), "job_id": t.user_attrs.get("job_id")})
    out.sort(key=lambda r: r["started"])
    return out


def slurm_available() -> str | None:
    """None when the SLURM cluster answers (sinfo and sacct), else why not."""
    if shutil.which("sinfo") is None:
        return "sinfo not found (start the cluster with bash .ci/slurm_up.sh)"
    for cmd in (["sinfo", "-h"], ["sacct", "-n", "-X", "-S", "now-1minutes"]):
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError) as exc:
            return f"{cmd[0]} failed: {exc}"
        if res.returncode:
            return f"{cmd[0]} failed: {res.stderr.strip()[:200]}"
    return None


def machine() -> str:
    import torch

    cpu = cpu_model(platform.processor() or "?")
    return (f"{cpu}, {len(os.sched_getaffinity(0))} CPU cores, torch {torch.__version__} (CPU), "
            f"Python {platform.python_version()}")


def load() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())
