"""The active-learning benchmark keeps every finished curve (so that a long run goes on in another session) and
says whether random selection rises with labels and which strategies beat it by more than the seed spread
(benchmarks/bench_active_learning.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_active_learning as bench


def _task(**change) -> dict:
    task = {"dataset": "isbi", "seed": 0, "kind": "tiles", "strategy": "entropy", "method": "entropy",
            "crop_scale": 1, "settings": {"unit": "tile", "steps": 400, "rounds": 4}, "init": None}
    return {**task, **change}


def _rows(method: str, curves: dict[int, list[float]]) -> list[dict]:
    """Tile rows of one method: seed -> fg IoU at 2, 5, 8 labeled tiles."""
    return [{"kind": "tiles", "dataset": "isbi", "method": method, "seed": seed, "round": i, "labeled_units": units,
             "fg_iou": value, "fn_401": 1.0 - value}
            for seed, values in curves.items() for i, (units, value) in enumerate(zip((2, 5, 8), values))]


def test_a_kept_curve_is_reused_only_with_the_same_settings(tmp_path):
    rows = [{"round": 0, "fg_iou": 0.5}]
    bench.keep_rows(_task(), rows, tmp_path)
    assert bench.kept_rows(_task(), tmp_path) == rows
    assert bench.kept_rows(_task(settings={"unit": "tile", "steps": 200, "rounds": 4}), tmp_path) is None
    assert bench.kept_rows(_task(seed=1), tmp_path) is None


def test_a_pre_trained_start_is_named_by_its_run_not_its_path(tmp_path):
    runs = []
    for where in ("a", "b"):
        run = tmp_path / where / "pretrain_genesis"
        run.mkdir(parents=True)
        (run / "summary.json").write_text(json.dumps({"method": "genesis", "steps": 600}))
        runs.append(str(run))
    assert bench.task_key(_task(init=runs[0])) == bench.task_key(_task(init=runs[1]))
    assert bench.task_key(_task(init=runs[0])) != bench.task_key(_task())
    assert bench.init_identity(runs[0]) == "pretrain_genesis:genesis:600"
    bench.keep_rows(_task(init=runs[0]), [{"round": 0}], tmp_path / "kept")
    gone = str(tmp_path / "clean_clone" / "pretrain_genesis")  # runs/ is not kept: the curve's record names it
    assert bench.kept_rows(_task(init=gone), tmp_path / "kept") == [{"round": 0}]
    assert bench.kept_rows(_task(init=str(tmp_path / "clean_clone" / "other_run")), tmp_path / "kept") is None


def test_the_pre_trained_variant_writes_its_own_results():
    scratch, pretrained = argparse.Namespace(init=None), argparse.Namespace(init="runs/x")
    assert bench.stem(scratch) != bench.stem(pretrained)
    assert bench.section(scratch) != bench.section(pretrained)


def test_random_rises_only_above_the_largest_seed_spread_on_its_curve():
    flat = _rows("random", {0: [0.50, 0.20, 0.52], 1: [0.50, 0.60, 0.52]})
    rising = _rows("random", {0: [0.50, 0.55, 0.60], 1: [0.51, 0.56, 0.62]})
    assert "does not rise" in bench.rises(flat)[0]
    assert "rises with labels" in bench.rises(rising)[0] and "does not" not in bench.rises(rising)[0]


def test_a_strategy_beats_random_only_by_more_than_the_seed_std():
    random = _rows("random", {0: [0.50, 0.55, 0.60], 1: [0.50, 0.56, 0.62]})
    clear = _rows("entropy", {0: [0.50, 0.65, 0.70], 1: [0.50, 0.66, 0.71]})
    noisy = _rows("kmeans", {0: [0.50, 0.45, 0.50], 1: [0.50, 0.75, 0.80]})
    table = {row[1]: row for row in bench.gains(random + clear + noisy)}
    assert len(table["entropy"]) == len(bench.GAINS_HEAD)
    assert table["entropy"][4] == "yes" and table["entropy"][7] == "yes"
    assert table["kmeans"][4] == "no" and table["kmeans"][7] == "no"
    one_seed = [r for r in random + clear if r["seed"] == 0]
    assert {row[1]: row for row in bench.gains(one_seed)}["entropy"][4] == "-"
