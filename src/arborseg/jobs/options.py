"""The ``executor:`` options of a campaign: kinds, names, defaults and checks (no submitit import).

``DEFAULT_WORKERS`` is the one default of ``workers`` (jobs in flight at once) for every kind; the
campaign driver, ensemble members and the local executor's thread division all read it through
:func:`workers_of`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from arborseg.errors import CampaignError

KINDS = ("debug", "local", "slurm")

#: jobs in flight at once when ``workers`` is not given (debug jobs run in the driver: always one)
DEFAULT_WORKERS = {"debug": 1, "local": 2, "slurm": 4}

_COMMON = {
    "timeout_min": "wall-clock limit of one job in minutes (with warm_workers: of one worker's life)",
    "threads_per_job": "torch/OpenMP CPU threads of one job",
    "env": "extra environment variables for the jobs (a mapping)",
    "warm_workers": "true: run jobs in long-lived worker jobs that take task after task (torch imported and data "
                    "opened once per worker; see arborseg.jobs.warm); default false: one job per task",
    "worker_idle_s": "seconds a warm worker waits for a task before it leaves (default 60)",
    "jobs_per_gpu": "jobs sharing one GPU (an integer, or auto: from the card's memory and the jobs' estimated "
                    "training memory); see arborseg.jobs.gpus",
    "gpu_mem_gb": "memory of one GPU in GB, for jobs_per_gpu: auto where this machine has no GPU to ask",
}
LOCAL_OPTIONS = {
    **_COMMON,
    "workers": f"jobs the driver runs at once (CPU threads are divided among them; default "
               f"{DEFAULT_WORKERS['local']}, with jobs_per_gpu: jobs_per_gpu x GPUs)",
    "signal_delay_s": "seconds before timeout_min at which the job is told to checkpoint",
    "gpus_per_node": "GPUs per job (default 0: submitit then hides every GPU, CUDA_VISIBLE_DEVICES='')",
    "visible_gpus": "GPU indices the jobs may use (list); each job gets the first gpus_per_node of them",
    "max_num_timeout": "requeues allowed for a Checkpointable job that times out (default 3)",
}
SLURM_OPTIONS = {
    **_COMMON,
    "workers": f"jobs the driver keeps in flight (default {DEFAULT_WORKERS['slurm']}; not passed to SLURM; with "
               f"jobs_per_gpu and warm_workers: worker processes, jobs_per_gpu to a SLURM job)",
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


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise CampaignError(f"executor kind {kind!r} is not one of {', '.join(KINDS)}")


def valid_options(kind: str) -> dict[str, str]:
    """The option names ``make_executor`` accepts for ``kind``, with one line of help each."""
    check_kind(kind)
    return {"debug": DEBUG_OPTIONS, "local": LOCAL_OPTIONS, "slurm": SLURM_OPTIONS}[kind]


def normalise_options(kind: str, opts: Mapping[str, Any]) -> dict[str, Any]:
    """``opts`` with a ``<kind>_`` prefix dropped; unknown names raise :class:`CampaignError` listing the valid ones."""
    valid = valid_options(kind)
    out: dict[str, Any] = {}
    bad = []
    for key, value in opts.items():
        name = str(key)
        prefix = f"{kind}_"
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


def warm_workers(kind: str, opts: Mapping[str, Any]) -> bool:
    """Whether jobs of ``kind`` run on warm workers (``warm_workers: true``; never for debug jobs)."""
    value = opts.get("warm_workers", False)
    if not isinstance(value, bool):
        raise CampaignError(f"executor ({kind}): warm_workers must be true or false, not {value!r}")
    return value and kind != "debug"


def record_kind(kind: str, opts: Mapping[str, Any]) -> str:
    """The kind a job record carries for jobs of ``kind`` with these options: ``warm-<kind>`` on warm workers."""
    return f"warm-{kind}" if warm_workers(kind, normalise_options(kind, opts)) else kind


def workers_of(kind: str, opts: Mapping[str, Any]) -> int:
    """Jobs in flight at once for ``kind`` and its options: ``workers``, else :data:`DEFAULT_WORKERS`."""
    check_kind(kind)
    if kind == "debug":
        return 1
    return int_option(opts, "workers", kind, default=DEFAULT_WORKERS[kind], minimum=1)


def number_option(opts: Mapping[str, Any], key: str, kind: str, default: float) -> float:
    if key not in opts or opts[key] is None:
        return default
    v = opts[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
        raise CampaignError(f"executor ({kind}): {key} must be a positive number, not {v!r}")
    return v


def int_option(opts: Mapping[str, Any], key: str, kind: str, default: int, minimum: int = 0) -> int:
    if key not in opts or opts[key] is None:
        return default
    v = opts[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise CampaignError(f"executor ({kind}): {key} must be an integer >= {minimum}, not {v!r}")
    return v


def env_option(opts: Mapping[str, Any], kind: str) -> dict[str, str]:
    env = opts.get("env") or {}
    if not isinstance(env, Mapping):
        raise CampaignError(f"executor ({kind}): env must be a mapping NAME: value")
    return {str(k): str(v) for k, v in env.items()}
