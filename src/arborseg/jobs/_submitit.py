"""Every use of submitit's private API, in one place; verified with submitit 1.5.4 (pinned ``>=1.5.4,<1.6``).

* ``AutoExecutor._executor``: the wrapped ``LocalExecutor``; float ``timeout_min``, ``signal_delay_s``
  and ``visible_gpus`` reach it only directly.
* ``AutoExecutor._internal_process_submissions``: the hook every submission (single, batch, array) goes
  through; ``ArborsegExecutor`` overrides it to set the jobs' environment and signal dispositions.
* ``LocalJob._process``: the controller's ``Popen`` (its return code tells a cancel from a crash; it is
  None for a job reattached by a later driver).

:func:`missing_private_api` lists what of this has vanished (a test calls it after every upgrade).
Everything else arborseg uses of submitit is public: ``DebugJob.submission()``, the SLURM watcher's
``get_info``/``update``/``get_state``, ``JobPaths``.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path
from typing import Any

VERIFIED = "submitit>=1.5.4,<1.6"


def inner_executor(executor: Any) -> Any:
    """The cluster-specific executor inside a submitit ``AutoExecutor``."""
    return executor._executor


def local_process(job: Any) -> subprocess.Popen | None:
    """The controller process of a local job submitted by this process (None once reattached)."""
    return getattr(job, "_process", None)


def kind_of(job: Any) -> str:
    """"debug", "local" or "slurm" for a submitit job; :class:`TypeError` for anything else."""
    from submitit.local.debug import DebugJob
    from submitit.local.local import LocalJob
    from submitit.slurm.slurm import SlurmJob

    for cls, kind in ((DebugJob, "debug"), (LocalJob, "local"), (SlurmJob, "slurm")):
        if isinstance(job, cls):
            return kind
    raise TypeError(f"not a submitit debug/local/slurm job: {job!r}")


def missing_private_api() -> list[str]:
    """The private submitit names used here that this submitit lacks (empty when all is well)."""
    import submitit
    from submitit.local.local import LocalExecutor, LocalJob

    missing = []
    with tempfile.TemporaryDirectory() as tmp:
        ex = submitit.AutoExecutor(folder=Path(tmp) / "%j", cluster="local")
        if not isinstance(getattr(ex, "_executor", None), LocalExecutor):
            missing.append("AutoExecutor._executor (a LocalExecutor for cluster='local')")
        else:
            try:
                ex._executor.update_parameters(timeout_min=0.5, signal_delay_s=7, visible_gpus=(0,))
                if ex._executor.parameters.get("timeout_min") != 0.5:
                    missing.append("LocalExecutor.update_parameters(timeout_min=<float>)")
            except Exception as exc:
                missing.append(f"LocalExecutor.update_parameters(timeout_min, signal_delay_s, visible_gpus): {exc}")
        if not callable(getattr(type(ex), "_internal_process_submissions", None)):
            missing.append("AutoExecutor._internal_process_submissions")
        job: Any = LocalJob(folder=Path(tmp) / "%j", job_id="1")
        if "_process" not in vars(job):
            missing.append("LocalJob._process")
    return missing
