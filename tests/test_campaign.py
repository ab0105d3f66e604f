"""Search campaigns end to end: executors x storages, failures as FAIL rows, retries, resume after kill -9.

SLURM-specific behaviour (array jobs, scancel, preemption with checkpoint) is in test_campaign_slurm.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from campaign_helpers import ROOT, kill_driver_when, nan_volume, trials_of, write_campaign
from optuna.trial import TrialState

from arborseg.campaign.config import load_campaign
from arborseg.campaign.driver import Campaign
from arborseg.errors import CampaignError
from arborseg.nn.blocks import BUILDERS, register_builder
from arborseg.space import MODULE_SPECS, ModuleSpec, register_module_spec
from arborseg.table import run_table


def run_campaign(path: Path, runs: Path, **kw) -> Path:
    return Campaign(load_campaign(path), runs, progress=False, **kw).run()


def finished_tasks(run_dir: Path) -> Counter:
    return Counter(t.user_attrs["task"] for t in trials_of(run_dir)
                   if t.state in (TrialState.COMPLETE, TrialState.PRUNED))


# ---------------------------------------------------------------------- conformance
def test_campaign_on_every_storage(tmp_path, storage_spec):
    path = write_campaign(tmp_path, storage=storage_spec, name=f"conf{abs(hash(storage_spec)) % 10**6}")
    run_dir = run_campaign(path, tmp_path / "runs")
    trials = trials_of(run_dir)
    assert len(trials) == 3
    assert sorted(t.user_attrs["task"].split(":")[0] for t in trials) == ["random", "random", "refine"]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    for t in trials:
        folder = Path(t.user_attrs["artifact_dir"])
        assert (folder / "metrics.json").is_file() and (folder / "tree.yaml").is_file()
        assert "validation" in t.user_attrs["metrics"] and t.value == t.user_attrs["metrics"]["validation"]["fg_iou"]
        assert any(p.startswith("training.") for p in t.params)  # drawn values are Optuna parameters
    refine = next(t for t in trials if t.user_attrs["phase"] == "refine")
    parent = refine.user_attrs["parent_tree_id"]
    assert parent in {t.user_attrs["tree_id"] for t in trials if t.user_attrs["phase"] == "random"}
    assert not any(".oneof" in p for p in refine.params)  # the structure is held fixed
    table = run_table([run_dir])
    assert list(table["state"]) == ["COMPLETE"] * 3
    # running it again resumes: nothing left to do, nothing repeated
    run_campaign(path, tmp_path / "runs")
    assert len(trials_of(run_dir)) == 3


def test_local_executor_two_workers(tmp_path):
    path = write_campaign(tmp_path, executor={"kind": "local", "workers": 2, "timeout_min": 10},
                          budget={"random_trees": 3, "refine_top": 0})
    run_dir = run_campaign(path, tmp_path / "runs")
    trials = trials_of(run_dir)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert all(Path(t.user_attrs["log_path"]).parent.is_dir() for t in trials)
    # a job in its own process records its start-up (interpreter, imports) beside the trial's own parts
    assert all(t.user_attrs["time_split"]["startup"] > 0 and t.user_attrs["time_split"]["train"] > 0
               for t in trials)


def test_max_trials_then_resume(tmp_path):
    path = write_campaign(tmp_path)
    run_dir = run_campaign(path, tmp_path / "runs", max_trials=1)
    assert len(trials_of(run_dir)) == 1
    run_campaign(path, tmp_path / "runs")
    assert finished_tasks(run_dir) == Counter({"random:0": 1, "random:1": 1,
                                               next(k for k in finished_tasks(run_dir) if k.startswith("refine")): 1})


# ---------------------------------------------------------------------- failures
class Exploding(torch.nn.Module):
    def forward(self, x):
        raise RuntimeError("boom: a module exploded")


class OutOfMemory(torch.nn.Module):
    """Stands in for a GPU running out of memory (this machine has no GPU to exhaust)."""

    def forward(self, x):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


for _name, _cls in (("test_exploding", Exploding), ("test_oom", OutOfMemory)):
    if _name not in MODULE_SPECS:
        register_module_spec(ModuleSpec(_name, "fails on purpose (tests)", produces_classes=True))
    if _name not in BUILDERS:
        register_builder(_name)(lambda node, cin, ctx, _cls=_cls: (_cls(), ctx.n_classes))


def failing_space(tmp: Path) -> Path:
    space = {"name": "failing", "window": {"z": 1, "xy": 32}, "training": {"lr": {"float": [1.0e-3, 1.0e-2]}},
             "root": {"oneof": [
        {"type": "sequence", "children": [{"type": "conv_block", "width": 4}, {"type": "test_exploding"}]},
        {"type": "sequence", "children": [{"type": "conv_block", "width": 4}, {"type": "test_oom"}]},
        {"type": "sequence", "children": [{"type": "conv_block", "width": 4}, {"type": "predictor"}]}]}}
    path = tmp / "failing.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


def test_module_exception_and_oom_become_fail_rows(tmp_path):
    from arborseg.tree import ModuleTree

    path = write_campaign(tmp_path, space=failing_space(tmp_path), budget={"random_trees": 8, "refine_top": 0})
    run_dir = run_campaign(path, tmp_path / "runs")
    table = run_table([run_dir])
    assert len(table) == 8  # the campaign went on past every failure
    expected = {"test_exploding": "RuntimeError: boom: a module exploded", "test_oom": "out of memory",
                "predictor": None}
    seen = set()
    for _, row in table.iterrows():
        last = ModuleTree.load(Path(row["artifact_dir"]) / "tree.yaml").root.children[-1].type
        seen.add(last)
        if expected[last] is None:
            assert row["state"] == "COMPLETE"
        else:
            assert row["state"] == "FAIL" and expected[last] in row["fail_reason"], row["fail_reason"]
    assert seen == set(expected)  # 8 draws from 3 alternatives, seed 0: all three occur


def test_nan_loss_becomes_fail_row_and_retries_follow_policy(tmp_path):
    folder = nan_volume(tmp_path)
    data = {"raw": str(folder / "nan_raw.npy"), "labels": str(folder / "nan_labels.npy"), "classes": ["bg", "fg"],
            "normalization": {"mode": "none"},
            "regions": {"train": {"z": [0, 3]}, "validation": {"z": [3, 4]}, "eval_near": {"z": [4, 5]},
                        "eval_far": {"z": [5, 6]}}}
    path = write_campaign(tmp_path, data=data, budget={"random_trees": 1, "refine_top": 1}, retries=1)
    run_dir = run_campaign(path, tmp_path / "runs")
    trials = trials_of(run_dir)
    # the first try and one retry, on the same trial (a retry continues its checkpoint); no refinement
    assert [t.state for t in trials] == [TrialState.FAIL]
    assert trials[0].user_attrs["attempt"] == 2
    # NaN in the raw data is refused at load (it used to surface as "loss became nan")
    assert "NaN/inf voxels" in trials[0].user_attrs["fail_reason"]
    assert "NaN/inf voxels" in trials[0].user_attrs["last_failure"]


def _tampered(result) -> object:
    """A COMPLETE outcome whose result has a wrong type, as an older or broken job could pickle it (unpickling
    does not run the dataclass checks)."""
    from arborseg.train.result import ResultState, TrialOutcome

    outcome = object.__new__(TrialOutcome)
    for key, value in {"state": ResultState.COMPLETE, "reason": "", "result": result}.items():
        object.__setattr__(outcome, key, value)
    return outcome


def test_malformed_job_results_fail_one_trial_each(tmp_path, monkeypatch):
    from arborseg.campaign.job import TrialJob
    from arborseg.train.result import TrialResult

    wrong_type = TrialResult(0.5, params="many", flops_per_voxel=1.0, train_seconds=1.0, steps=4, seed=0, regions={})
    returned = iter([
        ({"state": "COMPLETE", "value": 0.5}, "malformed trial result: a COMPLETE result lacks its 'result' record"),
        ({"state": "DONE"}, "malformed trial result: state is 'DONE', not one of COMPLETE, PRUNED, FAIL"),
        (_tampered(wrong_type), "malformed trial result: params is str 'many', not int"),
        (_tampered(None), "malformed trial result: a COMPLETE outcome needs a TrialResult, not None"),
        (42, "the job returned 42, not a trial result"),
    ])
    expected = []
    real_run = TrialJob.run

    def run(self):
        for value, reason in returned:
            expected.append(reason)
            return value
        return real_run(self)

    monkeypatch.setattr(TrialJob, "run", run)
    path = write_campaign(tmp_path, budget={"random_trees": 6, "refine_top": 0})
    run_dir = run_campaign(path, tmp_path / "runs")  # the campaign goes on past every malformed result
    trials = sorted(trials_of(run_dir), key=lambda t: t.number)
    assert [t.state for t in trials] == [TrialState.FAIL] * 5 + [TrialState.COMPLETE]
    for trial, reason in zip(trials, expected):
        assert reason in trial.user_attrs["fail_reason"], trial.user_attrs["fail_reason"]
    table = run_table([run_dir])
    assert list(table["state"]) == ["FAIL"] * 5 + ["COMPLETE"]


def test_trial_outcomes_are_checked():
    from arborseg.train.result import MalformedResult, ResultState, TrialOutcome, read_outcome

    record = {"objective_value": 0.5, "params": 10, "flops_per_voxel": 2.0, "train_seconds": 1.5, "steps": 4,
              "seed": 0, "regions": {"validation": {"fg_iou": 0.5}}, "tree_id": "abc"}
    ok = TrialOutcome.complete(record)
    assert ok.state == ResultState.COMPLETE == "COMPLETE" and ok.value == 0.5 and ok.has_value
    assert ok.result.record["tree_id"] == "abc" and read_outcome(ok) is ok
    with pytest.raises(MalformedResult, match="lacks params, steps"):
        TrialOutcome.complete({k: v for k, v in record.items() if k not in ("params", "steps")})
    with pytest.raises(MalformedResult, match="seed is bool True, not int"):
        TrialOutcome.complete({**record, "seed": True})
    with pytest.raises(MalformedResult, match="state is 'COMPLETE', not one of"):
        TrialOutcome("COMPLETE")  # the enum, not its value
    assert not TrialOutcome.complete({**record, "objective_value": float("nan")}).has_value
    for value in (None, object(), "COMPLETE", {"state": None}, _tampered({"params": 1})):
        out = read_outcome(value, "member")
        assert out.state == ResultState.FAIL and "member result" in out.reason


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            child = int(stat.parent.name)
            out += [child] + _children(child)
    return out


def test_killed_job_becomes_fail_and_campaign_goes_on(tmp_path):
    # few steps: the job is killed as soon as it has started (its trial.log exists), long before it could finish
    path = write_campaign(tmp_path, executor={"kind": "local", "workers": 1, "timeout_min": 10},
                          budget={"random_trees": 2, "refine_top": 0, "steps": 8, "eval_every": 8})
    campaign = Campaign(load_campaign(path), tmp_path / "runs", progress=False)
    killed: list[int] = []

    def started_job() -> int | None:
        for t in (trials_of(campaign.run_dir) if (campaign.run_dir / "campaign.json").exists() else []):
            if t.state == TrialState.RUNNING and "job_id" in t.user_attrs and t.user_attrs["task"] == "random:0" \
                    and (Path(t.user_attrs["artifact_dir"]) / "trial.log").exists():
                return int(t.user_attrs["job_id"])
        return None

    def killer():
        deadline = time.time() + 120
        while time.time() < deadline:
            pid = started_job()
            if pid is not None:
                for p in [pid] + _children(pid):
                    try:
                        os.kill(p, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                killed.append(pid)
                return
            time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    campaign.run()
    thread.join(5)
    assert killed, "the job was never seen running"
    trials = {t.user_attrs["task"]: t for t in trials_of(campaign.run_dir)}
    assert trials["random:0"].state == TrialState.FAIL
    assert not (Path(trials["random:0"].user_attrs["artifact_dir"]) / "metrics.json").exists()  # killed mid-run
    assert "kill" in trials["random:0"].user_attrs["fail_reason"].lower() or \
        "without" in trials["random:0"].user_attrs["fail_reason"].lower()
    assert trials["random:1"].state == TrialState.COMPLETE


def test_resume_after_driver_kill_9_loses_nothing(tmp_path):
    path = write_campaign(tmp_path, name="killme", executor={"kind": "local", "workers": 2, "timeout_min": 10},
                          budget={"random_trees": 4, "refine_top": 1, "refine_trials": 2, "steps": 30,
                                  "eval_every": 10})
    runs = tmp_path / "runs"
    run_dir = runs / "killme"
    finished_before: dict[str, str] = {}

    def one_done_one_running(trials) -> bool:
        states = [t.state for t in trials]
        if TrialState.COMPLETE in states and TrialState.RUNNING in states:
            finished_before.update({t.user_attrs["task"]: t.user_attrs["artifact_dir"] for t in trials
                                    if t.state == TrialState.COMPLETE})
            return True
        return False

    cmd = kill_driver_when(path, runs, "killme", one_done_one_running, "a finished and a running trial at once",
                           timeout_s=240)
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    trials = trials_of(run_dir)
    done = finished_tasks(run_dir)
    assert len(done) == 4 + 2 and set(done.values()) == {1}  # every task finished exactly once
    for t in trials:
        if t.state == TrialState.FAIL:
            assert t.user_attrs.get("stale"), t.user_attrs.get("fail_reason")
        assert t.state != TrialState.RUNNING
    for task, folder in finished_before.items():  # finished work is kept, not redone
        assert (Path(folder) / "metrics.json").is_file()
        assert done[task] == 1


# ---------------------------------------------------------------------- bad campaign files
@pytest.mark.parametrize("mutate, message", [
    (lambda c: c.update(budgett={}), "budgett: unknown key; did you mean 'budget'"),
    (lambda c: c["budget"].update(steps=-1), "budget.steps: expected a non-negative integer"),
    (lambda c: c["budget"].update(max_gflops=-2), "budget.max_gflops: expected a positive number"),
    (lambda c: c["budget"].update(max_gflops="big"), "budget.max_gflops: expected a positive number"),
    (lambda c: c.update(space="nope.yaml"), "space: search space 'nope.yaml' not found"),
    (lambda c: c.update(executor={"kind": "kubernetes"}), "executor.kind: 'kubernetes'"),
    (lambda c: c.update(pruner={"name": "median_"}), "did you mean 'median'"),
    (lambda c: c.pop("data"), "data: missing required key"),
    (lambda c: c["data"]["regions"]["train"].update(z=[0, 99]), "data.regions.train.z"),
])
def test_bad_campaign_files(tmp_path, mutate, message):
    path = write_campaign(tmp_path)
    cfg = yaml.safe_load(path.read_text())
    mutate(cfg)
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(Exception) as info:
        load_campaign(path)
    assert message in str(info.value)
    assert isinstance(info.value, (CampaignError,)) or info.value.__class__.__name__ == "DataError"


# ---------------------------------------------------------------------- compute cap
def test_max_gflops_keeps_costly_trees_out_of_training(tmp_path):
    from arborseg.nn import forward_gflops

    free = Campaign(load_campaign(write_campaign(tmp_path, name="free", budget={"random_trees": 3})), tmp_path / "r",
                    progress=False)
    costs = sorted(free.gflops(t) for t in free.random_trees())
    assert costs[0] < costs[-1]  # the cap below must turn at least one of these trees away
    cap = (costs[0] + costs[-1]) / 2
    path = write_campaign(tmp_path, name="capped", budget={"random_trees": 3, "refine_trials": 2, "max_gflops": cap})
    run_dir = run_campaign(path, tmp_path / "runs")
    trials = trials_of(run_dir)
    trained = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(trained) == 5
    assert len({t.user_attrs["tree_id"] for t in trained if t.user_attrs["phase"] == "random"}) == 3
    from arborseg.tree import ModuleTree

    for t in trained:
        assert forward_gflops(ModuleTree.load(t.user_attrs["tree_file"]), 3) <= cap
    for t in trials:
        if t.state == TrialState.FAIL:  # refinement proposals over the cap: closed untrained, with the reason
            assert t.user_attrs["over_cap"] and "over max_gflops" in t.user_attrs["fail_reason"]
            assert "artifact_dir" not in t.user_attrs
    table = run_table([run_dir])
    assert (table["state"] == "COMPLETE").sum() == 5


def test_refinement_over_the_cap_falls_back_to_the_parent(tmp_path):
    camp = Campaign(load_campaign(write_campaign(tmp_path, budget={"random_trees": 1})), tmp_path / "runs",
                    progress=False)
    parent = camp.random_trees()[0]
    camp.max_gflops = camp.gflops(parent) / 1000  # nothing near this tree fits
    study = camp.study(camp.refine_study_name(parent.id))
    trial, tree = camp._ask_refinement(study, parent, tries=3)
    closed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    assert len(closed) == 3 and all(t.user_attrs["over_cap"] for t in closed)
    assert tree.choices == parent.choices  # the parent's own values, as a last resort
