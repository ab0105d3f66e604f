"""The campaign driver: random module trees, then Optuna refinement of the best, as submitit jobs.

Phase A samples ``budget.random_trees`` distinct trees (tree i from the i-th child of the campaign
seed, so a resumed campaign plans the same trees) and registers each in Optuna by enqueueing its
drawn values, so every drawn value is an Optuna parameter. Phase B refines the refinable values
of the ``refine_top`` best trees, one Optuna study per tree with the structure held fixed.
With ``budget.max_gflops``, trees whose forward pass over one window costs more are never trained:
phase A draws past them, and phase B closes such a proposal as FAIL ("over max_gflops") and asks again.

Each unit of work is a *task* ("random:3", "refine:<tree id>:1"), stored as a trial attribute.
On resume, finished tasks are skipped; RUNNING trials without a live job are closed as FAIL
("stale") and their task runs again in a new trial that starts from the old trial's checkpoint.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


def make_pruner(pruner: dict[str, Any], eval_every: int, steps: int) -> optuna.pruners.BasePruner:
    """The campaign's pruner; the driver and every job build the same one from the same options."""
    options = {k: v for k, v in pruner.items() if k != "name"}
    name = pruner["name"]
    try:
        if name == "median":
            options.setdefault("n_startup_trials", 2)
            options.setdefault("n_warmup_steps", eval_every)
            return optuna.pruners.MedianPruner(**options)
        if name == "successive_halving":
            options.setdefault("min_resource", eval_every)
            return optuna.pruners.SuccessiveHalvingPruner(**options)
        if name == "hyperband":
            options.setdefault("min_resource", eval_every)
            options.setdefault("max_resource", steps)
            return optuna.pruners.HyperbandPruner(**options)
    except TypeError as exc:
        raise CampaignError(f"pruner {name}: {exc}") from None
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
        self.stats = {"COMPLETE": 0, "PRUNED": 0, "FAIL": 0}
        self.max_gflops: float | None = cfg.budget.get("max_gflops")
        self._gflops: dict[str, float] = {}
        self._random: list[ModuleTree] | None = None
        self._studies: dict[str, optuna.Study] = {}
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
        """The study ``name``, created once per driver (its sampler keeps its random state between asks)."""
        if name not in self._studies:
            self._studies[name] = self._open_study(name, salt)
        return self._studies[name]

    def _open_study(self, name: str, salt: int) -> optuna.Study:
        sampler = optuna.samplers.RandomSampler(seed=self.cfg.seed) if name == self.random_study_name \
            else make_sampler(self.cfg, salt)
        return optuna.create_study(study_name=name, storage=self.storage, direction=self.cfg.direction,
                                   sampler=sampler, pruner=self.pruner(), load_if_exists=True)

    def pruner(self) -> optuna.pruners.BasePruner:
        return make_pruner(self.cfg.pruner, self.cfg.budget["eval_every"], self.cfg.budget["steps"])

    def all_trials(self) -> list[tuple[optuna.study.StudySummary, optuna.trial.FrozenTrial]]:
        out = []
        for summary in optuna.get_all_study_summaries(self.storage):
            if summary.study_name.startswith(f"{self.cfg.name}."):
                study = optuna.load_study(study_name=summary.study_name, storage=self.storage)
                out += [(study, t) for t in study.get_trials(deepcopy=False)]
        return out

    # ------------------------------------------------------------------ resume
    def reconcile(self) -> tuple[dict[str, str], list[Running]]:
        """Deal with trials a stopped driver left RUNNING (or enqueued).

        A job that still runs (a local job survives ``kill -9`` of its driver; SLURM jobs run on) is
        reattached and waited for; a job that finished while no driver watched is told as it ended.
        Trials without a job to follow are closed as FAIL ("stale") and their task re-queued, resuming
        from the old trial's checkpoint. Returns (task -> old trial folder, reattached runs)."""
        from arborseg.jobs.executors import ACTIVE_STATES, job_outcome, job_state, reattach_job

        resume: dict[str, str] = {}
        reattached: list[Running] = []
        for study, trial in self.all_trials():
            if trial.state == TrialState.WAITING:  # enqueued but never asked: take it and close it
                asked = study.ask()
                study._storage.set_trial_user_attr(asked._trial_id, "fail_reason",
                                                   "stale: enqueued by a driver that stopped")
                study._storage.set_trial_user_attr(asked._trial_id, "stale", True)
                study.tell(asked, state=TrialState.FAIL)
                continue
            if trial.state != TrialState.RUNNING:
                continue
            attrs = trial.user_attrs
            job_id, kind, folder = attrs.get("job_id"), attrs.get("executor"), attrs.get("job_folder")
            job = None
            if job_id and kind in ("local", "slurm") and folder:
                try:
                    job = reattach_job(folder, job_id, kind)
                except Exception as exc:  # noqa: BLE001 - cannot follow it: treat as stale
                    log.debug("cannot reattach job %s: %s", job_id, exc)
            if job is not None:
                state = job_state(job)
                outcome = None if state in ACTIVE_STATES else job_outcome(job)
                if state in ACTIVE_STATES or (outcome is not None and outcome.ok):
                    task = Task(attrs["task"], study.study_name, ModuleTree.load(attrs["tree_file"]),
                                int(attrs.get("attempt", 1)))
                    run = Running(task, optuna.trial.Trial(study, trial._trial_id), study, job,
                                  Path(attrs["artifact_dir"]))
                    log.info("trial %s (%s): reattached to job %s (%s)", trial.number, task.key, job_id, state)
                    reattached.append(run)
                    continue
            reason = f"stale: the driver stopped while job {job_id} ran and the job left no result; task re-queued"
            study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
            study._storage.set_trial_user_attr(trial._trial_id, "stale", True)
            study.tell(trial.number, state=TrialState.FAIL)
            if attrs.get("task") and attrs.get("artifact_dir"):
                resume[attrs["task"]] = attrs["artifact_dir"]
            log.warning("trial %s (%s) was RUNNING without a job: closed as FAIL and re-queued", trial.number,
                        attrs.get("task"))
        return resume, reattached

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
    def gflops(self, tree: ModuleTree) -> float:
        """Forward GFLOPs of ``tree`` over its window (cached by tree id)."""
        from arborseg.nn import forward_gflops

        if tree.id not in self._gflops:
            self._gflops[tree.id] = forward_gflops(tree, len(self.cfg.data.classes))
        return self._gflops[tree.id]

    def within_cap(self, tree: ModuleTree) -> bool:
        return self.max_gflops is None or self.gflops(tree) <= self.max_gflops

    def random_trees(self) -> list[ModuleTree]:
        """The campaign's random trees: deterministic for its seed, distinct, within ``max_gflops``."""
        from arborseg.cli.space_commands import sample_distinct

        if self._random is None:
            n = self.cfg.budget["random_trees"]
            self._random = sample_distinct(str(self.cfg.space_path), n, self.cfg.seed, accept=self.within_cap)
            if len(self._random) < n and self.max_gflops is not None:
                log.warning("only %d of %d random trees cost at most max_gflops %s; raise it or shrink the "
                            "space's windows and widths", len(self._random), n, self.max_gflops)
        return self._random

    def plan_random(self, resume: dict[str, str], busy: set[str] = frozenset()) -> list[Task]:
        done, failed = self.task_states()
        done = done | set(busy)
        tasks = []
        for i, tree in enumerate(self.random_trees()):
            key = f"random:{i}"
            if key not in done:
                tasks.append(Task(key, self.random_study_name, tree, failed.get(key, 0) + 1, resume.get(key)))
        return tasks

    def best_trees(self) -> list[ModuleTree]:
        """The ``refine_top`` best distinct trees of phase A by the objective (COMPLETE trials)."""
        if self.cfg.budget["refine_top"] == 0 or self.cfg.budget["refine_trials"] == 0:
            return []
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

    def plan_refine(self, resume: dict[str, str], busy: set[str] = frozenset()) -> list[Task]:
        done, failed = self.task_states()
        done = done | set(busy)
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
            trial, tree = self._ask_refinement(study, task.tree)
        return study, trial, tree

    def _ask_refinement(self, study: optuna.Study, parent: ModuleTree,
                        tries: int = 20) -> tuple[optuna.trial.Trial, ModuleTree]:
        """A refinement of ``parent``; proposals over ``max_gflops`` are closed as FAIL (untrained, with the
        reason) and asked again; after ``tries`` of them the parent's own values are proposed."""

        def ask() -> tuple[optuna.trial.Trial, ModuleTree]:
            trial = study.ask()
            tree = self.space.sample(OptunaDraw(trial, fixed=parent.structural_choices()))
            if tree.structural_choices() != parent.structural_choices():
                raise CampaignError(f"refinement changed the structure of {parent.name}")
            return trial, tree

        for _ in range(tries):
            trial, tree = ask()
            if self.within_cap(tree):
                return trial, tree
            reason = f"over max_gflops: {self.gflops(tree):.1f} > {self.max_gflops} GFLOPs per window; not trained"
            for key, value in {"fail_reason": reason, "over_cap": True, "tree_name": tree.name,
                               "tree_id": tree.id, "parent_tree_id": parent.id, "phase": "refine"}.items():
                study._storage.set_trial_user_attr(trial._trial_id, key, value)
            study.tell(trial, state=TrialState.FAIL)
            log.info("refinement of %s: %s", parent.name, reason)
        study.enqueue_trial(parent.refinable_choices(), skip_if_exists=False)
        return ask()

    def submit(self, executor, task: Task) -> Running:
        """Ask a trial for ``task`` and submit its job."""
        return self.submit_many(executor, [task])[0]

    def submit_many(self, executor, tasks: list[Task]) -> list[Running]:
        """Ask one trial per task and submit their jobs; on SLURM several jobs go out as one array job."""
        prepared = [self._prepare(task) for task in tasks]
        if len(prepared) > 1 and getattr(executor, "kind", None) == "slurm":
            with executor.batch():  # one sbatch --array; job ids exist once the block has ended
                jobs = [executor.submit(job_fn) for *_, job_fn in prepared]
        else:
            jobs = [executor.submit(job_fn) for *_, job_fn in prepared]
        runs = []
        for (task, study, trial, out_dir, _), job in zip(prepared, jobs):
            study._storage.set_trial_user_attr(trial._trial_id, "job_id", str(job.job_id))
            study._storage.set_trial_user_attr(trial._trial_id, "log_path", str(job.paths.stderr))
            self.started_trials += 1
            runs.append(Running(task, trial, study, job, out_dir))
        return runs

    def _prepare(self, task: Task):
        """(task, study, trial, trial folder, job function) for one task: the trial is asked, not yet submitted."""
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
        job_fn = TrialJob(self.storage_url, task.study, trial._trial_id, str(tree_file), data, settings, str(out_dir),
                          {"pruner": self.cfg.pruner, "eval_every": self.cfg.budget["eval_every"],
                           "steps": self.cfg.budget["steps"]})
        return task, study, trial, out_dir, job_fn

    def finish(self, run: Running, job_result) -> str:
        """Tell Optuna how a finished job ended (a :class:`JobOutcome`); return the state."""
        storage, tid = run.study._storage, run.trial._trial_id
        if job_result.ok and isinstance(job_result.result, dict) and "state" in job_result.result:
            outcome = dict(job_result.result)
        elif job_result.ok:
            outcome = {"state": "FAIL", "reason": f"the job returned {job_result.result!r}, not a trial result"}
        else:
            outcome = {"state": "FAIL", "reason": f"{job_result.reason} (log: {job_result.log})"}
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
    def _run_tasks(self, executor, tasks: list[Task], bar, running: list[Running] | None = None) -> bool:
        """Run tasks with up to ``workers`` in flight; failed tasks are retried by policy. False if stopped by
        --max-trials."""
        from arborseg.jobs.executors import job_outcome

        queue = deque(tasks)
        running = list(running or [])
        while queue or running:
            batch: list[Task] = []
            while queue and len(running) + len(batch) < self.workers:
                if self.max_trials is not None and self.started_trials + len(batch) >= self.max_trials:
                    queue.clear()
                    break
                batch.append(queue.popleft())
            if batch:
                running += self.submit_many(executor, batch)
                self._show(bar, running)
            still = []
            for run in running:
                outcome = job_outcome(run.job)
                if outcome is not None:
                    state = self.finish(run, outcome)
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

        from arborseg.jobs.executors import make_executor

        resume, reattached = self.reconcile()
        kind = self.cfg.executor["kind"]
        options = {k: v for k, v in self.cfg.executor.items() if k != "kind" and (k != "workers" or kind == "local")}
        executor = make_executor(kind, self.run_dir / "jobs", options)
        busy = {run.task.key for run in reattached}
        random_tasks = self.plan_random(resume, busy)
        total = self.cfg.budget["random_trees"] + self.cfg.budget["refine_top"] * self.cfg.budget["refine_trials"]
        done_before = total - len(random_tasks) - self.cfg.budget["refine_top"] * self.cfg.budget["refine_trials"]
        with tqdm(total=total, initial=max(done_before, 0), desc=self.cfg.name, unit="trial",
                  disable=not self.progress) as bar:
            log.info("phase A: %d random trees to train (%d in the plan)", len(random_tasks),
                     self.cfg.budget["random_trees"])
            if not self._run_tasks(executor, random_tasks, bar, [r for r in reattached if r.task.key.startswith("random")]):
                log.info("stopped after %d new trials (--max-trials); run again to continue", self.started_trials)
                return self.run_dir
            refine_running = [r for r in reattached if r.task.key.startswith("refine")]
            refine_tasks = self.plan_refine(resume, {r.task.key for r in refine_running})
            bar.update(self.cfg.budget["refine_top"] * self.cfg.budget["refine_trials"] - len(refine_tasks))
            log.info("phase B: %d refinement trials", len(refine_tasks))
            if not self._run_tasks(executor, refine_tasks, bar, refine_running):
                log.info("stopped after %d new trials (--max-trials); run again to continue", self.started_trials)
        return self.run_dir
