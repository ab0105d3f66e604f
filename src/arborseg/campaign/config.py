"""Campaign YAML: data, search space, budget, objective, sampler, pruner, executor, storage.

::

    name: quickstart
    data: quickstart_data.yaml        # a data YAML (path) or the data mapping itself
    space: ../search_spaces/quickstart.yaml
    budget:                           # see arborseg.campaign.budget
      total_steps: 3000               # every train step of the campaign (all rungs of all trials)
      first_rung: 40                  # successive halving: every trial trains 40 steps, the best 1/eta go on ...
      eta: 3                          # ... to 120, then 360 steps (rungs: 3), continuing from their checkpoints
      rungs: 3
      refine_top: 2                   # the best trees ...
      refine_trials: 3                # ... each refined by this many Optuna trials (in the same rungs)
      max_gflops: 12                  # optional: skip trees whose forward pass over one window costs more
    # old form, one rung without successive halving: budget: {random_trees: 6, steps: 150, eval_every: 50, ...}
    objective: {metric: fg_iou}       # direction inferred (fn_*/fp_* minimise), or give direction:
    sampler: {name: tpe, seed: 0}     # tpe | cmaes | random (phase B); other keys go to the Optuna sampler
    seed: 0                           # seeds the samplers (default: sampler.seed, else 0)
    pruner: {name: none}              # within a rung: median | successive_halving | hyperband | none
                                      # (default: none with rungs, median with the old form)
    executor: {kind: local, workers: 2}   # debug | local | slurm (+ slurm options)
    storage: sqlite                   # sqlite | journal | journal:/path | an SQLAlchemy URL
    train: {seed: 0, fn_mode: 2d}     # TrainSettings (see arborseg.train)
    retries: 0                        # re-run a failed trial this many times (cancelled, killed, ...)
    portfolio: [my_best_tree.yaml]    # known-good tree files (relative to this file), trained first,
                                      # added to the space's own portfolio
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from arborseg.campaign.budget import RungPlan, make_plan, normalise_budget
from arborseg.errors import CampaignError, did_you_mean
from arborseg.jobs.options import DEFAULT_WORKERS, KINDS
from arborseg.metrics import minimise
from arborseg.train.settings import TrainSettings

TOP_KEYS = ("name", "description", "data", "space", "budget", "objective", "sampler", "pruner", "executor",
            "storage", "train", "retries", "seed", "portfolio")
SAMPLERS = ("tpe", "cmaes", "random")
PRUNERS = ("median", "successive_halving", "hyperband", "none")
EXECUTORS = KINDS


@dataclass(frozen=True)
class CampaignConfig:
    name: str
    source: Path
    data: Any  # DataConfig
    data_spec: Any  # the path or mapping as written (resolved path when a path)
    space_path: Path
    budget: dict[str, Any]  # normalised (arborseg.campaign.budget): every key, "steps" = the top rung's steps
    objective: str
    direction: str
    sampler: dict[str, Any]
    pruner: dict[str, Any]
    executor: dict[str, Any]
    storage: str
    train: dict[str, Any]
    retries: int = 0
    seed: int = 0
    description: str = ""
    raw: dict = field(default_factory=dict, repr=False)
    portfolio: tuple[Path, ...] = ()  # the space's portfolio tree files, then the campaign's (resolved)

    def plan(self, portfolio: int | None = None) -> RungPlan:
        """The successive-halving plan (``portfolio``: trees actually trained, default all listed)."""
        return make_plan(self.budget, len(self.portfolio) if portfolio is None else portfolio, self.source.name)

    @property
    def train_settings(self) -> TrainSettings:
        settings = dict(self.train)
        settings.setdefault("objective", self.objective)
        settings["steps"] = self.budget["steps"]
        settings["eval_every"] = self.budget["eval_every"]
        if self.budget["form"] == "rungs":  # every rung continues the same LR schedule, planned for the top rung
            settings.setdefault("schedule_steps", self.budget["steps"])
        return TrainSettings.from_dict(settings)

    @property
    def job_data(self) -> Any:
        """What a job gets to load the data (:func:`arborseg.jobs.runtime.load_data`): the data YAML path, or
        ``(mapping, folder of the campaign file)`` for data written inline."""
        return self.data_spec if isinstance(self.data_spec, str) else (self.data_spec, str(self.source.parent))

    def with_overrides(self, executor: str | None = None, random_trees: int | None = None,
                       warm_workers: bool | None = None) -> CampaignConfig:
        """The config with the command line's ``--executor`` kind and ``--warm-workers``/``--no-warm-workers``."""
        from dataclasses import replace

        out = self
        if executor:
            if executor not in EXECUTORS:
                raise CampaignError(f"--executor {executor!r} is not one of {list(EXECUTORS)}")
            out = replace(out, executor={**out.executor, "kind": executor})
        if warm_workers is not None:
            out = replace(out, executor={**out.executor, "warm_workers": warm_workers})
        return out


def _resolve(path_text: str, base: Path, what: str, key: str, source: str) -> Path:
    path = Path(path_text).expanduser()
    candidates = [path] if path.is_absolute() else [base / path, Path.cwd() / path, *(p / path for p in base.parents)]
    for candidate in candidates:
        if candidate.exists():
            return candidate.resolve()
    raise CampaignError(f"{source}: {key}: {what} {path_text!r} not found (looked in {base} and {Path.cwd()})")


def load_campaign(path: str | Path) -> CampaignConfig:
    """Read and validate a campaign YAML file."""
    from arborseg.data import DataConfig, load_data_config
    from arborseg.space import load_space

    path = Path(path)
    if not path.is_file():
        raise CampaignError(f"{path}: no such campaign file (see examples/quickstart.yaml)")
    source = path.name
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise CampaignError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise CampaignError(f"{source}: expected a mapping with keys {list(TOP_KEYS)}")
    for key in raw:
        if key not in TOP_KEYS:
            raise CampaignError(f"{source}: {key}: unknown key{did_you_mean(key, TOP_KEYS)}")
    for key in ("name", "data", "space"):
        if key not in raw:
            raise CampaignError(f"{source}: {key}: missing required key")
    name = raw["name"]
    if not isinstance(name, str) or not name or any(c in name for c in "/\\ :"):
        raise CampaignError(f"{source}: name: {name!r} must be a non-empty word (it names runs/<name>/)")
    base = path.parent.resolve()

    if isinstance(raw["data"], str):
        data_path = _resolve(raw["data"], base, "data file", "data", source)
        data = load_data_config(data_path)
        data_spec: Any = str(data_path)
    elif isinstance(raw["data"], dict):
        data = DataConfig.from_dict(raw["data"], source=source, base_dir=base, key_prefix="data")
        data_spec = raw["data"]
    else:
        raise CampaignError(f"{source}: data: expected a data YAML path or a data mapping")
    space_path = _resolve(str(raw["space"]), base, "search space", "space", source)
    space = load_space(space_path)  # validate now, not in a job
    portfolio = _portfolio(space.portfolio, raw.get("portfolio"), base, data, source, space_path)

    budget = normalise_budget(raw.get("budget"), source)
    make_plan(budget, len(portfolio), source)  # refuses a budget that cannot hold its plan

    objective = raw.get("objective") or {}
    if isinstance(objective, str):
        objective = {"metric": objective}
    metric = objective.get("metric", "fg_iou")
    direction = objective.get("direction", "minimize" if minimise(metric) else "maximize")
    if direction not in ("minimize", "maximize"):
        raise CampaignError(f"{source}: objective.direction: {direction!r} must be minimize or maximize")
    extra = set(objective) - {"metric", "direction"}
    if extra:
        raise CampaignError(f"{source}: objective: unknown keys {sorted(extra)} (valid: metric, direction)")

    sampler = {"name": "tpe", **(raw.get("sampler") or {})}
    if sampler["name"] not in SAMPLERS:
        raise CampaignError(f"{source}: sampler.name: {sampler['name']!r}{did_you_mean(sampler['name'], SAMPLERS)}")
    pruner = {"name": "median" if budget["form"] == "steps" else "none", **(raw.get("pruner") or {})}
    if pruner["name"] not in PRUNERS:
        raise CampaignError(f"{source}: pruner.name: {pruner['name']!r}{did_you_mean(pruner['name'], PRUNERS)}")
    executor = {"kind": "local", **(raw.get("executor") or {})}
    if executor["kind"] not in EXECUTORS:
        raise CampaignError(f"{source}: executor.kind: {executor['kind']!r}{did_you_mean(executor['kind'], EXECUTORS)}")
    if executor["kind"] == "local" and "jobs_per_gpu" not in executor:
        # written out, as campaign.json has always shown it; the driver and the executor read the same default
        executor.setdefault("workers", DEFAULT_WORKERS["local"])
    train = dict(raw.get("train") or {})
    if "objective" in train and train["objective"] != metric:
        raise CampaignError(f"{source}: train.objective {train['objective']!r} differs from objective.metric "
                            f"{metric!r}: give the metric once, under objective:")
    try:
        TrainSettings.from_dict({**train, "objective": metric})
    except Exception as exc:
        raise CampaignError(f"{source}: train: {exc}") from None
    horizon = train.get("schedule_steps")
    if horizon is not None and (not isinstance(horizon, int) or isinstance(horizon, bool) or horizon < budget["steps"]):
        raise CampaignError(f"{source}: train.schedule_steps: {horizon!r} must be an integer >= budget.steps "
                            f"({budget['steps']}), the longest training a trial gets, or left out")
    seed = _non_negative_int(raw.get("seed", sampler.get("seed", 0)), "seed", source)
    _check_sampler_options(sampler, source)
    storage = raw.get("storage", "sqlite")
    if not isinstance(storage, str) or not storage.strip():
        raise CampaignError(f"{source}: storage: expected sqlite, journal, journal:/path or an SQLAlchemy URL, "
                            f"got {storage!r}")
    return CampaignConfig(name=name, source=path.resolve(), data=data, data_spec=data_spec, space_path=space_path,
                          budget=budget, objective=metric, direction=direction, sampler=sampler, pruner=pruner,
                          executor=executor, storage=storage.strip(), train=train,
                          retries=_non_negative_int(raw.get("retries", 0), "retries", source), seed=seed,
                          description=str(raw.get("description", "")), raw=raw, portfolio=portfolio)


def _portfolio(from_space: tuple[Path, ...], entries: Any, base: Path, data: Any, source: str,
               space_path: Path) -> tuple[Path, ...]:
    """The space's portfolio trees and the campaign's (relative to its folder), each checked against the data:
    its window must fit the training region and its network must build for the data's classes."""
    from arborseg.errors import SpaceError
    from arborseg.space.loader import load_portfolio

    try:
        own = load_portfolio(entries, base, f"{source}: portfolio")
    except SpaceError as exc:
        raise CampaignError(str(exc)) from None
    paths = tuple(dict.fromkeys([*from_space, *own]))
    if not paths:
        return ()
    from arborseg.nn import forward_gflops
    from arborseg.tree import ModuleTree

    train_shape = data.regions["train"].shape if "train" in data.regions else tuple(data.shape)
    for path in paths:
        where = f"{source}: portfolio: {path}" + (f" (listed by {space_path.name})" if path in from_space else "")
        remedy = "remove the entry" if path in own else f"drop it from a copy of {space_path.name}"
        tree = ModuleTree.load(path)
        if any(w > n for w, n in zip(tree.window, train_shape)):
            raise CampaignError(f"{where}: window {list(tree.window)} does not fit the training region "
                                f"{list(train_shape)} (z, y, x) of the data: {remedy}, or enlarge regions.train")
        try:
            forward_gflops(tree, len(data.classes))  # nn's window check, then the network built on 'meta'
        except Exception as exc:
            reason = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise CampaignError(f"{where}: its network cannot be built for the data's {len(data.classes)} "
                                f"classes ({reason}): {remedy}") from None
    return paths


def _non_negative_int(value: Any, key: str, source: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise CampaignError(f"{source}: {key}: expected a non-negative integer, got {value!r}")
    return value


def _check_sampler_options(sampler: dict[str, Any], source: str) -> None:
    """Build the sampler once so that an unknown option fails here, not in the middle of a run."""
    import optuna

    options = {k: v for k, v in sampler.items() if k not in ("name", "seed")}
    cls = {"tpe": optuna.samplers.TPESampler, "cmaes": optuna.samplers.CmaEsSampler,
           "random": optuna.samplers.RandomSampler}[sampler["name"]]
    try:
        cls(**options)
    except (TypeError, ValueError) as exc:
        raise CampaignError(f"{source}: sampler: {exc} (see the {cls.__name__} documentation of Optuna)") from None
