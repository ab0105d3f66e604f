"""Warm workers: long-lived jobs that import torch once and run task after task from a queue on disk.

With ``warm_workers: true`` in an ``executor:`` (local or slurm), :func:`~arborseg.jobs.executors.make_executor`
returns a :class:`WarmPool` instead of a plain submitit executor. The scheduler submits job functions to it as
before; the pool writes each to a queue folder and keeps up to ``workers`` :class:`WarmWorker` jobs running
(ordinary submitit local processes or SLURM jobs; several started at once go out as one array). A worker claims
the next task, runs it in its own process and writes the result; the interpreter, torch, matplotlib and the
opened data volumes stay loaded for the next one. The one-job-per-trial mode stays the default.

Files (``<jobs folder>/warm/``)::

    queue/<task>.pkl              waiting (the cloudpickled job function); a worker claims a task by renaming it
    claimed/<worker>/<task>.pkl   into its own folder (atomic: no task is taken twice)
    results/<task>.pkl            {status: success | error | lost, value | trace | reason and state, worker}
    workers/<worker>.json         the worker's submitit job id and kind (written by the worker before it claims)
    withdrawn/  cancelled/        tasks a later driver took back, or cancelled before a worker took them
    stop                          the driver is done: idle workers exit (alone, they exit after ``idle_s``)

What the one-job mode promises holds here too: a worker that is killed (kill -9, the OOM killer, scancel) fails
only the task it held ("warm worker <job> ended while running it: ..."), and the pool starts another worker for
the rest; a SLURM preemption or time limit requeues the worker, which first resumes the task it held (trials
continue from their checkpoints); a driver that restarts follows the tasks that finished or are held by a live
worker and takes back the ones still waiting (it submits their work again), so none is lost or run twice.
``timeout_min`` limits a worker's life, not one task's.

Several workers can share one SLURM job (``jobs_per_gpu`` on SLURM, :mod:`arborseg.jobs.gpus`): its ``k`` tasks
are workers ``<name>-0`` ... ``<name>-<k-1>`` that share its GPU. Only task 0 is told of a preemption (submitit
checkpoints and requeues from it); the others are requeued with it and, like it, resume the task they held
from that task's last checkpoint.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import secrets
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle

from arborseg.jobs.checkpointable import CheckpointableJob
from arborseg.jobs.outcome import JobOutcome, cancel_jobs, job_outcome, reattach_job
from arborseg.log import get_logger
from arborseg.train.timings import TASK_STARTED_ENV, process_age_seconds

log = get_logger(__name__)

DEFAULT_IDLE_S = 60.0
#: how often an idle worker looks at the queue, and the driver at workers that may have ended
WORKER_POLL_S = 0.1
POOL_POLL_S = 0.5
WARM_DIR = "warm"
#: workers in a row that die before taking a task (a broken environment) before the waiting tasks are failed
MAX_FAILED_STARTS = 3


class WarmFiles:
    """The queue folder's layout (see the module notes) and its atomic steps."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.queue, self.claims, self.results = root / "queue", root / "claimed", root / "results"
        self.workers, self.withdrawn, self.cancelled = root / "workers", root / "withdrawn", root / "cancelled"
        self.stop = root / "stop"

    def ensure(self) -> None:
        for folder in (self.queue, self.claims, self.results, self.workers, self.withdrawn, self.cancelled):
            folder.mkdir(parents=True, exist_ok=True)

    def claimed(self, worker: str) -> Path:
        return self.claims / worker

    def result(self, task: str) -> Path:
        return self.results / f"{task}.pkl"

    def waiting(self) -> list[Path]:
        """Queued tasks, oldest first."""
        return sorted(self.queue.glob("*.pkl"))

    def holder(self, task: str) -> str | None:
        """The worker holding ``task``, if one does."""
        found = next(iter(self.claims.glob(f"*/{task}.pkl")), None)
        return found.parent.name if found is not None else None

    def put(self, task: str, fn: Callable[[], Any]) -> None:
        _write_atomic(self.queue / f"{task}.pkl", cloudpickle.dumps(fn))

    def write_result(self, task: str, result: dict[str, Any]) -> None:
        _write_atomic(self.result(task), cloudpickle.dumps(result))

    def read_result(self, task: str) -> dict[str, Any] | None:
        try:
            return dict(cloudpickle.loads(self.result(task).read_bytes()))
        except FileNotFoundError:
            return None

    def lose(self, task: str, reason: str, state: str, worker: str | None = None) -> None:
        """Record that ``task`` ended without a result of its own (its worker died, it was cancelled)."""
        self.write_result(task, {"status": "lost", "reason": reason, "state": state, "worker": worker})

    def worker_record(self, worker: str) -> dict[str, str] | None:
        try:
            return dict(json.loads((self.workers / f"{worker}.json").read_text()))
        except (OSError, ValueError):
            return None


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def new_task_id() -> str:
    """A task id that sorts in submission order."""
    return f"{time.time_ns():020d}-{secrets.token_hex(3)}"


# ------------------------------------------------------------------------------------------ worker side
@dataclass
class WarmWorker(CheckpointableJob):
    """The long-lived job: claims queued tasks one at a time and runs them until the queue has been empty for
    ``idle_s`` seconds or the driver has left the ``stop`` marker."""

    root: str
    name: str
    idle_s: float = DEFAULT_IDLE_S

    def __getstate__(self) -> dict[str, Any]:  # submitit pickles the worker when it is requeued
        return {k: v for k, v in self.__dict__.items() if k not in ("_current", "me")}

    def run(self) -> int:
        files = WarmFiles(Path(self.root))
        self.me = worker_name(self.name)  # self.name stays the base: a requeued job's tasks all unpickle it
        self._register(files)
        born = time.time() - (process_age_seconds() or 0.0)
        done, idle_since = 0, time.monotonic()
        while True:
            path = self._next(files)
            if path is None:
                if files.stop.exists() or time.monotonic() - idle_since > self.idle_s:
                    log.info("warm worker %s: %d task(s) done, leaving", self.me, done)
                    return done
                time.sleep(WORKER_POLL_S)
                continue
            os.environ[TASK_STARTED_ENV] = repr(born if done == 0 else time.time())
            self._run_task(files, path)
            done += 1
            idle_since = time.monotonic()

    def _register(self, files: WarmFiles) -> None:
        import submitit

        env = submitit.JobEnvironment()
        record = {"job_id": str(env.job_id), "kind": os.environ.get("SUBMITIT_EXECUTOR", "local"),
                  "folder": str(Path(self.root).parent), "pid": os.getpid(), "task": env.global_rank}
        _write_atomic(files.workers / f"{self.me}.json", json.dumps(record).encode())
        files.claimed(self.me).mkdir(parents=True, exist_ok=True)

    def _next(self, files: WarmFiles) -> Path | None:
        """The task this worker held when it was requeued, else the oldest queued one (claimed here)."""
        mine = files.claimed(self.me)
        for path in sorted(mine.glob("*.pkl")):
            if files.result(path.stem).exists():  # finished just before a requeue
                path.unlink(missing_ok=True)
                continue
            return path
        for path in files.waiting():
            target = mine / path.name
            try:
                os.rename(path, target)
            except FileNotFoundError:  # another worker was first, or a driver took it back
                continue
            return target
        return None

    def _run_task(self, files: WarmFiles, path: Path) -> None:
        task = path.stem
        result: dict[str, Any] = {"worker": self.me}
        try:
            fn = cloudpickle.loads(path.read_bytes())
            self._current = fn
            result.update(status="success", value=fn())
        except Exception:
            result.update(status="error", trace=traceback.format_exc())
        finally:
            self._current = None
        files.write_result(task, result)  # first the result, then the claim: a kill in between loses nothing
        path.unlink(missing_ok=True)
        _tidy()

    def on_preempt(self) -> None:
        current = getattr(self, "_current", None)
        if current is not None and hasattr(current, "on_preempt"):
            current.on_preempt()


def worker_name(base: str) -> str:
    """This process's worker name: ``base``, or ``base-<rank>`` in a SLURM job of several worker tasks."""
    import submitit

    env = submitit.JobEnvironment()
    try:
        tasks = int(env.num_tasks)
    except (KeyError, ValueError, TypeError):
        tasks = 1
    return f"{base}-{env.global_rank}" if tasks > 1 else base


def _tidy() -> None:
    """Between tasks: free what the last one left (cycles, and CUDA's cached blocks for other processes)."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------ driver side
class WarmPaths:
    """What a :class:`WarmJob` has of submitit's ``JobPaths``."""

    def __init__(self, queue: WarmQueue, task: str) -> None:
        self._queue, self._task = queue, task
        self.result_pickle = queue.files.result(task)
        self.folder = queue.files.root

    @property
    def stderr(self) -> Path:
        """The stderr of the worker that holds (or held) the task; the queue folder while it waits."""
        return self._queue.worker_log(self._task) or self.folder

    @property
    def stdout(self) -> Path:
        return self.stderr.with_name(self.stderr.name.replace("_log.err", "_log.out"))


class WarmJob:
    """A task handed to warm workers, as the scheduler sees a job (``job_id``, ``paths``, ``cancel``)."""

    def __init__(self, queue: WarmQueue, task: str) -> None:
        self.queue, self.job_id = queue, task
        self.paths = WarmPaths(queue, task)

    def cancel(self, check: bool = True) -> None:
        self.queue.cancel(self.job_id)

    def state(self) -> str:
        return self.queue.state(self.job_id)

    def outcome(self) -> JobOutcome | None:
        return self.queue.outcome(self.job_id)

    def __repr__(self) -> str:
        return f"WarmJob({self.job_id})"


class WarmQueue:
    """Follows tasks of one queue folder: their results, and the workers that hold them (own or another
    driver's). A :class:`WarmPool` also submits tasks and starts workers."""

    def __init__(self, root: Path) -> None:
        self.files = WarmFiles(root)
        self.files.ensure()
        self._worker_jobs: dict[str, Any] = {}  # worker name -> submitit job (None: cannot be found)
        self._ended: dict[str, JobOutcome] = {}
        self._last_poll = 0.0

    # ---------------------------------------------------------------- tasks
    def state(self, task: str) -> str:
        result = self.files.read_result(task)
        if result is not None:
            return {"success": "DONE", "error": "FAILED"}.get(result["status"], str(result.get("state", "FAILED")))
        if self.files.holder(task) is not None:
            return "RUNNING"
        if (self.files.queue / f"{task}.pkl").exists():
            return "PENDING"
        return "CANCELLED" if (self.files.cancelled / f"{task}.pkl").exists() else "UNKNOWN"

    def outcome(self, task: str) -> JobOutcome | None:
        """How ``task`` ended (None while it waits or runs); never raises."""
        try:
            result = self.files.read_result(task)
            if result is None:
                self.poll()
                result = self.files.read_result(task)
            return None if result is None else self._as_outcome(task, result)
        except Exception as e:
            return JobOutcome(False, reason=f"could not read the outcome of warm task {task}: {e}", state="FAILED",
                              job_id=task)

    def _as_outcome(self, task: str, result: dict[str, Any]) -> JobOutcome:
        log_path = self.worker_log(task, result.get("worker"))
        where = f"(warm task {task}): see {log_path}" if log_path else f"(warm task {task})"
        if result["status"] == "success":
            return JobOutcome(True, result=result["value"], log=log_path, state="DONE", job_id=task)
        if result["status"] == "error":
            lines = [ln.strip() for ln in str(result["trace"]).strip().splitlines() if ln.strip()]
            last = lines[-1][:500] if lines else "an unknown error"
            return JobOutcome(False, reason=f"raised {last} {where}", log=log_path, state="FAILED", job_id=task)
        return JobOutcome(False, reason=f"{result['reason']} {where}", log=log_path, state=str(result["state"]),
                          job_id=task)

    def cancel(self, task: str) -> None:
        """Cancel a waiting task (it never runs) or the worker running it (the pool starts another)."""
        try:
            os.rename(self.files.queue / f"{task}.pkl", self.files.cancelled / f"{task}.pkl")
            self.files.lose(task, "cancelled before a warm worker took it", "CANCELLED")
            return
        except FileNotFoundError:
            pass
        worker = self.files.holder(task)
        job = self._worker_job(worker) if worker else None
        if job is not None:
            cancel_jobs([job])
            self._lose_held(worker, "cancelled", "CANCELLED")  # type: ignore[arg-type]

    def withdraw(self, task: str) -> bool:
        """Take back a task that no worker has claimed yet (True), so that its work can go out again."""
        try:
            os.rename(self.files.queue / f"{task}.pkl", self.files.withdrawn / f"{task}.pkl")
            return True
        except FileNotFoundError:
            return False

    # ---------------------------------------------------------------- workers
    def poll(self, force: bool = False) -> None:
        """Fail the tasks held by workers that have ended (at most every ``POOL_POLL_S`` unless ``force``)."""
        now = time.monotonic()
        if not force and now - self._last_poll < POOL_POLL_S:
            return
        self._last_poll = now
        for folder in self.files.claims.iterdir():
            held = [p for p in folder.glob("*.pkl") if not self.files.result(p.stem).exists()]
            if not held:
                continue
            ended = self.worker_outcome(folder.name)
            if ended is not None:
                record = self.files.worker_record(folder.name) or {}
                reason = ended.reason or "it returned while still holding the task"
                self._lose_held(folder.name, f"warm worker {record.get('job_id', folder.name)} ended while running "
                                f"it: {reason}", "CANCELLED" if ended.state == "CANCELLED" else "FAILED")

    def _lose_held(self, worker: str, reason: str, state: str) -> None:
        for path in self.files.claimed(worker).glob("*.pkl"):
            if not self.files.result(path.stem).exists():
                log.warning("warm task %s: %s", path.stem, reason)
                self.files.lose(path.stem, reason, state, worker)
            path.unlink(missing_ok=True)

    def worker_outcome(self, worker: str) -> JobOutcome | None:
        """How a worker's job ended (None while it runs, or while it cannot be found yet)."""
        if worker in self._ended:
            return self._ended[worker]
        job = self._worker_job(worker)
        if job is None:
            return None
        outcome = job_outcome(job, grace_s=0.0)
        if outcome is not None:
            self._ended[worker] = outcome
        return outcome

    def _worker_job(self, worker: str) -> Any:
        if self._worker_jobs.get(worker) is None:
            record = self.files.worker_record(worker)
            if record is None:
                return None
            try:
                self._worker_jobs[worker] = reattach_job(record["folder"], record["job_id"], record["kind"],
                                                         int(record.get("task", 0)))
            except Exception as e:
                log.debug("warm worker %s cannot be found: %s", worker, e)
                return None
        return self._worker_jobs[worker]

    def worker_log(self, task: str, worker: str | None = None) -> Path | None:
        """The stderr file of the worker that holds ``task`` (or ``worker``, that held it); None while it waits."""
        worker = worker or self.files.holder(task)
        if worker is None:
            result = self.files.read_result(task)
            worker = result.get("worker") if result else None
        job = self._worker_job(worker) if worker else None
        return Path(job.paths.stderr) if job is not None else None


class WarmPool(WarmQueue):
    """An executor (``kind``, ``workers``, ``submit``, ``batch``) that runs job functions on warm workers started
    through the submitit ``executor``; ``release()`` lets idle workers go when the caller is done."""

    def __init__(self, executor: Any, idle_s: float = DEFAULT_IDLE_S, tasks_per_job: int = 1) -> None:
        super().__init__(Path(executor.jobs_dir) / WARM_DIR)
        self.executor = executor
        self.kind: str = executor.kind
        self.workers: int = executor.workers
        self.jobs_dir: Path = executor.jobs_dir
        self.threads_per_job = executor.threads_per_job
        self.idle_s = idle_s
        self.tasks_per_job = tasks_per_job  # workers per submitit job (its tasks)
        self._own: list[str] = []
        self._failed_starts: dict[str, str] = {}  # job id -> reason, of worker jobs that ended before a task
        self.files.stop.unlink(missing_ok=True)

    @property
    def record_kind(self) -> str:
        """The executor kind a :class:`~arborseg.jobs.scheduler.JobRecord` of this pool's tasks carries."""
        return f"warm-{self.kind}"

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> WarmJob:
        task = new_task_id()
        self.files.stop.unlink(missing_ok=True)
        self.files.put(task, (lambda: fn(*args, **kwargs)) if args or kwargs else fn)
        if not self._batching:
            self.poll(force=True)
        return WarmJob(self, task)

    _batching = False

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Tasks submitted in the block are queued first; the workers they need start together afterwards."""
        self._batching = True
        try:
            yield
        finally:
            self._batching = False
            self.poll(force=True)

    def poll(self, force: bool = False) -> None:
        """Fail tasks of ended workers, then start workers while tasks wait and fewer than ``workers`` live."""
        now = time.monotonic()
        if not force and now - self._last_poll < POOL_POLL_S:
            return
        super().poll(force=True)
        live = []
        for worker in self._own:
            ended = self.worker_outcome(worker)
            if ended is None:
                live.append(worker)
            elif not ended.ok and "pid" not in (self.files.worker_record(worker) or {}):
                # it died before taking any task (the workers of one job count once)
                self._failed_starts[str(ended.job_id or worker)] = ended.reason or "no reason given"
            elif "pid" in (self.files.worker_record(worker) or {}):
                self._failed_starts.clear()
        self._own = live
        if len(self._failed_starts) >= MAX_FAILED_STARTS:
            self._fail_waiting(f"{len(self._failed_starts)} warm worker jobs in a row ended before taking a task, "
                               f"the last: {list(self._failed_starts.values())[-1]}")
            self._failed_starts.clear()
            return
        free = self.workers - len(live)
        jobs = min(-(-len(self.files.waiting()) // self.tasks_per_job), free // self.tasks_per_job)
        if jobs > 0:
            self._start(jobs)

    def _fail_waiting(self, reason: str) -> None:
        """Fail every waiting task with ``reason`` (workers cannot start: the caller's retry policy decides)."""
        for path in self.files.waiting():
            try:
                os.rename(path, self.files.cancelled / path.name)
            except FileNotFoundError:
                continue
            log.error("warm task %s: %s", path.stem, reason)
            self.files.lose(path.stem, reason, "FAILED")

    def _start(self, n_jobs: int) -> None:
        """Start ``n_jobs`` worker jobs (``tasks_per_job`` workers each)."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        k = self.tasks_per_job
        workers = [WarmWorker(str(self.files.root), f"w{stamp}-{secrets.token_hex(3)}", self.idle_s)
                   for _ in range(n_jobs)]
        if len(workers) > 1 and self.kind == "slurm":
            with self.executor.batch():
                jobs = [self.executor.submit(w) for w in workers]
        else:
            jobs = [self.executor.submit(w) for w in workers]
        for worker, job in zip(workers, jobs):
            for rank in range(k):  # a job of k tasks: each its own worker, with its own result file
                name = f"{worker.name}-{rank}" if k > 1 else worker.name
                record = {"job_id": str(job.job_id), "kind": self.kind, "folder": str(self.jobs_dir), "task": rank}
                self._worker_jobs[name] = job._sub_jobs[rank] if k > 1 else job
                self._own.append(name)
                if self.files.worker_record(name) is None:  # the worker writes it too, with its pid
                    _write_atomic(self.files.workers / f"{name}.json", json.dumps(record).encode())
        log.info("started %d warm worker(s) in %d job(s): %s", len(workers) * k, len(jobs),
                 ", ".join(str(j.job_id) for j in jobs))

    def release(self) -> None:
        """The caller has no more work: idle workers leave now instead of after ``idle_s``."""
        self.files.stop.touch()


def reattach_task(folder: str | Path, task: str, follow_finished: bool = False) -> tuple[WarmJob, str] | None:
    """(job, state) for a task an earlier driver queued in the jobs ``folder``, if it is worth following.

    Followed: a task a live worker holds, and with ``follow_finished`` one that finished with a result. A task
    still waiting is taken back (it never runs; the caller submits its work again), as is one whose worker died.
    """
    queue = WarmQueue(Path(folder) / WARM_DIR)
    if queue.withdraw(task):
        return None
    job = WarmJob(queue, task)
    outcome = queue.outcome(task)
    if outcome is None:
        return (job, "RUNNING") if queue.files.holder(task) is not None else None
    if follow_finished and outcome.ok:
        return job, outcome.state
    return None
