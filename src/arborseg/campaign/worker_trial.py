"""Inside a job: re-attach to the Optuna trial the driver created with ``study.ask()``.

The driver asks a trial, then hands the job a small picklable :class:`TrialRef` (storage URL, study
name, trial number, the study's pruner). The job process (submitit local or SLURM worker, or the
driver itself under the debug executor) calls :meth:`TrialRef.reporter` and, while training::

    reporter = ref.reporter()                 # or NullReporter() outside a campaign
    for epoch in ...:
        if reporter.report(epoch, val_score):  # intermediate value -> storage; True: prune now
            break
    reporter.set_user_attr("n_params", n)

The job never tells the final state: the driver does (``study.tell``) when the job's result comes
back, so that COMPLETE/PRUNED/FAIL are decided in one place.

Checked with optuna 5.0: ``optuna.trial.Trial(study, trial_id)`` works on a study loaded in another
process (RDB, journal); ``report`` writes through to the storage at once (the driver sees the values),
and ``should_prune`` asks ``study.pruner`` on the freshly read trial and the COMPLETE trials of the
storage. The pruner is *not* stored in an Optuna storage, so the driver passes its own pruner
(pickled inside the :class:`TrialRef`); without one Optuna's default (``MedianPruner()``) would apply.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from arborseg.errors import CampaignError
from arborseg.log import get_logger

if TYPE_CHECKING:
    import optuna

log = get_logger(__name__)


def attach_trial(
    storage_url: str,
    study_name: str,
    trial_number: int | None = None,
    *,
    trial_id: int | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
) -> optuna.trial.Trial:
    """Return a live :class:`optuna.trial.Trial` for a trial the driver created with ``ask()``.

    Give exactly one of ``trial_number`` (per-study ``trial.number``) or ``trial_id`` (the storage's
    global ``trial._trial_id``). ``pruner`` should be the driver's pruner (``study.pruner``); it decides
    :meth:`~optuna.trial.Trial.should_prune`. Raises :class:`CampaignError` if the study or the trial
    does not exist, or the trial is no longer RUNNING (finished or reconciled by the driver).
    """
    import optuna

    from arborseg.campaign.storage import open_storage, redact

    if (trial_number is None) == (trial_id is None):
        raise CampaignError("attach_trial: give exactly one of trial_number or trial_id")
    storage = open_storage(storage_url, cached=True)
    try:
        study = optuna.load_study(
            study_name=study_name,
            storage=storage,
            pruner=pruner,
            # the sampler only matters if the job suggests a parameter the driver did not: keep it cheap
            sampler=optuna.samplers.RandomSampler(),
        )
    except KeyError:
        raise CampaignError(f"study {study_name!r} not found in storage {redact(storage_url)}") from None
    if trial_id is None:
        try:
            trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, int(trial_number))
        except KeyError:
            raise CampaignError(
                f"trial number {trial_number} not found in study {study_name!r} ({redact(storage_url)})"
            ) from None
    try:
        frozen = study._storage.get_trial(int(trial_id))
    except KeyError:
        raise CampaignError(f"trial id {trial_id} not found in storage {redact(storage_url)}") from None
    if frozen.state != optuna.trial.TrialState.RUNNING:
        raise CampaignError(
            f"trial {frozen.number} of study {study_name!r} is {frozen.state.name}, not RUNNING: the driver "
            "already finished it (a resumed driver marks trials of lost jobs FAIL); this job's results are "
            "not recorded"
        )
    return optuna.trial.Trial(study, int(trial_id))


@runtime_checkable
class Reporter(Protocol):
    """What training code talks to: intermediate scores in, a prune decision out."""

    def report(self, step: int, value: float) -> bool:
        """Record ``value`` at ``step`` (>= 0, increasing); return True if the trial should stop now."""
        ...

    def set_user_attr(self, key: str, value: Any) -> None:
        """Attach a JSON-serialisable value to the trial (kept in the run table)."""
        ...


@dataclass
class NullReporter:
    """A :class:`Reporter` for runs outside a campaign (``arborseg train``): remembers, never prunes."""

    values: dict[int, float] = field(default_factory=dict)
    user_attrs: dict[str, Any] = field(default_factory=dict)

    def report(self, step: int, value: float) -> bool:
        self.values[int(step)] = float(value)
        return False

    def set_user_attr(self, key: str, value: Any) -> None:
        self.user_attrs[key] = value


class OptunaReporter:
    """A :class:`Reporter` backed by a live Optuna trial (see :func:`attach_trial`).

    Storage hiccups (a locked SQLite file, a dropped PostgreSQL connection) are retried a few times
    and then logged, never raised: a training run is not lost because one intermediate value was.
    If the driver has finished the trial meanwhile (e.g. it was marked FAIL), ``report`` returns True
    so the job stops.
    """

    def __init__(self, trial: optuna.trial.Trial, retries: int = 3, retry_delay_s: float = 1.0) -> None:
        self.trial = trial
        self.retries = retries
        self.retry_delay_s = retry_delay_s
        self.pruned_at: int | None = None

    @property
    def number(self) -> int:
        return self.trial.number

    def report(self, step: int, value: float) -> bool:
        from optuna.exceptions import UpdateFinishedTrialError

        try:
            self._retry(self.trial.report, float(value), int(step))
            prune = bool(self._retry(self.trial.should_prune))
        except UpdateFinishedTrialError:
            log.warning("trial %d was finished by the driver meanwhile: stopping", self.trial.number)
            return True
        except _StorageError as e:
            log.warning("trial %d: could not record step %d (%s); going on", self.trial.number, step, e)
            return False
        if prune and self.pruned_at is None:
            self.pruned_at = int(step)
            log.info("trial %d: pruner says stop at step %d (value %.4g)", self.trial.number, step, value)
        return prune

    def set_user_attr(self, key: str, value: Any) -> None:
        from optuna.exceptions import UpdateFinishedTrialError

        try:
            self._retry(self.trial.set_user_attr, key, value)
        except (UpdateFinishedTrialError, _StorageError) as e:
            log.warning("trial %d: user attribute %r not recorded (%s)", self.trial.number, key, e)

    def _retry(self, fn, *args):
        for attempt in range(self.retries):
            try:
                return fn(*args)
            except Exception as e:  # noqa: BLE001 - only storage errors are retried
                if not _is_storage_error(e) or attempt == self.retries - 1:
                    if _is_storage_error(e):
                        raise _StorageError(str(e).splitlines()[0] if str(e) else type(e).__name__) from e
                    raise
                time.sleep(self.retry_delay_s * (attempt + 1))
        return None  # pragma: no cover


class _StorageError(Exception):
    pass


def _is_storage_error(e: BaseException) -> bool:
    """Transient storage trouble: RDB errors (optuna wraps them in StorageInternalError), file errors."""
    from optuna.exceptions import StorageInternalError

    if isinstance(e, (StorageInternalError, OSError)):
        return True
    try:
        from sqlalchemy.exc import InterfaceError, OperationalError
    except ImportError:  # pragma: no cover
        return False
    return isinstance(e, (OperationalError, InterfaceError))


@dataclass(frozen=True)
class TrialRef:
    """A picklable pointer from a job to the driver's trial: give it to ``executor.submit``.

    ``pruner`` is the driver's ``study.pruner`` (Optuna pruners are plain picklable objects).
    """

    storage_url: str
    study_name: str
    number: int
    pruner: Any = None

    @classmethod
    def from_trial(cls, trial: optuna.trial.Trial, storage_url: str) -> TrialRef:
        """Build from a trial the driver just got from ``study.ask()``."""
        return cls(storage_url, trial.study.study_name, trial.number, trial.study.pruner)

    def attach(self) -> optuna.trial.Trial:
        return attach_trial(self.storage_url, self.study_name, self.number, pruner=self.pruner)

    def reporter(self) -> OptunaReporter:
        return OptunaReporter(self.attach())


def reporter_for(ref: TrialRef | None) -> Reporter:
    """The reporter a job should use: an :class:`OptunaReporter` for a campaign trial, else a null one."""
    return NullReporter() if ref is None else ref.reporter()


def in_job() -> bool:
    """True inside a submitit job process (local or SLURM), False in the driver (and the debug executor)."""
    return os.environ.get("SUBMITIT_EXECUTOR", "") in ("local", "slurm")
