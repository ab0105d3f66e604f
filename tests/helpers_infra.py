"""Job functions for tests/test_campaign_infra.py.

They run inside submitit job processes (local, SLURM) or in-process (debug). The test module registers
this module with ``cloudpickle.register_pickle_by_value`` so jobs need not import it from ``tests/``.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from arborseg.campaign.worker_trial import OptunaReporter, attach_trial
from arborseg.jobs.checkpointable import CheckpointableJob, apply_thread_limit


def trial_job(url: str, study_name: str, trial_id: int, pruner, values: list[float], fail: bool = False) -> dict:
    """Attach to the driver's trial as a campaign job does, report ``values`` step by step, stop when the pruner
    says so."""
    reporter = OptunaReporter(attach_trial(url, study_name, trial_id=trial_id, pruner=pruner))
    reporter.set_user_attr("job_pid", os.getpid())
    reporter.set_user_attr("in_job", os.environ.get("SUBMITIT_EXECUTOR", "") in ("local", "slurm"))
    for step, value in enumerate(values):
        if reporter.report(step, value):
            return {"pruned": True, "step": step, "pid": os.getpid()}
        if fail and step == 1:
            raise RuntimeError("loss is NaN")
    return {"pruned": False, "value": float(values[-1]), "pid": os.getpid()}


def add(a: int, b: int) -> int:
    return a + b


def boom() -> None:
    raise ValueError("boom")


def kill_self() -> None:
    time.sleep(0.2)
    os.kill(os.getpid(), signal.SIGKILL)


def sleep_return(seconds: float, value=42, marker: str | None = None):
    """Write ``marker`` (the job has started), then sleep: a job to cancel, time out or outlive its driver."""
    if marker:
        tmp = Path(marker + ".tmp")
        tmp.write_text(str(os.getpid()))
        os.replace(tmp, marker)
    time.sleep(seconds)
    return value


def sigint_disposition() -> str:
    """"ignored" or "handled": what this process does with SIGINT."""
    return "ignored" if signal.getsignal(signal.SIGINT) is signal.SIG_IGN else "handled"


def thread_info() -> dict:
    import torch

    applied = apply_thread_limit()
    return {
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "ARBORSEG_NUM_THREADS": os.environ.get("ARBORSEG_NUM_THREADS"),
        "EXTRA": os.environ.get("ARBORSEG_TEST_EXTRA"),
        "applied": applied,
        "torch": torch.get_num_threads(),
    }


class CounterJob(CheckpointableJob):
    """Counts to ``n`` in a file, one step every ``dt`` s, resuming from the file after a requeue."""

    def __init__(self, path: str, n: int, dt: float = 0.25) -> None:
        self.path, self.n, self.dt = path, n, dt

    def run(self) -> dict:
        p = Path(self.path)
        count = int(p.read_text()) if p.exists() else 0
        with open(self.path + ".starts", "a") as f:
            f.write(f"{count}\n")
        while count < self.n:
            count += 1
            tmp = p.with_suffix(".tmp")
            tmp.write_text(str(count))
            os.replace(tmp, p)  # the "checkpoint": atomic, always consistent on disk
            time.sleep(self.dt)
        starts = [int(s) for s in Path(self.path + ".starts").read_text().split()]
        return {"count": count, "starts": starts, "requeues": self.requeues}
