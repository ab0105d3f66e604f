"""Where a trial's time goes: a stopwatch of named parts, each charged only its own time (not its nested parts').

The parts of a training job, in order: ``startup`` (the job's process before it runs the trial: interpreter,
imports; only for jobs in their own process), ``setup`` (tree, network, optimiser), ``data`` (reading and
normalising regions, the patch sampler), ``train`` (training steps), ``validation`` (predicting and scoring the
validation region while training), ``evaluation`` (scoring every region at the end, keeping probabilities) and
``figures`` (learning curve, overlays). Torch-free.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

#: set by a warm worker for each task (epoch seconds): where that task's start-up began
TASK_STARTED_ENV = "ARBORSEG_TASK_STARTED"
PARTS = ("startup", "setup", "data", "train", "validation", "evaluation", "figures")


class Timings:
    """Seconds per part; :meth:`part` blocks may nest, and an outer part is charged without its inner ones."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._inner: list[float] = []  # seconds spent in nested parts, one entry per open part

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        if name not in PARTS:
            raise ValueError(f"unknown time part {name!r} (known: {', '.join(PARTS)})")
        started = time.perf_counter()
        self._inner.append(0.0)
        try:
            yield
        finally:
            elapsed = time.perf_counter() - started
            inner = self._inner.pop()
            self.add(name, elapsed - inner)
            if self._inner:
                self._inner[-1] += elapsed

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + max(0.0, seconds)

    def to_dict(self) -> dict[str, float]:
        """The parts measured, in the order of :data:`PARTS`, rounded to milliseconds."""
        return {name: round(self.seconds[name], 3) for name in PARTS if name in self.seconds}


def process_age_seconds() -> float | None:
    """Seconds since this process started (Linux ``/proc``); None where that cannot be read."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def job_timings() -> Timings:
    """A stopwatch for a job: with its process's start-up (``startup``) when the job runs in a process of its own
    (a submitit local or SLURM job); the debug executor runs jobs inside the driver, where there is none. On a warm
    worker (:mod:`arborseg.jobs.warm`) the first task is charged the process's start-up, later ones only the
    moments between claiming the task and starting it."""
    timings = Timings()
    if os.environ.get("SUBMITIT_EXECUTOR") in ("local", "slurm"):
        started = os.environ.get(TASK_STARTED_ENV)  # a warm worker: this task's share of the process
        age = max(0.0, time.time() - float(started)) if started else process_age_seconds()
        if age is not None:
            timings.add("startup", age)
    return timings
