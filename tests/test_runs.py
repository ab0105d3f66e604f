"""The run store: the layout of run and trial folders, trial listing, the one model loader, one-line errors."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_table import make_fake_campaign, tiny_real_campaign

from arborseg import runs
from arborseg.errors import ArborsegError, CampaignError
from arborseg.runs import MODEL_KEYS, RunFolder, TrialFolder, find_run_dirs, load_model, save_model
from arborseg.table import run_table


class NotPlain:
    """An object a model file must never hold (weights-only loading refuses it)."""


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """The small real campaign of test_table (made once per session)."""
    return tiny_real_campaign(tmp_path_factory.mktemp("real"))


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and text.strip() == text and text, text
    return text


# ------------------------------------------------------------------------------------------- layout
def test_layout_of_a_hand_made_run_folder(tmp_path):
    run_dir = make_fake_campaign(tmp_path / "runs")
    folder = RunFolder.open(run_dir)
    assert (folder.name, folder.objective, folder.direction) == ("fake", "fg_iou", "maximize")
    assert folder.trials_dir == run_dir / "trials" and folder.jobs_dir == run_dir / "jobs"
    assert folder.trial_dir(4) == run_dir / "trials" / "0004" == runs.trial_dir(run_dir, 4)
    trial = folder.trial(0)
    assert trial.tree_path == run_dir / "trials" / "0000" / "tree.yaml" and trial.tree_path.is_file()
    first = folder.trials()[0][1]
    assert trial.load_tree().id == first.user_attrs["tree_id"] and first.user_attrs["artifact_dir"] == str(trial.path)
    assert [p.name for p in trial.overlays()] == ["eval_far_z1.png", "eval_near_z1.png"]
    assert trial.learning_curve_path.is_file() and not trial.is_finished()
    assert folder.trial(1).read_metrics()["regions"]["validation"]["fg_iou"] == pytest.approx(0.5)
    assert folder.trial(0).read_metrics() is None  # metrics only in the storage
    assert folder.ensemble_dir("e") == run_dir / "ensembles" / "e" and folder.ensemble_dirs() == []
    assert runs.member_dir(folder.ensemble_dir("e"), "abcdef0123456789", 2).name == "abcdef0123-s2"
    assert find_run_dirs([run_dir.parent]) == [run_dir] == find_run_dirs([run_dir, run_dir.parent])


def test_trials_listed_once_in_creation_order(tmp_path):
    folder = RunFolder.open(make_fake_campaign(tmp_path / "runs", storage="journal"))
    listed = folder.trials()
    assert [t.number for _, t in listed] == [0, 1, 2, 3, 0, 1]  # two studies, random first
    refine = f"fake.refine.{listed[4][1].user_attrs['parent_tree_id'][:10]}"
    assert [s.study_name for s, _ in listed] == ["fake.random"] * 4 + [refine] * 2  # not "notfake.random"
    assert len(run_table([folder.path])) == len(listed)


def test_moved_folder_reads_its_own_storage_and_trial_folders(tmp_path):
    old = make_fake_campaign(tmp_path / "a")
    moved = tmp_path / "b" / "fake"
    shutil.copytree(old, moved)
    shutil.rmtree(old)
    folder = RunFolder.open(moved)
    assert folder.recorded_dir == str(old.absolute())
    assert str(moved) in folder.storage_url and len(folder.trials()) == 6
    recorded = str(old / "trials" / "0000")
    assert folder.locate(recorded) == str(moved / "trials" / "0000")
    assert folder.locate("/nowhere/x") == "/nowhere/x" and folder.locate(None) is None


def test_create_and_open_round_trip(tmp_path):
    source = tmp_path / "c.yaml"
    source.write_text("name: c\n")
    manifest = {"name": "c", "campaign_file": str(source), "storage_url": "sqlite:///x.db", "objective": "miou",
                "direction": "minimize", "budget": {"steps": 2}}
    made = RunFolder.create(tmp_path / "runs" / "c", manifest, source)
    again = RunFolder.open(tmp_path / "runs" / "c")
    assert again.manifest == manifest == made.manifest and again.direction == "minimize"
    assert again.campaign_yaml.read_text() == "name: c\n"
    assert again.campaign_files() == [source, again.campaign_yaml]
    RunFolder.create(again.path, manifest, again.campaign_yaml)  # the copy itself as the source: kept
    assert again.campaign_yaml.read_text() == "name: c\n"


def test_the_store_is_import_light():
    code = ("import sys, arborseg.runs; heavy = [m for m in ('torch', 'optuna', 'pandas', 'networkx', "
            "'arborseg.tree') if m in sys.modules]; assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------------------- models of real trials
def test_real_trials_load_as_networks(trained_run, tmp_path):
    folder = RunFolder.open(trained_run)
    assert folder.load_config().name == "tinyreal"
    listed = folder.trials()
    assert len(listed) == 3
    for _, frozen in listed:
        trial = TrialFolder(Path(frozen.user_attrs["artifact_dir"]))
        assert trial.path == folder.trial_dir(frozen._trial_id) and trial.is_finished()
        net, tree, saved = load_model(trial.model_path)
        assert not net.training and set(saved) == set(MODEL_KEYS)
        assert tree.id == trial.load_tree().id == frozen.user_attrs["tree_id"]
        assert saved["classes"] == ["interior", "membrane", "mito"] and saved["window"] == list(tree.window)
        x = torch.zeros((1, 1, *tree.window))
        with torch.no_grad():
            assert net(x).shape[1] == 3
    # save_model writes what load_model reads (weights only), with the tree given explicitly too
    copy = save_model(tmp_path, net.state_dict(), tree, saved["classes"], tree.window, saved["normalizer"])
    net2, tree2, saved2 = load_model(copy, tree=tree)
    assert tree2 is tree and saved2["normalizer"] == saved["normalizer"]
    for key, value in net.state_dict().items():
        assert torch.equal(value, net2.state_dict()[key]), key
    assert not copy.with_name("model.pt.tmp").exists()
    # a finished trial copied (as an ensemble member reuses one) is finished and loads the same
    member = TrialFolder(folder.trial_dir(listed[0][1]._trial_id)).copy_to(runs.member_dir(tmp_path / "e", "a" * 12, 0))
    assert member.path.name == "aaaaaaaaaa-s0" and member.is_finished()
    copied = runs.RESULT_FILES + (runs.MODEL_FILE, runs.PROBS_DIR)
    assert sorted(p.name for p in member.path.iterdir()) == sorted(copied)
    assert member.load_tree().id == listed[0][1].user_attrs["tree_id"]


# ------------------------------------------------------------------------------------------- one-line errors
def test_not_a_run_folder(tmp_path):
    with pytest.raises(CampaignError) as exc:
        RunFolder.open(tmp_path)
    assert "not a campaign folder (no campaign.json)" in one_line(exc)
    (tmp_path / "campaign.json").write_text("{not json")
    with pytest.raises(CampaignError) as exc:
        RunFolder.open(tmp_path)
    assert "not valid JSON" in one_line(exc)
    (tmp_path / "campaign.json").write_text("[1, 2]")
    with pytest.raises(CampaignError) as exc:
        RunFolder.open(tmp_path)
    assert "not a campaign manifest" in one_line(exc)
    with pytest.raises(CampaignError) as exc:
        find_run_dirs([tmp_path / "nowhere"])
    assert "no such folder" in one_line(exc)
    with pytest.raises(CampaignError) as exc:
        RunFolder(tmp_path, {"name": "x"}).load_config()
    assert "cannot read the campaign configuration" in one_line(exc)


def test_model_files_of_the_wrong_kind(tmp_path, trained_run):
    with pytest.raises(ArborsegError) as exc:
        load_model(tmp_path / "model.pt")
    assert "no such model file" in one_line(exc)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00not a torch file at all")
    with pytest.raises(ArborsegError) as exc:
        load_model(junk)
    assert "not a readable model.pt" in one_line(exc)
    (tmp_path / "short.pt").write_bytes(b"junk")  # torch.load raises struct.error on this one
    with pytest.raises(ArborsegError, match="not a readable model.pt"):
        load_model(tmp_path / "short.pt")
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}, "tree": {}, "classes": [], "extra": NotPlain()}, foreign)
    with pytest.raises(ArborsegError) as exc:
        load_model(foreign)
    assert "objects other than tensors and plain values" in one_line(exc)
    bare = tmp_path / "bare.pt"
    torch.save({"weights": torch.zeros(2)}, bare)
    with pytest.raises(ArborsegError) as exc:
        load_model(bare)
    assert "not a model written by arborseg training (no state_dict, tree, classes)" in one_line(exc)
    torch.save({"state_dict": {}, "tree": {"bad": 1}, "classes": ["a"]}, bare)
    with pytest.raises(ArborsegError) as exc:
        load_model(bare)
    assert "the tree saved in it is invalid" in one_line(exc)
    first, second = (TrialFolder(p) for p in sorted((trained_run / "trials").iterdir())[:2])  # two random trees
    assert first.load_tree().id != second.load_tree().id
    with pytest.raises(ArborsegError) as exc:
        load_model(second.model_path, tree=first.load_tree())
    assert "do not fit the tree" in one_line(exc)
