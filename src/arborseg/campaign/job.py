"""What runs inside a submitit job: one trial, trained and scored, never raising for a trial's own failure.

The job returns ``{"state": COMPLETE|PRUNED|FAIL, ...}``. A NaN loss, out-of-memory or an
exception in a module becomes a FAIL with its reason (the traceback goes to ``error.txt`` in the
trial folder). Jobs killed or cancelled by the scheduler never return; the driver classifies
those. The job is Checkpointable: when SLURM preempts it or its time runs out, submitit requeues
it and it resumes from the trial folder's last checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from arborseg.jobs.executors import CheckpointableJob
from arborseg.errors import ArborsegError
from arborseg.log import get_logger

log = get_logger(__name__)


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


def failure(exc: BaseException, out: Path) -> dict[str, Any]:
    """The FAIL result of a job's own exception: arborseg errors as they are, others with their first line
    and the traceback written to ``out/error.txt``."""
    if isinstance(exc, ArborsegError):
        return {"state": "FAIL", "reason": str(exc)}
    (out / "error.txt").write_text("".join(traceback.format_exception(exc)))
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return {"state": "FAIL", "reason": f"{type(exc).__name__}: {first[:300]} (traceback: {out / 'error.txt'})"}


@dataclass
class TrialJob(CheckpointableJob):
    """Train and score one tree for one Optuna trial; artifacts go to ``out_dir``."""

    storage_url: str
    study_name: str
    trial_id: int
    tree_file: str
    data: Any  # a data YAML path, or (mapping, base_dir)
    settings: dict
    out_dir: str
    pruning: dict  # {"pruner": {...}, "eval_every": n, "steps": n}: the driver's pruner, rebuilt here

    def _load_data(self):
        from arborseg.data import DataConfig, load_data_config

        if isinstance(self.data, (list, tuple)):
            mapping, base_dir = self.data
            return DataConfig.from_dict(mapping, source="campaign", base_dir=base_dir, key_prefix="data",
                                        check_labels=False)
        return load_data_config(self.data, check_labels=False)

    def _reporter(self):
        from arborseg.campaign.driver import make_pruner
        from arborseg.campaign.worker_trial import OptunaReporter, attach_trial

        pruner = make_pruner(self.pruning["pruner"], self.pruning["eval_every"], self.pruning["steps"])
        return OptunaReporter(attach_trial(self.storage_url, self.study_name, trial_id=self.trial_id, pruner=pruner))

    def run(self) -> dict[str, Any]:
        from arborseg.train.settings import TrainSettings
        from arborseg.train.trainer import TrialPruned, train_and_score
        from arborseg.tree import ModuleTree

        out = Path(self.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with job_log(out / "trial.log"):
            try:
                settings = TrainSettings.from_dict(self.settings)
                tree = ModuleTree.load(self.tree_file)
                reporter = self._reporter()
                result = train_and_score(tree, self._load_data(), settings, out, reporter, progress=False)
                return {"state": "COMPLETE", "value": result["objective_value"], "result": result}
            except TrialPruned as exc:
                return {"state": "PRUNED", "reason": str(exc)}
            except Exception as exc:  # noqa: BLE001 - a trial's own failure must not sink the campaign
                return failure(exc, out)
