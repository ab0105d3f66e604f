"""Executors for jobs: submitit ``debug`` (in-process), ``local`` (processes) and ``slurm``.

:func:`make_executor` validates the ``executor:`` options of a campaign YAML (:mod:`.options`) and
returns a configured submitit executor. How jobs end is read by :mod:`.outcome`; the base of jobs that
SLURM may preempt is in :mod:`.checkpointable`; :mod:`.scheduler` runs many jobs.

What we learned about submitit 1.5.4 (and what this module does about it):

* Local executor: its default ``timeout_min`` is **2 minutes**; we always set one (default 1 day).
  Its ``setup`` lines run the job through ``/bin/sh -c``, and then ``job.cancel()`` (SIGINT to the
  shell) no longer stops the job: we never use ``setup`` locally; thread limits and extra variables
  are put in the environment at submission instead (the controller copies ``os.environ``).
* Local executor, cancelling: ``LocalJob.cancel()`` sends SIGINT to the controller. A driver started in
  the background (``nohup arborseg search ... &``, a script's ``cmd &``) inherits SIGINT as *ignored*, and
  so would every controller it starts: the cancel would do nothing. Controllers are therefore started
  with SIGINT caught (the child then gets its default action), and :func:`~arborseg.jobs.outcome.cancel_job`
  kills a controller that still runs after a grace period.
* Local executor after the driver dies: the job's controller is an ordinary child of the driver in
  the driver's process group. ``kill -9 <driver pid>`` leaves it running (re-parented to PID 1); it
  finishes and writes its result, which ``reattach_job`` + ``job_outcome`` (:mod:`.outcome`) pick up. A signal
  to the whole process group (Ctrl-C in a terminal, ``kill -- -PGID``, a batch system killing the
  group) kills the jobs as well; they then end without a result (``FAILED``, "ended without a
  result"). Start the driver with ``setsid``/``nohup`` if jobs must outlive the terminal.
* Local GPUs: submitit sets ``CUDA_VISIBLE_DEVICES`` for every local job to the first
  ``gpus_per_node`` of ``visible_gpus`` (default: none, i.e. ``""``: no GPU at all). It does not spread
  concurrent jobs over GPUs: with ``jobs_per_gpu`` this executor submits jobs one by one, each with
  ``visible_gpus`` set to the card :class:`~arborseg.jobs.gpus.GpuSlots` chooses (read at submission).
* A local job killed by a signal (SIGKILL, OOM killer) leaves no trace but a missing result file:
  the controller still exits 0. We report it as "killed: ... ended without writing a result".
* SLURM: states come from ``sacct`` (submitit cannot see cancelled/killed jobs without it). submitit
  polls sacct less and less often (up to every 10 min); ``job_state`` forces a refresh, at most
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

import contextlib
import math
import os
import signal
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import submitit
import submitit.helpers

from arborseg.errors import CampaignError
from arborseg.jobs._submitit import inner_executor, local_process
from arborseg.jobs.checkpointable import THREADS_ENV
from arborseg.jobs.gpus import GpuSlots, jobs_per_card, local_gpus, parse_jobs_per_gpu
from arborseg.jobs.options import (
    DEFAULT_WORKERS,
    KINDS,
    check_kind,
    env_option,
    int_option,
    normalise_options,
    number_option,
    valid_options,
    warm_workers,
    workers_of,
)
from arborseg.jobs.warm import DEFAULT_IDLE_S, WarmPool
from arborseg.log import get_logger

log = get_logger(__name__)

__all__ = ["DEFAULT_WORKERS", "KINDS", "ArborsegExecutor", "make_executor", "valid_options", "workers_of"]

DEFAULT_LOCAL_TIMEOUT_MIN = 24 * 60
DEFAULT_SLURM_TIMEOUT_MIN = 60


# --------------------------------------------------------------------------------------- executor
class ArborsegExecutor(submitit.AutoExecutor):
    """A submitit ``AutoExecutor`` that also sets the environment and SIGINT disposition of its jobs.

    ``kind``, ``workers``, ``jobs_dir``, ``threads_per_job`` and ``job_env`` tell what
    :func:`make_executor` configured.
    """

    kind: str = "local"
    workers: int = 1
    jobs_dir: Path = Path()
    threads_per_job: int | None = None
    job_env: dict[str, str] = {}
    #: local jobs_per_gpu: the card of each new job; slurm: warm workers per SLURM job (tasks sharing its GPU)
    gpu_slots: GpuSlots | None = None
    tasks_per_job: int = 1

    @property
    def record_kind(self) -> str:
        """The kind a :class:`~arborseg.jobs.scheduler.JobRecord` of this executor's jobs carries."""
        return self.kind

    def _internal_process_submissions(self, delayed_submissions):  # submitit's hook: see jobs/_submitit.py
        # local: the controller copies os.environ at Popen; slurm: sbatch exports the environment
        with _env_lock, submitit.helpers.environment_variables(**self.job_env), \
                _sigint_caught(self.kind == "local"):
            if self.gpu_slots is None:
                return super()._internal_process_submissions(delayed_submissions)
            jobs = []
            for one in delayed_submissions:  # submitit reads visible_gpus as it starts each job
                gpu = self.gpu_slots.next_gpu()
                inner_executor(self).update_parameters(gpus_per_node=1, visible_gpus=(gpu,))
                job = super()._internal_process_submissions([one])[0]
                self.gpu_slots.hold(job, gpu)
                jobs.append(job)
            return jobs


_env_lock = threading.Lock()


@contextlib.contextmanager
def _sigint_caught(active: bool) -> Iterator[None]:
    """While local controllers start: if this process ignores SIGINT, catch it (and do nothing) instead.

    An ignored signal stays ignored across ``exec``, a caught one is reset to its default action: the
    controllers then stop on the SIGINT of ``LocalJob.cancel()``. This process keeps ignoring SIGINT.
    Python can change a handler only in the main thread; elsewhere ``cancel_job`` escalates instead.
    """
    if not active or threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, _ignore_signal)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _ignore_signal(signum: int, frame: Any) -> None:
    log.debug("signal %d ignored while local jobs were submitted", signum)


def make_executor(kind: str, folder: Path | str, options: Mapping[str, Any] | None = None,
                  job_bytes: int | None = None) -> ArborsegExecutor | WarmPool:
    """Build a submitit executor for ``kind`` ("debug" | "local" | "slurm") writing jobs to ``folder``.

    With ``warm_workers: true`` (local, slurm) it is wrapped in a :class:`~arborseg.jobs.warm.WarmPool`: jobs
    then run on long-lived workers started through it.

    Each job gets its own sub-folder ``folder/<job id>`` (pickles, ``*_log.out``/``*_log.err``).
    ``options`` are the campaign's ``executor:`` settings (see :func:`valid_options`; a ``slurm_`` or
    ``local_`` prefix, as in submitit, is accepted too). Unknown or ill-typed options raise
    :class:`CampaignError` naming the valid ones. For slurm, ``folder`` must be on a filesystem the
    compute nodes see. ``job_bytes``: the largest training memory of the jobs to come, for ``jobs_per_gpu: auto``
    (without it, auto means one job per GPU).
    """
    check_kind(kind)
    opts = normalise_options(kind, dict(options or {}))
    folder = Path(folder).expanduser().absolute()
    folder.mkdir(parents=True, exist_ok=True)
    ctor: dict[str, Any] = {}
    if kind == "slurm":
        if "max_num_timeout" in opts:
            ctor["slurm_max_num_timeout"] = int_option(opts, "max_num_timeout", kind, default=3, minimum=0)
        if "python" in opts:
            ctor["slurm_python"] = str(opts["python"])
    elif kind == "local" and "max_num_timeout" in opts:
        ctor["local_max_num_timeout"] = int_option(opts, "max_num_timeout", kind, default=3, minimum=0)
    try:
        ex = ArborsegExecutor(folder=folder / "%j", cluster=kind, **ctor)
    except RuntimeError as e:  # slurm: "Could not detect srun"
        raise CampaignError(f"executor {kind!r} is not available here: {e}") from None
    ex.kind = kind
    ex.workers = workers_of(kind, opts)
    ex.jobs_dir = folder
    ex.job_env = {}
    ex.threads_per_job = None
    if kind == "debug":
        if opts:
            log.debug("debug executor: options %s ignored (jobs run inside the driver)", sorted(opts))
        return ex
    warm = warm_workers(kind, opts)
    idle_s = number_option(opts, "worker_idle_s", kind, default=DEFAULT_IDLE_S)
    per_gpu = _jobs_per_gpu(kind, opts, job_bytes)
    opts = {k: v for k, v in opts.items() if k not in ("warm_workers", "worker_idle_s", "jobs_per_gpu", "gpu_mem_gb")}
    if kind == "local":
        if per_gpu is not None:
            _pack_local_gpus(ex, opts, per_gpu)
        _configure_local(ex, opts)
    else:
        if per_gpu is not None:
            _pack_slurm_gpu(ex, opts, per_gpu, warm)
        _configure_slurm(ex, opts)
    return WarmPool(ex, idle_s, tasks_per_job=ex.tasks_per_job) if warm else ex


def _jobs_per_gpu(kind: str, opts: Mapping[str, Any], job_bytes: int | None) -> int | None:
    """``jobs_per_gpu`` as a number (auto: from the card's memory and ``job_bytes``), None when not set."""
    value = parse_jobs_per_gpu(opts.get("jobs_per_gpu"), kind)
    if value != "auto":
        return value  # type: ignore[return-value]
    if job_bytes is None:
        log.info("jobs_per_gpu auto: no memory estimate for these jobs, one job per GPU")
        return 1
    card = _card_bytes(kind, opts)
    k = jobs_per_card(card, job_bytes)
    log.info("jobs_per_gpu auto: %d (card %.1f GiB, largest job %.2f GiB + CUDA context)", k, card / 2**30,
             job_bytes / 2**30)
    return k


def _card_bytes(kind: str, opts: Mapping[str, Any]) -> int:
    if opts.get("gpu_mem_gb") is not None:
        return int(number_option(opts, "gpu_mem_gb", kind, default=0) * 1e9)
    import torch

    if not torch.cuda.is_available():
        raise CampaignError(f"executor ({kind}): jobs_per_gpu auto needs the GPU's memory and this machine has no "
                            f"GPU to ask: add gpu_mem_gb (e.g. 80 for an 80 GB card) or give jobs_per_gpu a number")
    gpus = opts.get("visible_gpus") or [0]
    return min(torch.cuda.get_device_properties(int(g)).total_memory for g in gpus)


def _pack_local_gpus(ex: ArborsegExecutor, opts: dict[str, Any], per_gpu: int) -> None:
    """Local jobs get one card each, at most ``per_gpu`` per card; ``workers`` defaults to ``per_gpu x cards``."""
    if int_option(opts, "gpus_per_node", "local", default=1, minimum=0) != 1:
        raise CampaignError("executor (local): jobs_per_gpu gives each job one GPU; drop gpus_per_node or set it to 1")
    gpus = local_gpus(opts.get("visible_gpus"))
    slots = GpuSlots(gpus, per_gpu, lambda job: (p := local_process(job)) is not None and p.poll() is None)
    most = per_gpu * len(slots.gpus)
    if "workers" not in opts:
        ex.workers = most
    elif ex.workers > most:
        log.info("local executor: workers %d > jobs_per_gpu %d x %d GPU(s): %d jobs at once", ex.workers, per_gpu,
                 len(slots.gpus), most)
        ex.workers = most
    ex.gpu_slots = slots
    opts.pop("gpus_per_node", None)
    opts.pop("visible_gpus", None)  # chosen job by job


def _pack_slurm_gpu(ex: ArborsegExecutor, opts: dict[str, Any], per_gpu: int, warm: bool) -> None:
    """Each SLURM job holds one GPU and runs ``per_gpu`` warm workers on it as tasks."""
    if not warm:
        raise CampaignError("executor (slurm): jobs_per_gpu needs warm_workers: true (one SLURM job then runs "
                            "jobs_per_gpu workers on its GPU); without it, ask your cluster for GPU shards or MPS "
                            "through additional_parameters")
    if int_option(opts, "gpus_per_node", "slurm", default=1, minimum=0) != 1:
        raise CampaignError("executor (slurm): jobs_per_gpu shares one GPU per SLURM job; set gpus_per_node: 1")
    opts["gpus_per_node"] = 1
    ex.tasks_per_job = per_gpu
    if ex.workers % per_gpu:
        rounded = -(-ex.workers // per_gpu) * per_gpu
        log.info("slurm executor: workers %d rounded up to %d (%d per GPU job)", ex.workers, rounded, per_gpu)
        ex.workers = rounded


def _configure_local(ex: ArborsegExecutor, opts: dict[str, Any]) -> None:
    timeout_min = number_option(opts, "timeout_min", "local", default=DEFAULT_LOCAL_TIMEOUT_MIN)
    workers = ex.workers
    ncpu = _cpu_count()
    threads = int_option(opts, "threads_per_job", "local", default=max(1, ncpu // workers), minimum=1)
    if threads * workers > ncpu:
        log.warning("local executor: %d workers x %d threads > %d CPUs (oversubscribed)", workers, threads, ncpu)
    delay = int_option(opts, "signal_delay_s", "local", default=_default_signal_delay(timeout_min), minimum=0)
    _check_delay(delay, timeout_min, "local")
    params: dict[str, Any] = {}
    if "gpus_per_node" in opts:
        params["gpus_per_node"] = int_option(opts, "gpus_per_node", "local", default=0, minimum=0)
    try:
        ex.update_parameters(**params)
        inner = inner_executor(ex)  # float minutes and signal_delay_s only reach LocalExecutor directly
        inner.update_parameters(timeout_min=timeout_min, signal_delay_s=delay)
        if "visible_gpus" in opts:
            inner.update_parameters(visible_gpus=tuple(int(g) for g in opts["visible_gpus"]))
    except (ValueError, TypeError, AssertionError, NameError) as e:
        raise CampaignError(f"executor (local): {e}") from None
    ex.threads_per_job = threads
    ex.job_env = {**_thread_env(threads), **env_option(opts, "local")}
    log.debug("local executor: timeout %.4g min, %d workers x %d threads", timeout_min, workers, threads)


def _configure_slurm(ex: ArborsegExecutor, opts: dict[str, Any]) -> None:
    timeout_min = number_option(opts, "timeout_min", "slurm", default=DEFAULT_SLURM_TIMEOUT_MIN)
    timeout_int = max(1, math.ceil(timeout_min))
    if timeout_int != timeout_min:
        log.info("slurm executor: timeout_min %.4g rounded up to %d (SLURM counts whole minutes)",
                 timeout_min, timeout_int)
    delay = int_option(opts, "signal_delay_s", "slurm", default=_default_signal_delay(timeout_int), minimum=0)
    _check_delay(delay, timeout_int, "slurm")
    params: dict[str, Any] = {"timeout_min": timeout_int, "slurm_signal_delay_s": delay}
    if ex.tasks_per_job > 1:
        params["tasks_per_node"] = ex.tasks_per_job
    cpus: int | None = None
    if "cpus_per_task" in opts:
        cpus = params["cpus_per_task"] = int_option(opts, "cpus_per_task", "slurm", default=1, minimum=1)
    if "gpus_per_node" in opts:
        params["gpus_per_node"] = int_option(opts, "gpus_per_node", "slurm", default=0, minimum=0)
    if "mem_gb" in opts:
        params["mem_gb"] = number_option(opts, "mem_gb", "slurm", default=0)
    if "array_parallelism" in opts:
        params["slurm_array_parallelism"] = int_option(opts, "array_parallelism", "slurm", default=1, minimum=1)
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
    threads = int_option(opts, "threads_per_job", "slurm", default=cpus or 1, minimum=1)
    env = {**_thread_env(threads), **env_option(opts, "slurm")}
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
