"""One budget, successive halving with continued training: the plan, the promotion rule, and campaigns that
promote trials from their checkpoints (debug and local executors, kill -9 of the driver mid-campaign)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from campaign_helpers import ROOT, check_rung_campaign, kill_driver_when, trials_of, write_campaign

from arborseg.campaign.budget import make_plan, normalise_budget, plan_cost, rung_sizes
from arborseg.campaign.config import load_campaign
from arborseg.campaign.driver import Campaign
from arborseg.campaign.rungs import Contender, finished, promotions
from arborseg.errors import CampaignError

RUNGS = {"total_steps": 16, "first_rung": 2, "eta": 2, "rungs": 3, "random_trees": 4, "refine_top": 0}


# ---------------------------------------------------------------------- the plan
def test_plan_sizes_cost_and_derived_random_trees():
    assert rung_sizes(9, 3, 3) == (9, 3, 1)
    assert rung_sizes(2, 3, 3) == (2, 1, 1)  # the top rung always gets a trial
    assert plan_cost(9, 3, (10, 30, 90)) == 9 * 10 + 3 * 20 + 1 * 60
    budget = normalise_budget({"total_steps": 1000, "first_rung": 10, "eta": 3, "rungs": 3, "refine_top": 1,
                               "refine_trials": 2}, "c.yaml")
    assert budget["steps"] == 90 and budget["eval_every"] == 10 and budget["form"] == "rungs"
    plan = make_plan(budget, portfolio=2)
    assert plan.rung_steps == (10, 30, 90) and plan.cost() <= 1000 and plan.protected == 2
    assert plan_cost(plan.configs + 1, 3, plan.rung_steps, 2) > 1000  # as many random trees as the budget affords
    # the 2 portfolio trees train to the top in slots of their own; the others are halved
    m = plan.configs - 2
    assert plan.promotions() == (m + 2, max(1, m // 3) + 2, max(1, max(1, m // 3) // 3) + 2)
    assert plan.cost() == 2 * 90 + plan_cost(m, 3, plan.rung_steps)
    unprotected = make_plan({**budget, "portfolio_to_top": False}, portfolio=2)
    assert unprotected.protected == 0 and unprotected.random_trees > plan.random_trees
    assert plan.portfolio == 2 and plan.refine == 2 and plan.random_trees == plan.configs - 4
    text = plan.describe()
    assert "rung 0:" in text and "90 steps" in text and "of the budget 1000" in text


def test_old_budget_is_one_rung():
    budget = normalise_budget({"random_trees": 3, "refine_top": 1, "refine_trials": 2, "steps": 40,
                               "eval_every": 20}, "c.yaml")
    plan = make_plan(budget, portfolio=1)
    assert plan.rung_steps == (40,) and plan.form == "steps" and plan.configs == 6
    assert plan.cost() == 6 * 40 and "old budget form" in plan.describe()


@pytest.mark.parametrize("budget, message", [
    ({"total_steps": 100, "first_rung": 10, "eta": 1}, "eta: 1 must be at least 2"),
    ({"total_steps": 10, "first_rung": 20}, "first_rung 20 is above total_steps 10"),
    ({"total_steps": 100}, "first_rung: missing"),
    ({"total_steps": 100, "first_rung": 10, "steps": 50}, "budget.steps belongs to the old one-rung form"),
    ({"first_rung": 10, "eta": 3}, "need total_steps"),
    ({"total_steps": 100, "first_rung": 10, "rungs": 3, "random_trees": 5}, "below the plan's cost"),
    ({"total_steps": 100, "first_rung": 10, "etta": 3}, "did you mean 'eta'"),
    ({"total_steps": -5, "first_rung": 10}, "non-negative integer"),
])
def test_bad_budgets_are_refused_with_one_line(tmp_path, budget, message):
    path = write_campaign(tmp_path, budget={"random_trees": None, "steps": None, "eval_every": None, **budget})
    raw = yaml.safe_load(path.read_text())
    raw["budget"] = {k: v for k, v in raw["budget"].items() if v is not None}
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(CampaignError, match=message) as info:
        load_campaign(path)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------- the promotion rule
def test_promotions_asynchronous_then_fill_when_the_rung_closes():
    sizes = (4, 2, 1)
    cs = [Contender(f"t{i}") for i in range(4)]
    for c, v in zip(cs[:2], (0.5, 0.9)):
        c.values[0] = v
    # 2 of 4 finished rung 0: the best 2 * 2 // 4 = 1 goes on at once (asynchronous), the others wait
    assert [(c.key, r) for c, r in promotions(cs, sizes, True, all_started=True)] == [("t1", 1)]
    cs[1].target = 1
    assert promotions(cs, sizes, True, all_started=True) == []
    cs[2].values[0], cs[3].values[0] = 0.7, 0.1
    # rung 0 is closed (all started, none training toward it): the best remaining fills the second slot
    assert [(c.key, r) for c, r in promotions(cs, sizes, True, all_started=True)] == [("t2", 1)]
    cs[2].target = 1
    assert promotions(cs, sizes, True, all_started=True) == []  # rung 1's 2 slots are taken
    cs[1].values[1], cs[2].values[1] = 0.95, 0.8
    promoted = promotions(cs, sizes, True, all_started=True)
    assert [(c.key, r) for c, r in promoted] == [("t1", 2)]  # minimising would pick t2
    assert [c.key for c, _ in promotions(cs, sizes, False, all_started=True)] == ["t2"]
    cs[1].target = 2
    cs[1].values[2] = 0.97
    cs[1].done = True
    assert finished(cs, sizes, True, all_started=True)
    assert not finished(cs, sizes, True, all_started=False)


def test_slots_are_handed_out_in_proportion_to_the_reports():
    """The top slot is not taken by the first of 5 trials to report at rung 1 (ASHA's m // eta would give it)."""
    cs = [Contender(f"t{i}", {0: 0.5, 1: 0.1 * i}, target=1) for i in range(5)]
    for c in cs[3:]:
        del c.values[1]  # still training toward rung 1
    assert promotions(cs, (15, 5, 1), True, all_started=True) == []  # 3 of 5 reported: 3 * 1 // 5 = 0
    cs[3].values[1], cs[4].values[1] = 0.9, 0.05
    assert [(c.key, r) for c, r in promotions(cs, (15, 5, 1), True, all_started=True)] == [("t3", 2)]


def test_protected_portfolio_trials_go_to_the_top_without_a_slot():
    b = Contender("portfolio:0", {0: 0.01}, target=0, protected=True)  # slow starter: worst at rung 0
    cs = [b] + [Contender(f"random:{i}", {0: 0.5 + 0.1 * i}) for i in range(3)]
    promoted = promotions(cs, (3, 1), True, all_started=True)
    assert ("portfolio:0", 1) in [(c.key, r) for c, r in promoted]
    assert ("random:2", 1) in [(c.key, r) for c, r in promoted]  # the one competing slot is still filled
    assert len(promoted) == 2


def test_an_open_rung_waits_for_more_results():
    cs = [Contender("a", {0: 0.9}), Contender("b", {0: 0.8}), Contender("c", target=0)]  # c still trains
    # 2 results of 3 give 2 * 1 // 3 = 0 asynchronous promotions, and the rung is not closed while c trains
    assert promotions(cs, (3, 1), True, all_started=True) == []
    cs[2].values[0] = 0.1
    assert [c.key for c, _ in promotions(cs, (3, 1), True, all_started=True)] == ["a"]


# ---------------------------------------------------------------------- campaigns in rungs
def test_debug_campaign_promotes_from_checkpoints(tmp_path):
    path = write_campaign(tmp_path, name="rungs", budget=RUNGS)
    cfg = load_campaign(path)
    assert cfg.pruner["name"] == "none" and cfg.train_settings.schedule_steps == 8
    run_dir = Campaign(cfg, tmp_path / "runs", progress=False).run()
    check_rung_campaign(run_dir, (4, 2, 1), (2, 4, 8))
    # run again: nothing left to do, nothing repeated
    Campaign(load_campaign(path), tmp_path / "runs", progress=False).run()
    check_rung_campaign(run_dir, (4, 2, 1), (2, 4, 8))
    # `arborseg ensemble --train` takes the trees that got furthest first: the survivor, then rung 1's
    from arborseg.ensemble.select import open_campaign, top_trees

    chosen = top_trees(open_campaign(run_dir), 3)
    assert [c.steps for c in chosen] == [8, 4, 2]


def test_portfolio_tree_trains_to_the_top_rung(tmp_path):
    from test_portfolio import small_tree, write_tree

    write_tree(tmp_path / "hand.yaml", small_tree())
    path = write_campaign(tmp_path, name="pfrungs", portfolio=["hand.yaml"],
                          budget={**RUNGS, "random_trees": 3, "total_steps": 30})
    cfg = load_campaign(path)
    assert cfg.plan().promotions() == (4, 2, 2)  # 1 protected + 3 halved (3, 1, 1)
    run_dir = Campaign(cfg, tmp_path / "runs", progress=False).run()
    trials = {t.user_attrs["task"]: t for t in trials_of(run_dir) if t.user_attrs.get("task")}
    assert trials["portfolio:0"].state.name == "COMPLETE" and trials["portfolio:0"].user_attrs["steps_trained"] == 8
    assert sum(t.state.name == "COMPLETE" for t in trials.values()) == 2
    assert sum(t.user_attrs.get("rung") == 2 for t in trials.values()) == 2


def rung_campaign(tmp_path: Path, name: str, **budget) -> Path:
    return write_campaign(tmp_path, name=name, executor={"kind": "local", "workers": 2, "timeout_min": 10},
                          budget={**RUNGS, **budget})


def test_local_two_workers_with_refinement_in_the_rungs(tmp_path):
    path = rung_campaign(tmp_path, "rungs2", total_steps=40, random_trees=3, refine_top=1, refine_trials=3)
    run_dir = Campaign(load_campaign(path), tmp_path / "runs", progress=False).run()
    check_rung_campaign(run_dir, (6, 3, 1), (2, 4, 8))
    trials = trials_of(run_dir)
    refine = [t for t in trials if t.user_attrs.get("phase") == "refine"]
    assert len(refine) == 3 and len({t.user_attrs["parent_tree_id"] for t in refine}) == 1


def test_driver_kill_9_during_promotions_then_resume(tmp_path):
    """kill -9 of the driver once a trial has been promoted; the resumed campaign loses and repeats nothing."""
    path = rung_campaign(tmp_path, "killrungs", total_steps=40, random_trees=6, first_rung=2, eta=2, rungs=3)
    runs = tmp_path / "runs"
    cmd = kill_driver_when(path, runs, "killrungs", lambda trials: any(t.user_attrs.get("job_rung", 0) >= 1
                                                                         for t in trials), "a promoted trial")
    run_dir = runs / "killrungs"
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    check_rung_campaign(run_dir, (6, 3, 1), (2, 4, 8))
