"""One compute budget per campaign, in train steps, and the successive-halving plan made from it.

::

    budget:
      total_steps: 3000   # every train step of the campaign: all rungs of all trials together
      first_rung: 40      # steps every trial trains before it is first compared with the others
      eta: 3              # at each rung the best 1/eta go on; rung k ends at first_rung * eta**k steps
      rungs: 3            # the top rung (first_rung * eta**(rungs-1) steps) is the final model's training
      random_trees: 8     # optional: by default whatever total_steps leaves after portfolio and refinements
      refine_top: 2       # Optuna refinement of the 2 best trees ...
      refine_trials: 3    # ... 3 trials each; they join the same rungs
      eval_every: 40      # optional validation interval inside a rung (default: first_rung)
      max_gflops: 12      # optional: trees whose forward pass over one window costs more are not trained
      portfolio_to_top: true  # portfolio trees skip the halving: they train to the top rung (default true)

Steps are counted at each tree's own batch size (a training value; ``train.overrides.batch_size`` sets one for
every tree). A trial's steps add up over its rungs: a promoted trial continues from its checkpoint, so the plan's
cost is ``sum_k n_k * (r_k - r_(k-1))`` with ``n_0`` trials at the first rung and ``n_(k+1) = max(1, n_k // eta)``.
Portfolio trees are known-good: a slow-starting recipe (nnU-Net's SGD + poly) would lose the early comparisons,
so by default they are not halved but train to the top rung, in slots of their own (``p`` of them):
``n_k = p + m_k`` with ``m_0`` the other trials and ``m_(k+1) = max(1, m_k // eta)``.

The old form (``steps``, ``eval_every``, no ``total_steps``) still works: it is read as one rung of ``steps``
steps per trial (no successive halving), with the pruner deciding within it, as before.

Pure Python (no torch, no Optuna): the campaign loader checks budgets with it, the driver prints its plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from arborseg.errors import CampaignError, did_you_mean

#: every budget key and its default (None: derived)
BUDGET_KEYS: dict[str, Any] = {"total_steps": None, "first_rung": None, "eta": 3, "rungs": 3, "random_trees": None,
                               "refine_top": 2, "refine_trials": 4, "eval_every": None, "max_gflops": None,
                               "steps": None, "portfolio_to_top": True}
#: keys of the old form (one rung of ``steps`` steps)
OLD_FORM = ("steps",)
OLD_DEFAULTS = {"random_trees": 8, "steps": 200, "eval_every": 50}
NEW_FORM_HINT = "budget: {total_steps: T, first_rung: S, eta: 3, rungs: 3}"


@dataclass(frozen=True)
class RungPlan:
    """The successive-halving schedule of a campaign: rung ends in steps and trials per rung."""

    rung_steps: tuple[int, ...]  # cumulative steps at the end of each rung
    eta: int
    portfolio: int
    random_trees: int
    refine: int  # refine_top * refine_trials
    total_steps: int  # the budget
    form: str  # "rungs" or "steps" (an old budget read as one rung)
    protected: int = 0  # portfolio trials that train to the top rung without being halved

    @property
    def configs(self) -> int:
        """Trials that start at the first rung (portfolio, random trees, refinements)."""
        return self.portfolio + self.random_trees + self.refine

    @property
    def top_steps(self) -> int:
        return self.rung_steps[-1]

    @property
    def top(self) -> int:
        """Index of the top rung."""
        return len(self.rung_steps) - 1

    def promotions(self) -> tuple[int, ...]:
        """Trials that train each rung in the plan: the protected portfolio trials plus the halved others."""
        return tuple(self.protected + n for n in self.halved())

    def halved(self) -> tuple[int, ...]:
        """The other trials per rung (``m_0 = configs - protected``, ``m_(k+1) = max(1, m_k // eta)``)."""
        return rung_sizes(self.configs - self.protected, self.eta, len(self.rung_steps))

    def cost(self) -> int:
        """Train steps the plan spends."""
        return plan_cost(self.configs, self.eta, self.rung_steps, self.protected)

    def jobs(self) -> int:
        """Jobs the plan runs: one per trial and rung it trains."""
        return sum(self.promotions())

    def describe(self) -> str:
        """The plan as a few lines a person reads before the campaign starts."""
        sizes = self.promotions()
        starts = f"{self.configs} trials start ({self.portfolio} portfolio, {self.random_trees} random trees, " \
                 f"{self.refine} refinements)"
        if self.form == "steps":
            return (f"plan: {starts}; one rung of {self.top_steps} steps each (old budget form, no successive "
                    f"halving): {self.cost()} train steps of the budget {self.total_steps}")
        rungs = ", ".join(f"rung {k}: {n} trial{'s' if n != 1 else ''} to {r} steps"
                          for k, (n, r) in enumerate(zip(sizes, self.rung_steps)))
        kept = f"; the {self.protected} portfolio trees train to the top" if self.protected else ""
        return (f"plan: {starts}; eta {self.eta}; {rungs} (promoted trials continue from their checkpoints{kept}); "
                f"{self.cost()} train steps of the budget {self.total_steps}")

    def to_dict(self) -> dict[str, Any]:
        return {"rung_steps": list(self.rung_steps), "eta": self.eta, "total_steps": self.total_steps,
                "form": self.form, "planned_trials": self.configs, "planned_steps": self.cost()}


def rung_sizes(configs: int, eta: int, rungs: int) -> tuple[int, ...]:
    sizes = [configs]
    for _ in range(rungs - 1):
        sizes.append(max(1, sizes[-1] // eta) if sizes[-1] else 0)
    return tuple(sizes)


def plan_cost(configs: int, eta: int, rung_steps: tuple[int, ...], protected: int = 0) -> int:
    sizes = [protected + n for n in rung_sizes(configs - protected, eta, len(rung_steps))]
    previous = (0, *rung_steps[:-1])
    return sum(n * (r - p) for n, r, p in zip(sizes, rung_steps, previous))


def normalise_budget(raw: Any, source: str) -> dict[str, Any]:
    """The budget mapping as written, checked key by key and completed (one :class:`CampaignError` line when bad)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise CampaignError(f"{source}: budget: expected a mapping, e.g. {NEW_FORM_HINT}")
    for key, value in raw.items():
        if key not in BUDGET_KEYS:
            raise CampaignError(f"{source}: budget.{key}: unknown key{did_you_mean(key, BUDGET_KEYS)}")
        if key == "max_gflops":
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not value > 0):
                raise CampaignError(f"{source}: budget.max_gflops: expected a positive number of GFLOPs "
                                    f"(forward pass over one window) or null, got {value!r}")
        elif key == "portfolio_to_top":
            if not isinstance(value, bool):
                raise CampaignError(f"{source}: budget.portfolio_to_top: expected true or false, got {value!r}")
        elif value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise CampaignError(f"{source}: budget.{key}: expected a non-negative integer, got {value!r}")
    old = "total_steps" not in raw
    if old and any(k in raw for k in ("first_rung", "rungs", "eta")):
        raise CampaignError(f"{source}: budget: first_rung/eta/rungs need total_steps (the campaign's train steps "
                            f"in all): write {NEW_FORM_HINT}")
    if not old and "steps" in raw:
        raise CampaignError(f"{source}: budget.steps belongs to the old one-rung form; with total_steps the trials' "
                            f"training is first_rung * eta**(rungs-1) steps: write {NEW_FORM_HINT}")
    budget = {k: v for k, v in BUDGET_KEYS.items()} | {k: v for k, v in raw.items() if v is not None}
    if old:
        for key, value in OLD_DEFAULTS.items():
            budget[key] = raw.get(key, value)
        budget.update(first_rung=budget["steps"], rungs=1, form="steps")
    else:
        budget["form"] = "rungs"
        if budget["first_rung"] is None:
            raise CampaignError(f"{source}: budget.first_rung: missing: the steps every trial trains before its first "
                                f"comparison (e.g. {NEW_FORM_HINT})")
        if budget["eta"] < 2:
            raise CampaignError(f"{source}: budget.eta: {budget['eta']} must be at least 2 (the best 1/eta of a rung "
                                "go on to the next)")
        if budget["rungs"] < 1:
            raise CampaignError(f"{source}: budget.rungs: must be at least 1")
        budget["steps"] = budget["first_rung"] * budget["eta"] ** (budget["rungs"] - 1)
    if budget["first_rung"] < 1:
        raise CampaignError(f"{source}: budget.{'steps' if old else 'first_rung'} must be at least 1")
    if budget["eval_every"] is None:
        budget["eval_every"] = budget["first_rung"]
    if budget["eval_every"] < 1:
        raise CampaignError(f"{source}: budget.eval_every must be at least 1")
    if not old and budget["first_rung"] > budget["total_steps"]:
        raise CampaignError(f"{source}: budget.first_rung {budget['first_rung']} is above total_steps "
                            f"{budget['total_steps']}: not one trial fits; raise total_steps or lower first_rung")
    return budget


def make_plan(budget: dict[str, Any], portfolio: int, source: str = "budget") -> RungPlan:
    """The plan for a normalised budget and ``portfolio`` trees; refuses a budget that cannot hold it (one line)."""
    steps = tuple(budget["first_rung"] * budget["eta"] ** k for k in range(budget["rungs"]))
    refine = budget["refine_top"] * budget["refine_trials"]
    if budget["form"] == "steps":
        random_trees = budget["random_trees"]
        total = (portfolio + random_trees + refine) * steps[-1]
        return RungPlan(steps, budget["eta"], portfolio, random_trees, refine, total, "steps")
    total = budget["total_steps"]
    protected = portfolio if budget["portfolio_to_top"] else 0
    fixed = portfolio + refine
    if budget["random_trees"] is not None:
        random_trees = budget["random_trees"]
    else:  # as many random trees as the budget affords
        random_trees = 0
        while plan_cost(fixed + random_trees + 1, budget["eta"], steps, protected) <= total:
            random_trees += 1
    plan = RungPlan(steps, budget["eta"], portfolio, random_trees, refine, total, "rungs", protected)
    if plan.configs == 0:
        raise CampaignError(f"{source}: budget: no trial to train (no portfolio, no random trees): raise total_steps "
                            f"(one trial through every rung costs {steps[-1]} steps) or give random_trees")
    if plan.cost() > total:
        raise CampaignError(f"{source}: budget.total_steps {total} is below the plan's cost {plan.cost()} ("
                            f"{plan.configs} trials through rungs {list(steps)}, eta {budget['eta']}): raise "
                            "total_steps or lower random_trees / refine_trials / first_rung")
    return plan
