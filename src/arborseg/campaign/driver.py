"""The campaign driver: portfolio and random module trees, Optuna refinement of the best, all in the rungs of
asynchronous successive halving, every rung of every trial a submitit job.

Every trial starts at the first rung: the portfolio's known-good trees first (``portfolio:<i>``, study
``<name>.portfolio``), then ``random_trees`` distinct random trees (``random:<i>``, tree i from the i-th child of
the campaign seed, so a resumed campaign plans the same trees; their drawn values are enqueued in Optuna, so every
drawn value is an Optuna parameter), then, once every one of those has finished the first rung, Optuna refinements
of the non-structural values of the ``refine_top`` best trees (``refine:<tree id>:<j>``, one study per tree). The
best 1/eta of each rung go on to the next (:mod:`arborseg.campaign.rungs`), **continuing from their checkpoints**:
one Optuna trial per configuration, RUNNING while it waits between rungs, an intermediate value at the end of each
rung, COMPLETE when it finishes the top rung; those left below the top are closed PRUNED when the campaign ends.
The LR schedule of every trial is planned for the top rung (``schedule_steps``), so a trial continued rung by rung
follows the learning rates of one straight run. The plan (:mod:`arborseg.campaign.budget`) is printed first.
With ``budget.max_gflops``, trees whose forward pass over one window costs more are never trained: random draws
skip them, and a refinement proposal over the cap is closed as FAIL ("over max_gflops") and asked again.

Where a trial is kept in the storage (user attributes), so that a driver killed at any moment resumes with
nothing lost or repeated: ``target_rung`` (set before its job goes out), ``job_id`` and ``job_rung`` (once it is
out), ``rung`` / ``rung_values`` (when a rung ends). On resume, a job that still runs (or ended while no driver
watched) is reattached; a trial whose job was lost is submitted again for the same rung and continues from its
checkpoint; a trial paused between rungs is promoted later like any other. A failed rung is retried (``retries``)
on the same trial; after the last attempt the trial is FAIL.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from arborseg.campaign.config import CampaignConfig
from arborseg.campaign.optuna_draw import OptunaDraw, ask_replayed
from arborseg.campaign.rungs import Contender, finished, promotions
from arborseg.campaign.storage import set_user_attrs
from arborseg.campaign.worker_trial import live_trial, tell, trial_id
from arborseg.errors import CampaignError
from arborseg.log import get_logger
from arborseg.runs import RunFolder, save_tree, study_trials
from arborseg.space import load_space
from arborseg.train.result import ResultState, TrialOutcome, read_outcome
from arborseg.tree import ModuleTree

log = get_logger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass
class Task:
    """A configuration to start: a new trial at the first rung."""

    key: str  # "portfolio:<i>", "random:<i>" or "refine:<tree id>:<j>"
    study: str
    tree: ModuleTree  # portfolio/random: the tree to train; refine: the tree being refined


@dataclass
class Entry:
    """A trial the driver follows: its task, live Optuna trial, folder and standing in the rungs."""

    task: Task
    trial: optuna.trial.Trial
    study: optuna.Study
    out_dir: Path
    tree_file: str
    contender: Contender
    attempt: int = 1
    unsaved: dict[str, Any] = field(default_factory=dict)  # attributes that go out with the next write


@dataclass
class RungJob:
    """What the scheduler runs: a new task (``entry`` None) or a trial continuing to rung ``target``."""

    target: int
    task: Task | None = None
    entry: Entry | None = None


@dataclass
class Running:
    """A trial's job in flight, toward rung ``target``."""

    entry: Entry
    target: int

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
        self.stats = {state: 0 for state in ResultState}
        self.max_gflops: float | None = cfg.budget.get("max_gflops")
        self._gflops: dict[str, float] = {}
        self._random: list[ModuleTree] | None = None
        self._portfolio: list[ModuleTree] | None = None
        self._studies: dict[str, optuna.Study] = {}
        self.plan = cfg.plan(len(self.portfolio_trees()))
        self.contenders: dict[str, Contender] = {}  # task key -> its standing in the rungs (every trial)
        self.entries: dict[str, Entry] = {}  # task key -> its live trial (trials still RUNNING)
        self._new: deque[Task] = deque()
        self._refine_planned = False
        self._lost: deque[RungJob] = deque()  # trials whose job a stopped driver lost: submitted again first
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

    @property
    def record_kind(self) -> str:
        """The executor kind the trials' job records carry (``warm-local``/``warm-slurm`` on warm workers)."""
        from arborseg.jobs.options import record_kind

        executor = self.cfg.executor
        return record_kind(executor["kind"], {k: v for k, v in executor.items() if k != "kind"})

    @property
    def maximize(self) -> bool:
        return self.cfg.direction == "maximize"

    def _manifest(self) -> dict[str, Any]:
        """What ``campaign.json`` records."""
        return {"name": self.cfg.name, "campaign_file": str(self.cfg.source), "storage_url": self.storage_url,
                "objective": self.cfg.objective, "direction": self.cfg.direction,
                "space": str(self.cfg.space_path), "data": self.cfg.data_spec
                if isinstance(self.cfg.data_spec, str) else "inline",
                "budget": self.cfg.budget | self.plan.to_dict(),
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
        direction = optuna.study.StudyDirection.MAXIMIZE if self.maximize else optuna.study.StudyDirection.MINIMIZE
        return optuna.create_study(study_name=name, storage=self.storage, direction=direction,
                                   sampler=sampler, pruner=self.pruner(), load_if_exists=True)

    def pruner(self) -> optuna.pruners.BasePruner:
        return make_pruner(self.cfg.pruner, self.cfg.budget["eval_every"], self.plan.top_steps)

    def all_trials(self) -> list[tuple[optuna.Study, optuna.trial.FrozenTrial]]:
        return study_trials(self.storage, self.cfg.name)

    def rung_of(self, steps: int) -> int | None:
        """The rung that ends at ``steps`` (None: not a rung of this plan)."""
        return self.plan.rung_steps.index(steps) if steps in self.plan.rung_steps else None

    def _contender(self, key: str, attrs: dict[str, Any], done: bool) -> Contender:
        values = {}
        for steps, value in (attrs.get("rung_values") or {}).items():
            rung = self.rung_of(int(steps))
            if rung is not None and value is not None:
                values[rung] = float(value)
        return Contender(key, values, int(attrs.get("target_rung", max(values, default=0))), done,
                         self.is_protected(key))

    def is_protected(self, key: str) -> bool:
        """Whether the task's trial trains to the top rung without being halved (a portfolio tree, by default)."""
        return key.startswith("portfolio:") and self.plan.protected > 0

    # ------------------------------------------------------------------ resume
    def reconcile(self) -> list[tuple[Running, Any]]:
        """Read the campaign back from the storage: the trials of earlier drivers and where each one stands.

        Finished trials count in their rungs; a job that still runs (a local job survives ``kill -9`` of its
        driver; SLURM jobs run on) or finished while no driver watched is reattached; a trial whose job was lost
        goes out again for the same rung (from its checkpoint); a paused trial waits for promotion. Enqueued
        trials that were never asked are closed as FAIL. Returns the reattached (run, job) pairs."""
        from arborseg.jobs.scheduler import JobRecord, reattach

        reattached: list[tuple[Running, Any]] = []
        for study, trial in self.all_trials():
            attrs = trial.user_attrs
            if trial.state == TrialState.WAITING:  # enqueued but never asked: take it and close it
                asked = study.ask()
                asked.set_user_attr("fail_reason", "stale: enqueued by a driver that stopped")
                asked.set_user_attr("stale", True)
                study.tell(asked, state=TrialState.FAIL)
                continue
            key = attrs.get("task")
            if not key or attrs.get("stale") or attrs.get("over_cap"):
                continue
            if trial.state != TrialState.RUNNING:
                contender = self._contender(key, attrs, done=True)
                if trial.state == TrialState.COMPLETE and not contender.values and trial.value is not None:
                    contender.values, contender.target = {self.plan.top: float(trial.value)}, self.plan.top  # older run
                self.contenders[key] = contender
                continue
            if "rung_values" not in attrs:  # written with the job id: the driver stopped before the job
                stale = live_trial(study, trial)
                stale.set_user_attr("fail_reason", "stale: asked by a driver that stopped before its job went out")
                stale.set_user_attr("stale", True)
                study.tell(stale, state=TrialState.FAIL)
                continue
            entry = self._entry(study, trial, self._contender(key, attrs, done=False))
            self.entries[key] = entry
            contender = self.contenders[key] = entry.contender
            if not contender.training:
                log.info("trial %s (%s) is paused after rung %d", trial.number, key, contender.rung)
                continue
            record = JobRecord(str(attrs.get("job_id") or ""), str(attrs.get("executor", "")),
                               str(attrs.get("job_folder", "")))
            found = reattach(record, follow_finished=True) if attrs.get("job_rung") == contender.target else None
            if found is not None:
                job, state = found
                log.info("trial %s (%s): reattached to job %s (%s)", trial.number, key, record.job_id, state)
                reattached.append((Running(entry, contender.target), job))
            else:
                log.warning("trial %s (%s): its job for rung %d was lost; it goes out again and continues from its "
                            "checkpoint", trial.number, key, contender.target)
                entry.trial.set_user_attr("requeued", int(attrs.get("requeued", 0)) + 1)
                self._lost.append(RungJob(contender.target, entry=entry))
        return reattached

    def _entry(self, study: optuna.Study, frozen: optuna.trial.FrozenTrial, contender: Contender) -> Entry:
        """The live entry of a RUNNING trial read back from the storage."""
        attrs = frozen.user_attrs
        tree_file = str(attrs["tree_file"])
        task = Task(str(attrs["task"]), study.study_name, ModuleTree.load(tree_file))
        return Entry(task, live_trial(study, frozen), study, Path(str(attrs["artifact_dir"])), tree_file, contender,
                     int(attrs.get("attempt", 1)))

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
            n = self.plan.random_trees
            self._random = sample_distinct(str(self.cfg.space_path), n, self.cfg.seed, accept=self.within_cap)
            if len(self._random) < n and self.max_gflops is not None:
                log.warning("only %d of %d random trees cost at most max_gflops %s; raise it or shrink the "
                            "space's windows and widths", len(self._random), n, self.max_gflops)
        return self._random

    def largest_job_bytes(self) -> int | None:
        """For ``jobs_per_gpu: auto``: the largest training memory of the campaign's trees (None when not asked)."""
        if self.cfg.executor.get("jobs_per_gpu") != "auto":
            return None
        from arborseg.train.memory import largest_training_bytes

        return largest_training_bytes(self.random_trees() + self.portfolio_trees(), len(self.cfg.data.classes))

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

    def replayable(self, tree: ModuleTree) -> bool:
        """Whether the space rebuilds ``tree`` exactly from the draws recorded in it (then Optuna can refine it)."""
        from arborseg.space import FixedDraw

        if not tree.choices or tree.space != self.space.name:
            return False
        try:
            return self.space.sample(FixedDraw(dict(tree.choices))).id == tree.id
        except Exception:  # a draw the space does not have, or a value outside its range
            return False

    def _queue_first_rung(self) -> None:
        """Queue the portfolio and random trees that have no trial yet (portfolio first)."""
        tasks = [Task(f"portfolio:{i}", self.portfolio_study_name, t) for i, t in enumerate(self.portfolio_trees())]
        tasks += [Task(f"random:{i}", self.random_study_name, t) for i, t in enumerate(self.random_trees())]
        self._new.extend(t for t in tasks if t.key not in self.contenders)

    def _first_rung_ranked(self) -> bool:
        """Whether every portfolio and random trial has finished the first rung (or failed)."""
        return not self._new and all(c.done or c.rung >= 0 for key, c in self.contenders.items()
                                     if key.startswith(("portfolio:", "random:")))

    def best_trees(self) -> list[ModuleTree]:
        """The ``refine_top`` best distinct portfolio/random trees, by how far they got in the rungs, then by their
        value there. Chosen once and kept in the storage (study attribute ``refine_parents``), so a resumed
        campaign refines the same trees."""
        budget = self.cfg.budget
        if budget["refine_top"] == 0 or budget["refine_trials"] == 0:
            return []
        study = self.study(self.random_study_name)
        chosen = study.user_attrs.get("refine_parents")
        if chosen is None:
            sign = -1.0 if self.maximize else 1.0
            ranked = []
            for _, trial in self.all_trials():
                c = self.contenders.get(str(trial.user_attrs.get("task")))
                if c is None or not c.key.startswith(("portfolio:", "random:")) or c.rung < 0 \
                        or trial.user_attrs.get("stale"):
                    continue
                ranked.append((-c.rung, sign * c.values[c.rung], c.key, trial.user_attrs))
            ranked.sort(key=lambda item: item[:3])
            chosen, seen = [], set()
            for *_, attrs in ranked:
                if attrs["tree_id"] in seen:
                    continue
                seen.add(attrs["tree_id"])
                if attrs.get("phase") == "portfolio" and not attrs.get("replayable"):
                    log.info("portfolio tree %s is not refined: the space cannot express it", attrs.get("tree_name"))
                    continue
                chosen.append(attrs["tree_file"])
                if len(chosen) == budget["refine_top"]:
                    break
            study.set_user_attr("refine_parents", chosen)
        return [ModuleTree.load(path) for path in chosen]

    def _queue_refinements(self) -> None:
        self._refine_planned = True
        for tree in self.best_trees():
            if not tree.refinable_choices():
                log.info("tree %s has nothing to refine", tree.name)
                continue
            for j in range(self.cfg.budget["refine_trials"]):
                key = f"refine:{tree.id}:{j}"
                if key not in self.contenders:
                    self._new.append(Task(key, self.refine_study_name(tree.id), tree))
        log.info("refinement: %d trials of the best %d trees join the first rung", len(self._new),
                 self.cfg.budget["refine_top"])

    @property
    def all_started(self) -> bool:
        return self._refine_planned and not self._new

    def _next_task(self) -> Task | None:
        if not self._new and not self._refine_planned and self._first_rung_ranked():
            self._queue_refinements()
        return self._new.popleft() if self._new else None

    def _take(self, free: int) -> list[RungJob]:
        """Up to ``free`` jobs to run now: lost jobs of a stopped driver, then promotions (higher rungs first),
        then new trials."""
        out: list[RungJob] = []
        while self._lost and len(out) < free:
            out.append(self._lost.popleft())
        if len(out) < free:
            for contender, rung in promotions(list(self.contenders.values()), self.plan.halved(), self.maximize,
                                              self.all_started):
                if len(out) == free:
                    break
                entry = self.entries[contender.key]
                contender.target, entry.attempt = rung, 1
                set_user_attrs(entry.trial, {"target_rung": rung, "attempt": 1})
                log.info("trial %s (%s) goes on to rung %d (%d steps)", entry.trial.number, contender.key, rung,
                         self.plan.rung_steps[rung])
                out.append(RungJob(rung, entry=entry))
        while len(out) < free:
            task = self._next_task()
            if task is None:
                break
            self.contenders[task.key] = Contender(task.key, protected=self.is_protected(task.key))
            out.append(RungJob(0, task=task))
        return out

    def is_finished(self) -> bool:
        """Nothing left to train: every trial started, none training, none to promote."""
        return finished(list(self.contenders.values()), self.plan.halved(), self.maximize, self.all_started)

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
            # the drawn values become the trial's Optuna parameters (so TPE refinements learn from them)
            trial, tree = ask_replayed(study, self.space, dict(task.tree.choices), {"task": task.key})
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
            set_user_attrs(trial, {"fail_reason": reason, "over_cap": True, "tree_name": tree.name,
                                   "tree_id": tree.id, "parent_tree_id": parent.id, "phase": "refine"})
            study.tell(trial, state=TrialState.FAIL)
            log.info("refinement of %s: %s", parent.name, reason)
        study.enqueue_trial(parent.refinable_choices(), skip_if_exists=False)
        return ask()

    def _start(self, task: Task) -> Entry:
        """Ask the trial of a new task and make its folder."""
        study, trial, tree = self._ask(task)
        out_dir = self.folder.trial(trial_id(trial)).path
        out_dir.mkdir(parents=True, exist_ok=True)
        tree_file = save_tree(tree, out_dir)
        attrs = {"task": task.key, "phase": task.key.split(":")[0], "tree_id": tree.id, "tree_name": tree.name,
                 "family": tree.family, "tree_file": str(tree_file), "artifact_dir": str(out_dir), "attempt": 1,
                 "executor": self.record_kind, "job_folder": str(self.folder.jobs_dir),
                 "parent_tree_id": task.tree.id, "target_rung": 0, "rung_values": {}}
        # written with the job id (_submitted): one transaction fewer; a driver stopped before the job went out
        # leaves a trial without rung_values, which the next driver closes as stale (reconcile)
        entry = Entry(task, trial, study, out_dir, str(tree_file), self.contenders[task.key], unsaved=attrs)
        self.entries[task.key] = entry
        return entry

    def _prepare(self, item: RungJob) -> tuple[Running, Any]:
        """(run, job function) for one rung of one trial: a new trial is asked, not yet submitted."""
        from arborseg.campaign.job import TrialJob

        entry = item.entry if item.entry is not None else self._start(item.task)  # type: ignore[arg-type]
        settings = self.cfg.train_settings.__dict__ | {"seed": self.cfg.train.get("seed", 0),
                                                      "steps": self.plan.rung_steps[item.target]}
        job_fn = TrialJob(self.storage_url, entry.task.study, trial_id(entry.trial), entry.tree_file, self.cfg.job_data,
                          settings, str(entry.out_dir), {"pruner": self.cfg.pruner,
                                                         "eval_every": self.cfg.budget["eval_every"],
                                                         "steps": self.plan.top_steps})
        return Running(entry, item.target), job_fn

    def _submitted(self, run: Running, job: Any) -> None:
        entry = run.entry
        set_user_attrs(entry.trial, entry.unsaved | {"job_id": str(job.job_id), "job_rung": run.target,
                                                     "log_path": str(job.paths.stderr), "paused": False})
        entry.unsaved = {}

    def finish(self, run: Running, job_result) -> RungJob | None:
        """Record how a rung's job ended (a :class:`~arborseg.jobs.outcome.JobOutcome`); return a retry or None.

        What the job returned is read as a :class:`TrialOutcome`; anything malformed fails this trial only."""
        entry, rung = run.entry, run.target
        trial, contender = entry.trial, entry.contender
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
            value, steps = float(result.objective_value), self.plan.rung_steps[rung]
            contender.values[rung] = value
            attrs = {key: getattr(result, key) for key in ("params", "flops_per_voxel", "train_seconds", "steps",
                                                           "seed")}
            attrs |= {"metrics": result.regions, "rung": rung, "steps_trained": result.steps, "paused": False,
                      "precision": result.record.get("precision", "fp32"),
                      "time_split": result.record.get("timings", {}),
                      "rung_values": {str(self.plan.rung_steps[k]): v for k, v in sorted(contender.values.items())}}
            if rung < self.plan.top:
                attrs["paused"] = True
            set_user_attrs(trial, attrs, report=(steps, value))  # the rung's value: Optuna's learning curve
            if rung == self.plan.top:
                tell(entry.study, trial, value)
                contender.done = True
        elif state == ResultState.PRUNED:
            trial.set_user_attr("prune_reason", reason)
            tell(entry.study, trial, state=TrialState.PRUNED)
            contender.done = True
        else:
            reason = reason or "unknown failure"
            if entry.attempt <= self.cfg.retries:
                entry.attempt += 1
                set_user_attrs(trial, {"attempt": entry.attempt, "last_failure": reason})
                log.warning("trial %s (%s) failed at rung %d (%s): attempt %d continues from its checkpoint",
                            trial.number, entry.task.key, rung, reason, entry.attempt)
                return RungJob(rung, entry=entry)
            trial.set_user_attr("fail_reason", reason)
            tell(entry.study, trial, state=TrialState.FAIL)
            contender.done = True
            log.warning("trial %s (%s) failed: %s", trial.number, entry.task.key, reason)
        self.stats[state] += 1
        return None

    def _close_paused(self) -> None:
        """Close the trials left below the top rung as PRUNED (the campaign is over)."""
        for entry in self.entries.values():
            contender = entry.contender
            if not contender.paused:
                continue
            reason = f"not promoted past rung {contender.rung} ({self.plan.rung_steps[contender.rung]} steps)"
            set_user_attrs(entry.trial, {"prune_reason": reason, "stopped_rung": contender.rung, "paused": False})
            tell(entry.study, entry.trial, state=TrialState.PRUNED)
            contender.done = True
            self.stats[ResultState.PRUNED] += 1

    # ------------------------------------------------------------------ main loop
    def _scheduler(self, executor, bar):
        """The job scheduler of this driver: ``--max-trials`` counts jobs (a rung of a trial is one job)."""
        from arborseg.jobs.scheduler import Scheduler

        def finished_job(run: Running, job_result) -> RungJob | None:
            retry = self.finish(run, job_result)
            if retry is None:
                bar.update(1)
                self._show(bar)
            return retry

        return Scheduler(executor, self._prepare, self._submitted, finished_job, limit=self.max_trials)

    def _show(self, bar) -> None:
        best = self.best_value()
        counts = {rung: sum(1 for c in self.contenders.values() if rung in c.values) for rung in
                  range(len(self.plan.rung_steps))}
        bar.set_postfix(rungs="/".join(str(counts[k]) for k in sorted(counts)), failed=self.stats[ResultState.FAIL],
                        best="-" if best is None else f"{best:.4f}")

    def best_value(self) -> float | None:
        """The best objective at the top rung so far."""
        values = [c.values[self.plan.top] for c in self.contenders.values() if self.plan.top in c.values]
        if not values:
            return None
        return max(values) if self.maximize else min(values)

    def run(self) -> Path:
        """Run (or resume) the campaign until its plan is spent. Returns the run folder."""
        from tqdm.auto import tqdm

        from arborseg.jobs.executors import make_executor

        reattached = self.reconcile()
        self._queue_first_rung()
        if self.study(self.random_study_name).user_attrs.get("refine_parents") is not None:
            self._queue_refinements()  # chosen by an earlier driver
        log.debug("%s", self.plan.describe())  # the CLI prints it
        kind = self.cfg.executor["kind"]
        executor = make_executor(kind, self.folder.jobs_dir, {k: v for k, v in self.cfg.executor.items()
                                                               if k != "kind"}, job_bytes=self.largest_job_bytes())
        done_jobs = sum(len(c.values) + (1 if c.done and not c.values else 0) for c in self.contenders.values())
        total = self.plan.jobs()
        with tqdm(total=total, initial=min(done_jobs, total), desc=self.cfg.name, unit="job",
                  disable=not self.progress) as bar:
            scheduler = self._scheduler(executor, bar)
            scheduler.serve(self._take, reattached)
        if not self.is_finished():
            log.info("stopped after %d new jobs (--max-trials); run again to continue", scheduler.started)
            return self.run_dir
        self._close_paused()
        return self.run_dir
