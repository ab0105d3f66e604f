"""What runs inside a submitit job: one trial, trained and scored, never raising for a trial's own failure.

The job returns a :class:`~arborseg.train.result.TrialOutcome` (COMPLETE with its result, PRUNED or
FAIL with a reason). A NaN loss, out-of-memory or an exception in a module becomes a FAIL with its
reason (the traceback goes to ``error.txt`` in the trial folder). Jobs killed or cancelled by the
scheduler never return; the driver classifies those. The job is Checkpointable: when SLURM preempts
it or its time runs out, submitit requeues it and it resumes from the trial folder's last checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arborseg.jobs.checkpointable import CheckpointableJob
from arborseg.jobs.runtime import failure, job_log, load_data
from arborseg.log import get_logger
from arborseg.train.result import TrialOutcome, TrialPruned

log = get_logger(__name__)


@dataclass
class TrialJob(CheckpointableJob):
    """Train and score one tree for one Optuna trial up to ``settings["steps"]`` (one rung: a trial that has a
    checkpoint in ``out_dir`` continues from it); artifacts go to ``out_dir``."""

    storage_url: str
    study_name: str
    trial_id: int
    tree_file: str
    data: Any  # a data YAML path, or (mapping, base_dir)
    settings: dict
    out_dir: str
    pruning: dict  # {"pruner": {...}, "eval_every": n, "steps": n}: the driver's pruner, rebuilt here

    def _reporter(self):
        from arborseg.campaign.driver import make_pruner
        from arborseg.campaign.worker_trial import OptunaReporter, attach_trial

        pruner = make_pruner(self.pruning["pruner"], self.pruning["eval_every"], self.pruning["steps"])
        return OptunaReporter(attach_trial(self.storage_url, self.study_name, trial_id=self.trial_id, pruner=pruner))

    def run(self) -> TrialOutcome:
        from arborseg.runs import TrialFolder
        from arborseg.train.settings import TrainSettings
        from arborseg.train.timings import job_timings
        from arborseg.train.trainer import train_and_score
        from arborseg.tree import ModuleTree

        timings = job_timings()

        out = Path(self.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with job_log(out / "trial.log"):
            try:
                settings = TrainSettings.from_dict(self.settings)
                tree = ModuleTree.load(self.tree_file)
                reporter = self._reporter()
                result = train_and_score(tree, load_data(self.data), settings, out, reporter, progress=False,
                                         timings=timings)
                TrialFolder(out).keep_rung_probs(result["steps"])  # this rung's validation probabilities
                return TrialOutcome.complete(result)
            except TrialPruned as exc:
                return TrialOutcome.pruned(str(exc))
            except Exception as exc:
                return failure(exc, out)
