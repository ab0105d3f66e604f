"""Warm workers (arborseg.jobs.warm): long-lived local/SLURM jobs that take task after task from a queue on disk.

What the one-job-per-task mode promises is checked here for this mode: results and failures read the same way,
a killed worker fails only the task it held and is replaced, cancelling works, a restarted driver follows tasks
held by live workers and takes back the waiting ones, campaigns finish with every trial once (also after the
driver is killed with kill -9), and a preempted SLURM worker resumes the trial it held from its checkpoint.
Tests wait on marker files and job states, never on fixed delays.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import cloudpickle
import pytest
from campaign_helpers import ROOT, kill_driver_when, release_requeued, trials_of, write_campaign
from optuna.trial import TrialState
from test_campaign_slurm import wait_for

from arborseg.campaign.config import load_campaign
from arborseg.campaign.driver import Campaign
from arborseg.errors import CampaignError
from arborseg.jobs.executors import make_executor
from arborseg.jobs.outcome import job_outcome, job_state
from arborseg.jobs.scheduler import JobRecord, reattach
from arborseg.jobs.warm import WarmPool

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers get the task functions by value
DEADLINE_S = 240  # a hang becomes a failure after this long; normal runs take a fraction of it


def outcome_of(job, what: str = "the task to end"):
    return wait_for(what, lambda: job_outcome(job))


def pool(tmp_path: Path, workers: int = 1, **options) -> WarmPool:
    ex = make_executor("local", tmp_path / "jobs", {"workers": workers, "warm_workers": True, "timeout_min": 10,
                                                    "worker_idle_s": 30, **options})
    assert isinstance(ex, WarmPool)
    return ex


# --------------------------------------------------------------------------- task functions (run in workers)
def whoami(i: int) -> tuple[int, int]:
    return i, os.getpid()


def raises() -> None:
    raise ValueError("a task's own error")


def blocks_until(started: str, go: str) -> int:
    """Say which process runs it (``started`` holds its pid), then wait for the test's ``go`` marker."""
    Path(started).write_text(str(os.getpid()))
    while not Path(go).exists():
        time.sleep(0.02)
    return os.getpid()


# --------------------------------------------------------------------------- the pool
def test_tasks_run_on_few_long_lived_processes(tmp_path):
    ex = pool(tmp_path, workers=2)
    jobs = [ex.submit(whoami, i) for i in range(6)] + [ex.submit(raises)]
    outcomes = [outcome_of(j) for j in jobs]
    ex.release()
    assert [o.result[0] for o in outcomes[:6]] == list(range(6))
    assert len({o.result[1] for o in outcomes[:6]}) <= 2  # 6 tasks, at most 2 processes: workers are reused
    bad = outcomes[6]
    assert not bad.ok and bad.state == "FAILED"
    assert "ValueError: a task's own error" in bad.reason and "\n" not in bad.reason
    assert job_state(jobs[0]) == "DONE" and job_state(jobs[6]) == "FAILED"
    assert len(list((tmp_path / "jobs" / "warm" / "workers").glob("*.json"))) <= 2


def test_warm_options_are_checked(tmp_path):
    with pytest.raises(CampaignError, match="warm_workers must be true or false"):
        make_executor("local", tmp_path, {"warm_workers": "yes"})
    with pytest.raises(CampaignError, match="worker_idle_s must be a positive number"):
        make_executor("local", tmp_path, {"warm_workers": True, "worker_idle_s": -1})
    assert not isinstance(make_executor("debug", tmp_path, {"warm_workers": True}), WarmPool)  # in-process anyway


def test_killed_worker_fails_only_its_task_and_is_replaced(tmp_path):
    ex = pool(tmp_path, workers=1)
    started, go = tmp_path / "started", tmp_path / "go"
    held = ex.submit(blocks_until, str(started), str(go))
    waiting = ex.submit(whoami, 1)
    pid = int(wait_for("the first task to start", lambda: started.exists() and started.read_text()))
    os.kill(pid, signal.SIGKILL)
    lost = outcome_of(held, "the killed worker's task to be failed")
    assert not lost.ok and "warm worker" in lost.reason and "ended while running it" in lost.reason
    assert "\n" not in lost.reason
    done = outcome_of(waiting, "a new worker to run the waiting task")
    ex.release()
    assert done.ok and done.result[1] != pid


def test_workers_that_cannot_start_fail_the_waiting_tasks_instead_of_looping(tmp_path):
    ex = pool(tmp_path, workers=1, env={"PYTHONHOME": "/nonexistent"})  # no interpreter can start with this
    out = outcome_of(ex.submit(whoami, 1))
    assert not out.ok and "3 warm worker jobs in a row ended before taking a task" in out.reason
    assert "\n" not in out.reason
    assert len(list((tmp_path / "jobs").glob("[0-9]*"))) == 3  # three tries, then no more workers


def test_cancel_a_waiting_and_a_running_task(tmp_path):
    ex = pool(tmp_path, workers=1)
    started, go = tmp_path / "started", tmp_path / "go"
    running = ex.submit(blocks_until, str(started), str(go))
    waiting = ex.submit(whoami, 2)
    wait_for("the first task to start", lambda: started.exists() and started.read_text())
    waiting.cancel()
    assert job_state(waiting) == "CANCELLED"
    assert outcome_of(waiting).state == "CANCELLED"
    running.cancel()
    out = outcome_of(running)
    ex.release()
    assert not out.ok and out.state == "CANCELLED"


def test_a_new_driver_follows_held_tasks_and_takes_back_waiting_ones(tmp_path):
    ex = pool(tmp_path, workers=1)
    started, go = tmp_path / "started", tmp_path / "go"
    held = ex.submit(blocks_until, str(started), str(go))
    waiting = ex.submit(whoami, 3)
    wait_for("the first task to start", lambda: started.exists() and started.read_text())
    folder = str(tmp_path / "jobs")
    # what a restarted driver does with the records its predecessor left
    assert reattach(JobRecord(waiting.job_id, ex.record_kind, folder), follow_finished=True) is None
    found = reattach(JobRecord(held.job_id, ex.record_kind, folder), follow_finished=True)
    assert found is not None and found[1] == "RUNNING"
    go.touch()
    out = outcome_of(found[0])
    assert out.ok and out.result == int(started.read_text())
    ex.release()
    # the waiting task was taken back before any worker could run it: it never ran
    assert not (tmp_path / "jobs" / "warm" / "results" / f"{waiting.job_id}.pkl").exists()
    assert reattach(JobRecord(held.job_id, ex.record_kind, folder), follow_finished=True)[1] == "DONE"


# --------------------------------------------------------------------------- campaigns
def warm_executor(**extra) -> dict:
    return {"kind": "local", "workers": 2, "timeout_min": 10, "warm_workers": True, "worker_idle_s": 30, **extra}


def test_campaign_on_warm_workers(tmp_path):
    path = write_campaign(tmp_path, name="warm", executor=warm_executor(),
                          budget={"random_trees": 4, "refine_top": 1, "refine_trials": 1})
    run_dir = Campaign(load_campaign(path), tmp_path / "runs", progress=False).run()
    trials = trials_of(run_dir)
    assert len(trials) == 5 and all(t.state == TrialState.COMPLETE for t in trials)
    assert {t.user_attrs["executor"] for t in trials} == {"warm-local"}
    workers = list((run_dir / "jobs" / "warm" / "workers").glob("*.json"))
    assert 1 <= len(workers) < len(trials)  # fewer processes than trials
    assert all(t.user_attrs["time_split"]["startup"] >= 0 and t.user_attrs["time_split"]["train"] > 0
               for t in trials)


def test_warm_campaign_resumes_after_driver_kill_9_losing_nothing(tmp_path):
    path = write_campaign(tmp_path, name="warmkill", executor=warm_executor(),
                          budget={"random_trees": 4, "refine_top": 1, "refine_trials": 2, "steps": 30,
                                  "eval_every": 10})
    runs = tmp_path / "runs"
    run_dir = runs / "warmkill"
    finished_before: dict[str, str] = {}

    def one_done_one_running(trials) -> bool:
        states = [t.state for t in trials]
        if TrialState.COMPLETE in states and TrialState.RUNNING in states:
            finished_before.update({t.user_attrs["task"]: t.user_attrs["artifact_dir"] for t in trials
                                    if t.state == TrialState.COMPLETE})
            return True
        return False

    cmd = kill_driver_when(path, runs, "warmkill", one_done_one_running, "a finished and a running trial at once",
                           timeout_s=DEADLINE_S)
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    trials = trials_of(run_dir)
    done = Counter(t.user_attrs["task"] for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED))
    assert len(done) == 4 + 2 and set(done.values()) == {1}  # every task finished exactly once
    for t in trials:
        assert t.state != TrialState.RUNNING
        if t.state == TrialState.FAIL:
            assert t.user_attrs.get("stale"), t.user_attrs.get("fail_reason")
    for folder in finished_before.values():  # finished work is kept, not redone
        assert (Path(folder) / "metrics.json").is_file()
    warm = run_dir / "jobs" / "warm"
    ran = {p.stem for p in (warm / "results").glob("*.pkl")}
    assert {t.user_attrs["job_id"] for t in trials if t.state == TrialState.COMPLETE} <= ran
    assert not ran & {p.stem for p in (warm / "withdrawn").glob("*.pkl")}  # a task taken back never ran


# --------------------------------------------------------------------------- SLURM
@pytest.mark.slurm
def test_slurm_preempted_warm_worker_resumes_its_trial(slurm_cluster, tmp_path):
    from test_campaign_slurm import DriverThread, squeue_state, started_trial

    cpus = slurm_cluster["cpus"]
    steps = 20
    path = write_campaign(tmp_path, name="swarm", storage="journal",
                          executor={"kind": "slurm", "partition": "debug", "timeout_min": 5, "cpus_per_task": cpus,
                                    "mem_gb": 2, "workers": 1, "warm_workers": True, "worker_idle_s": 30},
                          budget={"random_trees": 2, "refine_top": 0, "steps": steps, "eval_every": 10},
                          train={"seed": 0, "overlays": False, "checkpoint_every": 2})
    driver = DriverThread(path, tmp_path / "runs")
    driver.start()
    run_dir = driver.campaign.run_dir
    warm = run_dir / "jobs" / "warm"
    high = worker_job = None
    try:
        trial = wait_for("the first trial to start", lambda: started_trial(run_dir, "random:0"), poll_s=0.2)
        folder = Path(trial.user_attrs["artifact_dir"])
        wait_for("the trial's first checkpoint", lambda: (folder / "checkpoint.pt").exists())
        records = list((warm / "workers").glob("*.json"))
        assert len(records) == 1
        worker_job = json.loads(records[0].read_text())["job_id"]
        res = subprocess.run(["sbatch", "--parsable", "-p", "high", "-c", str(cpus), "--mem=100M", "-t", "1",
                              "-o", str(tmp_path / "high.out"), "--wrap", "sleep 1"],
                             capture_output=True, text=True, check=True)
        high = res.stdout.strip().split(";")[0]
        wait_for(f"worker job {worker_job} to be requeued (if the trial finished first, it is too short here)",
                 lambda: squeue_state(worker_job) == "PENDING" or (folder / "metrics.json").exists(), timeout_s=60,
                 poll_s=0.2)
        assert not (folder / "metrics.json").exists(), "the trial finished before the preemption took effect"
        release_requeued(worker_job)
        run_dir = driver.finish()
    except BaseException:
        for jid in (high, worker_job):
            if jid:
                subprocess.run(["scancel", jid], capture_output=True)
        raise
    trials = trials_of(run_dir)
    assert len(trials) == 2 and all(t.state == TrialState.COMPLETE for t in trials), \
        [t.user_attrs.get("fail_reason") for t in trials]
    log_text = (folder / "trial.log").read_text()
    resumed = [int(s) for s in re.findall(r"resumed \S+ from step (\d+)", log_text)]
    assert len(resumed) == 1 and resumed[0] > 0, log_text[-2000:]
    history = json.loads((folder / "history.json").read_text())
    assert [h["step"] for h in history if "loss" in h] == list(range(1, steps + 1))  # no step trained twice
    assert len(list((warm / "workers").glob("*.json"))) == 1  # the same worker ran on, requeued, and took the next


@pytest.mark.slurm
def test_slurm_campaign_on_warm_workers_started_as_one_array(slurm_cluster, tmp_path):
    path = write_campaign(tmp_path, name="swarm2", storage="journal",
                          executor={"kind": "slurm", "partition": "debug", "timeout_min": 5, "cpus_per_task": 1,
                                    "mem_gb": 2, "workers": 2, "warm_workers": True, "worker_idle_s": 30},
                          budget={"random_trees": 3, "refine_top": 1, "refine_trials": 1, "steps": 4, "eval_every": 2})
    run_dir = Campaign(load_campaign(path), tmp_path / "runs", progress=False).run()
    trials = trials_of(run_dir)
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials), \
        [t.user_attrs.get("fail_reason") for t in trials]
    assert {t.user_attrs["executor"] for t in trials} == {"warm-slurm"}
    jobs = [json.loads(p.read_text())["job_id"] for p in (run_dir / "jobs" / "warm" / "workers").glob("*.json")]
    assert 1 <= len(jobs) < len(trials)
    assert any("_" in j for j in jobs)  # the first two workers went out together, as one array job


def test_command_line_switch_and_records(tmp_path):
    path = write_campaign(tmp_path, name="switch", executor={"kind": "local", "workers": 2})
    cfg = load_campaign(path)
    assert Campaign(cfg, tmp_path / "runs", progress=False).record_kind == "local"
    warm = cfg.with_overrides(warm_workers=True)
    assert warm.executor == {**cfg.executor, "warm_workers": True}
    assert Campaign(warm, tmp_path / "runs2", progress=False).record_kind == "warm-local"
    assert Campaign(warm.with_overrides(executor="debug"), tmp_path / "runs3", progress=False).record_kind == "debug"
