"""Campaigns on a real SLURM cluster: array jobs, scancel, preemption with checkpoint, driver kill -9 + resume.

Every test needs the one-node cluster that ``bash .ci/slurm_up.sh`` starts (``slurm_cluster`` fixture:
skips with the reason when ``sinfo``/``sacct`` do not answer). Trials are tiny (6 x 64 x 64 synthetic
volume, tens of steps); waits are bounded by generous deadlines that only turn a hang into a failure.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from campaign_helpers import ROOT, check_rung_campaign, release_requeued, trials_of, write_campaign
from optuna.trial import TrialState

from arborseg.campaign.config import load_campaign
from arborseg.campaign.driver import Campaign
from arborseg.campaign.worker_trial import trial_id
from arborseg.table import run_table

pytestmark = pytest.mark.slurm

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
DEADLINE_S = 240  # a hang becomes a failure after this long; normal runs take a fraction of it


def slurm_executor(**extra) -> dict:
    return {"kind": "slurm", "partition": "debug", "timeout_min": 5, "cpus_per_task": 1, "mem_gb": 2,
            "workers": 3, **extra}


def slurm_campaign(tmp: Path, name: str, budget: dict, executor: dict | None = None, storage: str = "journal",
                   **extra) -> Path:
    return write_campaign(tmp, name=name, storage=storage, executor=executor or slurm_executor(), budget=budget,
                          **extra)


class DriverThread(threading.Thread):
    """Campaign.run() in a thread, so that the test can act on its jobs meanwhile."""

    def __init__(self, path: Path, runs: Path) -> None:
        super().__init__(daemon=True)
        self.campaign = Campaign(load_campaign(path), runs, progress=False)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.campaign.run()
        except BaseException as exc:
            self.error = exc

    def finish(self, timeout_s: float = DEADLINE_S) -> Path:
        self.join(timeout_s)
        assert not self.is_alive(), f"the campaign did not finish within {timeout_s}s"
        if self.error is not None:
            raise self.error
        return self.campaign.run_dir


def wait_for(what: str, condition, timeout_s: float = DEADLINE_S, poll_s: float = 0.2):
    """Poll ``condition()`` until it returns something truthy (returned), else fail naming ``what``."""
    t0 = time.time()
    while time.time() - t0 < timeout_s:
        value = condition()
        if value:
            return value
        time.sleep(poll_s)
    pytest.fail(f"timed out after {timeout_s}s waiting for {what}")


def trials_now(run_dir: Path) -> list:
    return trials_of(run_dir) if (run_dir / "campaign.json").exists() else []


def started_trial(run_dir: Path, task: str):
    """The RUNNING trial of ``task`` once its job has begun (the job writes trial.log first), else None."""
    for t in trials_now(run_dir):
        if t.state == TrialState.RUNNING and t.user_attrs.get("task") == task and "job_id" in t.user_attrs \
                and (Path(t.user_attrs["artifact_dir"]) / "trial.log").exists():
            return t
    return None


def squeue_state(job_id: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True).stdout.strip()


# ------------------------------------------------------------------------------ (a) array jobs
def test_slurm_campaign_with_array_jobs(slurm_cluster, tmp_path):
    path = slurm_campaign(tmp_path, "sarray", {"random_trees": 3, "refine_top": 1, "refine_trials": 2, "steps": 4,
                                               "eval_every": 2},
                          pruner={"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0})
    run_dir = Campaign(load_campaign(path), tmp_path / "runs", progress=False).run()
    trials = trials_of(run_dir)
    assert len(trials) == 5
    assert all(t.state in FINISHED for t in trials), [(t.number, t.state, t.user_attrs.get("fail_reason"))
                                                      for t in trials]
    by_phase: dict[str, list[str]] = {}
    for t in trials:
        by_phase.setdefault(t.user_attrs["phase"], []).append(t.user_attrs["job_id"])
        assert t.user_attrs["executor"] == "slurm"
        assert Path(t.user_attrs["log_path"]).is_file()  # the SLURM job's stderr
        assert (Path(t.user_attrs["artifact_dir"]) / "trial.log").is_file()
    # phase A went out as one array of 3 tasks, phase B as one array of 2
    for phase, n in (("random", 3), ("refine", 2)):
        ids = by_phase[phase]
        assert len(ids) == n and all(re.fullmatch(r"\d+_\d+", j) for j in ids), ids
        assert len({j.split("_")[0] for j in ids}) == 1, ids
        assert sorted(int(j.split("_")[1]) for j in ids) == list(range(n))
    table = run_table([run_dir])
    assert len(table) == 5 and set(table["state"]) <= {"COMPLETE", "PRUNED"}
    assert "COMPLETE" in set(table["state"])
    complete = table[table["state"] == "COMPLETE"]
    assert complete["value"].notna().all() and (complete["params"] > 0).all() and (complete["steps"] == 4).all()


def test_slurm_campaign_in_rungs(slurm_cluster, tmp_path):
    """Successive halving on SLURM: promoted trials continue from their checkpoints in new jobs."""
    path = slurm_campaign(tmp_path, "srungs", {"total_steps": 16, "first_rung": 2, "eta": 2, "rungs": 3,
                                               "random_trees": 4, "refine_top": 0})
    run_dir = Campaign(load_campaign(path), tmp_path / "runs", progress=False).run()
    check_rung_campaign(run_dir, (4, 2, 1), (2, 4, 8))
    top = next(t for t in trials_of(run_dir) if t.state == TrialState.COMPLETE)
    log_text = (Path(top.user_attrs["artifact_dir"]) / "trial.log").read_text()
    assert re.search(r"resumed \S+ from step 4", log_text), log_text[-1000:]  # rung 2 continued rung 1's checkpoint


# ------------------------------------------------------------------------------ (b) scancel
def test_slurm_scancelled_rung_is_retried_on_the_same_trial(slurm_cluster, tmp_path):
    path = slurm_campaign(tmp_path, "scancel", {"random_trees": 2, "refine_top": 0, "steps": 80, "eval_every": 40},
                          storage="sqlite", retries=1,
                          train={"seed": 0, "overlays": False, "checkpoint_every": 2})
    driver = DriverThread(path, tmp_path / "runs")
    driver.start()
    victim = wait_for("trial random:0 to start in its SLURM job", lambda: started_trial(driver.campaign.run_dir,
                                                                                       "random:0"))
    job_id = victim.user_attrs["job_id"]
    folder = Path(victim.user_attrs["artifact_dir"])
    wait_for("the trial's first checkpoint", lambda: (folder / "checkpoint.pt").exists(), poll_s=0.05)
    subprocess.run(["scancel", job_id], check=True, capture_output=True)
    run_dir = driver.finish()

    trials = sorted(trials_of(run_dir), key=lambda t: t.number)
    first = next(t for t in trials if trial_id(t) == trial_id(victim))
    # the retry runs on the same trial (attempt 2) and continues the cancelled job's checkpoint
    assert first.state in FINISHED and first.user_attrs["attempt"] == 2, first.user_attrs.get("fail_reason")
    assert first.user_attrs["last_failure"].startswith(f"cancelled by scheduler (job {job_id})"), \
        first.user_attrs["last_failure"]
    assert first.user_attrs["job_id"] != job_id
    log_text = (folder / "trial.log").read_text()
    assert re.search(r"resumed \S+ from step [1-9]", log_text), log_text[-1000:]  # from the dead job's checkpoint
    history = json.loads((folder / "history.json").read_text())
    assert [h["step"] for h in history if "loss" in h] == list(range(1, 81))  # every step once
    others = [t for t in trials if t.user_attrs["task"] == "random:1"]
    assert len(others) == 1 and others[0].state in FINISHED
    assert len(trials) == 2


# ------------------------------------------------------------------------------ (c) preemption
def test_slurm_preempted_trial_resumes_from_its_checkpoint(slurm_cluster, tmp_path):
    cpus = slurm_cluster["cpus"]
    steps = 20
    # the whole node: the 'high' job below needs the same CPUs, so SLURM preempts exactly this trial
    path = slurm_campaign(tmp_path, "spreempt", {"random_trees": 1, "refine_top": 0, "steps": steps,
                                                 "eval_every": 10},
                          executor=slurm_executor(cpus_per_task=cpus, workers=1),
                          train={"seed": 0, "overlays": False, "checkpoint_every": 2})
    driver = DriverThread(path, tmp_path / "runs")
    driver.start()
    run_dir = driver.campaign.run_dir
    high = job_id = None
    try:
        trial = wait_for("the trial to start", lambda: started_trial(run_dir, "random:0"))
        job_id = trial.user_attrs["job_id"]
        folder = Path(trial.user_attrs["artifact_dir"])
        wait_for("the trial's first checkpoint", lambda: (folder / "checkpoint.pt").exists(), poll_s=0.05)
        res = subprocess.run(["sbatch", "--parsable", "-p", "high", "-c", str(cpus), "--mem=100M", "-t", "1",
                              "-o", str(tmp_path / "high.out"), "--wrap", "sleep 1"],
                             capture_output=True, text=True, check=True)
        high = res.stdout.strip().split(";")[0]
        # preempted: USR2 -> submitit checkpoint() -> scontrol requeue -> PENDING with a BeginTime 120 s ahead
        wait_for(f"job {job_id} to be requeued (if it finished first, the trial is too short for this machine)",
                 lambda: squeue_state(job_id) == "PENDING" or (folder / "metrics.json").exists(), timeout_s=60)
        assert not (folder / "metrics.json").exists(), "the trial finished before the preemption took effect"
        release_requeued(job_id)
        run_dir = driver.finish()
    except BaseException:  # leave nothing behind in the queue
        for jid in (high, job_id):
            if jid:
                subprocess.run(["scancel", jid], capture_output=True)
        raise

    trials = trials_of(run_dir)
    assert len(trials) == 1 and trials[0].state == TrialState.COMPLETE, trials[0].user_attrs.get("fail_reason")
    assert trials[0].user_attrs["job_id"] == job_id  # the same job ran on: requeued, not resubmitted
    log_text = (folder / "trial.log").read_text()
    resumed = [int(s) for s in re.findall(r"resumed \S+ from step (\d+)", log_text)]
    assert len(resumed) == 1 and resumed[0] > 0, log_text[-2000:]
    assert "checkpoint requested (preempted or timed out): requeue #1" in log_text
    assert "Caught signal SIGUSR2" in Path(trials[0].user_attrs["log_path"]).read_text()
    history = json.loads((folder / "history.json").read_text())
    assert [h["step"] for h in history if "loss" in h] == list(range(1, steps + 1))  # no step trained twice
    assert json.loads((folder / "metrics.json").read_text())["steps"] == steps


# ------------------------------------------------------------------------------ (d) driver kill -9
def test_slurm_driver_kill9_then_resume_reattaches_running_jobs(slurm_cluster, tmp_path):
    path = slurm_campaign(tmp_path, "skill", {"random_trees": 3, "refine_top": 1, "refine_trials": 1, "steps": 20,
                                              "eval_every": 10}, executor=slurm_executor(workers=2))
    runs = tmp_path / "runs"
    run_dir = runs / "skill"
    cmd = [sys.executable, "-m", "arborseg.cli", "search", str(path), "--runs-dir", str(runs)]
    driver = subprocess.Popen([*cmd[:3], "-q", *cmd[3:]], cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)

    def one_done_one_running():
        trials = trials_now(run_dir)
        running = [t for t in trials if t.state == TrialState.RUNNING]
        if any(t.state in FINISHED for t in trials) and running and all("job_id" in t.user_attrs for t in running):
            return {trial_id(t): t.user_attrs["job_id"] for t in running}
        return None

    try:
        wait_for("a finished and a running trial at once", one_done_one_running)
    except BaseException:
        driver.kill()
        raise
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait(10)
    # read back after the kill: a job the dead driver had already told is finished, not one to reattach to
    at_kill = trials_now(run_dir)
    finished_before = {trial_id(t) for t in at_kill if t.state in FINISHED}
    running_at_kill = {trial_id(t): t.user_attrs["job_id"] for t in at_kill
                       if t.state == TrialState.RUNNING and "job_id" in t.user_attrs}
    assert running_at_kill, "every running trial finished between the check and the kill: nothing to reattach"
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=DEADLINE_S)
    assert res.returncode == 0, res.stderr[-2000:]

    trials = trials_of(run_dir)
    by_id = {trial_id(t): t for t in trials}
    done = Counter(t.user_attrs["task"] for t in trials if t.state in FINISHED)
    assert len(done) == 3 + 1 and set(done.values()) == {1}, done  # every task finished exactly once
    assert all(t.state != TrialState.RUNNING for t in trials)
    for t in trials:  # a FAIL can only be a trial asked but not yet submitted when the driver died
        if t.state == TrialState.FAIL:
            assert t.user_attrs.get("stale") and "job_id" not in t.user_attrs, t.user_attrs
    for tid, jid in running_at_kill.items():  # jobs that ran through the kill were followed, not re-run
        assert by_id[tid].state in FINISHED and by_id[tid].user_attrs["job_id"] == jid
        assert f"reattached to job {jid}" in res.stderr
    assert finished_before <= {trial_id(t) for t in trials if t.state in FINISHED}
    job_ids = [t.user_attrs["job_id"] for t in trials if "job_id" in t.user_attrs]
    assert len(job_ids) == len(set(job_ids))  # nothing submitted twice
    assert len(trials) == len(job_ids) + sum(1 for t in trials if t.state == TrialState.FAIL)
