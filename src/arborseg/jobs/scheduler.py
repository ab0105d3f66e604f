"""One scheduler for everything that runs jobs: submit, follow reattached jobs, poll, classify, retry.

The caller says what its work is with three callables; the scheduler does the rest::

    prepare(item) -> (run, job function)   just before submission (e.g. ask an Optuna trial, make a folder)
    submitted(run, job)                    record where the job can be found again (a :class:`JobRecord`)
    finished(run, outcome) -> item | None  tell how it ended (a :class:`~arborseg.jobs.outcome.JobOutcome`);
                                           return an item to run again (a retry) or None

Up to ``executor.workers`` jobs are in flight; items prepared together go out together (on SLURM as one
array job). A driver that restarts finds the jobs of its predecessor with :func:`reattach` and hands them
to :meth:`Scheduler.run` as already running.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from arborseg.jobs.outcome import ACTIVE_STATES, JobOutcome, cancel_jobs, job_outcome, job_state, reattach_job
from arborseg.jobs.types import Executor, Job
from arborseg.log import get_logger

log = get_logger(__name__)

ItemT = TypeVar("ItemT")
RunT = TypeVar("RunT")


@dataclass(frozen=True)
class JobRecord:
    """Where a submitted job can be found again by a later driver (``job_id``, executor ``kind``, jobs ``folder``)."""

    job_id: str
    kind: str
    folder: str

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def read(cls, path: Path) -> JobRecord | None:
        """The record in ``path`` (None when there is none or it cannot be read)."""
        try:
            info = json.loads(path.read_text())
            return cls(str(info["job_id"]), str(info["kind"]), str(info["folder"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None


def reattach(record: JobRecord | None, follow_finished: bool = False) -> tuple[Job, str] | None:
    """(job, state) for a job an earlier driver submitted, if it is worth following, else None.

    A job is followed while it is pending or running, and with ``follow_finished`` also when it ended
    with a result (its result is then read as if this driver had watched it). Debug jobs, jobs the
    scheduler forgot and jobs that ended without a result are not: the caller submits their work again.
    Tasks on warm workers (kind ``warm-local``/``warm-slurm``) are followed while a live worker holds them;
    one still waiting in the queue is taken back (see :func:`arborseg.jobs.warm.reattach_task`).
    """
    if record is not None and record.kind.startswith("warm-") and record.job_id and record.folder:
        from arborseg.jobs.warm import reattach_task

        return reattach_task(record.folder, record.job_id, follow_finished)
    if record is None or record.kind not in ("local", "slurm") or not record.job_id or not record.folder:
        return None
    try:
        job = reattach_job(record.folder, record.job_id, record.kind)
    except Exception as exc:
        log.debug("cannot reattach job %s: %s", record.job_id, exc)
        return None
    state = job_state(job)
    if state in ACTIVE_STATES:
        return job, state
    if follow_finished:
        outcome = job_outcome(job)
        if outcome is not None and outcome.ok:
            return job, state
    return None


@dataclass
class InFlight(Generic[RunT]):
    """A job being followed and the caller's record of what it runs."""

    run: RunT
    job: Job


class Scheduler(Generic[ItemT, RunT]):
    """Runs items as jobs of ``executor``, at most ``executor.workers`` at once (see the module notes).

    ``limit``: the most submissions over the scheduler's life (``--max-trials``); ``progress(n)`` is
    called with the number of jobs in flight after each round; ``cancel_on_interrupt``: cancel the jobs
    in flight when the driver is interrupted (KeyboardInterrupt) instead of leaving them to a later driver.
    """

    def __init__(self, executor: Executor, prepare: Callable[[ItemT], tuple[RunT, Callable[[], Any]]],
                 submitted: Callable[[RunT, Job], None],
                 finished: Callable[[RunT, JobOutcome], ItemT | None], *, limit: int | None = None,
                 progress: Callable[[int], None] | None = None, cancel_on_interrupt: bool = False,
                 poll_s: float = 0.3) -> None:
        self.executor = executor
        self.prepare, self.submitted, self.finished = prepare, submitted, finished
        self.limit = limit
        self.progress = progress or (lambda running: None)
        self.cancel_on_interrupt = cancel_on_interrupt
        self.poll_s = poll_s
        self.started = 0  # jobs submitted by this scheduler

    @property
    def limit_reached(self) -> bool:
        return self.limit is not None and self.started >= self.limit

    def run(self, items: Iterable[ItemT], running: Iterable[tuple[RunT, Job]] = ()) -> bool:
        """Run ``items`` (and follow the ``running`` jobs) until all have finished; retries go to the back.

        Returns False when ``limit`` stopped it before every item was submitted.
        """
        queue = deque(items)

        def take(free: int) -> list[ItemT]:
            return [queue.popleft() for _ in range(min(free, len(queue)))]

        return self.serve(take, running, queue.append)

    def serve(self, take: Callable[[int], list[ItemT]], running: Iterable[tuple[RunT, Job]] = (),
              retry: Callable[[ItemT], None] | None = None) -> bool:
        """Run what ``take(free)`` hands out (at most ``free`` items; asked whenever a worker is free, so the
        caller decides the order at the last moment) until it hands out nothing and no job is in flight.
        Items ``finished`` returns go to ``retry`` (default: run them next). Returns False when ``limit`` stopped it.
        """
        again: deque[ItemT] = deque()
        retry = retry or again.append
        flights = [InFlight(run, job) for run, job in running]
        try:
            while True:
                free = self.executor.workers - len(flights)
                if self.limit is not None:
                    free = min(free, self.limit - self.started)
                batch: list[ItemT] = []
                while again and len(batch) < free:
                    batch.append(again.popleft())
                if free > len(batch):
                    batch += take(free - len(batch))
                if batch:
                    flights += self._submit(batch)
                    self.progress(len(flights))
                if not flights:
                    break
                still = []
                for flight in flights:
                    outcome = job_outcome(flight.job)
                    if outcome is None:
                        still.append(flight)
                        continue
                    item = self.finished(flight.run, outcome)
                    if item is not None:
                        retry(item)
                flights = still
                self.progress(len(flights))
                if flights:
                    time.sleep(self.poll_s)
        except KeyboardInterrupt:
            if self.cancel_on_interrupt:
                cancel_jobs([f.job for f in flights])
            raise
        finally:
            release = getattr(self.executor, "release", None)
            if release is not None:  # warm workers: nothing more will come, the idle ones may leave
                release()
        return not self.limit_reached

    def _submit(self, items: list[ItemT]) -> list[InFlight[RunT]]:
        """Prepare every item, then submit their jobs (several on SLURM: one array job)."""
        prepared = [self.prepare(item) for item in items]
        if len(prepared) > 1 and self.executor.kind == "slurm":
            with self.executor.batch():  # one sbatch --array; job ids exist once the block has ended
                jobs = [self.executor.submit(fn) for _, fn in prepared]
        else:
            jobs = [self.executor.submit(fn) for _, fn in prepared]
        flights = []
        for (run, _), job in zip(prepared, jobs):
            self.submitted(run, job)
            self.started += 1
            flights.append(InFlight(run, job))
        return flights
