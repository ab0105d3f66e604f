"""Where a trial's time goes: the stopwatch charges nested parts once, a training records every part, a job in
its own process adds its start-up, and the run table shows the split."""

from __future__ import annotations

import json
import os
import time

import pytest

from arborseg.train.timings import PARTS, Timings, job_timings, process_age_seconds


def test_nested_parts_are_charged_once():
    t = Timings()
    with t.part("validation"):
        with t.part("data"):
            t.add("data", 0.0)
    with t.part("train"):
        with t.part("validation"):
            pass
    assert set(t.to_dict()) == {"validation", "data", "train"}
    assert all(v >= 0 for v in t.to_dict().values())
    t.add("train", 2.0)
    t.add("figures", -1.0)  # never negative
    assert t.to_dict()["train"] >= 2.0 and t.to_dict()["figures"] == 0.0
    assert list(t.to_dict()) == [p for p in PARTS if p in t.to_dict()]
    with pytest.raises(ValueError, match="unknown time part 'lunch'"):
        with t.part("lunch"):
            pass


def test_startup_only_for_jobs_in_their_own_process(monkeypatch):
    age = process_age_seconds()
    assert age is None or age > 0
    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    assert "startup" not in job_timings().to_dict()
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    if age is not None:
        assert job_timings().to_dict()["startup"] >= age - 0.001  # rounded to milliseconds


def test_a_training_records_where_its_time_went(tmp_path):
    from test_continuation import data, tree

    from arborseg.train.settings import TrainSettings
    from arborseg.train.trainer import train_and_score

    settings = TrainSettings(steps=4, eval_every=2, device="cpu", precision="fp32", num_threads=1, overlays=True)
    started = time.perf_counter()
    result = train_and_score(tree("adam", "cosine", 1e-3), data(), settings, tmp_path, progress=False)
    wall = time.perf_counter() - started
    split = json.loads((tmp_path / "metrics.json").read_text())["timings"]
    assert split == result["timings"]
    assert set(split) == {"setup", "data", "train", "validation", "evaluation", "figures"}
    assert all(v >= 0 for v in split.values()) and split["train"] > 0
    assert sum(split.values()) <= wall + 0.01  # parts never overlap


def test_the_run_table_shows_the_split(tmp_path):
    from test_table import tiny_real_campaign

    from arborseg.table import campaign_status, run_table

    table = run_table([tiny_real_campaign(tmp_path)])
    complete = table[table["state"] == "COMPLETE"]
    assert len(complete) and {"time.setup", "time.train", "time.evaluation"} <= set(table.columns)
    assert (complete["time.train"] > 0).all()
    assert "time.startup" not in table.columns  # the debug executor runs trials inside the driver
    columns = list(table.columns)
    assert columns.index("time.setup") < columns.index("time.train") < columns.index("duration_s")
    assert os.environ.get("SUBMITIT_EXECUTOR") is None
    status = campaign_status(tiny_real_campaign(tmp_path))
    assert "time of the trials' last jobs" in status and "train " in status and "setup " in status
