"""Post-hoc ensembles: trials keep their probabilities, `arborseg ensemble RUN` chooses among them with no
training, its validation score is the fusion of the stored probabilities, the table row, the bundle export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from arborseg.cli import main
from arborseg.ensemble import read_manifest
from arborseg.ensemble.greedy import greedy_select
from arborseg.ensemble.objective import Scoring, objective_score
from arborseg.inference.fusion import fuse
from arborseg.runs import RunFolder, TrialFolder


@pytest.fixture(scope="module")
def run3(tmp_path_factory) -> Path:
    """A three-tree campaign on a tiny synthetic volume (debug executor, 4 steps per trial)."""
    from campaign_helpers import write_campaign

    from arborseg.campaign.config import load_campaign
    from arborseg.campaign.driver import Campaign

    tmp = tmp_path_factory.mktemp("posthoc")
    path = write_campaign(tmp, name="phtiny", budget={"random_trees": 3, "refine_top": 0})
    return Campaign(load_campaign(path), tmp / "runs", progress=False).run()


def _snapshot(*folders: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for f in folders if f.is_dir()
            for p in sorted(f.rglob("*")) if p.is_file()}


def _no_training(monkeypatch) -> None:
    """Any training, job submission or prediction fails the test."""
    import arborseg.ensemble.build
    import arborseg.ensemble.members
    import arborseg.jobs.executors
    import arborseg.train.trainer

    def forbidden(*args, **kwargs):
        raise AssertionError("a post-hoc ensemble must not train, submit or predict")

    monkeypatch.setattr(arborseg.train.trainer, "train_and_score", forbidden)
    monkeypatch.setattr(arborseg.jobs.executors, "make_executor", forbidden)
    monkeypatch.setattr(arborseg.ensemble.members, "predict_member", forbidden)
    monkeypatch.setattr(arborseg.ensemble.build, "predict_member", forbidden)


def test_trials_keep_their_probabilities(run3):
    folder = RunFolder.open(run3)
    trials = sorted(p for p in folder.trials_dir.iterdir() if TrialFolder(p).is_finished())
    assert len(trials) == 3
    for path in trials:
        trial = TrialFolder(path)
        metrics = trial.read_metrics()
        assert metrics is not None
        for region in ("validation", "eval_near", "eval_far"):
            assert trial.probs_path(region).name == f"{region}.npz" and trial.probs_path(region).is_file()
            probs = trial.read_probs(region)
            assert probs.dtype == np.float16 and probs.shape == (3, 1, 64, 64)
            assert np.allclose(probs.astype(np.float32).sum(0), 1.0, atol=5e-3)
        # the trial's recorded validation score comes from these very probabilities (to float16 rounding)
        labels = folder.load_config().data.read_labels("validation")
        pred = trial.read_probs("validation").astype(np.float32).argmax(0)
        scoring = Scoring(("interior", "membrane", "mito"))
        value = objective_score(pred, labels, "fg_iou", scoring)
        assert value == pytest.approx(metrics["regions"]["validation"]["fg_iou"], abs=0.02)


def test_read_probs_also_reads_older_npy_members(tmp_path):
    member = TrialFolder(tmp_path / "member")
    old = np.random.default_rng(0).random((2, 1, 4, 4)).astype(np.float16)
    member.probs_dir.mkdir(parents=True)
    np.save(member.probs_dir / "validation.npy", old)
    assert member.has_probs("validation") and not member.has_probs("eval_far")
    assert np.array_equal(member.read_probs("validation"), old) and member.read_probs("eval_far") is None
    member.save_probs("validation", old.astype(np.float32))  # the new file wins over the old one
    assert member.probs_path("validation").is_file() and np.array_equal(member.read_probs("validation"), old)


def test_greedy_init_keeps_the_best_k():
    labels = np.array([1, 1, 1, 0, 0, 0]).reshape(1, 1, 6)

    def two_class(p):
        p = np.asarray(p, np.float32).reshape(1, 1, -1)
        return np.stack([1 - p, p])

    def score(pred):
        return objective_score(pred, labels, "fg_iou", Scoring(("bg", "fg")))

    a = two_class([0.9, 0.9, 0.9, 0.1, 0.1, 0.1])  # perfect alone
    b = two_class([0.9, 0.9, 0.4, 0.45, 0.1, 0.1])
    probs = np.stack([a, b])
    assert list(greedy_select(probs, score, "maximize", rounds=2).counts) == [1, 0]  # init 1: A alone is best
    sel = greedy_select(probs, score, "maximize", rounds=2, init=2)
    assert sel.counts[0] >= 1 and sel.counts[1] >= 1 and sel.history[0] == pytest.approx(1.0)


def test_posthoc_ensemble_trains_nothing_and_scores_the_stored_probabilities(run3, monkeypatch, capsys):
    _no_training(monkeypatch)
    folder = RunFolder.open(run3)
    before = _snapshot(folder.trials_dir, folder.jobs_dir)
    assert main(["-q", "ensemble", str(run3), "--bootstrap", "50"]) == 0
    out = capsys.readouterr().out
    assert "trials chosen post hoc (no training)" in out and "gain over the best single trial" in out
    assert "inference cost" in out
    assert _snapshot(folder.trials_dir, folder.jobs_dir) == before  # no trial folder changed, no job
    m = read_manifest(run3 / "ensembles" / "posthoc")
    assert m["mode"] == "posthoc" and m["training_steps"] == 0 and m["settings"]["init"] == 2
    assert not (run3 / "ensembles" / "posthoc" / "members").exists()
    assert len(m["candidates"]) == 3 and {c["key"] for c in m["candidates"]} == \
        {f"t{int(p.name):04d}" for p in folder.trials_dir.iterdir()}
    # the ensemble's validation score is fuse() of the stored probabilities of the members, with their weights
    data = folder.load_config().data
    labels = data.read_labels("validation")
    scoring = Scoring.from_data(data)
    ens = run3 / "ensembles" / "posthoc"
    probs = np.stack([TrialFolder(ens / c["trial_dir"]).read_probs("validation") for c in m["candidates"]])
    weights = [c["weight"] for c in m["candidates"]]
    fused = fuse(probs, m["fusion"], weights=weights).labels
    assert objective_score(fused, labels, m["objective"], scoring) == \
        pytest.approx(m["scores"]["validation"][m["objective"]], abs=1e-12)
    assert scoring.score(fused, labels)["fg_iou"] == pytest.approx(m["scores"]["validation"]["fg_iou"], abs=1e-12)
    # members: the weighted candidates, each naming its trial folder; the two best are in it (--init 2)
    assert sum(x["weight"] for x in m["members"]) == pytest.approx(1.0)
    assert {c["key"] for c in m["candidates"][:2]} <= {x["key"] for x in m["members"]} or m["fusion"] == "weighted"
    for member in m["members"]:
        trial = TrialFolder(ens / member["trial_dir"])
        assert trial.path.resolve().parent == folder.trials_dir.resolve()
        assert (ens / member["model"]).resolve() == trial.model_path.resolve()
        assert member["gflops"] > 0
    assert m["inference"]["gflops"] == pytest.approx(sum(x["gflops"] for x in m["members"]), rel=1e-6)
    best = m["candidates"][0]
    assert m["gain"]["baseline"] == best["key"]
    g = m["gain"]["regions"]["validation"][m["objective"]]
    assert g["lo"] <= g["gain"] <= g["hi"]
    assert g["member"] == pytest.approx(best["scores"]["validation"][m["objective"]])

    # the run table row shows members, the validation gain with its interval and the inference cost
    assert main(["table", str(run3)]) == 0
    out = capsys.readouterr().out
    assert "ENSEMBLE" in out and "val_gain_ci" in out and "inference_gflops" in out
    assert m["members"][0]["key"] in out

    # --candidates 1: one trial, the ensemble is that trial
    assert main(["-q", "ensemble", str(run3), "--candidates", "1", "--bootstrap", "20"]) == 0
    one = read_manifest(run3 / "ensembles" / "posthoc1")
    assert [c["key"] for c in one["candidates"]] == [best["key"]] and len(one["members"]) == 1
    assert _snapshot(folder.trials_dir, folder.jobs_dir) == before


def test_train_only_options_need_train(run3, capsys):
    assert main(["ensemble", str(run3), "--top", "2"]) == 2
    err = capsys.readouterr().err
    assert "--top" in err and "--train" in err and len(err.strip().splitlines()) == 1
    assert main(["ensemble", str(run3), "--train", "--candidates", "2"]) == 2
    assert "--candidates" in capsys.readouterr().err


def test_posthoc_ensemble_exports_a_bundle(run3, tmp_path):
    from arborseg.bundle.export import export_bundle
    from arborseg.ensemble.build import EnsembleSettings
    from arborseg.ensemble.posthoc import build_posthoc

    result = build_posthoc(run3, EnsembleSettings(name="forbundle", bootstrap=20, progress=False, fusion="mean"))
    manifest = export_bundle(result.dir, tmp_path / "bundle", onnx=False, bioimageio=False, make_zip=False,
                             progress=False)
    assert len(manifest["members"]) == len(result.manifest["members"])
    exported = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert exported["members"] and all((tmp_path / "bundle" / "members").iterdir())
