"""Helpers for campaign tests: tiny campaigns on synthetic data, written as real YAML files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import optuna
import yaml

ROOT = Path(__file__).parents[1]

SYNTHETIC = {"synthetic": {"seed": 2, "shape": [6, 64, 64]}, "classes": ["interior", "membrane", "mito"],
             "regions": {"train": {"z": [0, 3]}, "validation": {"z": [3, 4]}, "eval_near": {"z": [4, 5]},
                         "eval_far": {"z": [5, 6]}}}


def write_campaign(tmp: Path, name: str = "tiny", storage: str = "sqlite", executor: dict | None = None,
                   space: str | Path = ROOT / "search_spaces" / "quickstart.yaml", data: Any = None,
                   budget: dict | None = None, **extra: Any) -> Path:
    cfg = {"name": name, "data": data if data is not None else SYNTHETIC, "space": str(space),
           "budget": (budget if budget and "total_steps" in budget  # the rung form: as given
                      else {"random_trees": 2, "refine_top": 1, "refine_trials": 1, "steps": 4, "eval_every": 2,
                            **(budget or {})}),
           "objective": {"metric": "fg_iou"}, "pruner": {"name": "none"},
           "executor": executor or {"kind": "debug"}, "storage": storage, "train": {"seed": 0, "overlays": False},
           **extra}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def trials_of(run_dir: Path) -> list[optuna.trial.FrozenTrial]:
    import json

    from arborseg.campaign.storage import open_storage

    manifest = json.loads((run_dir / "campaign.json").read_text())
    storage = open_storage(manifest["storage_url"])
    out = []
    for summary in optuna.get_all_study_summaries(storage):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        out += study.get_trials(deepcopy=False)
    return out


def kill_driver_when(path: Path, runs: Path, name: str, ready, what: str, timeout_s: float = 300) -> list[str]:
    """Run ``arborseg search path`` as a process, ``kill -9`` it once ``ready(trials)`` is true (polling the
    storage: a marker, not a fixed delay); return the command, to resume with."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import pytest

    cmd = [sys.executable, "-m", "arborseg.cli", "-q", "search", str(path), "--runs-dir", str(runs)]
    driver = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    run_dir = runs / name
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        time.sleep(0.3)
        if (run_dir / "campaign.json").exists() and ready(trials_of(run_dir)):
            break
    else:
        driver.kill()
        pytest.fail(f"the campaign never had {what}")
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait(10)
    return cmd


def check_rung_campaign(run_dir: Path, plan_sizes: tuple[int, ...], rung_steps: tuple[int, ...]) -> None:
    """A finished campaign of rungs: the plan's trials per rung, every step of every trial trained once and in
    order up to the rung it reached, rung values = intermediate values, per-rung probabilities kept, top-rung
    survivors COMPLETE and the others PRUNED with their reason."""
    import json

    import pytest
    from optuna.trial import TrialState

    trials = [t for t in trials_of(run_dir) if t.user_attrs.get("task") and not t.user_attrs.get("stale")]
    assert len(trials) == plan_sizes[0]
    assert len([t for t in trials if t.state == TrialState.COMPLETE]) == plan_sizes[-1]
    for rung, size in enumerate(plan_sizes):
        reached = [t for t in trials if str(rung_steps[rung]) in t.user_attrs.get("rung_values", {})]
        assert len(reached) == size, (rung, len(reached))
    for t in trials:
        assert t.state in (TrialState.COMPLETE, TrialState.PRUNED), t.user_attrs.get("fail_reason")
        folder = Path(t.user_attrs["artifact_dir"])
        steps = rung_steps[t.user_attrs["rung"]]
        history = json.loads((folder / "history.json").read_text())
        assert [h["step"] for h in history if "loss" in h] == list(range(1, steps + 1))
        assert t.user_attrs["steps_trained"] == steps
        for s, value in t.user_attrs["rung_values"].items():
            assert t.intermediate_values[int(s)] == pytest.approx(value)
            assert (folder / "probs" / f"step{s}" / "validation.npz").is_file()
        if t.state == TrialState.PRUNED:
            assert t.user_attrs["stopped_rung"] == t.user_attrs["rung"] < len(rung_steps) - 1
            assert "not promoted past rung" in t.user_attrs["prune_reason"]
        else:
            assert t.value == pytest.approx(t.user_attrs["rung_values"][str(rung_steps[-1])])
    manifest = json.loads((run_dir / "campaign.json").read_text())
    assert manifest["budget"]["rung_steps"] == list(rung_steps) and manifest["budget"]["form"] == "rungs"


def nan_volume(tmp: Path) -> Path:
    """A float volume with NaN in it: training on it gives a NaN loss at the first step."""
    raw = np.random.default_rng(0).random((6, 64, 64), dtype=np.float32)
    raw[:, 10:20, 10:20] = np.nan
    labels = (raw > 0.5).astype(np.uint8)
    np.save(tmp / "nan_raw.npy", raw)
    np.save(tmp / "nan_labels.npy", labels)
    return tmp


def release_requeued(job_id: str, timeout_s: float = 60) -> None:
    """Start a requeued SLURM job now instead of 120 s later (its BeginTime).

    An update sent right after the requeue may be overtaken by the requeue's own BeginTime, so it is
    repeated until the job leaves PENDING (waiting on the job's state, not on a fixed delay).
    """
    import subprocess
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], capture_output=True)
        retry_at = time.monotonic() + 3
        while time.monotonic() < retry_at:
            state = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True,
                                   text=True).stdout.strip()
            if state != "PENDING":
                return
            time.sleep(0.1)
    raise AssertionError(f"requeued job {job_id} did not start within {timeout_s}s")
