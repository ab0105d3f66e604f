"""Several jobs per GPU (``jobs_per_gpu``, arborseg.jobs.gpus) and the training-memory estimate behind ``auto``.

This machine has no GPU. What can be checked without one is checked for real: local jobs are real processes
whose ``CUDA_VISIBLE_DEVICES`` (what torch would see) is read inside them, at most ``k`` per card at once; on the
one-node SLURM cluster (no GPUs configured) the GPU request is taken out of the job and the rest is real: one
SLURM job runs ``k`` warm workers as its tasks. Whether the jobs then share a real card well is measured on a GPU
machine (benchmarks/gpu_check.py), not here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import cloudpickle
import pytest
from test_campaign_slurm import wait_for

from arborseg.errors import CampaignError
from arborseg.jobs._submitit import inner_executor
from arborseg.jobs.executors import make_executor
from arborseg.jobs.gpus import CUDA_PROCESS_BYTES, MAX_JOBS_PER_CARD, jobs_per_card
from arborseg.jobs.outcome import job_outcome
from arborseg.jobs.warm import WarmPool
from arborseg.space.sampler import sample_distinct
from arborseg.train.memory import training_bytes

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # warm workers get the task functions by value
ROOT = Path(__file__).resolve().parents[1]
GiB = 2**30


def card_and_wait(started: str, go: str) -> tuple[str, int]:
    """Write this job's visible GPU to ``started``, wait for ``go``; return (the GPU, this process)."""
    Path(started).write_text(os.environ.get("CUDA_VISIBLE_DEVICES", "?"))
    while not Path(go).exists():
        time.sleep(0.02)
    return os.environ.get("CUDA_VISIBLE_DEVICES", "?"), os.getpid()


def started_cards(folder: Path, n: int) -> list[str] | None:
    files = sorted(folder.glob("started-*"))
    cards = [f.read_text() for f in files]
    return cards if len(files) >= n and all(cards) else None


# --------------------------------------------------------------------------- k from memory
def test_jobs_per_card_from_memory():
    assert jobs_per_card(80 * GiB, 2 * GiB) == MAX_JOBS_PER_CARD  # small nets: capped
    assert jobs_per_card(16 * GiB, 3 * GiB) == int(0.85 * 16 * GiB // (3 * GiB + CUDA_PROCESS_BYTES))
    assert jobs_per_card(8 * GiB, 20 * GiB) == 1  # too large for the card: one at a time (it may still fit in bf16)
    with pytest.raises(CampaignError, match="must be positive"):
        jobs_per_card(0, GiB)


def test_training_memory_estimate_grows_with_batch_and_window():
    tree = sample_distinct(str(ROOT / "search_spaces" / "unet2d.yaml"), 1, 0)[0]
    one, four = training_bytes(tree, 2, batch_size=1), training_bytes(tree, 2, batch_size=4)
    params = four - 4 * (four - one) // 3  # four = 4a + p, one = a + p
    assert one > 0 and four - one == 3 * (one - params)
    small = training_bytes(tree.with_window((1, 64, 64)), 2, batch_size=4)
    assert params < small < four


# --------------------------------------------------------------------------- options
def test_jobs_per_gpu_options_are_checked(tmp_path):
    with pytest.raises(CampaignError, match="jobs_per_gpu must be a positive integer or auto"):
        make_executor("local", tmp_path, {"jobs_per_gpu": 0, "visible_gpus": [0]})
    with pytest.raises(CampaignError, match="jobs_per_gpu gives each job one GPU"):
        make_executor("local", tmp_path, {"jobs_per_gpu": 2, "visible_gpus": [0, 1], "gpus_per_node": 2})
    if not _has_cuda():
        with pytest.raises(CampaignError, match="jobs_per_gpu needs a GPU: none is visible here"):
            make_executor("local", tmp_path, {"jobs_per_gpu": 2})
        with pytest.raises(CampaignError, match="add gpu_mem_gb"):
            make_executor("local", tmp_path, {"jobs_per_gpu": "auto", "visible_gpus": [0]}, job_bytes=GiB)
    auto = make_executor("local", tmp_path, {"jobs_per_gpu": "auto", "visible_gpus": [0, 1], "gpu_mem_gb": 16},
                         job_bytes=3 * GiB)
    k = jobs_per_card(int(16e9), 3 * GiB)
    assert auto.gpu_slots.per_gpu == k and auto.workers == 2 * k
    assert make_executor("local", tmp_path, {"jobs_per_gpu": "auto", "visible_gpus": [0]}).workers == 1  # no estimate
    capped = make_executor("local", tmp_path, {"jobs_per_gpu": 1, "visible_gpus": [3], "workers": 4})
    assert capped.workers == 1
    with pytest.raises(CampaignError, match="jobs_per_gpu needs warm_workers: true"):
        _slurm_executor(tmp_path, {"jobs_per_gpu": 2})


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _slurm_executor(tmp_path: Path, options: dict):
    try:
        return make_executor("slurm", tmp_path / "jobs", options)
    except CampaignError as e:
        if "not available here" in str(e):
            pytest.skip("submitit finds no SLURM here (srun missing)")
        raise


# --------------------------------------------------------------------------- local: k per card
@pytest.mark.parametrize("warm", [False, True], ids=["one-job-per-task", "warm-workers"])
def test_local_jobs_share_cards_at_most_k_each(tmp_path, warm):
    ex = make_executor("local", tmp_path / "jobs", {"jobs_per_gpu": 2, "visible_gpus": [0, 1], "timeout_min": 10,
                                                    "warm_workers": warm, "worker_idle_s": 30})
    assert ex.workers == 4 and (ex.executor if warm else ex).threads_per_job >= 1
    go = tmp_path / "go"
    first = [ex.submit(card_and_wait, str(tmp_path / f"started-{i}"), str(go)) for i in range(4)]
    cards = wait_for("four jobs to start", lambda: started_cards(tmp_path, 4))
    assert Counter(cards) == {"0": 2, "1": 2}  # two per card, none left out
    go.touch()
    outcomes = [wait_for("a job to end", lambda j=j: job_outcome(j)) for j in first]
    assert all(o.ok for o in outcomes), [o.reason for o in outcomes]
    more = [ex.submit(card_and_wait, str(tmp_path / f"again-{i}"), str(go)) for i in range(3)]
    again = [wait_for("a job to end", lambda j=j: job_outcome(j)) for j in more]
    assert all(o.ok and o.result[0] in ("0", "1") for o in again)
    if warm:
        ex.release()
        assert len({o.result[1] for o in outcomes + again}) <= 4  # the same four worker processes ran on
    else:
        assert Counter(o.result[0] for o in again) in ({"0": 2, "1": 1}, {"0": 1, "1": 2})  # freed cards reused


# --------------------------------------------------------------------------- SLURM: k workers in one job
@pytest.mark.slurm
def test_slurm_job_runs_k_warm_workers_as_its_tasks(slurm_cluster, tmp_path):
    ex = _slurm_executor(tmp_path, {"partition": "debug", "timeout_min": 5, "cpus_per_task": 1, "mem_gb": 1,
                                    "warm_workers": True, "worker_idle_s": 30, "jobs_per_gpu": 2, "workers": 2})
    assert isinstance(ex, WarmPool) and ex.tasks_per_job == 2 and ex.workers == 2
    sbatch = inner_executor(ex.executor).parameters
    assert sbatch["gpus_per_node"] == 1 and sbatch["ntasks_per_node"] == 2
    del sbatch["gpus_per_node"]  # the test cluster has no GPUs to give: the tasks share none here
    go = tmp_path / "go"
    jobs = [ex.submit(card_and_wait, str(tmp_path / f"started-{i}"), str(go)) for i in range(2)]
    try:
        wait_for("both tasks to start", lambda: started_cards(tmp_path, 2), timeout_s=180)
        records = [json.loads(p.read_text()) for p in (ex.files.workers).glob("*.json")]
        assert len({r["job_id"] for r in records}) == 1  # one SLURM job ...
        assert sorted(r.get("task") for r in records) == [0, 1] and len({r.get("pid") for r in records}) == 2
        go.touch()
        outcomes = [wait_for("a task to end", lambda j=j: job_outcome(j)) for j in jobs]
        assert all(o.ok for o in outcomes), [o.reason for o in outcomes]
        assert len({o.result[1] for o in outcomes}) == 2  # ... whose two tasks ran one each, at once
        later = ex.submit(card_and_wait, str(tmp_path / "x"), str(go))
        third = wait_for("a third task", lambda: job_outcome(later))
        assert third.ok and third.result[1] in {o.result[1] for o in outcomes}  # on a worker already warm
    finally:
        ex.release()
        go.touch()


def note_and_wait(started: str, go: str) -> int:
    """Append this process's pid to ``started`` (once per run of the task), wait for ``go``."""
    with open(started, "a") as f:
        f.write(f"{os.getpid()}\n")
    while not Path(go).exists():
        time.sleep(0.02)
    return os.getpid()


def runs_of(path: Path) -> int:
    return len(path.read_text().split()) if path.exists() else 0


@pytest.mark.slurm
def test_slurm_preempted_job_of_k_workers_resumes_every_workers_task(slurm_cluster, tmp_path):
    from campaign_helpers import release_requeued
    from test_campaign_slurm import squeue_state

    cpus = slurm_cluster["cpus"]
    ex = _slurm_executor(tmp_path, {"partition": "debug", "timeout_min": 5, "cpus_per_task": max(1, cpus // 2),
                                    "mem_gb": 1, "warm_workers": True, "worker_idle_s": 30, "jobs_per_gpu": 2,
                                    "workers": 2})
    del inner_executor(ex.executor).parameters["gpus_per_node"]  # no GPUs on the test cluster
    go, marks = tmp_path / "go", [tmp_path / f"runs-{i}" for i in range(2)]
    jobs = [ex.submit(note_and_wait, str(mark), str(go)) for mark in marks]
    high = worker_job = None
    try:
        wait_for("both tasks to start", lambda: all(runs_of(m) == 1 for m in marks), timeout_s=180)
        records = [json.loads(p.read_text()) for p in ex.files.workers.glob("*.json")]
        worker_job = records[0]["job_id"]
        res = subprocess.run(["sbatch", "--parsable", "-p", "high", "-c", str(cpus), "--mem=100M", "-t", "1",
                              "-o", str(tmp_path / "high.out"), "--wrap", "sleep 1"],
                             capture_output=True, text=True, check=True)
        high = res.stdout.strip().split(";")[0]
        wait_for(f"worker job {worker_job} to be requeued", lambda: squeue_state(worker_job) == "PENDING",
                 timeout_s=120)
        release_requeued(worker_job)
        wait_for("both workers to take their tasks up again", lambda: all(runs_of(m) == 2 for m in marks),
                 timeout_s=180)
        go.touch()
        outcomes = [wait_for("a task to end", lambda j=j: job_outcome(j)) for j in jobs]
        assert all(o.ok for o in outcomes), [o.reason for o in outcomes]
        names = sorted(p.stem for p in ex.files.workers.glob("*.json"))
        assert len(names) == 2 and [n[-2:] for n in names] == ["-0", "-1"], names  # the same two workers
    finally:
        ex.release()
        go.touch()
        for jid in (high, worker_job):
            if jid:
                subprocess.run(["scancel", jid], capture_output=True)
