"""What every training job does inside its process: log to a file, load its data, fail on its own terms."""

from __future__ import annotations

import contextlib
import json
import logging
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from arborseg.errors import ArborsegError
from arborseg.train.result import TrialOutcome


@contextlib.contextmanager
def job_log(path: Path) -> Iterator[None]:
    """Send arborseg's log records (INFO and up) to ``path`` while the block runs."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("arborseg")
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


def failure(exc: BaseException, out: Path) -> TrialOutcome:
    """The FAIL outcome of a job's own exception: arborseg errors as they are, others with their first line
    and the traceback written to ``out/error.txt``."""
    if isinstance(exc, ArborsegError):
        return TrialOutcome.failed(str(exc))
    (out / "error.txt").write_text("".join(traceback.format_exception(exc)))
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return TrialOutcome.failed(f"{type(exc).__name__}: {first[:300]} (traceback: {out / 'error.txt'})")


#: the data configs this process has opened (warm workers run job after job on the same volumes)
_DATA_CACHE: dict[str, Any] = {}
_DATA_CACHE_SIZE = 4


def load_data(data: Any):
    """The job's :class:`~arborseg.data.DataConfig` from what the driver handed it: a data YAML path, or
    ``(mapping, base_dir)`` for data written inline in a campaign YAML. Kept per process (a changed YAML file
    is read again), so that a warm worker opens the volumes once for all its jobs."""
    from arborseg.data import DataConfig, load_data_config

    key = _data_key(data)
    cached = _DATA_CACHE.get(key) if key else None
    if cached is not None:
        return cached
    if isinstance(data, (list, tuple)):
        mapping, base_dir = data
        config = DataConfig.from_dict(mapping, source="campaign", base_dir=base_dir, key_prefix="data",
                                      check_labels=False)
    else:
        config = load_data_config(data, check_labels=False)
    if key:
        if len(_DATA_CACHE) >= _DATA_CACHE_SIZE:
            _DATA_CACHE.pop(next(iter(_DATA_CACHE)))
        _DATA_CACHE[key] = config
    return config


def _data_key(data: Any) -> str | None:
    """What identifies ``data``: the YAML's path and modification time, or the inline mapping's text."""
    try:
        if isinstance(data, (list, tuple)):
            mapping, base_dir = data
            return "inline:" + json.dumps(mapping, sort_keys=True, default=str) + f"@{base_dir}"
        path = Path(data).resolve()
        return f"{path}@{path.stat().st_mtime_ns}"
    except (OSError, TypeError, ValueError):
        return None
