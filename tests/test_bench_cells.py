"""The search-vs-baselines benchmark keeps finished cells in the repository, so that its long run can go on in
another session or a clean clone (benchmarks/bench_search_vs_baselines.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_search_vs_baselines as bench


def _record(ds: str, seed: int, value: float) -> dict:
    return {"dataset": ds, "seed": seed, "train_seconds": 10.0 * (seed + 1), "jobs": 21,
            "rows": [{"dataset": ds, "seed": seed, "arm": "baseline_B", "region": "eval_far", "metric": "miou",
                      "value": value}],
            "accounting": [{"dataset": ds, "seed": seed, "arm": "baseline_B", "steps_used": 216}],
            "ranks": [{"dataset": ds, "seed": seed, "rung": 0, "spearman_top": 0.5}],
            "curves": {"baseline_B": [[24, value]]}}


def test_recorded_cells_are_collected_without_a_work_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "RESULTS", tmp_path / "results")
    for seed, value in ((0, 0.6), (1, 0.7)):
        path = bench.cell_record_path("cpu_sh", "vnc_mito", seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(_record("vnc_mito", seed, value)))
    b = bench.BUDGETS["cpu_sh"]
    got = bench.collect(tmp_path / "gone", "cpu_sh", ["vnc_mito"], [0, 1], b, bench.plan(b), complete=set())
    assert [r["value"] for r in got["rows"]] == [0.6, 0.7]
    assert [a["seed"] for a in got["accounting"]] == [0, 1]
    assert got["curves"] == {"vnc_mito": {"0": {"baseline_B": [[24, 0.6]]}, "1": {"baseline_B": [[24, 0.7]]}}}
    assert got["machine_time"] == {"train_seconds": 30.0, "jobs": 42}
    summary = {(s["arm"], s["region"], s["metric"]): s for s in bench.summarise(got["rows"])}
    assert summary[("baseline_B", "eval_far", "miou")]["n"] == 2


def test_invocations_of_earlier_sessions_are_kept_once(tmp_path):
    old = tmp_path / "results.json"
    old.write_text(json.dumps({"invocations": [{"started": "2026-11-30 14:31:12", "wall_min": 55.5},
                                               {"started": "?", "wall_min": 1.0}]}))
    log = tmp_path / "invocations.json"
    log.write_text(json.dumps([{"started": "2026-12-01 10:23:09", "wall_min": 3.0},
                               {"started": "2026-11-30 14:31:12", "wall_min": 55.5}]))
    runs = bench.merged_invocations(old, log)
    assert [r["started"] for r in runs] == ["2026-11-30 14:31:12", "2026-12-01 10:23:09"]
    assert bench.merged_invocations(tmp_path / "none.json", tmp_path / "none2.json") == []


def test_cells_are_named_dataset_colon_seed():
    assert bench.parse_cell("isbi2012:1", ["vnc_mito", "isbi2012"], [0, 1, 2]) == ("isbi2012", 1)
    with pytest.raises(SystemExit, match="DATASET:SEED"):
        bench.parse_cell("isbi2012:7", ["isbi2012"], [0, 1, 2])
    with pytest.raises(SystemExit, match="DATASET:SEED"):
        bench.parse_cell("isbi2012", ["isbi2012"], [0, 1, 2])


def test_a_record_is_rewritten_only_when_its_cell_changed(tmp_path, monkeypatch):
    """Collecting a finished cell again keeps its record (and the revision that trained it) unless the cell's
    results differ."""
    monkeypatch.setattr(bench, "RESULTS", tmp_path / "results")
    cell = _record("isbi2012", 2, 0.69)
    monkeypatch.setattr(bench, "collect_cell", lambda *args: json.loads(json.dumps(cell)))
    monkeypatch.setattr(bench, "git_revision", lambda: "trained")
    import arborseg.data

    monkeypatch.setattr(arborseg.data, "load_data_config", lambda path: SimpleNamespace(classes=("a", "b")))
    b = bench.BUDGETS["cpu_sh"]

    def collect() -> dict:
        bench.collect(tmp_path / "work", "cpu_sh", ["isbi2012"], [2], b, bench.plan(b), complete={("isbi2012", 2)})
        return json.loads(bench.cell_record_path("cpu_sh", "isbi2012", 2).read_text())

    assert collect()["code"] == "trained"
    monkeypatch.setattr(bench, "git_revision", lambda: "later")
    assert collect()["code"] == "trained"
    cell["rows"][0]["value"] = 0.70
    assert collect()["code"] == "later"
