"""Sampling a search space through an Optuna trial.

Every value drawn for a tree becomes an Optuna parameter named by its path in the space, so the
run table and optuna-dashboard see them. Structural values can be held fixed (refinement of a
tree), and enqueued values are replayed exactly (a tree sampled at random, registered in Optuna).
"""

from __future__ import annotations

from typing import Any

import optuna


class OptunaDraw:
    """A :class:`~arborseg.space.values.Draw` backed by ``trial.suggest_*``.

    ``fixed`` values (path -> value) are returned as they are and not suggested (the refinement
    phase fixes the structural values of a tree)."""

    def __init__(self, trial: optuna.trial.BaseTrial, fixed: dict[str, Any] | None = None) -> None:
        self.trial = trial
        self.fixed = fixed or {}
        self.record: dict[str, Any] = {}
        self.structural: set[str] = set()

    def _keep(self, path: str, value: Any, structural: bool) -> Any:
        self.record[path] = value
        if structural:
            self.structural.add(path)
        return value

    def int(self, path: str, low: int, high: int, log: bool, step: int, structural: bool) -> int:
        if path in self.fixed:
            return self._keep(path, self.fixed[path], structural)
        return self._keep(path, self.trial.suggest_int(path, low, high, log=log, step=step), structural)

    def float(self, path: str, low: float, high: float, log: bool, structural: bool) -> float:
        if path in self.fixed:
            return self._keep(path, self.fixed[path], structural)
        if low == high:
            return self._keep(path, low, structural)
        return self._keep(path, self.trial.suggest_float(path, low, high, log=log), structural)

    def choice(self, path: str, options: tuple[Any, ...], structural: bool) -> Any:
        if path in self.fixed:
            return self._keep(path, self.fixed[path], structural)
        return self._keep(path, self.trial.suggest_categorical(path, list(options)), structural)


def ask_replayed(study: optuna.Study, space: Any, choices: dict[str, Any],
                 user_attrs: dict[str, Any]) -> tuple[optuna.trial.Trial, Any]:
    """(a RUNNING trial, the tree) for a tree whose draws (``choices``) are known: the trial holds every draw as an
    Optuna parameter with its distribution, like ``enqueue_trial`` + ``ask`` + one ``suggest_*`` per value, but
    created in one storage transaction (:func:`~arborseg.campaign.storage.create_trial`) instead of one per
    parameter (most of the driver's time per trial on an RDB storage, benchmarks/bench_scale.py). ``space.sample``
    replays the draws on an :class:`optuna.trial.FixedTrial` first, which records their distributions."""
    import datetime

    from optuna.trial import FrozenTrial, TrialState

    from arborseg.campaign.storage import create_trial

    fixed = optuna.trial.FixedTrial(dict(choices))
    tree = space.sample(OptunaDraw(fixed))
    template = FrozenTrial(number=-1, state=TrialState.RUNNING, value=None,
                           datetime_start=datetime.datetime.now(), datetime_complete=None, params=fixed.params,
                           distributions=fixed.distributions, user_attrs=dict(user_attrs), system_attrs={},
                           intermediate_values={}, trial_id=-1)
    return optuna.trial.Trial(study, create_trial(study, template)), tree
