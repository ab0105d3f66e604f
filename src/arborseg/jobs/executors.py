"""Executors for campaign trials: submitit ``debug`` (in-process), ``local`` (processes) and ``slurm``.

:func:`make_executor` validates the ``executor:`` options of a campaign YAML and returns a configured
submitit executor; :func:`job_state` and :func:`job_outcome` read a job's state and outcome *without
ever raising* (a cancelled, killed or crashed job becomes a failure reason, never an exception in the
driver); :func:`reattach_job` lets a resumed driver find the jobs of a previous driver;
:class:`CheckpointableJob` is the base of jobs that SLURM may preempt or time out and requeue.

What we learned about submitit 1.5.4 (and what this module does about it):

* Local executor: its default ``timeout_min`` is **2 minutes**; we always set one (default 1 day).
  Its ``setup`` lines run the job through ``/bin/sh -c``, and then ``job.cancel()`` (SIGINT to the
  shell) no longer stops the job: we never use ``setup`` locally; thread limits and extra variables
  are put in the environment at submission instead (the controller copies ``os.environ``).
* Local executor after the driver dies: the job's controller is an ordinary child of the driver in
  the driver's process group. ``kill -9 <driver pid>`` leaves it running (re-parented to PID 1); it
  finishes and writes its result, which :func:`reattach_job` + :func:`job_outcome` pick up. A signal
  to the whole process group (Ctrl-C in a terminal, ``kill -- -PGID``, a batch system killing the
  group) kills the jobs as well; they then end without a result (``FAILED``, "ended without a
  result"). Start the driver with ``setsid``/``nohup`` if jobs must outlive the terminal.
* Local GPUs: submitit sets ``CUDA_VISIBLE_DEVICES`` for every local job to the first
  ``gpus_per_node`` of ``visible_gpus`` (default: none, i.e. ``""``: no GPU at all). It does not spread
  concurrent jobs over GPUs; a driver running several GPU jobs at once must choose the GPUs itself.
* A local job killed by a signal (SIGKILL, OOM killer) leaves no trace but a missing result file:
  the controller still exits 0. We report it as "killed: ... ended without writing a result".
* SLURM: states come from ``sacct`` (submitit cannot see cancelled/killed jobs without it). submitit
  polls sacct less and less often (up to every 10 min); :func:`job_state` forces a refresh, at most
  every ``SACCT_MIN_INTERVAL_S`` seconds for all jobs together.
* SLURM preemption: with ``preempt_send_user_signal`` the job gets USR2 at preemption; submitit calls
  ``checkpoint()``, dumps the returned submission and runs ``scontrol requeue``. The requeued job gets
  a BeginTime 120 s later unless released (``scontrol update JobId=N StartTime=now``). submitit counts
  a signal as a *timeout* when the job ran more than ``min(0.8 T, T - 10 min)`` of its limit ``T``: for
  ``T`` <= 10 min that is always, so every preemption uses up one of the ``max_num_timeout`` (3)
  requeues of short jobs.
* ``--signal=USR2@delay`` is sent ``delay`` s before the limit: with a short limit the default 90 s
  would fire at once, so the default delay here scales with the limit (1/4 of it, 5..90 s).
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import submitit
import submitit.helpers
from submitit.core import utils as submitit_utils

from arborseg.errors import CampaignError
from arborseg.log import get_logger

log = get_logger(__name__)

KINDS = ("debug", "local", "slurm")
THREADS_ENV = "ARBORSEG_NUM_THREADS"
DEFAULT_LOCAL_TIMEOUT_MIN = 24 * 60
DEFAULT_SLURM_TIMEOUT_MIN = 60
SACCT_MIN_INTERVAL_S = 1.0

#: normalised job states
ACTIVE_STATES = frozenset({"PENDING", "RUNNING", "REQUEUED", "UNKNOWN"})
FINISHED_STATES = frozenset({"DONE", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY"})

_COMMON_OPTIONS = {
    "timeout_min": "wall-clock limit of one job in minutes",
    "threads_per_job": "torch/OpenMP CPU threads of one job",
    "env": "extra environment variables for the jobs (a mapping)",
}
LOCAL_OPTIONS = {
    **_COMMON_OPTIONS,
    "workers": "jobs the driver runs at once (CPU threads are divided among them; default 1)",
    "signal_delay_s": "seconds before timeout_min at which the job is told to checkpoint",
    "gpus_per_node": "GPUs per job (default 0: submitit then hides every GPU, CUDA_VISIBLE_DEVICES='')",
    "visible_gpus": "GPU indices the jobs may use (list); each job gets the first gpus_per_node of them",
    "max_num_timeout": "requeues allowed for a Checkpointable job that times out (default 3)",
}
SLURM_OPTIONS = {
    **_COMMON_OPTIONS,
    "partition": "SLURM partition",
    "cpus_per_task": "CPUs per job (also the default threads_per_job)",
    "gpus_per_node": "GPUs per job",
    "mem_gb": "memory per job in GB",
    "array_parallelism": "most array tasks running at once",
    "signal_delay_s": "seconds before the limit at which SLURM sends USR2 (checkpoint + requeue)",
    "additional_parameters": "extra sbatch options, e.g. {qos: high, mail-type: END}",
    "setup": "shell lines run in the sbatch script before the job (e.g. module load, conda activate)",
    "job_name": "SLURM job name",
    "account": "SLURM account",
    "qos": "SLURM quality of service",
    "constraint": "SLURM node features",
    "exclude": "nodes to avoid",
    "max_num_timeout": "requeues allowed for a Checkpointable job that times out (default 3)",
    "python": "command that runs python in the job (default: this interpreter)",
}
DEBUG_OPTIONS = {**LOCAL_OPTIONS}  # accepted so that a campaign can switch to debug; all ignored


# --------------------------------------------------------------------------------------- executor
class ArborsegExecutor(submitit.AutoExecutor):
    """A submitit ``AutoExecutor`` that also sets environment variables for the jobs it submits.

    ``kind``, ``threads_per_job`` and ``job_env`` tell what :func:`make_executor` configured.
    """

    kind: str = "local"
    threads_per_job: int | None = None
    job_env: dict[str, str] = {}

    def _internal_process_submissions(self, delayed_submissions):
        if not self.job_env:
            return super()._internal_process_submissions(delayed_submissions)
        # local: the controller copies os.environ at Popen; slurm: sbatch exports the environment
        with _env_lock, submitit.helpers.environment_variables(**self.job_env):
            return super()._internal_process_submissions(delayed_submissions)


_env_lock = threading.Lock()


def valid_options(kind: str) -> dict[str, str]:
    """The option names :func:`make_executor` accepts for ``kind``, with one line of help each."""
    _check_kind(kind)
    return {"debug": DEBUG_OPTIONS, "local": LOCAL_OPTIONS, "slurm": SLURM_OPTIONS}[kind]


def make_executor(kind: str, folder: Path | str, options: Mapping[str, Any] | None = None) -> ArborsegExecutor:
    """Build a submitit executor for ``kind`` ("debug" | "local" | "slurm") writing jobs to ``folder``.

    Each job gets its own sub-folder ``folder/<job id>`` (pickles, ``*_log.out``/``*_log.err``).
    ``options`` are the campaign's ``executor:`` settings (see :func:`valid_options`; a ``slurm_`` or
    ``local_`` prefix, as in submitit, is accepted too). Unknown or ill-typed options raise
    :class:`CampaignError` naming the valid ones. For slurm, ``folder`` must be on a filesystem the
    compute nodes see.
    """
    _check_kind(kind)
    opts = _normalise_options(kind, dict(options or {}))
    folder = Path(folder).expanduser().absolute()
    folder.mkdir(parents=True, exist_ok=True)
    ctor: dict[str, Any] = {}
    if kind == "slurm":
        if "max_num_timeout" in opts:
            ctor["slurm_max_num_timeout"] = _int(opts, "max_num_timeout", kind, minimum=0)
        if "python" in opts:
            ctor["slurm_python"] = str(opts["python"])
    elif kind == "local" and "max_num_timeout" in opts:
        ctor["local_max_num_timeout"] = _int(opts, "max_num_timeout", kind, minimum=0)
    try:
        ex = ArborsegExecutor(folder=folder / "%j", cluster=kind, **ctor)
    except RuntimeError as e:  # slurm: "Could not detect srun"
        raise CampaignError(f"executor {kind!r} is not available here: {e}") from None
    ex.kind = kind
    ex.job_env = {}
    ex.threads_per_job = None
    if kind == "debug":
        if opts:
            log.debug("debug executor: options %s ignored (jobs run inside the driver)", sorted(opts))
        return ex
    if kind == "local":
        _configure_local(ex, opts)
    else:
        _configure_slurm(ex, opts)
    return ex


def _configure_local(ex: ArborsegExecutor, opts: dict[str, Any]) -> None:
    timeout_min = _number(opts, "timeout_min", "local", default=DEFAULT_LOCAL_TIMEOUT_MIN)
    workers = _int(opts, "workers", "local", default=1, minimum=1)
    ncpu = _cpu_count()
    threads = _int(opts, "threads_per_job", "local", default=max(1, ncpu // workers), minimum=1)
    if threads * workers > ncpu:
        log.warning("local executor: %d workers x %d threads > %d CPUs (oversubscribed)", workers, threads, ncpu)
    delay = _int(opts, "signal_delay_s", "local", default=_default_signal_delay(timeout_min), minimum=0)
    _check_delay(delay, timeout_min, "local")
    params: dict[str, Any] = {}
    if "gpus_per_node" in opts:
        params["gpus_per_node"] = _int(opts, "gpus_per_node", "local", minimum=0)
    try:
        ex.update_parameters(**params)
        inner = ex._executor  # float minutes and signal_delay_s only reach LocalExecutor directly
        inner.update_parameters(timeout_min=timeout_min, signal_delay_s=delay)
        if "visible_gpus" in opts:
            inner.update_parameters(visible_gpus=tuple(int(g) for g in opts["visible_gpus"]))
    except (ValueError, TypeError, AssertionError, NameError) as e:
        raise CampaignError(f"executor (local): {e}") from None
    ex.threads_per_job = threads
    ex.job_env = {**_thread_env(threads), **_env(opts, "local")}
    log.debug("local executor: timeout %.4g min, %d workers x %d threads", timeout_min, workers, threads)


def _configure_slurm(ex: ArborsegExecutor, opts: dict[str, Any]) -> None:
    timeout_min = _number(opts, "timeout_min", "slurm", default=DEFAULT_SLURM_TIMEOUT_MIN)
    timeout_int = max(1, math.ceil(timeout_min))
    if timeout_int != timeout_min:
        log.info("slurm executor: timeout_min %.4g rounded up to %d (SLURM counts whole minutes)",
                 timeout_min, timeout_int)
    delay = _int(opts, "signal_delay_s", "slurm", default=_default_signal_delay(timeout_int), minimum=0)
    _check_delay(delay, timeout_int, "slurm")
    params: dict[str, Any] = {"timeout_min": timeout_int, "slurm_signal_delay_s": delay}
    cpus = None
    if "cpus_per_task" in opts:
        cpus = params["cpus_per_task"] = _int(opts, "cpus_per_task", "slurm", minimum=1)
    if "gpus_per_node" in opts:
        params["gpus_per_node"] = _int(opts, "gpus_per_node", "slurm", minimum=0)
    if "mem_gb" in opts:
        params["mem_gb"] = _number(opts, "mem_gb", "slurm")
    if "array_parallelism" in opts:
        params["slurm_array_parallelism"] = _int(opts, "array_parallelism", "slurm", minimum=1)
    if "job_name" in opts:
        params["name"] = str(opts["job_name"])
    for key in ("partition", "account", "qos", "constraint", "exclude"):
        if key in opts and opts[key] is not None:
            params[f"slurm_{key}"] = str(opts[key])
    extra = opts.get("additional_parameters") or {}
    if not isinstance(extra, Mapping):
        raise CampaignError(
            f"executor (slurm): additional_parameters must be a mapping of sbatch options "
            f"(e.g. {{qos: high}}), not {type(extra).__name__}"
        )
    if extra:
        params["slurm_additional_parameters"] = {str(k): v for k, v in extra.items()}
    setup = opts.get("setup") or []
    if isinstance(setup, str):
        setup = [setup]
    if not isinstance(setup, (list, tuple)) or not all(isinstance(s, str) for s in setup):
        raise CampaignError("executor (slurm): setup must be a list of shell lines")
    threads = _int(opts, "threads_per_job", "slurm", default=cpus or 1, minimum=1)
    env = {**_thread_env(threads), **_env(opts, "slurm")}
    # exported in the sbatch script too: works even with --export=NONE in additional_parameters
    exports = [f"export {k}={_shquote(v)}" for k, v in env.items()]
    params["slurm_setup"] = list(setup) + exports
    try:
        ex.update_parameters(**params)
    except (ValueError, TypeError, AssertionError, NameError) as e:
        raise CampaignError(f"executor (slurm): {e}") from None
    ex.threads_per_job = threads
    ex.job_env = env
    log.debug("slurm executor: %s", params)


def _normalise_options(kind: str, opts: dict[str, Any]) -> dict[str, Any]:
    valid = valid_options(kind)
    out: dict[str, Any] = {}
    bad = []
    for key, value in opts.items():
        name = str(key)
        for prefix in (f"{kind}_",):
            if name.startswith(prefix) and name[len(prefix):] in valid:
                name = name[len(prefix):]
        if name == "name" and kind == "slurm":
            name = "job_name"
        if name not in valid:
            bad.append(str(key))
            continue
        out[name] = value
    if bad:
        listing = "; ".join(f"{k} ({h})" for k, h in sorted(valid.items()))
        raise CampaignError(
            f"executor ({kind}): unknown option(s) {', '.join(sorted(bad))}; valid options are: {listing}"
        )
    return out


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise CampaignError(f"executor kind {kind!r} is not one of {', '.join(KINDS)}")


def _number(opts, key, kind, default=None) -> float:
    if key not in opts or opts[key] is None:
        return default
    v = opts[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
        raise CampaignError(f"executor ({kind}): {key} must be a positive number, not {v!r}")
    return v


def _int(opts, key, kind, default=None, minimum=0) -> int:
    if key not in opts or opts[key] is None:
        return default
    v = opts[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise CampaignError(f"executor ({kind}): {key} must be an integer >= {minimum}, not {v!r}")
    return v


def _env(opts, kind) -> dict[str, str]:
    env = opts.get("env") or {}
    if not isinstance(env, Mapping):
        raise CampaignError(f"executor ({kind}): env must be a mapping NAME: value")
    return {str(k): str(v) for k, v in env.items()}


def _default_signal_delay(timeout_min: float) -> int:
    return int(min(90, max(5, 0.25 * timeout_min * 60)))


def _check_delay(delay: int, timeout_min: float, kind: str) -> None:
    if delay >= timeout_min * 60:
        raise CampaignError(
            f"executor ({kind}): signal_delay_s={delay} must be shorter than timeout_min={timeout_min} "
            "(the checkpoint signal would come before the job starts)"
        )


def _thread_env(n: int) -> dict[str, str]:
    return {THREADS_ENV: str(n), "OMP_NUM_THREADS": str(n), "MKL_NUM_THREADS": str(n)}


def _shquote(v: str) -> str:
    import shlex

    return shlex.quote(v)


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def apply_thread_limit() -> int | None:
    """Inside a job: set torch's thread count from ``ARBORSEG_NUM_THREADS`` (set by :func:`make_executor`).

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


# ------------------------------------------------------------------------------ checkpointable
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
        except Exception:  # noqa: BLE001 - never block the requeue
            log.exception("%s.on_preempt failed; requeueing anyway", type(self).__name__)
        self.requeues += 1
        log.warning("%s: checkpoint requested (preempted or timed out): requeue #%d",
                    type(self).__name__, self.requeues)
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


# --------------------------------------------------------------------------------- job states
@dataclass(frozen=True)
class JobOutcome:
    """How a finished job ended. ``ok``: ``result`` holds the return value; else ``reason`` (one line)
    and ``log`` (the job's stderr file) say why. ``state`` is the normalised state (see :func:`job_state`).
    """

    ok: bool
    result: Any = None
    reason: str | None = None
    log: Path | None = None
    state: str = "DONE"
    job_id: str = ""

    def as_tuple(self) -> tuple:
        """``(True, result)`` or ``(False, reason, log)``."""
        return (True, self.result) if self.ok else (False, self.reason, self.log)


def job_state(job: Any) -> str:
    """Normalised state of a submitit job, never raising.

    One of PENDING, RUNNING, REQUEUED (preempted/requeued, will run again), UNKNOWN (not known to the
    scheduler yet) -- see ``ACTIVE_STATES`` -- or DONE, FAILED, CANCELLED, TIMEOUT, OUT_OF_MEMORY
    (``FINISHED_STATES``). DONE means the scheduler saw the job end normally; :func:`job_outcome`
    then says whether it left a result.
    """
    try:
        return _job_state(job)
    except Exception as e:  # noqa: BLE001
        log.debug("job_state(%s) failed: %s", getattr(job, "job_id", job), e)
        return "UNKNOWN"


def _job_state(job: Any) -> str:
    cached = getattr(job, "_arborseg_outcome", None)
    if cached is not None:
        return cached.state
    kind = _kind_of(job)
    if kind == "debug":
        if job._submission.done():
            return "DONE"
        return "CANCELLED" if job.cancelled else "PENDING"
    if kind == "local":
        return _local_state(job)[0]
    return _slurm_state(job)[0]


def _kind_of(job: Any) -> str:
    from submitit.local.debug import DebugJob
    from submitit.local.local import LocalJob
    from submitit.slurm.slurm import SlurmJob

    if isinstance(job, DebugJob):
        return "debug"
    if isinstance(job, LocalJob):
        return "local"
    if isinstance(job, SlurmJob):
        return "slurm"
    raise CampaignError(f"not a submitit debug/local/slurm job: {job!r}")


def _local_state(job: Any) -> tuple[str, int | None]:
    """(state, controller return code or None)."""
    proc = getattr(job, "_process", None)
    if proc is not None:
        rc = proc.poll()
        if rc is None:
            return "RUNNING", None
    else:
        rc = None
        if _local_pid_alive(job):
            return "RUNNING", None
    outcome = _read_result(job, grace_s=0)
    if outcome is not None:
        kind, payload = outcome
        if kind == "success":
            return "DONE", rc
        return ("TIMEOUT" if _is_timeout_trace(payload) else "FAILED"), rc
    if rc is not None and rc < 0:
        return ("CANCELLED" if -rc in (signal.SIGINT, signal.SIGTERM) else "FAILED"), rc
    return "FAILED", rc


def _local_pid_alive(job: Any) -> bool:
    """A reattached local job: is its controller (pid = job id) still running for this folder?"""
    try:
        pid = int(str(job.job_id))
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (ValueError, OSError):
        return False
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":
        return False
    folder = str(job.paths._folder)  # the unformatted submitit folder, e.g. /run/jobs/%j, as on the cmdline
    return b"submitit.local._local" in cmdline and os.fsencode(folder) in cmdline.split(b"\0")


_sacct_last = [0.0]
_sacct_lock = threading.Lock()

_SLURM_MAP = {
    "PENDING": "PENDING", "CONFIGURING": "PENDING", "REQUEUE_HOLD": "REQUEUED", "REQUEUE_FED": "REQUEUED",
    "REQUEUED": "REQUEUED", "PREEMPTED": "REQUEUED", "SUSPENDED": "RUNNING", "RUNNING": "RUNNING",
    "COMPLETING": "RUNNING", "RESIZING": "RUNNING", "SIGNALING": "RUNNING", "STAGE_OUT": "RUNNING",
    "COMPLETED": "DONE", "FAILED": "FAILED", "NODE_FAIL": "FAILED", "BOOT_FAIL": "FAILED",
    "SPECIAL_EXIT": "FAILED", "DEADLINE": "TIMEOUT", "TIMEOUT": "TIMEOUT", "CANCELLED": "CANCELLED",
    "REVOKED": "CANCELLED", "OUT_OF_MEMORY": "OUT_OF_MEMORY",
}


def _slurm_state(job: Any, max_age_s: float = SACCT_MIN_INTERVAL_S) -> tuple[str, str]:
    """(normalised state, raw sacct state) with a forced sacct refresh at most every ``max_age_s``."""
    watcher = job.watcher
    if job.job_id not in watcher._registered:
        watcher.register_job(job.job_id)
    with _sacct_lock:
        age = max_age_s if job.job_id in watcher._info_dict else min(max_age_s, 0.5)
        if time.time() - _sacct_last[0] >= age:
            watcher.update()
            _sacct_last[0] = time.time()
    raw = watcher.get_state(job.job_id, mode="cache") or "UNKNOWN"
    word = raw.split()[0].upper() if raw.strip() else "UNKNOWN"
    state = _SLURM_MAP.get(word, "UNKNOWN")
    if state == "UNKNOWN" and job.paths.result_pickle.exists():
        state = "DONE"
    return state, raw


# -------------------------------------------------------------------------------- outcomes
def job_outcome(job: Any, grace_s: float = 2.0) -> JobOutcome | None:
    """Classify a job's outcome without ever raising; None while the job is still pending/running.

    A result pickle wins (success -> ``ok``; a Python exception -> its last line as reason).
    Without one, the scheduler state explains it: "cancelled by scheduler (job N): see <stderr>",
    "killed by signal 9 (SIGKILL) ...", "timed out ...", "out of memory ...". ``grace_s``: how long to
    wait for a result file that a shared filesystem may show late once the job has ended.
    Debug jobs run here, in the calling process (that is what the debug executor does).
    """
    try:
        cached = getattr(job, "_arborseg_outcome", None)
        if cached is not None:
            return cached
        kind = _kind_of(job)
        outcome = _debug_outcome(job) if kind == "debug" else _process_outcome(job, kind, grace_s)
        if outcome is not None:
            try:
                job._arborseg_outcome = outcome
            except Exception:  # noqa: BLE001 - a job object refusing attributes: just don't cache
                pass
        return outcome
    except Exception as e:  # noqa: BLE001 - the contract: never raise
        jid = str(getattr(job, "job_id", "?"))
        log.debug("job_outcome(%s) failed:\n%s", jid, traceback.format_exc())
        return JobOutcome(False, reason=f"could not read the outcome of job {jid}: {e}", state="FAILED", job_id=jid)


def wait_outcome(job: Any, timeout_s: float | None = None, poll_s: float = 0.5) -> JobOutcome | None:
    """Poll :func:`job_outcome` until the job has finished (None if ``timeout_s`` passes first)."""
    start = time.time()
    while True:
        out = job_outcome(job)
        if out is not None:
            return out
        if timeout_s is not None and time.time() - start > timeout_s:
            return None
        time.sleep(poll_s)


def _debug_outcome(job: Any) -> JobOutcome:
    jid = str(job.job_id)
    if job.cancelled:
        return JobOutcome(False, reason=f"cancelled before it ran (debug job {jid})", state="CANCELLED", job_id=jid)
    # DebugJob.results() opens pdb on an exception; exception() runs the function without it
    environ = dict(os.environ)
    try:
        os.environ.update(job.environ)
        exc = job.exception()
    finally:
        os.environ.clear()
        os.environ.update(environ)
    if exc is None:
        return JobOutcome(True, result=job._submission._result, state="DONE", job_id=jid)
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    log.debug("debug job %s failed:\n%s", jid, tb)
    what = _last_line(tb)
    state = "TIMEOUT" if _is_timeout_trace(tb) else "FAILED"
    return JobOutcome(False, reason=f"raised {what} (debug job {jid}, in the driver process)", state=state, job_id=jid)


def _process_outcome(job: Any, kind: str, grace_s: float) -> JobOutcome | None:
    jid = str(job.job_id)
    stderr = Path(job.paths.stderr)
    # the result file is written (atomically) as the job's last act: when it is there, it is the outcome
    result = _read_result(job, grace_s=0.0)
    state, raw, rc = "DONE", "", None
    if result is None:
        if kind == "local":
            state, rc = _local_state(job)
            raw = state
        else:
            state, raw = _slurm_state(job)
        if state in ACTIVE_STATES:
            return None
        # a local controller exits only after its task wrote the result: no filesystem lag to wait for
        if kind != "local" and grace_s > 0:
            result = _read_result(job, grace_s=grace_s if state == "DONE" else min(grace_s, 1.0))
    if result is not None:
        what, payload = result
        if what == "success":
            return JobOutcome(True, result=payload, log=stderr, state="DONE", job_id=jid)
        last = _last_line(str(payload))
        if _is_timeout_trace(str(payload)):
            return JobOutcome(False, reason=f"timed out ({last}) (job {jid}): see {stderr}", log=stderr,
                              state="TIMEOUT", job_id=jid)
        return JobOutcome(False, reason=f"raised {last} (job {jid}): see {stderr}", log=stderr,
                          state="FAILED", job_id=jid)
    # no result: explain from the scheduler
    where = f"(job {jid}): see {stderr}"
    if state == "CANCELLED":
        reason = f"cancelled by scheduler {where}"
        if kind == "local":
            reason = f"cancelled (controller got {_signame(-rc) if rc else 'a signal'}) {where}"
    elif state == "TIMEOUT":
        reason = f"timed out (scheduler time limit reached) {where}"
    elif state == "OUT_OF_MEMORY":
        reason = f"out of memory (killed by the scheduler) {where}"
    elif kind == "slurm":
        sig = _slurm_signal(jid)
        if sig:
            reason = f"killed by signal {sig} ({_signame(sig)}) {where}"
        elif raw.upper().startswith(("NODE_FAIL", "BOOT_FAIL")):
            reason = f"node failure ({raw}) {where}"
        else:
            reason = f"ended without a result (sacct: {raw}) {where}"
        state = "FAILED"
    else:
        if rc is not None and rc < 0:
            reason = f"killed by signal {-rc} ({_signame(-rc)}) {where}"
        else:
            reason = ("killed: the job process ended without writing a result (a signal such as SIGKILL, "
                      f"the out-of-memory killer, or os._exit/sys.exit) {where}")
        state = "FAILED"
    return JobOutcome(False, reason=reason, log=stderr, state=state, job_id=jid)


def _read_result(job: Any, grace_s: float) -> tuple[str, Any] | None:
    path = Path(job.paths.result_pickle)
    deadline = time.time() + grace_s
    while True:
        try:  # refresh NFS attribute caches (as submitit does)
            folder = path.parent
            folder.chmod(folder.stat().st_mode)
        except OSError:
            pass
        if path.exists():
            for attempt in range(3):
                try:
                    return submitit_utils.pickle_load(path)
                except EOFError:  # being written
                    time.sleep(0.5)
            return None
        if time.time() >= deadline:
            return None
        time.sleep(0.25)


def _slurm_signal(job_id: str) -> int | None:
    """The signal that killed a SLURM job (from sacct ExitCode/DerivedExitCode 'code:signal'), if any."""
    try:
        out = subprocess.run(
            ["sacct", "-j", job_id, "-n", "-P", "-o", "JobID,State,ExitCode,DerivedExitCode"],
            capture_output=True, text=True, timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    base = job_id.split("_")[0]
    for line in out.splitlines():
        parts = line.split("|")
        if len(parts) < 4 or not parts[0].startswith(base):
            continue
        for code in parts[2:4]:
            if ":" in code:
                sig = code.split(":")[1]
                if sig.isdigit() and int(sig) not in (0, signal.SIGTERM):
                    return int(sig)
    return None


def _signame(sig: int | None) -> str:
    try:
        return signal.Signals(int(sig)).name
    except (ValueError, TypeError):
        return f"signal {sig}"


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    line = lines[-1] if lines else "an unknown error"
    for prefix in ("submitit.core.utils.",):
        line = line.replace(prefix, "")
    return line[:500]


def _is_timeout_trace(text: Any) -> bool:
    return "UncompletedJobError" in str(text) and "timed-out" in str(text)


# ------------------------------------------------------------------------------- reattaching
def reattach_job(folder: Path | str, job_id: str, kind: str) -> Any:
    """A job object for a job submitted by an earlier driver with ``make_executor(kind, folder, ...)``.

    Use :func:`job_state` / :func:`job_outcome` on it. SLURM jobs are looked up with sacct. Local jobs
    are found by their controller's pid (the job id) in ``/proc``, checked against the job folder so a
    reused pid does not count; a local job whose driver was killed with ``kill -9 <pid>`` keeps running
    and its result is found here (see the module notes). Debug jobs cannot be reattached.
    """
    _check_kind(kind)
    folder = Path(folder).expanduser().absolute() / "%j"
    if kind == "debug":
        raise CampaignError(f"debug job {job_id} ran inside the previous driver and cannot be reattached")
    if kind == "slurm":
        from submitit.slurm.slurm import SlurmJob

        return SlurmJob(folder=folder, job_id=str(job_id))
    from submitit.local.local import LocalJob

    return LocalJob(folder=folder, job_id=str(job_id))


def cancel_job(job: Any) -> None:
    """Cancel a job (also a reattached local one), never raising."""
    try:
        kind = _kind_of(job)
        if kind == "local" and getattr(job, "_process", None) is None:
            if _local_pid_alive(job):
                os.kill(int(job.job_id), signal.SIGINT)
            return
        job.cancel(check=False)
    except Exception as e:  # noqa: BLE001
        log.warning("could not cancel job %s: %s", getattr(job, "job_id", job), e)
