"""The campaign driver: random module trees, then Optuna refinement of the best, as submitit jobs.

Phase A samples ``budget.random_trees`` distinct trees (tree i from the i-th child of the campaign
seed, so a resumed campaign plans the same trees) and registers each in Optuna by enqueueing its
drawn values, so every drawn value is an Optuna parameter. Phase B refines the refinable values
of the ``refine_top`` best trees, one Optuna study per tree with the structure held fixed.
With ``budget.max_gflops``, trees whose forward pass over one window costs more are never trained:
phase A draws past them, and phase B closes such a proposal as FAIL ("over max_gflops") and asks again.

Portfolio trees (``portfolio:`` of the space and of the campaign: known-good tree files) are trained before
the random trees, as tasks "portfolio:<i>" of the study ``<name>.portfolio`` (the tree in the trial's user
attributes; Optuna parameters only when the space can replay the tree's recorded draws). They count as phase-A
trials when the best trees are chosen for refinement; one the space cannot express is not refined.

Each unit of work is a *task* ("portfolio:0", "random:3", "refine:<tree id>:1"), stored as a trial attribute.
On resume, finished tasks are skipped; RUNNING trials without a live job are closed as FAIL
("stale") and their task runs again in a new trial that starts from the old trial's checkpoint.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from arborseg.campaign.config import CampaignConfig
from arborseg.campaign.optuna_draw import OptunaDraw
from arborseg.campaign.worker_trial import live_trial, set_frozen_user_attrs, trial_id
from arborseg.errors import CampaignError
from arborseg.log import get_logger
from arborseg.runs import RunFolder, TrialFolder, save_tree, study_trials
from arborseg.space import load_space
from arborseg.train.result import ResultState, TrialOutcome, read_outcome
from arborseg.tree import ModuleTree

log = get_logger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass
class Task:
    key: str  # "portfolio:<i>", "random:<i>" or "refine:<tree id>:<j>"
    study: str
    tree: ModuleTree  # phase A: the sampled tree; phase B: the tree being refined
    attempt: int = 1
    resume_from: str | None = None  # a trial folder whose checkpoint to continue


@dataclass
class Running:
    """A task's asked trial while its job runs."""

    task: Task
    trial: optuna.trial.Trial
    study: optuna.Study
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
        self.storage_url = storage_url(cfg.storage, self.run_dir)
        self.storage = make_storage(cfg.storage, self.run_dir)
        self.max_trials = max_trials
        self.progress = progress
        self.space = load_space(cfg.space_path)
        self.started_trials = 0
        self.stats = {state: 0 for state in ResultState}
        self.max_gflops: float | None = cfg.budget.get("max_gflops")
        self._gflops: dict[str, float] = {}
        self._random: list[ModuleTree] | None = None
        self._portfolio: list[ModuleTree] | None = None
        self._studies: dict[str, optuna.Study] = {}
        self.folder = RunFolder.create(self.run_dir, self._manifest(), cfg.source)

    # ------------------------------------------------------------------ bookkeeping
    @property
    def random_study_name(self) -> str:
        return f"{self.cfg.name}.random"

    @property
    def portfolio_study_name(self) -> str:
        return f"{self.cfg.name}.portfolio"

    def refine_study_name(self, tree_id: str) -> str:
        return f"{self.cfg.name}.refine.{tree_id[:10]}"

    def _manifest(self) -> dict[str, Any]:
        """What ``campaign.json`` records."""
        return {"name": self.cfg.name, "campaign_file": str(self.cfg.source), "storage_url": self.storage_url,
                "objective": self.cfg.objective, "direction": self.cfg.direction,
                "space": str(self.cfg.space_path), "data": self.cfg.data_spec
                if isinstance(self.cfg.data_spec, str) else "inline", "budget": self.cfg.budget,
                "executor": self.cfg.executor} | ({"portfolio": [str(p) for p in self.cfg.portfolio]}
                                                  if self.cfg.portfolio else {})

    def study(self, name: str, salt: int = 0) -> optuna.Study:
        """The study ``name``, created once per driver (its sampler keeps its random state between asks)."""
        if name not in self._studies:
            self._studies[name] = self._open_study(name, salt)
        return self._studies[name]

    def _open_study(self, name: str, salt: int) -> optuna.Study:
        sampler = optuna.samplers.RandomSampler(seed=self.cfg.seed) \
            if name in (self.random_study_name, self.portfolio_study_name) else make_sampler(self.cfg, salt)
        direction = optuna.study.StudyDirection.MAXIMIZE if self.cfg.direction == "maximize" \
            else optuna.study.StudyDirection.MINIMIZE
        return optuna.create_study(study_name=name, storage=self.storage, direction=direction,
                                   sampler=sampler, pruner=self.pruner(), load_if_exists=True)

    def pruner(self) -> optuna.pruners.BasePruner:
        return make_pruner(self.cfg.pruner, self.cfg.budget["eval_every"], self.cfg.budget["steps"])

    def all_trials(self) -> list[tuple[optuna.Study, optuna.trial.FrozenTrial]]:
        return study_trials(self.storage, self.cfg.name)

    # ------------------------------------------------------------------ resume
    def reconcile(self) -> tuple[dict[str, str], list[tuple[Running, Any]]]:
        """Deal with trials a stopped driver left RUNNING (or enqueued).

        A job that still runs (a local job survives ``kill -9`` of its driver; SLURM jobs run on) is
        reattached and waited for; a job that finished while no driver watched is told as it ended.
        Trials without a job to follow are closed as FAIL ("stale") and their task re-queued, resuming
        from the old trial's checkpoint. Returns (task -> old trial folder, reattached (run, job) pairs)."""
        from arborseg.jobs.scheduler import JobRecord, reattach

        resume: dict[str, str] = {}
        reattached: list[tuple[Running, Any]] = []
        for study, trial in self.all_trials():
            if trial.state == TrialState.WAITING:  # enqueued but never asked: take it and close it
                asked = study.ask()
                asked.set_user_attr("fail_reason", "stale: enqueued by a driver that stopped")
                asked.set_user_attr("stale", True)
                study.tell(asked, state=TrialState.FAIL)
                continue
            if trial.state != TrialState.RUNNING:
                continue
            attrs = trial.user_attrs
            job_id = attrs.get("job_id")
            record = JobRecord(str(job_id or ""), str(attrs.get("executor", "")), str(attrs.get("job_folder", "")))
            found = reattach(record, follow_finished=True)
            if found is not None:
                job, state = found
                task = Task(attrs["task"], study.study_name, ModuleTree.load(attrs["tree_file"]),
                            int(attrs.get("attempt", 1)))
                run = Running(task, live_trial(study, trial), study, Path(attrs["artifact_dir"]))
                log.info("trial %s (%s): reattached to job %s (%s)", trial.number, task.key, job_id, state)
                reattached.append((run, job))
                continue
            reason = f"stale: the driver stopped while job {job_id} ran and the job left no result; task re-queued"
            set_frozen_user_attrs(study, trial, {"fail_reason": reason, "stale": True})
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
        from arborseg.space.sampler import sample_distinct

        if self._random is None:
            n = self.cfg.budget["random_trees"]
            self._random = sample_distinct(str(self.cfg.space_path), n, self.cfg.seed, accept=self.within_cap)
            if len(self._random) < n and self.max_gflops is not None:
                log.warning("only %d of %d random trees cost at most max_gflops %s; raise it or shrink the "
                            "space's windows and widths", len(self._random), n, self.max_gflops)
        return self._random

    def portfolio_trees(self) -> list[ModuleTree]:
        """The portfolio's trees, in order (the space's, then the campaign's); those over ``max_gflops`` are left
        out with a warning."""
        if self._portfolio is None:
            self._portfolio = []
            for path in self.cfg.portfolio:
                tree = ModuleTree.load(path)
                if self.within_cap(tree):
                    self._portfolio.append(tree)
                else:
                    log.warning("portfolio tree %s (%s) costs %.1f GFLOPs per window, over max_gflops %s: not "
                                "trained", tree.name, path, self.gflops(tree), self.max_gflops)
        return self._portfolio

    def plan_portfolio(self, resume: dict[str, str], busy: Collection[str] = frozenset()) -> list[Task]:
        done, failed = self.task_states()
        done = done | set(busy)
        return [Task(key, self.portfolio_study_name, tree, failed.get(key, 0) + 1, resume.get(key))
                for key, tree in ((f"portfolio:{i}", t) for i, t in enumerate(self.portfolio_trees()))
                if key not in done]

    def replayable(self, tree: ModuleTree) -> bool:
        """Whether the space rebuilds ``tree`` exactly from the draws recorded in it (then Optuna can refine it)."""
        from arborseg.space import FixedDraw

        if not tree.choices or tree.space != self.space.name:
            return False
        try:
            return self.space.sample(FixedDraw(dict(tree.choices))).id == tree.id
        except Exception:  # a draw the space does not have, or a value outside its range
            return False

    def plan_random(self, resume: dict[str, str], busy: Collection[str] = frozenset()) -> list[Task]:
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
        complete = [t for name in (self.portfolio_study_name, self.random_study_name)
                    for t in self.study(name).get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                    if t.value is not None and not math.isnan(t.value)]
        complete.sort(key=lambda t: float(t.value or 0.0), reverse=self.cfg.direction == "maximize")
        trees, seen = [], set()
        for trial in complete:
            tree_id = trial.user_attrs.get("tree_id")
            if tree_id in seen:
                continue
            seen.add(tree_id)
            if trial.user_attrs.get("phase") == "portfolio" and not trial.user_attrs.get("replayable"):
                log.info("portfolio tree %s is not refined: the space cannot express it", trial.user_attrs.get(
                    "tree_name"))
                continue
            trees.append(ModuleTree.load(trial.user_attrs["tree_file"]))
            if len(trees) == self.cfg.budget["refine_top"]:
                break
        return trees

    def plan_refine(self, resume: dict[str, str], busy: Collection[str] = frozenset()) -> list[Task]:
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
        if task.key.startswith("portfolio:"):
            replay = self.replayable(task.tree)
            if replay:
                study.enqueue_trial(dict(task.tree.choices), user_attrs={"task": task.key}, skip_if_exists=False)
                trial = study.ask()
                tree = self.space.sample(OptunaDraw(trial))  # the recorded draws become Optuna parameters
            else:
                trial, tree = study.ask(), task.tree
            trial.set_user_attr("replayable", replay)
            if tree.id != task.tree.id:
                raise CampaignError(f"replaying portfolio tree {task.tree.name} through Optuna gave {tree.name}")
        elif task.key.startswith("random:"):
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
                trial.set_user_attr(key, value)
            study.tell(trial, state=TrialState.FAIL)
            log.info("refinement of %s: %s", parent.name, reason)
        study.enqueue_trial(parent.refinable_choices(), skip_if_exists=False)
        return ask()

    def _prepare(self, task: Task) -> tuple[Running, Any]:
        """(run, job function) for one task: the trial is asked, not yet submitted."""
        from arborseg.campaign.job import TrialJob

        study, trial, tree = self._ask(task)
        out = self.folder.trial(trial_id(trial))
        out_dir = out.path
        out_dir.mkdir(parents=True, exist_ok=True)
        tree_file = save_tree(tree, out_dir)
        if task.resume_from:
            old = TrialFolder(Path(task.resume_from)).checkpoint_path
            if old.exists():
                shutil.copyfile(old, out.checkpoint_path)
                log.info("%s continues from the checkpoint of %s", task.key, task.resume_from)
        attrs = {"task": task.key, "phase": task.key.split(":")[0], "tree_id": tree.id, "tree_name": tree.name,
                 "family": tree.family, "tree_file": str(tree_file), "artifact_dir": str(out_dir),
                 "attempt": task.attempt, "executor": self.cfg.executor["kind"],
                 "job_folder": str(self.folder.jobs_dir), "parent_tree_id": task.tree.id}
        if task.resume_from:
            attrs["resumed_from"] = task.resume_from
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        settings = self.cfg.train_settings.__dict__ | {"seed": self.cfg.train.get("seed", 0)}
        job_fn = TrialJob(self.storage_url, task.study, trial_id(trial), str(tree_file), self.cfg.job_data, settings,
                          str(out_dir), {"pruner": self.cfg.pruner, "eval_every": self.cfg.budget["eval_every"],
                                         "steps": self.cfg.budget["steps"]})
        return Running(task, trial, study, out_dir), job_fn

    def _submitted(self, run: Running, job: Any) -> None:
        run.trial.set_user_attr("job_id", str(job.job_id))
        run.trial.set_user_attr("log_path", str(job.paths.stderr))
        self.started_trials += 1

    def finish(self, run: Running, job_result) -> ResultState:
        """Tell Optuna how a finished job ended (a :class:`~arborseg.jobs.outcome.JobOutcome`); return the state.

        What the job returned is read as a :class:`TrialOutcome`; anything malformed fails this trial only."""
        trial = run.trial
        if job_result.ok:
            outcome = read_outcome(job_result.result, "trial")
        else:
            outcome = TrialOutcome.failed(f"{job_result.reason} (log: {job_result.log})")
        state, reason = outcome.state, outcome.reason
        if state == ResultState.COMPLETE and not outcome.has_value:
            state, reason = ResultState.FAIL, f"objective {self.cfg.objective} is NaN"
        if state == ResultState.COMPLETE:
            result = outcome.result
            assert result is not None and result.objective_value is not None  # checked: has_value
            for key in ("params", "flops_per_voxel", "train_seconds", "steps", "seed"):
                trial.set_user_attr(key, getattr(result, key))
            trial.set_user_attr("metrics", result.regions)
            run.study.tell(trial, float(result.objective_value))
        elif state == ResultState.PRUNED:
            trial.set_user_attr("prune_reason", reason)
            run.study.tell(trial, state=TrialState.PRUNED)
        else:
            reason = reason or "unknown failure"
            trial.set_user_attr("fail_reason", reason)
            run.study.tell(trial, state=TrialState.FAIL)
            log.warning("trial %s (%s) failed: %s", trial.number, run.task.key, reason)
        self.stats[state] += 1
        return state

    # ------------------------------------------------------------------ main loop
    def _scheduler(self, executor, bar):
        """The job scheduler of this driver: ``--max-trials`` counts over both phases; failed tasks are retried."""
        from arborseg.jobs.scheduler import Scheduler

        def finished(run: Running, job_result) -> Task | None:
            state = self.finish(run, job_result)
            task = run.task
            if state == ResultState.FAIL and task.attempt <= self.cfg.retries:
                return Task(task.key, task.study, task.tree, task.attempt + 1, str(run.out_dir))
            bar.update(1)
            return None

        return Scheduler(executor, self._prepare, self._submitted, finished, limit=self.max_trials,
                         progress=lambda running: self._show(bar, running))

    def _show(self, bar, running: int) -> None:
        best = self.best_value()
        bar.set_postfix(done=self.stats[ResultState.COMPLETE], pruned=self.stats[ResultState.PRUNED],
                        failed=self.stats[ResultState.FAIL], running=running,
                        best="-" if best is None else f"{best:.4f}")

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
        executor = make_executor(kind, self.folder.jobs_dir, {k: v for k, v in self.cfg.executor.items()
                                                               if k != "kind"})
        busy = {run.task.key for run, _ in reattached}
        portfolio_tasks = self.plan_portfolio(resume, busy)
        random_tasks = self.plan_random(resume, busy)
        n_portfolio = len(self.portfolio_trees())
        total = n_portfolio + self.cfg.budget["random_trees"] + \
            self.cfg.budget["refine_top"] * self.cfg.budget["refine_trials"]
        done_before = total - len(portfolio_tasks) - len(random_tasks) - \
            self.cfg.budget["refine_top"] * self.cfg.budget["refine_trials"]
        with tqdm(total=total, initial=max(done_before, 0), desc=self.cfg.name, unit="trial",
                  disable=not self.progress) as bar:
            scheduler = self._scheduler(executor, bar)
            if n_portfolio:
                log.info("phase A: %d portfolio trees to train first (%d in the portfolio)", len(portfolio_tasks),
                         n_portfolio)
            log.info("phase A: %d random trees to train (%d in the plan)", len(random_tasks),
                     self.cfg.budget["random_trees"])
            phase_a = [(r, j) for r, j in reattached if r.task.key.startswith(("portfolio", "random"))]
            if not scheduler.run(portfolio_tasks + random_tasks, phase_a):
                log.info("stopped after %d new trials (--max-trials); run again to continue", self.started_trials)
                return self.run_dir
            refine_running = [(r, j) for r, j in reattached if r.task.key.startswith("refine")]
            refine_tasks = self.plan_refine(resume, {r.task.key for r, _ in refine_running})
            bar.update(self.cfg.budget["refine_top"] * self.cfg.budget["refine_trials"] - len(refine_tasks))
            log.info("phase B: %d refinement trials", len(refine_tasks))
            if not scheduler.run(refine_tasks, refine_running):
                log.info("stopped after %d new trials (--max-trials); run again to continue", self.started_trials)
        return self.run_dir
