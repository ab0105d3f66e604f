"""What a training job hands back, and what training reports on the way: torch-free, typed, frozen.

A job ends in a :class:`TrialOutcome`: its :class:`ResultState` (COMPLETE, PRUNED or FAIL, as Optuna's
``TrialState``), a one-line ``reason`` when it did not complete, and the :class:`TrialResult` when it did.
Whoever reads an outcome back from another process goes through :func:`read_outcome`, which never
raises: a value that is not a well-formed outcome (a missing key, a wrong type, something else entirely)
becomes a FAIL outcome that says what was wrong, so it fails that one trial, never the campaign.

While training, the trainer talks to a :class:`Reporter` (intermediate scores in, a prune decision out);
:class:`NullReporter` serves runs outside a campaign; :class:`TrialPruned` stops a pruned trial.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any, Protocol, runtime_checkable

from arborseg.errors import ArborsegError


class ResultState(str, enum.Enum):
    """How a trial (or an ensemble member) ended; the values are what run folders and Optuna store.

    A ``str``: it compares equal to, prints as and is written to JSON as its value ("COMPLETE", ...).
    """

    COMPLETE = "COMPLETE"
    PRUNED = "PRUNED"
    FAIL = "FAIL"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class MalformedResult(ArborsegError):
    """A job returned something that is not a well-formed :class:`TrialOutcome`."""


class TrialPruned(ArborsegError):
    """Raised when the pruner stops a trial early (the campaign records it as PRUNED)."""


@dataclass(frozen=True)
class TrialResult:
    """The numbers of a trained and scored tree that a campaign keeps with its trial.

    ``record`` is the whole ``metrics.json`` record the trainer wrote; the fields are checked copies of
    the parts the driver stores.
    """

    objective_value: float | None
    params: int
    flops_per_voxel: float
    train_seconds: float
    steps: int
    seed: int
    regions: Mapping[str, Mapping[str, Any]]
    record: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_record(cls, record: Any) -> TrialResult:
        """Check and wrap the record ``train_and_score`` returns; :class:`MalformedResult` names what is wrong."""
        if not isinstance(record, Mapping):
            raise MalformedResult(f"the training result is a {type(record).__name__}, not a mapping")
        missing = [k for k in ("objective_value", *_RESULT_TYPES) if k not in record]
        if missing:
            raise MalformedResult(f"the training result lacks {', '.join(missing)}")
        result = cls(objective_value=record["objective_value"], params=record["params"],
                     flops_per_voxel=record["flops_per_voxel"], train_seconds=record["train_seconds"],
                     steps=record["steps"], seed=record["seed"], regions=record["regions"], record=dict(record))
        result.check()
        return result

    def check(self) -> None:
        """Raise :class:`MalformedResult` if a field has the wrong type."""
        value = self.objective_value
        if value is not None and not _is_real(value):
            raise MalformedResult(f"objective_value is {value!r}, not a number")
        for key, kind in _RESULT_TYPES.items():
            got = getattr(self, key)
            ok = _is_int(got) if kind is int else _is_real(got) if kind is float else isinstance(got, Mapping)
            if not ok:
                raise MalformedResult(f"{key} is {type(got).__name__} {_short(got)}, not {kind.__name__}")


_RESULT_TYPES: dict[str, type] = {"params": int, "flops_per_voxel": float, "train_seconds": float, "steps": int,
                                  "seed": int, "regions": dict}


@dataclass(frozen=True)
class TrialOutcome:
    """How one trial job ended: ``state``, a ``reason`` (PRUNED, FAIL) and the ``result`` (COMPLETE)."""

    state: ResultState
    reason: str = ""
    result: TrialResult | None = None

    def __post_init__(self) -> None:
        self.check()

    @classmethod
    def complete(cls, record: Mapping[str, Any] | TrialResult) -> TrialOutcome:
        result = record if isinstance(record, TrialResult) else TrialResult.from_record(record)
        return cls(ResultState.COMPLETE, result=result)

    @classmethod
    def pruned(cls, reason: str) -> TrialOutcome:
        return cls(ResultState.PRUNED, reason=reason)

    @classmethod
    def failed(cls, reason: str) -> TrialOutcome:
        return cls(ResultState.FAIL, reason=reason)

    @property
    def value(self) -> float | None:
        """The objective value of a COMPLETE outcome (None otherwise, or when the trainer had none)."""
        return None if self.result is None else self.result.objective_value

    @property
    def has_value(self) -> bool:
        """True when there is an objective value and it is not NaN."""
        value = self.value
        return value is not None and not (isinstance(value, float) and math.isnan(value))

    def check(self) -> None:
        """Raise :class:`MalformedResult` unless the fields agree with each other and have the right types."""
        if not isinstance(self.state, ResultState):
            raise MalformedResult(f"state is {self.state!r}, not one of {', '.join(ResultState)}")
        if not isinstance(self.reason, str):
            raise MalformedResult(f"reason is {type(self.reason).__name__}, not a string")
        if self.state == ResultState.COMPLETE:
            if not isinstance(self.result, TrialResult):
                raise MalformedResult(f"a COMPLETE outcome needs a TrialResult, not {_short(self.result)}")
            self.result.check()


def read_outcome(value: Any, what: str = "trial") -> TrialOutcome:
    """``value`` (what a job returned) as a checked :class:`TrialOutcome`; never raises.

    Anything else becomes a FAIL outcome whose reason says what was wrong and names ``what``.
    """
    try:
        if isinstance(value, Mapping) and "state" in value:  # the plain form of jobs older than this module
            return _from_mapping(value)
        if not isinstance(value, TrialOutcome):
            return TrialOutcome.failed(f"the job returned {_short(value)}, not a {what} result")
        value.check()
    except MalformedResult as exc:
        return TrialOutcome.failed(f"the job returned a malformed {what} result: {exc}")
    return value


def _from_mapping(value: Mapping[str, Any]) -> TrialOutcome:
    try:
        state = ResultState(value["state"])
    except (ValueError, TypeError):
        raise MalformedResult(f"state is {_short(value['state'])}, not one of {', '.join(ResultState)}") from None
    if state == ResultState.COMPLETE:
        if "result" not in value:
            raise MalformedResult("a COMPLETE result lacks its 'result' record")
        return TrialOutcome.complete(value["result"])
    return TrialOutcome(state, reason=value.get("reason", ""))


# ------------------------------------------------------------------------------------- reporting
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


def _is_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
