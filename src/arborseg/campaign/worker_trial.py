"""The Optuna trial seen from both sides: a job re-attaches to the trial its driver asked.

The driver asks a trial (``study.ask()``) and hands its job the storage URL, the study name, the
trial id and the study's pruner (:class:`~arborseg.campaign.job.TrialJob`). Inside the job::

    trial = attach_trial(storage_url, study_name, trial_id=trial_id, pruner=pruner)
    reporter = OptunaReporter(trial)         # NullReporter() outside a campaign (arborseg.train.result)
    for step in ...:
        if reporter.report(step, val_score):  # intermediate value -> storage; True: prune now
            break

The job never tells the final state: the driver does (``study.tell``) when the job's result comes
back, so that COMPLETE/PRUNED/FAIL are decided in one place.

Checked with optuna 5.0: ``optuna.trial.Trial(study, trial_id)`` works on a study loaded in another
process (RDB, journal); ``report`` writes through to the storage at once (the driver sees the values),
and ``should_prune`` asks ``study.pruner`` on the freshly read trial and the COMPLETE trials of the
storage. The pruner is *not* stored in an Optuna storage, so the driver passes its own pruner; without
one Optuna's default (``MedianPruner()``) would apply.

Optuna's private API is used in one place, at the end of this module (:func:`trial_id`, :func:`live_trial`);
:func:`missing_private_api` lists what of it has vanished.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

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
            study_id = storage.get_study_id_from_name(study_name)
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, int(trial_number or 0))
        except KeyError:
            raise CampaignError(
                f"trial number {trial_number} not found in study {study_name!r} ({redact(storage_url)})"
            ) from None
    try:
        frozen = storage.get_trial(int(trial_id))
    except KeyError:
        raise CampaignError(f"trial id {trial_id} not found in storage {redact(storage_url)}") from None
    if frozen.state != optuna.trial.TrialState.RUNNING:
        raise CampaignError(
            f"trial {frozen.number} of study {study_name!r} is {frozen.state.name}, not RUNNING: the driver "
            "already finished it (a resumed driver marks trials of lost jobs FAIL); this job's results are "
            "not recorded"
        )
    return optuna.trial.Trial(study, int(trial_id))


class OptunaReporter:
    """A :class:`~arborseg.train.result.Reporter` backed by a live Optuna trial (see :func:`attach_trial`).

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
            except Exception as e:
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


# ------------------------------------------------------------------------- Optuna's private API
def trial_id(trial: optuna.trial.Trial | optuna.trial.FrozenTrial) -> int:
    """The storage-wide id of a trial (``trial._trial_id``): it names trial folders and lets jobs attach."""
    return int(trial._trial_id)


def live_trial(study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> optuna.trial.Trial:
    """A live :class:`optuna.trial.Trial` for a RUNNING trial read back from the storage (a resumed driver)."""
    import optuna

    return optuna.trial.Trial(study, trial_id(frozen))


def tell(study: optuna.Study, trial: optuna.trial.Trial, value: float | None = None,
         state: optuna.trial.TrialState | None = None) -> None:
    """``study.tell(trial, value, state=state)`` without reading the finished trial back: optuna's ``tell`` returns a
    deep copy of it, one more storage read per trial (about 10 ms of driver CPU on PostgreSQL, bench_scale) that the
    driver never uses. Falls back to ``study.tell`` where optuna lacks the private function."""
    try:
        from optuna.study._tell import _tell_with_warning
    except ImportError:  # pragma: no cover - another optuna
        study.tell(trial, value, state=state)
        return
    _tell_with_warning(study=study, trial=trial, value_or_values=value, state=state)


def missing_private_api() -> list[str]:
    """The private Optuna names used here that this Optuna lacks (empty when all is well)."""
    import optuna

    missing = []
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    asked = study.ask()
    frozen = study.get_trials(deepcopy=False)[0]
    for obj, name in ((asked, "Trial._trial_id"), (frozen, "FrozenTrial._trial_id")):
        if not isinstance(getattr(obj, "_trial_id", None), int):
            missing.append(name)
    if not missing:
        try:
            if live_trial(study, frozen).number != asked.number:
                missing.append("optuna.trial.Trial(study, trial_id) gives another trial")
        except Exception as exc:
            missing.append(f"optuna.trial.Trial(study, trial_id): {exc}")
    try:
        from optuna.study._tell import _tell_with_warning  # noqa: F401

        tell(study, asked, 1.0)
        if study.trials[0].value != 1.0:
            missing.append("optuna.study._tell._tell_with_warning stores another value")
    except Exception as exc:
        missing.append(f"optuna.study._tell._tell_with_warning: {exc}")
    return missing
