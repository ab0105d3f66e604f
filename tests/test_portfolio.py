"""Portfolio trees: known-good trees listed by a space or a campaign are trained first, resumed without
retraining, refined only when the space can express them, and bad entries are refused with one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from campaign_helpers import ROOT, trials_of, write_campaign
from optuna.trial import TrialState

from arborseg.campaign.config import load_campaign
from arborseg.campaign.driver import Campaign
from arborseg.errors import ArborsegError
from arborseg.space import load_space
from arborseg.table import run_table
from arborseg.tree import ModuleTree

QUICKSTART = ROOT / "search_spaces" / "quickstart.yaml"


def small_tree(window=(1, 32, 32), depth: int = 2) -> dict:
    """A tiny 2D U-Net written by hand, as a portfolio file would be (no recorded draws)."""
    return {"arborseg_tree": 1, "space": "portfolio", "window": list(window),
            "training": {"optimizer": "sgd", "schedule": "poly", "lr": 0.01},
            "root": {"type": "sequence", "children": [
                {"type": "encoder_decoder", "dims": "2d", "kernel_size": 3, "depth": depth, "width": 4,
                 "width_growth": 2.0, "blocks_per_level": 1, "layers_per_block": 1, "norm": "instance",
                 "activation": "leaky_relu", "dropout": 0.0, "separable": False, "pooling": "max",
                 "upsampling": "transposed", "skip_merge": "concat"},
                {"type": "predictor"}]}}


def write_tree(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def sampled_tree(path: Path) -> ModuleTree:
    """A quickstart tree with its recorded draws: the quickstart space can replay (and refine) it."""
    space = load_space(QUICKSTART)
    tree = next(t for t in (space.sample(s) for s in range(100, 200)) if t.family == "2d" and t.window[0] == 1)
    tree.save(path)
    return tree


def run_campaign(path: Path, runs: Path, **kw) -> Path:
    return Campaign(load_campaign(path), runs, progress=False, **kw).run()


def test_portfolio_trees_are_trained_first_and_resume_does_not_retrain_them(tmp_path):
    write_tree(tmp_path / "hand.yaml", small_tree())
    sampled = sampled_tree(tmp_path / "sampled.yaml")
    path = write_campaign(tmp_path, name="pf", portfolio=["hand.yaml", "sampled.yaml"],
                          budget={"random_trees": 1, "refine_top": 3, "refine_trials": 1})
    run_dir = run_campaign(path, tmp_path / "runs", max_trials=1)  # stops after the first portfolio tree
    assert [t.user_attrs["task"] for t in trials_of(run_dir)] == ["portfolio:0"]
    run_campaign(path, tmp_path / "runs")  # resumes: portfolio:0 is not trained again
    trials = sorted(trials_of(run_dir), key=lambda t: t._trial_id)  # storage order
    tasks = [t.user_attrs["task"] for t in trials]
    assert tasks[:3] == ["portfolio:0", "portfolio:1", "random:0"]
    assert len(tasks) == len(set(tasks)) and all(t.state == TrialState.COMPLETE for t in trials)
    by_task = {t.user_attrs["task"]: t for t in trials}
    hand, replayed = by_task["portfolio:0"], by_task["portfolio:1"]
    assert hand.user_attrs["phase"] == "portfolio" and not hand.params and not hand.user_attrs["replayable"]
    assert replayed.user_attrs["replayable"] and replayed.params and replayed.user_attrs["tree_id"] == sampled.id
    assert ModuleTree.load(hand.user_attrs["tree_file"]).training_values()["optimizer"] == "sgd"
    # phase B: the replayable portfolio tree is refined, the hand-written one (not in the space) is not
    parents = {t.user_attrs["parent_tree_id"] for t in trials if t.user_attrs["phase"] == "refine"}
    assert sampled.id in parents and hand.user_attrs["tree_id"] not in parents
    assert len(parents) == 2  # the random tree and one portfolio tree
    table = run_table([run_dir])
    assert sorted(table.loc[table["phase"] == "portfolio", "task"]) == ["portfolio:0", "portfolio:1"]


def test_a_space_lists_its_portfolio_relative_to_its_file(tmp_path):
    (tmp_path / "trees").mkdir()
    write_tree(tmp_path / "trees" / "known.yaml", small_tree())
    space = yaml.safe_load(QUICKSTART.read_text()) | {"portfolio": ["trees/known.yaml"]}
    space_file = tmp_path / "space.yaml"
    space_file.write_text(yaml.safe_dump(space, sort_keys=False))
    assert load_space(space_file).portfolio == ((tmp_path / "trees" / "known.yaml").resolve(),)
    write_tree(tmp_path / "mine.yaml", small_tree(depth=1))
    cfg = load_campaign(write_campaign(tmp_path, space=space_file, portfolio=["mine.yaml"]))
    assert [p.name for p in cfg.portfolio] == ["known.yaml", "mine.yaml"]  # the space's, then the campaign's


def _one_line(path: Path) -> str:
    with pytest.raises(ArborsegError) as err:
        load_campaign(path)
    message = str(err.value)
    assert "\n" not in message and "portfolio" in message
    return message


def test_bad_portfolio_entries_are_refused_with_one_line(tmp_path):
    missing = _one_line(write_campaign(tmp_path, name="a", portfolio=["nowhere.yaml"]))
    assert "nowhere.yaml" in missing and "not found" in missing

    (tmp_path / "data.yaml").write_text("name: not a tree\nclasses: [a, b]\n")
    not_tree = _one_line(write_campaign(tmp_path, name="b", portfolio=["data.yaml"]))
    assert "data.yaml" in not_tree and "not a module tree" in not_tree

    write_tree(tmp_path / "big.yaml", small_tree(window=(1, 128, 128)))
    big = _one_line(write_campaign(tmp_path, name="c", portfolio=["big.yaml"]))
    assert "big.yaml" in big and "[1, 128, 128]" in big and "remove the entry" in big

    write_tree(tmp_path / "odd.yaml", small_tree(window=(1, 30, 30), depth=3))  # 30 is no multiple of 4
    odd = _one_line(write_campaign(tmp_path, name="d", portfolio=["odd.yaml"]))
    assert "odd.yaml" in odd and "window" in odd

    space = yaml.safe_load(QUICKSTART.read_text()) | {"portfolio": ["gone.yaml"]}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    in_space = _one_line(write_campaign(tmp_path, name="e", space=tmp_path / "space.yaml"))
    assert in_space.startswith("space.yaml: portfolio[0]: 'gone.yaml' not found")


def test_built_in_portfolios_load():
    for name, expected in (("unet2d", {"unet2d_nnunet.yaml"}),
                           ("thin3d_unet", {"thin3d_paper.yaml", "unet2d_nnunet.yaml"}),
                           ("hybrid_2d3d", set()), ("quickstart", set())):
        space = load_space(ROOT / "search_spaces" / f"{name}.yaml")
        assert {p.name for p in space.portfolio} == expected
    b = ModuleTree.load(ROOT / "search_spaces" / "portfolio" / "unet2d_nnunet.yaml").training_values()
    assert b["optimizer"] == "sgd" and b["schedule"] == "poly" and b["lr"] == 0.01 and b["weight_decay"] == 3e-5
