"""The campaign driver: random module trees, then Optuna refinement of the best, as submitit jobs.

Phase A samples ``budget.random_trees`` distinct trees (tree i from the i-th child of the campaign
seed, so a resumed campaign plans the same trees) and registers each in Optuna by enqueueing its
drawn values, so every drawn value is an Optuna parameter. Phase B refines the refinable values
of the ``refine_top`` best trees, one Optuna study per tree with the structure held fixed.

Each unit of work is a *task* ("random:3", "refine:<tree id>:1"), stored as a trial attribute.
On resume, finished tasks are skipped; RUNNING trials without a live job are closed as FAIL
("stale") and their task runs again in a new trial that starts from the old trial's checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from arborseg.campaign.config import CampaignConfig
from arborseg.campaign.optuna_draw import OptunaDraw
from arborseg.errors import CampaignError
from arborseg.log import get_logger
from arborseg.space import load_space
from arborseg.tree import ModuleTree

log = get_logger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass
class Task:
    key: str  # "random:<i>" or "refine:<tree id>:<j>"
    study: str
    tree: ModuleTree | None = None  # phase A: the sampled tree; phase B: the tree being refined
    attempt: int = 1
    resume_from: str | None = None  # a trial folder whose checkpoint to continue


@dataclass
class Running:
    task: Task
    trial: optuna.trial.Trial
    study: optuna.Study
    job: Any
    out_dir: Path
    started: float = field(default_factory=time.time)


def make_sampler(cfg: CampaignConfig, salt: int) -> optuna.samplers.BaseSampler:
    seed = (cfg.seed * 1_000_003 + salt) % 2**31
    name = cfg.sampler["name"]
    options = {k: v for k, v in cfg.sampler.items() if k not in ("name", "seed")}
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, **options)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False, **options)
    return optuna.samplers.RandomSampler(seed=seed)


def make_pruner(cfg: CampaignConfig) -> optuna.pruners.BasePruner:
    options = {k: v for k, v in cfg.pruner.items() if k != "name"}
    name = cfg.pruner["name"]
    if name == "median":
        options.setdefault("n_startup_trials", 2)
        options.setdefault("n_warmup_steps", cfg.budget["eval_every"])
        return optuna.pruners.MedianPruner(**options)
    if name == "successive_halving":
        options.setdefault("min_resource", cfg.budget["eval_every"])
        return optuna.pruners.SuccessiveHalvingPruner(**options)
    if name == "hyperband":
        options.setdefault("min_resource", cfg.budget["eval_every"])
        options.setdefault("max_resource", cfg.budget["steps"])
        return optuna.pruners.HyperbandPruner(**options)
    return optuna.pruners.NopPruner()


class Campaign:
    """Runs (or resumes) one campaign into ``runs_dir/<name>/``."""

    def __init__(self, cfg: CampaignConfig, runs_dir: str | Path = "runs", max_trials: int | None = None,
                 progress: bool = True) -> None:
        from arborseg.campaign.storage import make_storage, storage_url

        self.cfg = cfg
        self.run_dir = Path(runs_dir).resolve() / cfg.name
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.trials_dir = self.run_dir / "trials"
        self.storage_url = storage_url(cfg.storage, self.run_dir)
        self.storage = make_storage(cfg.storage, self.run_dir)
        self.max_trials = max_trials
        self.progress = progress
        self.space = load_space(cfg.space_path)
        self.started_trials = 0
        kind = cfg.executor["kind"]
        self.workers = 1 if kind == "debug" else int(cfg.executor.get("workers", 2 if kind == "local" else 4))
        self.threads = max(1, (os.cpu_count() or 1) // self.workers) if kind != "slurm" else None
        self.stats = {"COMPLETE": 0, "PRUNED": 0, "FAIL": 0}
        self._write_manifest()

    # ------------------------------------------------------------------ bookkeeping
    @property
    def random_study_name(self) -> str:
        return f"{self.cfg.name}.random"

    def refine_study_name(self, tree_id: str) -> str:
        return f"{self.cfg.name}.refine.{tree_id[:10]}"

    def _write_manifest(self) -> None:
        manifest = {"name": self.cfg.name, "campaign_file": str(self.cfg.source), "storage_url": self.storage_url,
                    "objective": self.cfg.objective, "direction": self.cfg.direction,
                    "space": str(self.cfg.space_path), "data": self.cfg.data_spec
                    if isinstance(self.cfg.data_spec, str) else "inline", "budget": self.cfg.budget,
                    "executor": self.cfg.executor}
        (self.run_dir / "campaign.json").write_text(json.dumps(manifest, indent=1, default=str))
        shutil.copyfile(self.cfg.source, self.run_dir / "campaign.yaml") if not (self.run_dir / "campaign.yaml").exists() \
            or (self.run_dir / "campaign.yaml").resolve() != self.cfg.source else None

    def study(self, name: str, salt: int = 0) -> optuna.Study:
        sampler = optuna.samplers.RandomSampler(seed=self.cfg.seed) if name == self.random_study_name \
            else make_sampler(self.cfg, salt)
        return optuna.create_study(study_name=name, storage=self.storage, direction=self.cfg.direction,
                                   sampler=sampler, pruner=make_pruner(self.cfg), load_if_exists=True)

    def all_trials(self) -> list[tuple[optuna.study.StudySummary, optuna.trial.FrozenTrial]]:
        out = []
        for summary in optuna.get_all_study_summaries(self.storage):
            if summary.study_name.startswith(f"{self.cfg.name}."):
                study = optuna.load_study(study_name=summary.study_name, storage=self.storage)
                out += [(study, t) for t in study.get_trials(deepcopy=False)]
        return out

    # ------------------------------------------------------------------ resume
    def reconcile(self) -> dict[str, str]:
        """Close RUNNING/WAITING trials left by a stopped driver; return task -> old trial folder to resume."""
        from arborseg.campaign.executors import job_is_alive, stop_job

        resume: dict[str, str] = {}
        for study, trial in self.all_trials():
            if trial.state not in (TrialState.RUNNING, TrialState.WAITING):
                continue
            attrs = trial.user_attrs
            if trial.state == TrialState.WAITING:  # enqueued but never asked: take it and close it
                asked = study.ask()
                study.tell(asked, state=TrialState.FAIL)
                study._storage.set_trial_user_attr(asked._trial_id, "fail_reason", "stale: enqueued by a stopped driver")
                study._storage.set_trial_user_attr(asked._trial_id, "stale", True)
                continue
            job_id, kind = attrs.get("job_id"), attrs.get("executor")
            if job_id and kind and job_is_alive(kind, Path(attrs.get("job_folder", self.run_dir / "jobs")), job_id):
                log.info("trial %s: job %s of a stopped driver is still running; stopping it, its checkpoint "
                         "will be continued", trial.number, job_id)
                stop_job(kind, Path(attrs.get("job_folder", self.run_dir / "jobs")), job_id)
            reason = f"stale: the driver stopped while job {job_id} ran; task re-queued"
            study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
            study._storage.set_trial_user_attr(trial._trial_id, "stale", True)
            study.tell(trial.number, state=TrialState.FAIL)
            if attrs.get("task") and attrs.get("artifact_dir"):
                resume[attrs["task"]] = attrs["artifact_dir"]
            log.warning("trial %s (%s) was RUNNING without a driver: closed as FAIL, re-queued", trial.number,
                        attrs.get("task"))
        return resume

    def task_states(self) -> tuple[set[str], dict[str, int]]:
        """(tasks needing no more work, failed attempts per task). Stale trials count for neither."""
        failed: dict[str, int] = {}
        done: set[str] = set()
        for _, trial in self.all_trials():
            task = trial.user_attrs.get("task")
            if not task or trial.user_attrs.get("stale"):
                continue
            if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
                done.add(task)
            elif trial.state == TrialState.FAIL:
                failed[task] = failed.get(task, 0) + 1
        done |= {task for task, n in failed.items() if n > self.cfg.retries}
        return done, failed

    # ------------------------------------------------------------------ planning
    def random_trees(self) -> list[ModuleTree]:
        """The campaign's random trees: deterministic for its seed, distinct."""
        from arborseg.space.commands import sample_distinct

        return sample_distinct(str(self.cfg.space_path), self.cfg.budget["random_trees"], self.cfg.seed)

    def plan_random(self, resume: dict[str, str]) -> list[Task]:
        done, failed = self.task_states()
        tasks = []
        for i, tree in enumerate(self.random_trees()):
            key = f"random:{i}"
            if key not in done:
                tasks.append(Task(key, self.random_study_name, tree, failed.get(key, 0) + 1, resume.get(key)))
        return tasks

    def best_trees(self) -> list[ModuleTree]:
        """The ``refine_top`` best distinct trees of phase A by the objective (COMPLETE trials)."""
        study = self.study(self.random_study_name)
        complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                    if t.value is not None and not math.isnan(t.value)]
        complete.sort(key=lambda t: t.value, reverse=self.cfg.direction == "maximize")
        trees, seen = [], set()
        for trial in complete:
            tree_id = trial.user_attrs.get("tree_id")
            if tree_id in seen:
                continue
            seen.add(tree_id)
            trees.append(ModuleTree.load(trial.user_attrs["tree_file"]))
            if len(trees) == self.cfg.budget["refine_top"]:
                break
        return trees

    def plan_refine(self, resume: dict[str, str]) -> list[Task]:
        done, failed = self.task_states()
        tasks = []
        for tree in self.best_trees():
            if not tree.refinable_choices():
                log.info("tree %s has nothing to refine", tree.name)
                continue
            for j in range(self.cfg.budget["refine_trials"]):
                key = f"refine:{tree.id}:{j}"
                if key not in done:
                    tasks.append(Task(key, self.refine_study_name(tree.id), tree, failed.get(key, 0) + 1,
                                      resume.get(key)))
        return tasks

    # ------------------------------------------------------------------ submitting
    def _ask(self, task: Task) -> tuple[optuna.Study, optuna.trial.Trial, ModuleTree]:
        study = self.study(task.study, salt=int(task.tree.id[:8], 16) if task.key.startswith("refine") else 0)
        if task.key.startswith("random:"):
            study.enqueue_trial(dict(task.tree.choices), user_attrs={"task": task.key}, skip_if_exists=False)
            trial = study.ask()
            tree = self.space.sample(OptunaDraw(trial))  # replays the enqueued values as Optuna parameters
            if tree.id != task.tree.id:
                raise CampaignError(f"replaying tree {task.tree.name} through Optuna gave {tree.name}; "
                                    "the search space file changed since the campaign started")
        else:
            trial = study.ask()
            tree = self.space.sample(OptunaDraw(trial, fixed=task.tree.structural_choices()))
            if tree.structural_choices() != task.tree.structural_choices():
                raise CampaignError(f"refinement changed the structure of {task.tree.name}")
        return study, trial, tree

    def submit(self, executor, task: Task) -> Running:
        from arborseg.campaign.job import TrialJob

        study, trial, tree = self._ask(task)
        out_dir = self.trials_dir / f"{trial._trial_id:04d}"
        out_dir.mkdir(parents=True, exist_ok=True)
        tree_file = tree.save(out_dir / "tree.yaml")
        if task.resume_from:
            old = Path(task.resume_from) / "checkpoint.pt"
            if old.exists():
                shutil.copyfile(old, out_dir / "checkpoint.pt")
                log.info("%s continues from the checkpoint of %s", task.key, task.resume_from)
        attrs = {"task": task.key, "phase": task.key.split(":")[0], "tree_id": tree.id, "tree_name": tree.name,
                 "family": tree.family, "tree_file": str(tree_file), "artifact_dir": str(out_dir),
                 "attempt": task.attempt, "executor": self.cfg.executor["kind"],
                 "job_folder": str(self.run_dir / "jobs"), "parent_tree_id": task.tree.id}
        if task.resume_from:
            attrs["resumed_from"] = task.resume_from
        for key, value in attrs.items():
            study._storage.set_trial_user_attr(trial._trial_id, key, value)
        data = self.cfg.data_spec if isinstance(self.cfg.data_spec, str) else (self.cfg.data_spec,
                                                                               str(self.cfg.source.parent))
        settings = self.cfg.train_settings.__dict__ | {"seed": self.cfg.train.get("seed", 0)}
        job_fn = TrialJob(self.storage_url, task.study, trial._trial_id, str(tree_file), data, settings,
                          str(out_dir), self.threads)
        job = executor.submit(job_fn)
        study._storage.set_trial_user_attr(trial._trial_id, "job_id", str(job.job_id))
        study._storage.set_trial_user_attr(trial._trial_id, "log_path", str(job.paths.stderr))
        self.started_trials += 1
        return Running(task, trial, study, job, out_dir)

    def finish(self, run: Running) -> str:
        """Tell Optuna how a finished job ended; return the state."""
        from arborseg.campaign.executors import job_outcome

        ok, outcome = job_outcome(run.job)
        storage, tid = run.study._storage, run.trial._trial_id
        if not ok:
            outcome = {"state": "FAIL", "reason": outcome}
        state = outcome["state"]
        if state == "COMPLETE":
            value = outcome.get("value")
            if value is None or (isinstance(value, float) and math.isnan(value)):
                state, outcome["reason"] = "FAIL", f"objective {self.cfg.objective} is NaN"
            else:
                result = outcome["result"]
                for key in ("params", "flops_per_voxel", "train_seconds", "steps", "seed"):
                    storage.set_trial_user_attr(tid, key, result[key])
                storage.set_trial_user_attr(tid, "metrics", result["regions"])
                run.study.tell(run.trial, float(value))
        if state == "PRUNED":
            storage.set_trial_user_attr(tid, "prune_reason", outcome.get("reason", ""))
            run.study.tell(run.trial, state=TrialState.PRUNED)
        if state == "FAIL":
            reason = outcome.get("reason", "unknown failure")
            storage.set_trial_user_attr(tid, "fail_reason", reason)
            run.study.tell(run.trial, state=TrialState.FAIL)
            log.warning("trial %s (%s) failed: %s", run.trial.number, run.task.key, reason)
        self.stats[state] += 1
        return state

    # ------------------------------------------------------------------ main loop
    def _run_tasks(self, executor, tasks: list[Task], bar) -> bool:
        """Run tasks with up to ``workers`` in flight; failed tasks are retried by policy. False if stopped by
        --max-trials."""
        queue = deque(tasks)
        running: list[Running] = []
        while queue or running:
            while queue and len(running) < self.workers:
                if self.max_trials is not None and self.started_trials >= self.max_trials:
                    queue.clear()
                    break
                running.append(self.submit(executor, queue.popleft()))
                self._show(bar, running)
            still = []
            for run in running:
                if run.job.done():
                    state = self.finish(run)
                    if state == "FAIL" and run.task.attempt <= self.cfg.retries:
                        queue.append(Task(run.task.key, run.task.study, run.task.tree, run.task.attempt + 1,
                                          str(run.out_dir)))
                    else:
                        bar.update(1)
                else:
                    still.append(run)
            running = still
            self._show(bar, running)
            if running:
                time.sleep(0.3)
        return not (self.max_trials is not None and self.started_trials >= self.max_trials)

    def _show(self, bar, running: list[Running]) -> None:
        best = self.best_value()
        bar.set_postfix(done=self.stats["COMPLETE"], pruned=self.stats["PRUNED"], failed=self.stats["FAIL"],
                        running=len(running), best="-" if best is None else f"{best:.4f}")

    def best_value(self) -> float | None:
        values = [t.value for _, t in self.all_trials() if t.state == TrialState.COMPLETE and t.value is not None]
        if not values:
            return None
        return max(values) if self.cfg.direction == "maximize" else min(values)

    def run(self) -> Path:
        """Run phase A then phase B; resumable. Returns the run folder."""
        from tqdm.auto import tqdm

        from arborseg.campaign.executors import make_executor

        resume = self.reconcile()
        executor = make_executor(self.cfg.executor["kind"], self.run_dir / "jobs",
                                 {k: v for k, v in self.cfg.executor.items() if k not in ("kind", "workers")})
        random_tasks = self.plan_random(resume)
        total = self.cfg.budget["random_trees"] + self.cfg.budget["refine_top"] * self.cfg.budget["refine_trials"]
        done_before = total - len(random_tasks) - self.cfg.budget["refine_top"] * self.cfg.budget["refine_trials"]
        with tqdm(total=total, initial=max(done_before, 0), desc=self.cfg.name, unit="trial",
                  disable=not self.progress) as bar:
            log.info("phase A: %d random trees to train (%d in the plan)", len(random_tasks),
                     self.cfg.budget["random_trees"])
            if not self._run_tasks(executor, random_tasks, bar):
                log.info("stopped after %d new trials (--max-trials); run again to continue", self.started_trials)
                return self.run_dir
            refine_tasks = self.plan_refine(resume)
            bar.update(self.cfg.budget["refine_top"] * self.cfg.budget["refine_trials"] - len(refine_tasks))
            log.info("phase B: %d refinement trials", len(refine_tasks))
            if not self._run_tasks(executor, refine_tasks, bar):
                log.info("stopped after %d new trials (--max-trials); run again to continue", self.started_trials)
        return self.run_dir
