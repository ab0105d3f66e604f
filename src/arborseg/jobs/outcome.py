"""How a job ended, read without ever raising; finding the jobs of an earlier driver; cancelling.

:func:`job_state` and :func:`job_outcome` never raise: a cancelled, killed or crashed job becomes a
:class:`JobOutcome` with a one-line reason, never an exception in the driver. :func:`reattach_job` lets
a resumed driver find the jobs of a previous driver; :func:`cancel_job` stops a job whatever signal
dispositions the driver inherited (see the notes in :mod:`arborseg.jobs.executors`).
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import threading
import time
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from arborseg.errors import CampaignError
from arborseg.jobs._submitit import kind_of, local_process
from arborseg.jobs.options import check_kind
from arborseg.jobs.types import Job
from arborseg.log import get_logger

log = get_logger(__name__)

SACCT_MIN_INTERVAL_S = 1.0
#: seconds a local controller gets to stop on SIGINT before cancel_job kills it
CANCEL_GRACE_S = 5.0

#: normalised job states
ACTIVE_STATES = frozenset({"PENDING", "RUNNING", "REQUEUED", "UNKNOWN"})
FINISHED_STATES = frozenset({"DONE", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY"})


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


def job_state(job: Job) -> str:
    """Normalised state of a submitit job, never raising.

    One of PENDING, RUNNING, REQUEUED (preempted/requeued, will run again), UNKNOWN (not known to the
    scheduler yet) -- see ``ACTIVE_STATES`` -- or DONE, FAILED, CANCELLED, TIMEOUT, OUT_OF_MEMORY
    (``FINISHED_STATES``). DONE means the scheduler saw the job end normally; :func:`job_outcome`
    then says whether it left a result.
    """
    try:
        return _job_state(job)
    except Exception as e:
        log.debug("job_state(%s) failed: %s", getattr(job, "job_id", job), e)
        return "UNKNOWN"


def _job_state(job: Any) -> str:
    cached = getattr(job, "_arborseg_outcome", None)
    if cached is not None:
        return cached.state
    if _is_warm(job):
        return str(job.state())
    kind = kind_of(job)
    if kind == "debug":
        if job.submission().done():
            return "DONE"
        return "CANCELLED" if job.cancelled else "PENDING"
    if kind == "local":
        return _local_state(job)[0]
    return _slurm_state(job)[0]


def _local_state(job: Any) -> tuple[str, int | None]:
    """(state, controller return code or None)."""
    proc = local_process(job)
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
    if getattr(job, _CANCELLED, False):  # cancel_job had to kill it (or it was reattached: no return code)
        return "CANCELLED", rc
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
    # the unformatted submitit folder, /run/jobs/%j as on the cmdline (make_executor's folders end in %j)
    folder = str(Path(job.paths.folder).parent / "%j")
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
    known = bool(watcher.get_info(job.job_id, mode="cache"))  # registers the job with the watcher if needed
    with _sacct_lock:
        age = max_age_s if known else min(max_age_s, 0.5)
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
def job_outcome(job: Job, grace_s: float = 2.0) -> JobOutcome | None:
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
        if _is_warm(job):
            outcome = cast(Any, job).outcome()
        else:
            kind = kind_of(job)
            outcome = _debug_outcome(job) if kind == "debug" else _process_outcome(job, kind, grace_s)
        if outcome is not None:
            try:
                setattr(job, "_arborseg_outcome", outcome)  # noqa: B010 - an attribute of our own on submitit's job
            except Exception:
                pass
        return outcome
    except Exception as e:
        jid = str(getattr(job, "job_id", "?"))
        log.debug("job_outcome(%s) failed:\n%s", jid, traceback.format_exc())
        return JobOutcome(False, reason=f"could not read the outcome of job {jid}: {e}", state="FAILED", job_id=jid)


def _is_warm(job: Any) -> bool:
    """A task on warm workers (:class:`arborseg.jobs.warm.WarmJob`), which knows its own state and outcome."""
    from arborseg.jobs.warm import WarmJob

    return isinstance(job, WarmJob)


def wait_outcome(job: Job, timeout_s: float | None = None, poll_s: float = 0.5) -> JobOutcome | None:
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
        return JobOutcome(True, result=job.submission().result(), state="DONE", job_id=jid)
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
            reason = f"cancelled (controller got {_signame(-rc) if rc and rc < 0 else 'a signal'}) {where}"
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
            for _ in range(3):
                try:
                    with path.open("rb") as f:  # what submitit's own result reader does
                        return pickle.load(f)
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
        return signal.Signals(int(sig or 0)).name
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
def reattach_job(folder: Path | str, job_id: str, kind: str, task: int = 0) -> Job:
    """A job object for a job submitted by an earlier driver with ``make_executor(kind, folder, ...)``.

    Use :func:`job_state` / :func:`job_outcome` on it. SLURM jobs are looked up with sacct. Local jobs
    are found by their controller's pid (the job id) in ``/proc``, checked against the job folder so a
    reused pid does not count; a local job whose driver was killed with ``kill -9 <pid>`` keeps running
    and its result is found here (see the module notes). Debug jobs cannot be reattached. ``task``: one task of a
    SLURM job of several (its own result file; the job's state).
    """
    check_kind(kind)
    folder = Path(folder).expanduser().absolute() / "%j"
    if kind == "debug":
        raise CampaignError(f"debug job {job_id} ran inside the previous driver and cannot be reattached")
    if kind == "slurm":
        from submitit.slurm.slurm import SlurmJob

        return SlurmJob(folder=folder, job_id=str(job_id), tasks=(int(task),))
    from submitit.local.local import LocalJob

    return LocalJob(folder=folder, job_id=str(job_id))


# ------------------------------------------------------------------------------- cancelling
_CANCELLED = "_arborseg_cancelled"


def cancel_job(job: Job, grace_s: float = CANCEL_GRACE_S) -> None:
    """Cancel a job (also a reattached local one), never raising; see :func:`cancel_jobs`."""
    cancel_jobs([job], grace_s)


def cancel_jobs(jobs: Iterable[Job], grace_s: float = CANCEL_GRACE_S) -> None:
    """Cancel jobs, never raising; they then end CANCELLED.

    Debug and SLURM jobs are cancelled through submitit (SLURM: ``scancel``). A local job's controller
    gets SIGINT; one still running ``grace_s`` later (it inherited SIGINT as ignored, e.g. from a driver
    started with ``nohup ... &`` whose jobs were submitted outside the main thread, or by an older
    driver) is killed with its tasks (SIGKILL). Waits at most ``grace_s`` in all.
    """
    local: list[Any] = []
    for job in jobs:
        try:
            if _is_warm(job):
                job.cancel()
            elif kind_of(job) == "local":
                pid = _local_controller(job)
                if pid is not None:
                    setattr(job, _CANCELLED, True)
                    os.kill(pid, signal.SIGINT)
                    local.append(job)
            else:
                job.cancel(check=False)
        except Exception as e:
            log.warning("could not cancel job %s: %s", getattr(job, "job_id", job), e)
    deadline = time.monotonic() + grace_s
    for job in local:
        try:
            if not _wait_stopped(job, deadline):
                _kill_controller(job)
        except Exception as e:
            log.warning("could not stop job %s: %s", getattr(job, "job_id", job), e)


def _local_controller(job: Any) -> int | None:
    """The pid of a local job's controller while it runs, else None."""
    proc = local_process(job)
    if proc is not None:
        return proc.pid if proc.poll() is None else None
    return int(job.job_id) if _local_pid_alive(job) else None


def _wait_stopped(job: Any, deadline: float) -> bool:
    proc = local_process(job)
    if proc is not None:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            return True
        except subprocess.TimeoutExpired:
            return False
    while _local_pid_alive(job):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _kill_controller(job: Any) -> None:
    """SIGKILL a local job's controller and its tasks (children first listed, then all killed)."""
    pid = _local_controller(job)
    if pid is None:
        return
    tasks = _children(pid)
    log.warning("job %s: its controller ignored SIGINT (inherited from the driver); killing it", job.job_id)
    for p in [pid, *tasks]:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc = local_process(job)
    if proc is not None:
        proc.wait()


def _children(pid: int) -> list[int]:
    """Descendants of ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    out, todo = [], [pid]
    while todo:
        parent = todo.pop()
        kids = [p for p, pp in parents.items() if pp == parent]
        out += kids
        todo += kids
    return out
