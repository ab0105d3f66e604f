"""The base of jobs that SLURM may preempt or time out and requeue, and the per-job CPU thread limit."""

from __future__ import annotations

import os
from typing import Any

import submitit.helpers

from arborseg.log import get_logger

log = get_logger(__name__)

#: the environment variable ``make_executor`` sets to the torch threads of one job
THREADS_ENV = "ARBORSEG_NUM_THREADS"


def apply_thread_limit() -> int | None:
    """Inside a job: set torch's thread count from ``ARBORSEG_NUM_THREADS`` (set by ``make_executor``).

    ``OMP_NUM_THREADS`` is already in the job's environment, so torch starts with that many threads;
    this also covers code that changed it. Returns the count, or None outside such a job.
    """
    n = os.environ.get(THREADS_ENV)
    if not n or os.environ.get("SUBMITIT_EXECUTOR", "") not in ("local", "slurm"):
        return None
    try:
        import torch

        torch.set_num_threads(int(n))
    except ImportError:  # pragma: no cover
        pass
    return int(n)


class CheckpointableJob(submitit.helpers.Checkpointable):
    """Base of a resumable job: subclass, keep light configuration on ``self``, implement :meth:`run`.

    When SLURM preempts the job or it reaches its time limit, submitit calls :meth:`checkpoint`, which
    returns a submission of this same object (with the same arguments); the job is requeued and
    ``__call__`` runs again, so :meth:`run` must resume from whatever it last wrote to disk (training
    writes checkpoints). ``self.requeues`` counts how many times that happened (it travels inside the
    pickled object). Keep models and data off ``self``: ``self`` is pickled at checkpoint time.
    """

    requeues: int = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        apply_thread_limit()
        if self.requeues:
            log.info("%s resumed after %d requeue(s)", type(self).__name__, self.requeues)
        return self.run(*args, **kwargs)

    def run(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must implement run()")

    def on_preempt(self) -> None:
        """Called in the job (from the signal handler) just before it is requeued; default: nothing."""

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        try:
            self.on_preempt()
        except Exception:
            log.exception("%s.on_preempt failed; requeueing anyway", type(self).__name__)
        self.requeues += 1
        log.warning("%s: checkpoint requested (preempted or timed out): requeue #%d",
                    type(self).__name__, self.requeues)
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)
