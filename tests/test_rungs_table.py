"""Run tables, status, report and post-hoc candidates of campaigns that train in rungs (successive halving with
continued training), over run folders made by hand as the driver writes them: the rung columns, paused trials,
Spearman rank correlations against a hand computation, the status lines, the report's sections."""

from __future__ import annotations

import math
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState, create_trial
from test_table import SPACE, fake_metrics, make_fake_campaign

from arborseg.cli import main
from arborseg.ensemble.manifest import FORMAT, write_manifest
from arborseg.ensemble.posthoc import candidate_trials
from arborseg.ensemble.select import CampaignContext
from arborseg.runs import RunFolder, TrialFolder
from arborseg.table import (
    campaign_status,
    format_table,
    rank_correlations,
    run_table,
    sort_table,
)

RUNGS = [40, 120, 360]
# name, state, paused, rung values by rung index (None: not reached), optuna value, extra attrs
ALPHA = [
    ("t0", TrialState.COMPLETE, False, [0.50, 0.60, 0.70], 0.70, {}),
    ("t1", TrialState.COMPLETE, False, [0.55, 0.66, 0.75], 0.75, {}),
    ("t2", TrialState.COMPLETE, False, [0.40, 0.62, 0.72], 0.72, {}),
    ("t3", TrialState.PRUNED, False, [0.45, 0.58], 0.58,
     {"stopped_rung": 1, "prune_reason": "not promoted past rung 1 (120 steps)"}),
    ("t4", TrialState.PRUNED, False, [0.30], 0.30, {"stopped_rung": 0, "prune_reason": "not promoted past rung 0 "
                                                                                       "(40 steps)"}),
    ("t5", TrialState.PRUNED, False, [0.35], None, {"stopped_rung": 0, "prune_reason": "not promoted past rung 0 "
                                                                                       "(40 steps)"}),
    ("t6", TrialState.RUNNING, True, [0.52, 0.61], None, {}),   # paused after rung 1
    ("t7", TrialState.RUNNING, False, [0.48], None, {}),        # promoted: trains toward rung 1
    ("t8", TrialState.RUNNING, False, [], None, {}),            # trains its first rung
    ("t9", TrialState.FAIL, False, [], None, {"fail_reason": "RuntimeError: out of memory"}),
]
# two trials at the top rung only: too few to rank against it
BETA = [
    ("b0", TrialState.COMPLETE, False, [0.50, 0.60, 0.70], 0.70, {}),
    ("b1", TrialState.COMPLETE, False, [0.55, 0.66, 0.75], 0.75, {}),
    ("b2", TrialState.PRUNED, False, [0.40, 0.62], 0.62, {"stopped_rung": 1}),
    ("b3", TrialState.PRUNED, False, [0.45], 0.45, {"stopped_rung": 0}),
]


def make_rung_campaign(root: Path, name: str, spec: list, artifacts: bool = True) -> Path:
    """A campaign folder as the driver of rungs writes one: campaign.json (RunFolder.create) with the budget's
    rung_steps, an SQLite storage whose trials carry rung, rung_values, steps_trained, paused, stopped_rung and
    the rung values as intermediate values; for every trial that finished a rung a trial folder with its tree,
    model, metrics and probabilities (the model bytes are not read here)."""
    from arborseg.campaign.storage import make_storage, storage_url
    from arborseg.space.sampler import sample_distinct

    run_dir = root / name
    run_dir.mkdir(parents=True)
    campaign_file = root / f"{name}.yaml"
    campaign_file.write_text(f"name: {name}\n")
    budget = {"total_steps": 3000, "first_rung": 40, "eta": 3, "rungs": 3, "random_trees": len(spec),
              "refine_top": 0, "refine_trials": 0, "rung_steps": RUNGS, "form": "rungs",
              "planned_trials": len(spec), "planned_steps": 2520}
    RunFolder.create(run_dir, {"name": name, "storage_url": storage_url("sqlite", run_dir), "objective": "fg_iou",
                               "direction": "maximize", "space": str(SPACE), "budget": budget}, campaign_file)
    study = optuna.create_study(study_name=f"{name}.random", storage=make_storage("sqlite", run_dir),
                                direction="maximize")
    trees = sample_distinct(str(SPACE), len(spec), 5)
    for i, ((key, state, paused, values, value, extra), tree) in enumerate(zip(spec, trees)):
        folder = run_dir / "trials" / f"{i:04d}"
        attrs = {"task": f"random:{i}", "phase": "random", "tree_id": tree.id, "tree_name": tree.name,
                 "family": tree.family, "tree_file": str(folder / "tree.yaml"), "artifact_dir": str(folder),
                 "attempt": 1, "seed": 0, "key": key, "paused": paused,
                 "rung_values": {str(RUNGS[k]): v for k, v in enumerate(values)}}
        if values:
            attrs.update(rung=len(values) - 1, steps_trained=RUNGS[len(values) - 1],
                         metrics=fake_metrics(values[-1]), params=1000 + i, flops_per_voxel=100.0 + i)
            if artifacts:
                trial = TrialFolder(folder)
                tree.save(trial.tree_path)
                trial.model_path.write_bytes(b"weights of the last rung")
                trial.metrics_path.write_text("{}")
                for region in ("validation", "eval_near", "eval_far"):
                    trial.save_probs(region, np.full((2, 1, 4, 4), 0.5))
        attrs.update(extra)
        study.add_trial(create_trial(state=state, value=value, user_attrs=attrs, params={}, distributions={},
                                     intermediate_values={RUNGS[k]: v for k, v in enumerate(values)}))
    return run_dir


@pytest.fixture
def alpha(tmp_path) -> Path:
    return make_rung_campaign(tmp_path / "runs", "alpha", ALPHA)


def by_key(table: pd.DataFrame) -> dict[str, pd.Series]:
    return {row["tree_name"]: row for _, row in table.iterrows()}


# ------------------------------------------------------------------------------------------- columns
def test_rung_columns_states_and_values(alpha):
    t = run_table([alpha])
    cols = list(t.columns)
    at = cols.index("steps_trained")
    assert cols[cols.index("value"):at + 4] == ["value", "rung", "steps_trained", "value@40", "value@120", "value@360"]
    assert list(t["state"]) == ["COMPLETE"] * 3 + ["PRUNED"] * 3 + ["PAUSED", "RUNNING", "RUNNING", "FAIL"]
    assert t["rung"].tolist()[:8] == [2, 2, 2, 1, 0, 0, 1, 0] and t["rung"].iloc[8:].isna().all()
    assert t["steps_trained"].tolist()[:8] == [360, 360, 360, 120, 40, 40, 120, 40]
    assert t["value@120"].iloc[3] == pytest.approx(0.58) and math.isnan(t["value@360"].iloc[3])
    # a pruned trial without an Optuna value and a paused one: the value of their last rung
    assert t["value"].iloc[5] == pytest.approx(0.35) and t["value"].iloc[6] == pytest.approx(0.61)
    assert math.isnan(t["value"].iloc[7]) is False and t["value"].iloc[7] == pytest.approx(0.48)
    assert math.isnan(t["value"].iloc[8]) and math.isnan(t["value"].iloc[9])
    assert t["eval_far.fg_iou"].iloc[6] == pytest.approx(fake_metrics(0.61)["eval_far"]["fg_iou"])
    assert t["prune_reason"].iloc[3] == "not promoted past rung 1 (120 steps)"
    # best first: complete, pruned, paused, running, failed
    assert list(dict.fromkeys(sort_table(t)["state"])) == ["COMPLETE", "PRUNED", "PAUSED", "RUNNING", "FAIL"]
    text = format_table(t, top=None, objective="fg_iou")
    header = text.splitlines()[0].split()
    assert header[:6] == ["trial_id", "phase", "state", "value", "(fg_iou)", "rung"] and "steps_trained" in header
    assert "PAUSED" in text and "not promoted past rung 1" in text


def test_an_old_campaign_reads_as_one_rung(tmp_path):
    t = run_table([make_fake_campaign(tmp_path / "runs")])
    assert not [c for c in t.columns if c.startswith("value@")]
    complete = t["state"] == "COMPLETE"
    assert (t.loc[complete, "rung"] == 0).all() and t.loc[~complete, "rung"].isna().all()
    assert (t.loc[complete, "steps_trained"] == 4).all()
    assert rank_correlations(t).empty
    status = campaign_status(t.iloc[0]["run_dir"])
    assert "(6 configurations planned)" in status  # 4 random trees + 1 x 2 refinements
    assert "rung 0 (4 steps, top): 4 reached, 4 complete" in status.splitlines()
    assert "budget:" not in status


# ------------------------------------------------------------------------------------------- rank correlations
def test_rank_correlations_against_a_hand_computation(tmp_path):
    """Spearman = 1 - 6 sum d^2 / (n (n^2 - 1)) without ties. alpha, rung 0 vs top (t0 t1 t2): values 0.50 0.55
    0.40 rank 2 3 1, top 0.70 0.75 0.72 rank 1 3 2, sum d^2 = 2, rho = 1 - 12/24 = 0.5. Rung 0 vs rung 1 (t0 t1
    t2 t3 t6): ranks 3 5 1 2 4 and 2 5 4 1 3, sum d^2 = 12, rho = 1 - 72/120 = 0.4. Rung 1 vs top: same order,
    1. beta has two trials at the top rung: no correlation, n = 2."""
    alpha = make_rung_campaign(tmp_path / "runs", "alpha", ALPHA)
    beta = make_rung_campaign(tmp_path / "runs", "beta", BETA, artifacts=False)
    ranks = rank_correlations(run_table([alpha, beta], ensembles=True))
    assert list(ranks.columns) == ["campaign", "rung", "steps", "reached", "next_steps", "n_next", "spearman_next",
                                   "top_steps", "n_top", "spearman_top"]
    a = ranks[ranks["campaign"] == "alpha"].set_index("rung")
    assert a.loc[0, ["steps", "reached", "next_steps", "n_next", "n_top", "top_steps"]].tolist() == \
        [40, 8, 120, 5, 3, 360]
    assert a.loc[0, "spearman_top"] == pytest.approx(0.5) and a.loc[0, "spearman_next"] == pytest.approx(0.4)
    assert a.loc[1, ["steps", "reached", "n_next", "n_top"]].tolist() == [120, 5, 3, 3]
    assert a.loc[1, "spearman_next"] == pytest.approx(1.0) and a.loc[1, "spearman_top"] == pytest.approx(1.0)
    b = ranks[ranks["campaign"] == "beta"].set_index("rung")
    assert b.loc[0, ["reached", "n_next", "n_top"]].tolist() == [4, 3, 2] and math.isnan(b.loc[0, "spearman_top"])
    assert b.loc[0, "spearman_next"] == pytest.approx(0.5)  # 0.50 0.55 0.40 vs 0.60 0.66 0.62
    assert b.loc[1, "n_top"] == 2 and math.isnan(b.loc[1, "spearman_top"])


# ------------------------------------------------------------------------------------------- status
def test_status_counts_each_rung_and_lists_paused_trials(alpha, capsys):
    lines = campaign_status(alpha).splitlines()
    assert lines[0] == ("campaign alpha: 10 trials (10 configurations planned); complete 3, pruned 3, failed 1, "
                        "paused 1, running 2")
    assert lines[1] == "budget: rungs at 40, 120, 360 steps (eta 3); 1,440 train steps so far (2,520 planned, " \
                       "3,000 budget)"
    assert lines[2:5] == ["rung 0 (40 steps): 8 reached, 1 running, 6 promoted, 2 stopped",
                          "rung 1 (120 steps): 5 reached, 1 running, 1 paused, 3 promoted, 1 stopped",
                          "rung 2 (360 steps, top): 3 reached, 3 complete"]
    assert lines[5].startswith("best: trial") and lines[5].endswith("fg_iou=0.7500")
    paused = [x for x in lines if x.startswith("paused:")]
    assert len(paused) == 1 and "random:6" in paused[0] and "after rung 1 (120 steps), fg_iou=0.6100" in paused[0]
    running = [x for x in lines if x.startswith("running:")]
    assert len(running) == 2 and "random:6" not in " ".join(running)
    assert "random:7" in running[0] and "toward rung 1 (120 steps)" in running[0]
    assert "random:8" in running[1] and "toward rung 0 (40 steps)" in running[1]
    assert lines[-1].startswith("failed: trial") and "out of memory" in lines[-1]
    assert main(["status", str(alpha)]) == 0
    assert capsys.readouterr().out.splitlines()[2] == lines[2]


# ------------------------------------------------------------------------------------------- plots and report
def write_ensemble(run_dir: Path) -> None:
    folder = run_dir / "ensembles" / "posthoc"
    folder.mkdir(parents=True)
    gain = {"ensemble": 0.79, "member": 0.75, "gain": 0.04, "lo": 0.01, "hi": 0.07}
    write_manifest(folder, {
        "format": FORMAT, "mode": "posthoc", "name": "posthoc", "objective": "fg_iou", "direction": "maximize",
        "fusion": "mean", "members": [{"key": "t0001", "params": 1001, "count": 2}, {"key": "t0000", "params": 1000}],
        "scores": {"validation": {"fg_iou": 0.79}, "eval_far": {"fg_iou": 0.7, "fn_401": 0.5}},
        "inference": {"gflops": 1.5}, "gain": {"regions": {"validation": {"fg_iou": gain}}}})


def test_rungs_plot_and_report_sections(alpha, tmp_path):
    from arborseg.viz.plots import plot_rungs
    from arborseg.viz.report import build_report

    write_ensemble(alpha)
    table = run_table([alpha])
    paths = plot_rungs(table, tmp_path / "rungs", formats=("png", "svg"))
    assert [p.suffix for p in paths] == [".png", ".svg"] and all(p.stat().st_size > 5000 for p in paths)

    index = build_report([alpha], tmp_path / "report", top=2, formats=("png",))
    text = index.read_text()
    section = text[text.index('<h2 id="rungs">Ranking across rungs</h2>'):text.index('<h2 id="ensembles">')]
    assert 'id="rank-table"' in section and "Spearman vs top" in section and "Spearman vs next" in section
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", section)
    assert cells == ["0", "40", "8", "120", "5", "0.4", "360", "3", "0.5", "1", "120", "5", "360", "3", "1", "360", "3",
                     "1"]
    assert '<img src="plots/rungs.png"' in section and (index.parent / "plots" / "rungs.png").is_file()
    ensembles = text[text.index('<h2 id="ensembles">'):text.index('<h2 id="families">')]
    for col in ("members", "val_gain", "val_gain_ci", "inference_gflops"):
        assert f">{col}</th>" in ensembles
    assert "t0001*2 t0000" in ensembles and "[+0.0100, +0.0700]" in ensembles and ">1.5<" in ensembles
    trials = text[text.index('<h2 id="trials">'):]
    assert '<tr class="ensemble">' in trials and '<tr class="paused">' in trials and ">val_gain</th>" in trials
    assert "ensemble <b>posthoc</b> <b>0.7900</b> (gain +0.0400 [+0.0100, +0.0700]" in text
    csv = pd.read_csv(index.parent / "runs.csv")
    assert (csv["state"] == "ENSEMBLE").sum() == 1 and "value@120" in csv.columns
    # the summary and the plots count trials, not ensembles
    assert "10 trials from 1 campaign" in text


def test_report_of_one_rung_campaigns_says_so(tmp_path):
    from arborseg.viz.report import build_report

    index = build_report([make_fake_campaign(tmp_path / "runs")], tmp_path / "r", top=1, formats=("png",))
    text = index.read_text()
    assert "trained one rung" in text and "plots/rungs" not in text and "No ensembles yet" in text


def test_plots_command_draws_the_rungs(alpha, tmp_path, capsys):
    assert main(["plots", str(alpha), "--out", str(tmp_path / "p"), "--only", "rungs", "--format", "png"]) == 0
    assert "rungs" in capsys.readouterr().out and (tmp_path / "p" / "rungs.png").is_file()


# ------------------------------------------------------------------------------------------- post-hoc candidates
def test_posthoc_candidates_include_trials_stopped_after_a_rung(alpha):
    folder = RunFolder.open(alpha)
    ctx = CampaignContext(alpha, folder.manifest, SimpleNamespace(objective="fg_iou", direction="maximize"))
    regions = ["validation", "eval_near", "eval_far"]
    keys = [c.label for c in candidate_trials(ctx, regions)]
    t = run_table([alpha])
    label = {row["tree_name"]: f"t{int(row['trial_id']):04d}" for _, row in t.iterrows()}
    names = t["tree_name"].tolist()
    # by value: t1 0.75, t2 0.72, t0 0.70, t3 0.58 (stopped at rung 1), t5 0.35, t4 0.30 (stopped at rung 0);
    # the paused t6 and the running t7 are not candidates although their folders are finished
    assert keys == [label[names[i]] for i in (1, 2, 0, 3, 5, 4)]
    assert [c.label for c in candidate_trials(ctx, regions, limit=4)] == keys[:4]
    # a stopped trial without the probabilities of a region is left out, as a complete one would be
    TrialFolder(Path(t.iloc[3]["artifact_dir"])).probs_path("eval_far").unlink()
    assert label[names[3]] not in [c.label for c in candidate_trials(ctx, regions)]
