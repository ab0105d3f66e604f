"""Ensembles: greedy selection, fusion and fitted weights on hand-made probabilities, the fusion choice,
bootstrap gains, and `arborseg ensemble` end to end on a tiny campaign (resume, a failed member, run table)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from arborseg.cli import main
from arborseg.ensemble import EnsembleSettings, build_ensemble, read_manifest
from arborseg.ensemble.bootstrap import gain_ci
from arborseg.ensemble.build import pick_fusion
from arborseg.ensemble.greedy import choose_members, greedy_select, select_all
from arborseg.ensemble.objective import Scoring, objective_score
from arborseg.errors import ArborsegError
from arborseg.inference.fusion import fit_weights, fuse
from arborseg.metrics import score_segmentation

SCORING = Scoring(("bg", "fg"), background=0)
LABELS = np.array([1, 1, 1, 0, 0, 0]).reshape(1, 1, 6)


def two_class(p_fg: list[float]) -> np.ndarray:
    """(C=2, 1, 1, N) probabilities from the foreground probability of each voxel."""
    p = np.asarray(p_fg, dtype=np.float32).reshape(1, 1, -1)
    return np.stack([1 - p, p])


def fg_iou(pred: np.ndarray) -> float:
    return objective_score(pred, LABELS, "fg_iou", SCORING)


# ------------------------------------------------------------------------------------------- greedy
def test_greedy_pairs_two_complementary_members():
    # A misses voxel 2, B misses voxel 0 (fg IoU 2/3 each); their mean gets all six right; C is useless
    a = two_class([0.9, 0.9, 0.4, 0.1, 0.1, 0.1])
    b = two_class([0.4, 0.9, 0.9, 0.1, 0.1, 0.1])
    c = two_class([0.1, 0.1, 0.1, 0.9, 0.9, 0.9])
    sel = greedy_select(np.stack([a, b, c]), fg_iou, "maximize", "mean", rounds=4)
    assert sel.history[0] == pytest.approx(2 / 3)  # best single member first (A: ties go to the first listed)
    assert sel.value == pytest.approx(1.0)
    assert list(sel.counts) == [1, 1, 0]  # the shortest prefix reaching the best value
    assert np.allclose(sel.weights, [0.5, 0.5, 0.0])
    assert sel.chosen == [0, 1]


def test_greedy_picks_with_replacement():
    # B alone: 3/4 (one FP on voxel 3); A alone: 2/3 (FN on voxel 2); A+B: 3/4 (v2 right, v3 still FP);
    # 2A+B: v2 (0.92+0.6)/3 = 0.507 -> fg, v3 (0.2+0.95)/3 = 0.383 -> bg: all right. A is needed twice.
    a = two_class([0.9, 0.9, 0.46, 0.1, 0.1, 0.1])
    b = two_class([0.9, 0.9, 0.6, 0.95, 0.1, 0.1])
    sel = greedy_select(np.stack([a, b]), fg_iou, "maximize", "mean", rounds=4)
    assert sel.history[:3] == pytest.approx([0.75, 0.75, 1.0])
    assert list(sel.counts) == [2, 1]
    assert np.allclose(sel.weights, [2 / 3, 1 / 3])
    fused = fuse(np.stack([a, b]), "mean", weights=sel.weights).labels
    assert np.array_equal(fused, LABELS)
    # every member with equal weight stays at 3/4
    assert select_all(np.stack([a, b]), fg_iou).value == pytest.approx(0.75)


def test_greedy_minimises_when_told():
    a = two_class([0.9, 0.9, 0.4, 0.1, 0.1, 0.1])
    b = two_class([0.4, 0.9, 0.9, 0.1, 0.1, 0.1])

    def errors(pred: np.ndarray) -> float:
        return float((pred != LABELS).sum())

    sel = greedy_select(np.stack([a, b]), errors, "minimize", "mean", rounds=2)
    assert sel.value == 0 and list(sel.counts) == [1, 1]


# ------------------------------------------------------------------------------------------- fusion
def test_equal_weights_match_largepredict_fuse():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=(4, 2, 5, 5)).transpose(0, 4, 1, 2, 3).astype(np.float32)
    for fusion in ("mean", "max", "vote"):
        p, labels, _ = fuse(probs, fusion, weights=[1, 1, 1, 1])
        ref_p, ref_labels, _ = fuse(probs, fusion)
        assert np.allclose(p, ref_p) and np.array_equal(labels, ref_labels)
    # members with weight 0 take no part; repeating a member does not change a maximum
    p = fuse(probs, "max", weights=[2, 1, 0, 0]).probs
    assert np.allclose(p, fuse(probs[:2], "max")[0])
    p = fuse(probs, "weighted", weights=[3, 1, 0, 0]).probs
    assert np.allclose(p, 0.75 * probs[0] + 0.25 * probs[1], atol=1e-6)


def test_weighted_vote():
    # three members vote fg, bg, bg on one voxel; weights 0.6/0.2/0.2 make fg win, 1/1/1 make bg win
    probs = np.stack([two_class([0.8]), two_class([0.3]), two_class([0.2])])
    assert fuse(probs, "vote", weights=[0.6, 0.2, 0.2]).labels.ravel().tolist() == [1]
    assert fuse(probs, "vote", weights=[1, 1, 1]).labels.ravel().tolist() == [0]
    votes = fuse(probs, "vote", weights=[0.6, 0.2, 0.2]).probs
    assert votes.ravel() == pytest.approx([0.4, 0.6])
    # a tie in weight goes to the higher weighted mean probability: fg (0.8 + 0.3) / 2 > 0.5
    assert fuse(probs[:2], "vote", weights=[0.5, 0.5]).labels.ravel().tolist() == [1]
    with pytest.raises(ArborsegError, match="non-negative"):
        fuse(probs, "mean", weights=[1, -1, 0])


def test_fit_weights_prefers_the_informative_member():
    rng = np.random.default_rng(1)
    labels = (rng.random((2, 16, 16)) < 0.3).astype(np.int64)
    good = np.where(labels == 1, 0.9, 0.1).astype(np.float32)
    noise = rng.random(labels.shape).astype(np.float32)
    probs = np.stack([np.stack([1 - noise, noise]), np.stack([1 - good, good])])
    w = fit_weights(probs, labels)
    assert w.sum() == pytest.approx(1.0) and (w >= 0).all()
    assert w[1] > 0.9
    # ignored voxels do not count: make the good member wrong only where labels are ignored
    labels_ign = labels.copy()
    labels_ign[0] = 255
    bad_there = good.copy()
    bad_there[0] = 1 - bad_there[0]
    probs = np.stack([np.stack([1 - noise, noise]), np.stack([1 - bad_there, bad_there])])
    assert fit_weights(probs, labels_ign, ignore_value=255)[1] > 0.9


def test_weighted_fusion_refits_the_greedy_pool():
    a = two_class([0.9, 0.9, 0.46, 0.1, 0.1, 0.1])
    b = two_class([0.9, 0.9, 0.6, 0.95, 0.1, 0.1])
    c = two_class([0.1, 0.1, 0.1, 0.9, 0.9, 0.9])
    sel = choose_members(np.stack([a, b, c]), LABELS, fg_iou, "maximize", "weighted", rounds=4)
    assert sel.fusion == "weighted" and sel.weights[2] == 0  # C was never picked, so it gets no weight
    assert sel.weights.sum() == pytest.approx(1.0)


def test_pick_fusion_takes_the_best_on_validation():
    assert pick_fusion({"mean": 0.7, "max": 0.8, "vote": 0.8, "weighted": 0.6}, "maximize") == "max"
    assert pick_fusion({"mean": 2.0, "max": 1.0, "vote": math.nan}, "minimize") == "max"
    assert pick_fusion({"mean": math.nan, "vote": 0.1}, "maximize") == "vote"


# ------------------------------------------------------------------------------------------- scores
def test_fast_objective_equals_score_segmentation():
    rng = np.random.default_rng(3)
    target = rng.integers(0, 3, (3, 24, 24))
    target[0, :4] = 9  # ignored
    pred = np.where(rng.random(target.shape) < 0.7, target, rng.integers(0, 3, target.shape)) % 3
    scoring = Scoring(("interior", "membrane", "mito"), ignore_value=9, membrane_class=1)
    full = score_segmentation(pred, target, list(scoring.classes), ignore_value=9, membrane_class=1)
    for metric in ("fg_iou", "miou", "mdice", "iou/mito", "dice/membrane", "recall/mito", "fn_5", "fp_65",
                   "fn_5/mito", "rand_error"):
        assert objective_score(pred, target, metric, scoring) == pytest.approx(full[metric], nan_ok=True), metric
    with pytest.raises(ArborsegError, match="objective"):
        objective_score(pred, target, "iou/nucleus", scoring)


def test_bootstrap_gain_intervals():
    member = np.array([0.5, 0.6, 0.7, 0.4])
    g = gain_ci(member + 0.1, member, "fg_iou", n_boot=200)
    assert g["gain"] == pytest.approx(0.1) and g["lo"] == pytest.approx(0.1) and g["hi"] == pytest.approx(0.1)
    assert g["improved"] and g["slices"] == 4 and g["ensemble"] == pytest.approx(0.65)
    # half the slices better, half worse by the same amount: the interval holds 0, no improvement
    g = gain_ci(member + np.array([0.1, -0.1, 0.1, -0.1]), member, "fg_iou", n_boot=500)
    assert g["gain"] == pytest.approx(0.0, abs=1e-12) and g["lo"] < 0 < g["hi"] and not g["improved"]
    # FN-n: lower is better, so a negative gain is the improvement
    g = gain_ci(np.array([1.0, 2.0, 1.5]), np.array([2.0, 3.0, 2.5]), "fn_401", n_boot=200)
    assert g["gain"] == pytest.approx(-1.0) and g["improved"] and g["direction"] == "minimize"
    # a slice where either value is NaN is left out
    g = gain_ci(np.array([0.6, math.nan, 0.8]), np.array([0.5, 0.5, 0.7]), "fg_iou", n_boot=100)
    assert g["slices"] == 2 and g["gain"] == pytest.approx(0.1)


# ------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A two-tree campaign on a tiny synthetic volume (debug executor, 4 steps per trial)."""
    from campaign_helpers import write_campaign

    from arborseg.campaign.config import load_campaign
    from arborseg.campaign.driver import Campaign

    tmp = tmp_path_factory.mktemp("ens")
    path = write_campaign(tmp, name="enstiny", budget={"random_trees": 2, "refine_top": 0})
    return Campaign(load_campaign(path), tmp / "runs", progress=False).run()


def _count_training(monkeypatch, fail_seed_of: str | None = None) -> list[tuple[str, int]]:
    """Record every member trained (tree id, seed); raise for seed 1 of the tree ``fail_seed_of``."""
    import arborseg.train.trainer

    real = arborseg.train.trainer.train_and_score
    calls: list[tuple[str, int]] = []

    def spy(tree, data, settings, out_dir, *args, **kwargs):
        calls.append((tree.id, settings.seed))
        if tree.id == fail_seed_of and settings.seed == 1:
            raise RuntimeError("simulated member failure")
        return real(tree, data, settings, out_dir, *args, **kwargs)

    monkeypatch.setattr(arborseg.train.trainer, "train_and_score", spy)
    return calls


def test_ensemble_end_to_end_with_failure_and_resume(tiny_run, monkeypatch, capsys):
    settings = EnsembleSettings(top=2, seeds=2, fusion="auto", name="e2e", bootstrap=200, progress=False)
    manifest = json.loads((tiny_run / "campaign.json").read_text())
    from arborseg.ensemble.select import open_campaign, top_trees

    trees = top_trees(open_campaign(tiny_run), 2)
    assert len(trees) == 2 and trees[0].value >= trees[1].value
    calls = _count_training(monkeypatch, fail_seed_of=trees[1].tree_id)

    result = build_ensemble(tiny_run, settings)
    # seed 0 of each tree is the campaign's own trial (same seed and steps): copied, not trained
    assert sorted(calls) == sorted((t.tree_id, 1) for t in trees)
    m = read_manifest(result.dir)
    assert result.dir == tiny_run / "ensembles" / "e2e"
    assert m["format"] == "arborseg-ensemble/1" and m["campaign"] == str(tiny_run)
    assert m["objective"] == manifest["objective"] and m["direction"] == manifest["direction"]
    assert m["classes"] == ["interior", "membrane", "mito"] and m["ignore_value"] is None
    assert m["fusion"] == pick_fusion(m["validation"], m["direction"]) and set(m["validation"]) == \
        {"mean", "max", "vote", "weighted"}
    states = {c["key"]: c["state"] for c in m["candidates"]}
    failed = f"{trees[1].tree_id[:10]}-s1"
    assert states.pop(failed) == "FAIL" and set(states.values()) == {"COMPLETE"} and len(states) == 3
    reason = next(c["reason"] for c in m["candidates"] if c["key"] == failed)
    assert "simulated member failure" in reason
    assert m["members"] and failed not in {x["key"] for x in m["members"]}
    assert sum(x["weight"] for x in m["members"]) == pytest.approx(1.0)
    for member in m["members"]:
        assert member["weight"] > 0 and member["key"] == f"{member['tree_id'][:10]}-s{member['seed']}"
        saved = torch.load(result.dir / member["model"], weights_only=True)
        assert set(saved) == {"state_dict", "tree", "classes", "window", "normalizer"}
        assert member["window"] == saved["window"] and (result.dir / member["tree"]).is_file()
        assert set(member["scores"]) == {"validation", "eval_near", "eval_far"}
    assert set(m["scores"]) == {"validation", "eval_near", "eval_far"}
    best_member = max((c for c in m["candidates"] if c["state"] == "COMPLETE"),
                      key=lambda c: c["scores"]["validation"][m["objective"]])
    assert m["gain"]["baseline"] == best_member["key"]
    for region in ("eval_near", "eval_far"):
        g = m["gain"]["regions"][region]
        assert set(g) == {"fg_iou", "fn_401"} and g["fg_iou"]["slices"] == 1
        assert g["fg_iou"]["member"] == pytest.approx(best_member["scores"][region]["fg_iou"])
        assert g["fg_iou"]["ensemble"] == pytest.approx(m["scores"][region]["fg_iou"])
        assert g["fg_iou"]["lo"] <= g["fg_iou"]["gain"] <= g["fg_iou"]["hi"]
    assert m["scores"]["validation"][m["objective"]] == pytest.approx(m["validation"][m["fusion"]])

    # rerun: only the failed member trains; then nothing trains at all
    calls.clear()
    monkeypatch.undo()
    calls = _count_training(monkeypatch)
    build_ensemble(tiny_run, settings)
    assert calls == [(trees[1].tree_id, 1)]
    calls.clear()
    m2 = build_ensemble(tiny_run, settings).manifest
    assert calls == []
    assert all(c["state"] == "COMPLETE" for c in m2["candidates"]) and len(m2["candidates"]) == 4

    # the run table shows the ensemble; the CLI prints members, the ensemble and the gains
    assert main(["table", str(tiny_run)]) == 0
    out = capsys.readouterr().out
    assert "ENSEMBLE" in out and "e2e" in out and "ensemble/" in out
    assert main(["table", str(tiny_run), "--no-ensembles"]) == 0
    assert "ENSEMBLE" not in capsys.readouterr().out
    assert main(["-q", "ensemble", str(tiny_run), "--train", "--top", "2", "--seeds", "2", "--name", "e2e",
                 "--fusion", "vote", "--bootstrap", "50"]) == 0
    out = capsys.readouterr().out
    assert calls == [] and "vote fusion" in out and "ENSEMBLE" in out and "gain over the best single member" in out
    assert read_manifest(tiny_run / "ensembles" / "e2e")["fusion"] == "vote"


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["ensemble", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("arborseg: error:") and "campaign.json" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(ArborsegError, match="--name"):
        EnsembleSettings(name="a/b").check()
    with pytest.raises(ArborsegError, match="--top"):
        EnsembleSettings(top=0).check()


def test_malformed_member_results_fail_that_member_only(tmp_path, monkeypatch):
    from arborseg.ensemble.members import MemberJob, MemberSpec, run_members
    from arborseg.train.result import TrialOutcome

    record = {"objective_value": 0.5, "params": 10, "flops_per_voxel": 2.0, "train_seconds": 1.0, "steps": 4,
              "seed": 0, "regions": {}}

    def run(self):  # no training: each member's job returns something else
        out = Path(self.out_dir)
        if out.name.startswith("a"):
            return {"state": "COMPLETE", "value": 0.5}  # the plain form, without its result record
        if out.name.startswith("b"):
            return "trained"
        (out / "model.pt").write_bytes(b"")
        (out / "metrics.json").write_text("{}")
        return TrialOutcome.complete(record)

    monkeypatch.setattr(MemberJob, "run", run)
    specs = [MemberSpec(name * 10, name, "2d", 0, tmp_path / "tree.yaml", tmp_path / "members" / f"{name}-s0")
             for name in "abc"]
    states = run_members(specs, "data.yaml", {"steps": 4}, "debug", {"workers": 2}, tmp_path / "jobs", progress=False)
    assert states[specs[0].key]["state"] == "FAIL" and "malformed member result" in states[specs[0].key]["reason"]
    assert states[specs[1].key] == {"state": "FAIL", "reason": "the job returned 'trained', not a member result"}
    assert states[specs[2].key] == {"state": "COMPLETE", "value": 0.5}
    # state.json keeps its format: plain strings, as before typed results
    assert json.loads((specs[2].out_dir / "state.json").read_text()) == {"state": "COMPLETE", "value": 0.5}
    assert not (specs[2].out_dir / "job.json").exists()
