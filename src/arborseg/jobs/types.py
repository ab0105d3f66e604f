"""The two small interfaces the scheduler needs of submitit: a job and an executor."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol


class Job(Protocol):
    """A submitted job (submitit's ``DebugJob``, ``LocalJob``, ``SlurmJob``)."""

    @property
    def job_id(self) -> str: ...

    @property
    def paths(self) -> Any:
        """Its files: ``stderr``, ``stdout``, ``result_pickle``, ``folder``."""
        ...

    def cancel(self, check: bool = True) -> None: ...


class Executor(Protocol):
    """What ``make_executor`` returns: submits job functions of one ``kind``, ``workers`` at a time."""

    kind: str
    workers: int

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Job: ...

    def batch(self) -> AbstractContextManager[None]: ...
