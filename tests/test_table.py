"""Run tables: columns and values over hand-made Optuna storages (as the driver writes them) and one small real
campaign; filtering, sorting, grouping, summaries, output formats, the `arborseg table` command, plots."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from arborseg.cli import main
from arborseg.errors import CampaignError
from arborseg.table import (
    campaign_status,
    campaign_summary,
    filter_table,
    format_table,
    group_table,
    quote_columns,
    read_runs,
    run_table,
    select_columns,
    sort_table,
    to_markdown,
    top_rows,
    write_table,
)

ROOT = Path(__file__).parents[1]
SPACE = ROOT / "search_spaces" / "quickstart.yaml"
NS = (0, 5, 65, 401)
DISTS = {"training.lr": FloatDistribution(1e-4, 1e-2, log=True), "defaults.width": IntDistribution(4, 16),
         "defaults.norm": CategoricalDistribution(["batch", "instance"]),
         "root.children[0].oneof": CategoricalDistribution([0, 1, 2])}


# ------------------------------------------------------------------------------------------- helpers
def fake_metrics(q: float) -> dict[str, dict[str, float]]:
    """Scores of the three regions with the key names of arborseg.metrics (``q`` sets the quality)."""
    out = {}
    for r, region in enumerate(("validation", "eval_near", "eval_far")):
        s = q - 0.05 * r
        m = {"miou": s + 0.1, "fg_iou": s, "mdice": s + 0.15, "iou/membrane": s + 0.02, "iou/mito": s - 0.02,
             "dice/membrane": s + 0.1, "dice/mito": s + 0.05, "positive_fraction/mito": 0.02}
        for n in NS:
            m[f"fn_{n}"] = (1 - s) * 4 / (1 + n / 10)
            m[f"fp_{n}"] = (1 - s) * 3 / (1 + n / 20)
            m[f"fn_{n}/mito"] = m[f"fn_{n}"] * 1.5
        out[region] = m
    return out


def _png(path: Path, seed: int = 0) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    matplotlib.image.imsave(path, rng.random((32, 32, 3)))


def make_fake_campaign(root: Path, name: str = "fake", storage: str = "sqlite", artifacts: bool = True,
                       offset: float = 0.0) -> Path:
    """A campaign folder made by hand as the driver writes one: studies ``<name>.random`` and
    ``<name>.refine.<tree id[:10]>`` with COMPLETE, PRUNED and FAIL trials, user attrs, trial folders (tree.yaml,
    overlays, learning curve, metrics.json); the last trial's folder is missing.

    Trials, in order: 0 tree A COMPLETE 0.7 | 1 tree B COMPLETE 0.5 (metrics only in metrics.json) |
    2 tree C PRUNED 0.3 | 3 tree C FAIL | refine of A: 4 tree A2 COMPLETE 0.8 (seed 1) | 5 tree A COMPLETE 0.6
    (seed 2, folder missing)."""
    from arborseg.campaign.storage import make_storage, storage_url
    from arborseg.space.sampler import sample_distinct

    run_dir = root / name
    run_dir.mkdir(parents=True)
    url = storage_url(storage, run_dir)
    store = make_storage(storage, run_dir)
    trees = sample_distinct(str(SPACE), 4, 3)
    (run_dir / "campaign.json").write_text(json.dumps(
        {"name": name, "storage_url": url, "objective": "fg_iou", "direction": "maximize", "space": str(SPACE),
         "budget": {"random_trees": 4, "refine_top": 1, "refine_trials": 2, "steps": 4, "eval_every": 2}}))
    tree_a, tree_b, tree_c, tree_a2 = trees

    def add(study: optuna.Study, i: int, tree, state, value, phase, *, seed=0, parent=None, structural=True,
            metrics_in_attrs=True, extra=None):
        folder = run_dir / "trials" / f"{i:04d}"
        attrs = {"task": f"{phase}:{i}", "phase": phase, "tree_id": tree.id, "tree_name": tree.name,
                 "family": tree.family, "tree_file": str(folder / "tree.yaml"), "artifact_dir": str(folder),
                 "attempt": 1, "executor": "debug", "parent_tree_id": parent or tree.id}
        if artifacts:
            tree.save(folder / "tree.yaml")
            if state == TrialState.COMPLETE:
                for region in ("eval_near", "eval_far"):
                    _png(folder / "overlays" / f"{region}_z1.png", i)
                _png(folder / "learning_curve.png", i + 100)
        if state == TrialState.COMPLETE:
            attrs.update(params=1000 * (i + 1) + 234, flops_per_voxel=500.0 * (i + 1), train_seconds=1.5 + i,
                         steps=4, seed=seed)
            if metrics_in_attrs:
                attrs["metrics"] = fake_metrics(value + offset)
            else:
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "metrics.json").write_text(json.dumps({"regions": fake_metrics(value + offset)}))
        attrs.update(extra or {})
        params = {"training.lr": 1e-3 * (i + 1), "defaults.width": 4 + i, "defaults.norm": ["batch", "instance"][i % 2]}
        dists = {k: DISTS[k] for k in params}
        if structural:
            params["root.children[0].oneof"] = i % 3
            dists["root.children[0].oneof"] = DISTS["root.children[0].oneof"]
        study.add_trial(create_trial(
            state=state, value=None if state == TrialState.FAIL else value + offset, params=params,
            distributions=dists, user_attrs=attrs,
            intermediate_values={2: value + offset - 0.1} if state != TrialState.FAIL else {}))

    random = optuna.create_study(study_name=f"{name}.random", storage=store, direction="maximize")
    add(random, 0, tree_a, TrialState.COMPLETE, 0.7, "random")
    add(random, 1, tree_b, TrialState.COMPLETE, 0.5, "random", metrics_in_attrs=False)
    add(random, 2, tree_c, TrialState.PRUNED, 0.3, "random", extra={"prune_reason": "pruned at step 2 (fg_iou=0.2)"})
    add(random, 3, tree_c, TrialState.FAIL, 0.0, "random", extra={"fail_reason": "RuntimeError: boom | a module"})
    refine = optuna.create_study(study_name=f"{name}.refine.{tree_a.id[:10]}", storage=store, direction="maximize")
    add(refine, 4, tree_a2, TrialState.COMPLETE, 0.8, "refine", seed=1, parent=tree_a.id, structural=False)
    add(refine, 5, tree_a, TrialState.COMPLETE, 0.6, "refine", seed=2, parent=tree_a.id, structural=False)
    shutil.rmtree(run_dir / "trials" / "0005", ignore_errors=True)  # missing artifacts
    other = optuna.create_study(study_name=f"not{name}.random", storage=store)  # another campaign's study
    other.add_trial(create_trial(state=TrialState.COMPLETE, value=1.0))
    return run_dir


_REAL: dict[str, Path] = {}


def tiny_real_campaign(root: Path) -> Path:
    """A real campaign (debug executor, 2 random trees + 1 refinement, 4 steps, synthetic data), made once."""
    if "run" not in _REAL:
        from arborseg.campaign.config import load_campaign
        from arborseg.campaign.driver import Campaign

        data = {"synthetic": {"seed": 2, "shape": [6, 64, 64]}, "classes": ["interior", "membrane", "mito"],
                "regions": {"train": {"z": [0, 3]}, "validation": {"z": [3, 4]}, "eval_near": {"z": [4, 5]},
                            "eval_far": {"z": [5, 6]}}}
        cfg = {"name": "tinyreal", "data": data, "space": str(SPACE),
               "budget": {"random_trees": 2, "refine_top": 1, "refine_trials": 1, "steps": 4, "eval_every": 2},
               "objective": {"metric": "fg_iou"}, "pruner": {"name": "none"}, "executor": {"kind": "debug"},
               "storage": "sqlite", "train": {"seed": 0}}
        path = root / "tinyreal.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        _REAL["run"] = Campaign(load_campaign(path), root / "runs", progress=False).run()
    return _REAL["run"]


@pytest.fixture(scope="session")
def real_run(tmp_path_factory) -> Path:
    return tiny_real_campaign(tmp_path_factory.mktemp("real"))


@pytest.fixture
def fake(tmp_path) -> Path:
    return make_fake_campaign(tmp_path / "runs")


@pytest.fixture
def table(fake) -> pd.DataFrame:
    return run_table([fake])


# ------------------------------------------------------------------------------------------- columns and values
@pytest.mark.parametrize("storage", ["sqlite", "journal"])
def test_columns_and_values_from_a_hand_made_storage(tmp_path, storage):
    run = make_fake_campaign(tmp_path, storage=storage)
    t = run_table([run])
    assert len(t) == 6  # the study of another campaign in the same storage is not read
    for col in ("campaign", "trial", "trial_id", "state", "tree_id", "tree_name", "family", "depth", "width",
                "params", "flops_per_voxel", "train_seconds", "steps", "seed", "fail_reason", "prune_reason",
                "param.training.lr", "param.defaults.width", "param.defaults.norm", "hp.lr",
                "validation.miou", "eval_near.fg_iou", "eval_far.iou/membrane", "eval_far.dice/mito",
                "eval_near.fn_401", "eval_far.fp_65", "eval_far.fn_401/mito"):
        assert col in t.columns, col
    for n in NS:
        assert {f"eval_near.fn_{n}", f"eval_far.fn_{n}", f"eval_far.fp_{n}"} <= set(t.columns)
    assert "param.root.children[0].oneof" not in t.columns  # structural: in the tree, not a hyperparameter
    assert list(t["state"]) == ["COMPLETE", "COMPLETE", "PRUNED", "FAIL", "COMPLETE", "COMPLETE"]
    assert list(t["phase"]) == ["random"] * 4 + ["refine"] * 2
    assert set(t["campaign"]) == {"fake"}
    a = t.iloc[0]
    metrics = fake_metrics(0.7)
    assert a["value"] == pytest.approx(0.7)
    assert a["eval_far.fn_401"] == pytest.approx(metrics["eval_far"]["fn_401"])
    assert a["eval_near.iou/membrane"] == pytest.approx(metrics["eval_near"]["iou/membrane"])
    assert a["params"] == 1234 and a["flops_per_voxel"] == 500.0 and a["train_seconds"] == 1.5
    assert a["param.training.lr"] == pytest.approx(1e-3) and a["param.defaults.width"] == 4
    from arborseg.tree import ModuleTree

    tree = ModuleTree.load(Path(a["artifact_dir"]) / "tree.yaml")
    assert (a["depth"], a["width"], a["window_z"], a["family"]) == (tree.depth, tree.width, tree.window[0],
                                                                     tree.family)
    assert a["hp.lr"] == pytest.approx(dict(tree.training)["lr"])
    # metrics only in metrics.json (the attribute is missing): read from the trial folder
    assert t.iloc[1]["eval_far.fg_iou"] == pytest.approx(fake_metrics(0.5)["eval_far"]["fg_iou"])
    pruned, failed = t.iloc[2], t.iloc[3]
    assert pruned["prune_reason"].startswith("pruned at step 2") and pruned["last_step"] == 2
    assert math.isnan(pruned["eval_far.fg_iou"]) and pd.isna(pruned["params"])
    assert failed["fail_reason"] == "RuntimeError: boom | a module" and math.isnan(failed["value"])
    # refinements count with the tree they refine
    assert t.iloc[4]["base_tree_id"] == a["tree_id"] and t.iloc[4]["base_tree_name"] == a["tree_name"]
    assert t.iloc[4]["tree_id"] != a["tree_id"] and t.iloc[4]["seed"] == 1
    assert "param.root.children[0].oneof" not in t.columns
    # missing trial folder: the row is there; depth/width/z come from the tree name
    gone = t.iloc[5]
    assert gone["state"] == "COMPLETE" and not Path(gone["artifact_dir"]).exists()
    assert (gone["depth"], gone["width"]) == (a["depth"], a["width"])
    assert gone["eval_far.fg_iou"] == pytest.approx(fake_metrics(0.6)["eval_far"]["fg_iou"])
    # numeric columns are numbers (so --where "params < 1e6" works)
    for col in ("value", "params", "flops_per_voxel", "eval_far.fn_401", "param.training.lr", "depth"):
        assert pd.api.types.is_numeric_dtype(t[col]), col
    assert t.attrs["campaigns"]["fake"]["objective"] == "fg_iou"


def test_empty_campaign_and_not_a_campaign(tmp_path):
    from arborseg.campaign.storage import make_storage, storage_url

    run = tmp_path / "empty"
    run.mkdir()
    make_storage("sqlite", run)
    (run / "campaign.json").write_text(json.dumps({"name": "empty", "storage_url": storage_url("sqlite", run),
                                                   "objective": "fg_iou", "direction": "maximize"}))
    t = run_table([run])
    assert t.empty and "campaign" in t.columns
    assert format_table(t) == "(no trials yet)"
    assert campaign_summary(t).iloc[0]["trials"] == 0
    assert group_table(t).empty
    with pytest.raises(CampaignError, match="not a campaign folder"):
        run_table([tmp_path / "nowhere"])


def test_moved_campaign_folder_reads_its_own_storage_and_trials(tmp_path):
    run = make_fake_campaign(tmp_path / "a")
    moved = tmp_path / "b" / "fake"
    shutil.copytree(run, moved)
    shutil.rmtree(run)  # the recorded storage and trial folders are gone
    t = run_table([moved])
    assert len(t) == 6
    assert Path(t.iloc[0]["artifact_dir"]).parent == moved / "trials"
    assert t.iloc[0]["depth"] > 0 and "hp.lr" in t.columns


def test_copied_campaign_prefers_the_copy(tmp_path):
    run = make_fake_campaign(tmp_path / "a")
    copy = tmp_path / "b" / "fake"
    shutil.copytree(run, copy)
    t = run_table([copy])
    assert all(str(p).startswith(str(copy)) for p in t["artifact_dir"] if isinstance(p, str) and Path(p).exists())


# ------------------------------------------------------------------------------------------- several campaigns
def test_several_campaigns_summary_and_same_names(tmp_path):
    one = make_fake_campaign(tmp_path / "runs", name="alpha")
    two = make_fake_campaign(tmp_path / "runs", name="beta", storage="journal", offset=0.1)
    t = run_table([one, two])
    assert list(dict.fromkeys(t["campaign"])) == ["alpha", "beta"] and len(t) == 12
    assert run_table([tmp_path / "runs"])["campaign"].nunique() == 2  # a folder of campaigns expands
    s = campaign_summary(t).set_index("campaign")
    assert s.loc["alpha", "trials"] == 6 and s.loc["alpha", "complete"] == 4
    assert s.loc["alpha", "pruned"] == 1 and s.loc["alpha", "failed"] == 1
    assert s.loc["alpha", "nets"] == 3  # distinct trained trees that completed (A, B, A2)
    assert s.loc["alpha", "trees"] == 3  # base trees A, B, C
    assert s.loc["alpha", "max"] == pytest.approx(0.8)
    assert s.loc["alpha", "mean"] == pytest.approx(np.mean([0.7, 0.5, 0.8, 0.6]))
    assert s.loc["beta", "best"] == pytest.approx(0.9)
    assert s.loc["beta", "best_tree"] == t[(t["campaign"] == "beta") & (t["trial"] == 0)
                                         & (t["phase"] == "refine")]["tree_name"].iloc[0]
    assert s.loc["beta", "best.eval_far.fn_401"] == pytest.approx(fake_metrics(0.9)["eval_far"]["fn_401"])
    text = format_table(campaign_summary(t))
    assert "alpha" in text and "beta" in text and "best_tree" in text
    # two folders holding campaigns of one name get told apart
    same = make_fake_campaign(tmp_path / "other", name="alpha")
    labels = [r.label for r in read_runs([one, same])]
    assert labels == ["runs/alpha", "other/alpha"]
    assert format_table(run_table([one, two]), top=3).splitlines()[0].split()[0] == "campaign"


# ------------------------------------------------------------------------------------------- operations
def test_where_with_dotted_names_and_errors(table):
    assert len(filter_table(table, "state == 'COMPLETE' and params < 4000")) == 2
    bare = filter_table(table, "eval_far.fn_401 < 0.05 and state == 'COMPLETE'")
    quoted = filter_table(table, "`eval_far.fn_401` < 0.05 and state == 'COMPLETE'")
    assert list(bare["trial_id"]) == list(quoted["trial_id"]) and len(bare) == 3
    assert len(filter_table(table, "eval_far.iou/membrane > 0.6")) == 2
    assert len(filter_table(table, "param.training.lr > 1e-3")) == 5
    assert quote_columns("a.b > 1 and 'a.b' == x", ["a.b", "x"]) == "`a.b` > 1 and 'a.b' == x"
    assert filter_table(table, "").equals(table)
    for bad in ("eval_far.fn_4O1 < 1", "state = 'COMPLETE'", "params <", "no_such_column > 1"):
        with pytest.raises(CampaignError) as err:
            filter_table(table, bad)
        assert "\n" not in str(err.value) and "--where" in str(err.value)
    with pytest.raises(CampaignError, match="did you mean eval_far.fn_401"):
        filter_table(table, "eval_far.fn_4O1 < 1")


def test_sort_top_columns(table):
    best = sort_table(table)
    assert list(best["state"])[:4] == ["COMPLETE"] * 4
    assert list(best["value"])[:4] == pytest.approx([0.8, 0.7, 0.6, 0.5])
    assert best.iloc[-1]["state"] == "FAIL"
    by = sort_table(table, "params", ascending=True)
    assert list(by["params"].dropna()) == sorted(by["params"].dropna())
    assert pd.isna(by.iloc[-1]["params"])  # NaN last
    assert list(sort_table(table, "eval_far.fn_401")["trial_id"])[:1] == list(
        table.loc[[table["eval_far.fn_401"].idxmax()], "trial_id"])
    with pytest.raises(CampaignError, match="did you mean value"):
        sort_table(table, "valu")
    assert len(top_rows(best, 2)) == 2
    with pytest.raises(CampaignError):
        top_rows(best, 0)
    cols = select_columns(table, "tree_name, value, eval_far.fn_*")
    assert list(cols.columns)[:2] == ["tree_name", "value"] and "eval_far.fn_401" in cols.columns
    assert "eval_near.fn_401" not in cols.columns
    with pytest.raises(CampaignError, match="--columns"):
        select_columns(table, "nope")


def test_group_by_tree_and_family(table):
    g = group_table(table, "tree")
    a = g[g["base_tree_id"] == table.iloc[0]["tree_id"]].iloc[0]
    assert (a["trials"], a["complete"], a["seeds"]) == (3, 3, 3)  # trial 0, its refinement and its second seed
    assert a["value.mean"] == pytest.approx(np.mean([0.7, 0.8, 0.6]))
    assert a["value.std"] == pytest.approx(np.std([0.7, 0.8, 0.6], ddof=1))
    assert a["value.best"] == pytest.approx(0.8) and a["best_trial"] == table.iloc[4]["trial_id"]
    assert a["eval_far.fn_401.mean"] == pytest.approx(np.mean([fake_metrics(v)["eval_far"]["fn_401"]
                                                              for v in (0.7, 0.8, 0.6)]))
    c = g[g["base_tree_id"] == table.iloc[2]["tree_id"]].iloc[0]
    assert (c["trials"], c["complete"], c["pruned"], c["failed"]) == (2, 0, 1, 1) and math.isnan(c["value.mean"])
    assert len(g) == 3
    f = group_table(table, "family")
    assert f["trials"].sum() == 6 and list(f.columns[:2]) == ["campaign", "family"]
    assert "family" in format_table(f) and "value.mean" in format_table(g)
    assert sort_table(g).iloc[0]["value.mean"] == pytest.approx(np.mean([0.7, 0.8, 0.6]))
    with pytest.raises(CampaignError):
        group_table(table, "colour")


# ------------------------------------------------------------------------------------------- output
def test_formats(table, tmp_path):
    csv = tmp_path / "t.csv"
    assert "wrote 6 rows" in write_table(table, str(csv), None)
    back = pd.read_csv(csv)
    assert list(back.columns) == list(table.columns)
    assert back["eval_far.fn_401"].tolist() == pytest.approx(table["eval_far.fn_401"].tolist(), nan_ok=True)
    md = write_table(select_columns(table, "trial_id,state,value,fail_reason"), None, "md")
    lines = md.strip().splitlines()
    assert lines[0] == "| trial_id | state | value | fail_reason |" and lines[1].startswith("| ---: | --- |")
    assert len(lines) == 8 and "boom \\| a module" in md  # pipes escaped
    html = write_table(table, None, "html")
    assert html.startswith("<table") and "eval_far.fn_401" in html and 'class="fail"' in html
    rows = json.loads(write_table(table, None, "json"))
    assert len(rows) == 6 and rows[0]["tree_name"] == table.iloc[0]["tree_name"]
    assert "COMPLETE" in write_table(table, None, "terminal")
    with pytest.raises(CampaignError, match="unknown table format"):
        write_table(table, None, "xlsx")
    with pytest.raises(CampaignError, match="needs --out"):
        write_table(table, None, "parquet")
    try:
        import pyarrow  # noqa: F401
    except ImportError:  # the error names the package to install
        with pytest.raises(CampaignError, match="pip install pyarrow"):
            write_table(table, str(tmp_path / "t.parquet"), None)
    else:
        write_table(table, str(tmp_path / "t.parquet"), None)
        assert len(pd.read_parquet(tmp_path / "t.parquet")) == 6
    assert to_markdown(pd.DataFrame({"a": [1.5, float("nan")]})).splitlines()[-1] == "| - |"


def test_format_table_and_status_keep_working(fake, table):
    text = format_table(table, top=10, objective="fg_iou", direction="maximize")
    lines = text.splitlines()
    assert "value (fg_iou)" in lines[0] and len(lines) == 7
    assert "0.8" in lines[1] and "RuntimeError: boom" in lines[-1]
    assert len(format_table(table, top=2).splitlines()) == 3
    status = campaign_status(fake)
    assert "6 trials" in status and "complete 4" in status and "failed: trial" in status
    assert "best: trial" in status and "fg_iou=0.8000" in status


# ------------------------------------------------------------------------------------------- CLI
def test_table_command(fake, tmp_path, capsys):
    assert main(["table", str(fake)]) == 0
    out = capsys.readouterr().out
    assert "value (fg_iou)" in out and out.index("0.8") < out.index("0.7")
    assert main(["table", str(fake), "--where", "state == 'COMPLETE' and eval_far.fn_401 < 1", "--sort", "params",
                 "--ascending", "--top", "2", "--format", "csv"]) == 0
    rows = pd.read_csv(pd.io.common.StringIO(capsys.readouterr().out))
    assert len(rows) == 2 and list(rows["params"]) == [1234, 2234]
    out_file = tmp_path / "g.md"
    assert main(["table", str(fake), "--group-by", "family", "--out", str(out_file)]) == 0
    assert out_file.read_text().startswith("| campaign | family |")
    assert main(["table", str(fake), "--summary", "--format", "html"]) == 0
    assert "<table" in capsys.readouterr().out
    assert main(["table", str(fake), "--list-columns"]) == 0
    assert "eval_far.fn_401" in capsys.readouterr().out.splitlines()
    assert main(["table", str(fake), "--columns", "tree_name,value", "--top", "1"]) == 0
    assert capsys.readouterr().out.split()[:2] == ["tree_name", "value"]
    assert main(["table", str(fake), "--where", "eval_far.fn_401 <<< 2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("arborseg: error: --where") and err.count("\n") == 1
    assert main(["table", str(fake), "--sort", "nope"]) == 2
    assert main(["table", str(tmp_path / "nothing")]) == 2
    assert "not a campaign folder" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- plots
def test_plots_write_png_and_svg(fake, table, tmp_path):
    from arborseg.viz.plots import PLOT_NAMES, make_plots

    written = make_plots(table, tmp_path / "plots")
    assert set(written) == set(PLOT_NAMES)
    for name, paths in written.items():
        assert sorted(p.suffix for p in paths) == [".png", ".svg"], name
        assert all(p.stat().st_size > 2000 for p in paths), name
        assert "<svg" in paths[[p.suffix for p in paths].index(".svg")].read_text()[:2000]


def test_plots_cope_with_nothing_and_with_few_trials(tmp_path, table):
    from arborseg.viz.plots import make_plots, param_importances, plot_history, plot_pareto

    empty = table.iloc[0:0]
    for name, paths in make_plots(empty, tmp_path / "e", campaigns=[], formats=("png",)).items():
        assert paths[0].is_file(), name
    failed_only = table[table["state"] == "FAIL"]
    assert plot_history(failed_only, tmp_path / "h.png")[0].is_file()
    assert plot_pareto(failed_only, tmp_path / "p.svg")[0].suffix == ".svg"
    trials = [t for _, t in read_runs([Path(table.iloc[0]["run_dir"])])[0].trials]
    importances, note = param_importances(trials[:2])
    assert importances == {} and "too few completed trials" in note
    importances, note = param_importances(trials)
    assert ("over 4 completed trials" in note and importances) or "could not" in note or "no parameter" in note


def test_pareto_front_and_family_styles():
    from arborseg.viz.plots import family_label, family_style, pareto_front

    cost = np.array([10, 20, 30, 40, 5, np.nan])
    score = np.array([0.5, 0.7, 0.6, 0.9, 0.4, 1.0])
    assert list(pareto_front(cost, score)) == [4, 0, 1, 3]
    assert list(pareto_front(cost, score, maximize=False)) == [4]
    assert family_style("2d") != family_style("thin3d") and family_style("2d+crf")["marker"] == "D"
    assert family_style("hybrid") == family_style("hybrid")
    assert family_label("thin3d+crf") == "thin 3D + CRF" and family_label(None) == "unknown"


# ------------------------------------------------------------------------------------------- a real campaign
def test_real_campaign_table(real_run):
    t = run_table([real_run])
    assert len(t) == 3 and set(t["state"]) == {"COMPLETE"}
    assert list(t["phase"]) == ["random", "random", "refine"]
    refine = t.iloc[2]
    assert refine["base_tree_id"] in set(t.iloc[:2]["tree_id"])
    assert any(c.startswith("param.training.") for c in t.columns) and any(c.startswith("hp.") for c in t.columns)
    assert not any(".oneof" in c for c in t.columns if c.startswith("param."))
    for _, row in t.iterrows():
        saved = json.loads((Path(row["artifact_dir"]) / "metrics.json").read_text())
        assert row["value"] == pytest.approx(saved["regions"]["validation"]["fg_iou"])
        for region in ("validation", "eval_near", "eval_far"):
            for key, value in saved["regions"][region].items():
                assert row[f"{region}.{key}"] == pytest.approx(value, nan_ok=True), (region, key)
        assert row["params"] == saved["params"] and row["steps"] == 4
        assert row["depth"] == saved["depth"] and row["family"] == saved["family"]
    assert {"eval_far.fn_401", "eval_near.fn_0", "eval_far.iou/membrane", "eval_far.dice/mito"} <= set(t.columns)
    assert len(group_table(t, "tree")) == 2
