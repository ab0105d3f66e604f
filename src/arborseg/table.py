"""Run tables: one row per trial, built from the Optuna storage and the trial folders.

Columns of :func:`run_table` (dotted names group related columns; use them in backticks in
``--where`` expressions, e.g. ``\\`eval_far.fn_401\\` < 1``):

=============================  ===========================================================================
column                         meaning
=============================  ===========================================================================
``campaign``                   the campaign's name (``<parent folder>/<name>`` when two folders share one)
``study``, ``phase``           the Optuna study (``<campaign>.random``, ``<campaign>.refine.<tree id>``),
                               ``random`` or ``refine``
``trial``, ``trial_id``        Optuna's number within the study; the storage-wide id (= trial folder)
``task``, ``state``, ``value``  driver task, COMPLETE / PRUNED / FAIL / RUNNING / PAUSED, the objective on
                               validation (for PRUNED and PAUSED trials: the last reported value, or that of
                               the last rung finished). PAUSED is a trial Optuna holds as RUNNING that waits
                               between two rungs for its promotion (user attribute ``paused``)
``rung``, ``steps_trained``    the highest rung the trial finished (0 = the first; a COMPLETE trial of an old
                               one-rung campaign: 0) and the train steps it has had so far
``value@<steps>``              the objective on validation at the end of each rung it finished, by the rung's
                               cumulative steps (``value@40``, ``value@120``, ...); :func:`rank_correlations`
                               compares them across rungs
``tree_name``, ``tree_id``     the trained tree
``base_tree_id/name``          the tree a refinement started from (= the tree itself in phase A):
                               ``--group-by tree`` groups on it
``family``                     ``2d``, ``thin3d``, ``3d``, ``hybrid``, with ``+crf`` when a CRF refines it
``depth``, ``width``,          deepest encoder-decoder, first width, training window z
``window_z``
``params``, ``flops_per_voxel``  size and cost
``param.<path>``               the Optuna parameters of refinable paths (``param.training.lr``,
                               ``param.defaults.width``, ...); structural draws are in the tree itself
``hp.<key>``                   the tree's training values (``hp.lr``, ``hp.batch_size``, ...)
``<region>.<metric>``          every metric of every region: ``validation``, ``eval_near``, ``eval_far`` x
                               ``miou``, ``fg_iou``, ``mdice``, ``iou/<class>``, ``dice/<class>``,
                               ``fn_<n>``, ``fp_<n>``, ``fn_<n>/<class>``, ... (see :mod:`arborseg.metrics`)
``train_seconds``, ``steps``,  training time, steps, seed, attempt (retries), last reported step
``seed``, ``attempt``,
``last_step``
``precision``                  the arithmetic the trial trained in: ``fp32``, ``bf16`` or ``fp16``
``encoder_init``               where the tree's encoders started: ``random`` or the pre-training run's name
``time.<part>``                where the seconds of the trial's last job went: ``time.startup``, ``time.setup``,
                               ``time.data``, ``time.train``, ``time.validation``, ``time.evaluation``,
                               ``time.figures`` (:mod:`arborseg.train.timings`)
``duration_s``, ``started``    wall time of the trial in the driver, its start
``fail_reason``,               why a trial failed or was pruned
``prune_reason``
``artifact_dir``, ``run_dir``  the trial folder and the campaign folder
=============================  ===========================================================================

With ``run_table(..., ensembles=True)`` (the plain ``arborseg table`` view) each ensemble built by
``arborseg ensemble`` (``RUN_DIR/ensembles/<name>/ensemble.json``) adds a row: ``state`` ``ENSEMBLE`` (sorted
with the COMPLETE trials by value), ``phase`` ``ensemble``, ``task`` ``ensemble:<name>``, ``tree_name`` the
ensemble's name, ``family`` ``ensemble/<fusion>``, ``value`` the objective on validation, ``params`` the
members' total, every ``<region>.<metric>``, ``members`` (member keys), ``val_gain`` / ``val_gain_ci`` (the
objective's gain on validation over the best single member, 95 % bootstrap interval), ``inference_gflops``
(the members' forward GFLOPs) and ``artifact_dir`` the ensemble folder
(:func:`arborseg.ensemble.manifest.ensemble_rows`).

Campaign folders may be moved or copied: a storage file and trial folders that are no longer where the
campaign recorded them are looked for in the campaign folder itself.

Besides :func:`run_table`, this module filters (:func:`filter_table`), sorts (:func:`sort_table`),
groups (:func:`group_table`), summarises campaigns (:func:`campaign_summary`, :func:`campaign_status`),
ranks across rungs (:func:`rank_correlations`), formats (:func:`format_table`) and writes
(:func:`write_table`) tables.
"""

from __future__ import annotations

import difflib
import fnmatch
import html
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from arborseg.errors import CampaignError
from arborseg.runs import RunFolder, TrialFolder, find_run_dirs, load_tree
from arborseg.space.encoder_init import tree_init
from arborseg.train.timings import PARTS as TIME_PARTS

BASE_COLUMNS = ["campaign", "study", "phase", "trial", "trial_id", "task", "state", "value", "rung", "steps_trained",
                "tree_name", "tree_id", "base_tree_name", "base_tree_id", "family", "depth", "width", "window_z",
                "encoder_init", "params", "flops_per_voxel", "steps", "train_seconds", "precision", "seed", "attempt", "last_step",
                "duration_s", "started", "fail_reason", "prune_reason", "artifact_dir", "run_dir"]
TAIL_COLUMNS = ["duration_s", "started", "fail_reason", "prune_reason", "artifact_dir", "run_dir"]
REGIONS = ("validation", "eval_near", "eval_far")
STATE_ORDER = {"COMPLETE": 0, "ENSEMBLE": 0, "PRUNED": 1, "PAUSED": 2, "RUNNING": 3, "WAITING": 4, "FAIL": 5}
RUNG_PREFIX = "value@"  # value@<steps>: the objective at the end of the rung of <steps> cumulative steps
TABLE_FORMATS = ("terminal", "csv", "md", "html", "parquet", "json")
_NAME_RE = re.compile(r"-d(?P<depth>\d+)w(?P<width>\d+)z(?P<z>\d+)-")


# ---------------------------------------------------------------------------------------------- loading
@dataclass
class CampaignRun:
    """One campaign folder read back for a table: the folder and every trial of its studies."""

    folder: RunFolder
    trials: list[tuple[str, Any]] = field(default_factory=list)  # (study name, FrozenTrial)
    label: str = ""  # the campaign column (name, or parent/name when names repeat)
    storage_url: str = ""

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def run_dir(self) -> Path:
        return self.folder.path

    @property
    def manifest(self) -> dict[str, Any]:
        return self.folder.manifest

    @property
    def objective(self) -> str:
        return self.folder.objective

    @property
    def direction(self) -> str:
        return self.folder.direction

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "objective": self.objective, "direction": self.direction,
                "run_dir": str(self.run_dir), "storage_url": self.storage_url, "budget": self.manifest.get("budget")}


def read_run(run_dir: str | Path) -> CampaignRun:
    """Read a campaign folder: manifest, storage, trials (of the studies ``<name>.*``)."""
    folder = RunFolder.open(run_dir)
    trials = [(study.study_name, t) for study, t in folder.trials()]
    return CampaignRun(folder, trials, folder.name, folder.storage_url)


def read_runs(run_dirs: list[str | Path]) -> list[CampaignRun]:
    """:func:`read_run` for every campaign folder named (``runs/`` expands to its campaigns)."""
    runs = [read_run(d) for d in find_run_dirs(list(run_dirs))]
    names = [r.name for r in runs]
    for run in runs:
        if names.count(run.name) > 1:
            run.label = f"{run.run_dir.absolute().parent.name}/{run.name}"
    labels = [r.label for r in runs]
    for run in runs:
        if labels.count(run.label) > 1:
            run.label = str(run.run_dir.absolute())
    return runs


# ---------------------------------------------------------------------------------------------- rows
def _tree_columns(tree_file: str | None) -> tuple[dict[str, Any], set[str]]:
    from arborseg.errors import ArborsegError

    if not tree_file or not Path(tree_file).is_file():
        return {}, set()
    try:
        tree = load_tree(tree_file)
    except (ArborsegError, OSError):
        return {}, set()
    row = {"depth": tree.depth, "width": tree.width, "window_z": tree.window[0],
           "encoder_init": tree_init(tree.root.walk())}
    row.update({f"hp.{k}": v for k, v in tree.training})
    return row, set(tree.structural)


def _is_refinable(path: str, structural: set[str], study: str) -> bool:
    if structural:
        return path not in structural
    if ".refine." in study:  # refinement studies hold the structure fixed: every parameter is refinable
        return True
    return ".oneof" not in path and not path.endswith((".depth", ".branches", ".layers", ".blocks_per_level",
                                                       ".layers_per_block", ".iterations"))


def trial_row(campaign: str, study: str, trial, folder: RunFolder | None = None) -> dict[str, Any]:
    """One row of the run table for an Optuna ``trial`` of ``study`` (of the campaign folder ``folder``)."""
    attrs = trial.user_attrs
    artifact_dir, tree_file = attrs.get("artifact_dir"), attrs.get("tree_file")
    if folder is not None:
        artifact_dir = folder.locate(artifact_dir)
        tree_file = folder.locate(tree_file)
    steps_seen = sorted(trial.intermediate_values)
    state = trial.state.name
    if state == "RUNNING" and attrs.get("paused"):
        state = "PAUSED"
    rung_values = _rung_values(attrs.get("rung_values"))
    rung = attrs.get("rung", attrs.get("stopped_rung"))
    if rung is None and state == "COMPLETE" and not rung_values:
        rung = 0  # an old campaign: one rung of budget["steps"]
    steps_trained = attrs.get("steps_trained")
    if steps_trained is None and state == "COMPLETE":
        steps_trained = attrs.get("steps")
    value = trial.value
    if value is None and rung_values and state != "FAIL":
        value = rung_values[max(rung_values)]
    row: dict[str, Any] = {
        "campaign": campaign, "study": study, "phase": attrs.get("phase") or _phase_of(study), "trial": trial.number,
        "trial_id": trial._trial_id, "task": attrs.get("task"), "state": state,
        "value": value if value is not None else math.nan, "rung": rung, "steps_trained": steps_trained,
        "tree_name": attrs.get("tree_name"), "tree_id": attrs.get("tree_id"),
        "base_tree_id": attrs.get("parent_tree_id") or attrs.get("tree_id"), "family": attrs.get("family"),
        "params": attrs.get("params"), "flops_per_voxel": attrs.get("flops_per_voxel"), "steps": attrs.get("steps"),
        "train_seconds": attrs.get("train_seconds"), "precision": attrs.get("precision"), "seed": attrs.get("seed"),
        "attempt": attrs.get("attempt"),
        "last_step": steps_seen[-1] if steps_seen else None,
        "duration_s": trial.duration.total_seconds() if trial.duration else math.nan,
        "started": trial.datetime_start,
        "fail_reason": attrs.get("fail_reason"), "prune_reason": attrs.get("prune_reason"),
        "artifact_dir": artifact_dir, "run_dir": str(folder.path) if folder is not None else None,
    }
    for part, seconds in (attrs.get("time_split") or {}).items():  # the last job's split (this rung)
        row[f"time.{part}"] = seconds
    tree_cols, structural = _tree_columns(tree_file)
    if "depth" not in tree_cols and attrs.get("tree_name"):  # no tree file: the name says depth, width and z
        m = _NAME_RE.search(str(attrs["tree_name"]))
        if m:
            tree_cols.update(depth=int(m["depth"]), width=int(m["width"]), window_z=int(m["z"]))
    row.update(tree_cols)
    row.update({f"{RUNG_PREFIX}{steps}": v for steps, v in sorted(rung_values.items())})
    for path, param in trial.params.items():
        if _is_refinable(path, structural, study):
            row[f"param.{path}"] = param
    metrics = attrs.get("metrics")
    if metrics is None and artifact_dir and (state == "COMPLETE" or rung_values):
        record = TrialFolder(Path(artifact_dir)).read_metrics()
        metrics = record.get("regions") if record is not None else None
    for region, scores in (metrics or {}).items():
        if isinstance(scores, dict):
            row.update({f"{region}.{key}": value for key, value in scores.items()})
    return row


def _rung_values(raw: Any) -> dict[int, float]:
    """The ``rung_values`` attribute (``{"40": 0.61, "120": 0.70}``) as {steps: value}; bad entries left out."""
    out: dict[int, float] = {}
    if not isinstance(raw, dict):
        return out
    for steps, value in raw.items():
        try:
            out[int(steps)] = float(value)
        except (TypeError, ValueError):
            continue
    return out


def rung_steps_of(budget: dict[str, Any] | None) -> list[int]:
    """The cumulative train steps at the end of each rung: ``budget["rung_steps"]``, or one rung of
    ``budget["steps"]`` for a budget of old (none without either)."""
    budget = budget or {}
    if isinstance(budget.get("rung_steps"), list) and budget["rung_steps"]:
        return [int(s) for s in budget["rung_steps"]]
    return [int(budget["steps"])] if isinstance(budget.get("steps"), int) else []


def rung_columns(columns) -> list[str]:
    """The ``value@<steps>`` columns, by steps."""
    found = [str(c) for c in columns if str(c).startswith(RUNG_PREFIX) and str(c)[len(RUNG_PREFIX):].isdigit()]
    return sorted(found, key=lambda c: int(c[len(RUNG_PREFIX):]))


def _phase_of(study: str) -> str | None:
    parts = study.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ("random", "refine") else None


def _numeric(series: pd.Series) -> pd.Series:
    if series.dtype != object and not pd.api.types.is_string_dtype(series):
        return series
    values = series.dropna()
    if len(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return pd.to_numeric(series, errors="coerce")
    return series


def _metric_sort_key(col: str) -> tuple:
    region, _, metric = col.partition(".")
    r = REGIONS.index(region) if region in REGIONS else len(REGIONS)
    head, _, cls = metric.partition("/")
    kind, _, n = head.rpartition("_") if head.startswith(("fn_", "fp_")) else (head, "", "")
    order = ["miou", "fg_iou", "mdice", "iou", "dice", "precision", "recall", "fn", "fp", "positive_fraction",
             "rand_error", "rand_precision", "rand_recall"]
    k = order.index(kind) if kind in order else len(order)
    return (r, region, bool(cls), k, kind, int(n) if n.isdigit() else -1, cls)


def order_columns(columns: list[str]) -> list[str]:
    """Base columns (the rung values after ``steps_trained``), then hyperparameters, then metrics by region,
    then bookkeeping columns."""
    cols = list(columns)
    head = [c for c in BASE_COLUMNS if c in cols and c not in TAIL_COLUMNS]
    rungs = rung_columns(cols)
    at = head.index("steps_trained") + 1 if "steps_trained" in head else len(head)
    head = head[:at] + rungs + head[at:]
    tail = [c for c in TAIL_COLUMNS if c in cols]
    params = sorted(c for c in cols if c.startswith("param."))
    hps = sorted(c for c in cols if c.startswith("hp."))
    times = [f"time.{part}" for part in TIME_PARTS if f"time.{part}" in cols]
    known = set(head) | set(tail) | set(params) | set(hps) | set(times)
    metrics = sorted((c for c in cols if c not in known and "." in c), key=_metric_sort_key)
    other = [c for c in cols if c not in known and c not in metrics]
    return head + params + hps + metrics + other + times + tail


def run_table(run_dirs: list[str | Path], campaigns: list[CampaignRun] | None = None,
              ensembles: bool = False) -> pd.DataFrame:
    """One row per trial of every campaign folder given, in the order the trials were created; with
    ``ensembles`` one more row per ensemble of each campaign after its trials (see the module doc).

    ``table.attrs["campaigns"]`` maps each value of the campaign column to its objective, direction,
    folder and storage URL (used for sorting, grouping, summaries and plots)."""
    runs = campaigns if campaigns is not None else read_runs(run_dirs)
    rows = []
    for run in runs:
        rows += [trial_row(run.label, study, t, run.folder) for study, t in run.trials]
        if ensembles:
            from arborseg.ensemble.manifest import ensemble_rows

            rows += ensemble_rows(run.run_dir, run.label)
    names: dict[tuple, str] = {}
    for row in rows:
        if row["tree_id"] and row["tree_name"]:
            names.setdefault((row["campaign"], row["tree_id"]), row["tree_name"])
    for row in rows:
        row["base_tree_name"] = names.get((row["campaign"], row["base_tree_id"]), row["tree_name"])
    table = pd.DataFrame(rows)
    if table.empty:
        table = pd.DataFrame(columns=BASE_COLUMNS)
    else:
        table = pd.DataFrame({col: _numeric(table[col]) for col in order_columns(list(table.columns))})
        order = {run.label: i for i, run in enumerate(runs)}
        table = table.iloc[np.lexsort((table["trial_id"].to_numpy(), table["campaign"].map(order).to_numpy()))]
        table = table.reset_index(drop=True)
    table.attrs["campaigns"] = {run.label: run.info() for run in runs}
    return table


# ---------------------------------------------------------------------------------------------- operations
def campaign_infos(table: pd.DataFrame) -> dict[str, dict[str, Any]]:
    return dict(table.attrs.get("campaigns") or {})


def table_direction(table: pd.DataFrame, direction: str | None = None) -> str:
    """``direction`` if given, else the direction of the table's campaigns (the first one's when they differ)."""
    if direction:
        return direction
    infos = list(campaign_infos(table).values())
    return infos[0].get("direction", "maximize") if infos else "maximize"


def table_objective(table: pd.DataFrame) -> str | None:
    objectives = {i.get("objective") for i in campaign_infos(table).values()}
    return objectives.pop() if len(objectives) == 1 else None


def _closest(name: str, columns) -> str:
    close = difflib.get_close_matches(name, [str(c) for c in columns], n=3, cutoff=0.5)
    return f": did you mean {' or '.join(close)}" if close else " (`arborseg table RUN --list-columns` lists them)"


def quote_columns(expr: str, columns) -> str:
    """Put backticks around column names that are not Python identifiers (``eval_far.fn_401``, ``iou/mito``)
    where the expression left them bare (outside quotes and backticks)."""
    special = sorted((str(c) for c in columns if not str(c).isidentifier()), key=len, reverse=True)
    if not special:
        return expr
    pattern = re.compile(r"(?<![\w.`/])(" + "|".join(map(re.escape, special)) + r")(?![\w.`/])")
    parts = re.split(r"(`[^`]*`|'[^']*'|\"[^\"]*\")", expr)
    return "".join(p if i % 2 else pattern.sub(r"`\1`", p) for i, p in enumerate(parts))


def filter_table(table: pd.DataFrame, where: str | None) -> pd.DataFrame:
    """Rows where the pandas ``DataFrame.query`` expression ``where`` holds; one clear error otherwise.

    Dotted column names may be written bare or in backticks: ``eval_far.fn_401 < 1``,
    ```eval_far.fn_401` < 1``; strings in quotes: ``state == 'COMPLETE' and params < 1e6``."""
    if not where or not where.strip():
        return table
    expr = quote_columns(where, table.columns)
    try:
        out = table.query(expr, engine="python")
    except Exception as exc:  # any parse/eval problem is the user's expression
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = ""
        name = re.search(r"name '([^']+)' is not defined", detail)
        if name:
            token = re.search(rf"(?<![\w.`]){re.escape(name.group(1))}(?:\.[\w/]+)*", where)
            missing = token.group(0) if token else name.group(1)
            hint = f" (no column {missing}{_closest(missing, table.columns)})"
        raise CampaignError(
            f"--where {where!r}: {type(exc).__name__}: {detail}{hint}; write a pandas query such as "
            "\"state == 'COMPLETE' and params < 1e6 and `eval_far.fn_401` < 1\" (column names with dots or "
            "slashes may go in backticks, strings in quotes)") from None
    if not isinstance(out, pd.DataFrame):
        raise CampaignError(f"--where {where!r}: not a condition on rows")
    out.attrs = dict(table.attrs)
    return out


def sort_table(table: pd.DataFrame, by: str | list[str] | None = None, ascending: bool | None = None,
               direction: str | None = None) -> pd.DataFrame:
    """Sort by column(s) ``by`` (NaN last), descending unless ``ascending``. Without ``by``: best first
    (COMPLETE trials by the objective in the campaign's direction, then PRUNED, PAUSED, RUNNING, FAIL)."""
    if table.empty:
        return table
    attrs = dict(table.attrs)
    if by:
        cols = [by] if isinstance(by, str) else list(by)
        for col in cols:
            if col not in table.columns:
                raise CampaignError(f"--sort {col}: no such column{_closest(col, table.columns)}")
        out = table.sort_values(cols, ascending=bool(ascending), na_position="last", kind="stable")
    else:
        maximize = table_direction(table, direction) == "maximize"
        key = next((c for c in ("value", "value.mean", "best") if c in table.columns), None)
        if key is None:
            return table
        asc = (not maximize) if ascending is None else ascending
        if "state" in table.columns:
            order = table["state"].map(STATE_ORDER).fillna(len(STATE_ORDER))
            out = table.assign(_order=order).sort_values(["_order", key], ascending=[True, asc],
                                                         na_position="last", kind="stable").drop(columns="_order")
        else:
            out = table.sort_values(key, ascending=asc, na_position="last", kind="stable")
    out.attrs = attrs
    return out


NOT_AGGREGATED = {"trial", "trial_id", "attempt", "seed", "last_step"}


def group_table(table: pd.DataFrame, by: str = "tree", direction: str | None = None) -> pd.DataFrame:
    """One row per tree (``by="tree"``: the base tree, so seeds and refinements of it pool) or per family.

    Counts of trials by state, then ``<column>.mean`` and ``<column>.std`` over the COMPLETE trials for
    every numeric column (``value.mean``, ``eval_far.fn_401.std``, ...), and ``value.best`` with its
    ``best_trial`` and ``best_tree``."""
    if by not in ("tree", "family"):
        raise CampaignError(f"--group-by {by}: use tree or family")
    keys = ["campaign", "base_tree_id"] if by == "tree" else ["campaign", "family"]
    if table.empty:
        return pd.DataFrame(columns=keys + ["trials", "complete"])
    infos = campaign_infos(table)
    numeric = [c for c in table.columns if pd.api.types.is_numeric_dtype(table[c]) and c not in NOT_AGGREGATED
               and not pd.api.types.is_bool_dtype(table[c])]
    rows = []
    for key, group in table.groupby(keys, sort=False, dropna=False):
        done = group[group["state"] == "COMPLETE"]
        row: dict[str, Any] = dict(zip(keys, key))
        if by == "tree":
            row["base_tree_name"] = group["base_tree_name"].dropna().iloc[0] if group["base_tree_name"].notna().any() \
                else None
            row["family"] = group["family"].dropna().iloc[0] if group["family"].notna().any() else None
        else:
            row["trees"] = group["base_tree_id"].nunique()
        row.update(trials=len(group), complete=len(done), pruned=int((group["state"] == "PRUNED").sum()),
                   failed=int((group["state"] == "FAIL").sum()),
                   seeds=int(done["seed"].nunique()) if "seed" in done else 0)
        maximize = table_direction(table, direction or infos.get(row["campaign"], {}).get("direction")) == "maximize"
        values = done["value"].dropna()
        if len(values):
            best = done.loc[values.idxmax() if maximize else values.idxmin()]
            row.update({"value.best": best["value"], "best_trial": best["trial_id"], "best_tree": best["tree_name"]})
        else:
            row.update({"value.best": math.nan, "best_trial": None, "best_tree": None})
        for col in numeric:
            row[f"{col}.mean"] = done[col].mean() if len(done) else math.nan
            row[f"{col}.std"] = done[col].std() if len(done) > 1 else math.nan
        rows.append(row)
    out = pd.DataFrame(rows)
    lead = keys + ["base_tree_name", "family", "trees", "trials", "complete", "pruned", "failed", "seeds", "value.mean",
                   "value.std", "value.best", "best_trial", "best_tree"]
    first = [c for c in dict.fromkeys(lead) if c in out.columns]
    out = out[first + [c for c in out.columns if c not in first]]
    out.attrs = dict(table.attrs) | {"grouped": by}
    return out


def campaign_summary(table: pd.DataFrame) -> pd.DataFrame:
    """One row per campaign: trials by state, nets trained, max / mean / best objective, the best tree and
    its headline eval scores (like the seed work's snapshot index)."""
    infos = campaign_infos(table)
    labels = list(infos) or (list(dict.fromkeys(table["campaign"])) if "campaign" in table else [])
    rows = []
    for label in labels:
        info = infos.get(label, {})
        group = table[table["campaign"] == label] if not table.empty else table
        done = group[group["state"] == "COMPLETE"] if len(group) else group
        values = done["value"].dropna() if len(done) else pd.Series(dtype=float)
        maximize = info.get("direction", "maximize") == "maximize"
        row: dict[str, Any] = {
            "campaign": label, "objective": info.get("objective"), "direction": info.get("direction"),
            "trials": len(group), "complete": len(done),
            "pruned": int((group["state"] == "PRUNED").sum()) if len(group) else 0,
            "failed": int((group["state"] == "FAIL").sum()) if len(group) else 0,
            "paused": int((group["state"] == "PAUSED").sum()) if len(group) else 0,
            "running": int((group["state"] == "RUNNING").sum()) if len(group) else 0,
            "trees": int(group["base_tree_id"].nunique()) if len(group) else 0,
            "nets": int(done["tree_id"].nunique()) if len(done) else 0,
            "max": values.max() if len(values) else math.nan, "mean": values.mean() if len(values) else math.nan,
            "best": (values.max() if maximize else values.min()) if len(values) else math.nan,
        }
        if len(values):
            best = done.loc[values.idxmax() if maximize else values.idxmin()]
            row.update(best_trial=best["trial_id"], best_tree=best["tree_name"], best_family=best["family"])
            for col in ("eval_near.fg_iou", "eval_far.fg_iou", "eval_near.fn_401", "eval_far.fn_401"):
                if col in best.index:
                    row[f"best.{col}"] = best[col]
        else:
            row.update(best_trial=None, best_tree=None, best_family=None)
        row["train_hours"] = float(group["train_seconds"].sum()) / 3600 if "train_seconds" in group else 0.0
        row["run_dir"] = info.get("run_dir")
        rows.append(row)
    out = pd.DataFrame(rows)
    out.attrs = dict(table.attrs) | {"summary": True}
    return out


def select_columns(table: pd.DataFrame, columns: str | list[str] | None) -> pd.DataFrame:
    """Keep the columns named (comma-separated; shell patterns such as ``eval_far.fn_*`` or ``param.*``)."""
    if not columns:
        return table
    items = [c.strip() for c in (columns.split(",") if isinstance(columns, str) else columns) if c.strip()]
    chosen: list[str] = []
    for item in items:
        matches = [c for c in table.columns if c == item] or \
            [c for c in table.columns if fnmatch.fnmatchcase(str(c), item)]
        if not matches:
            raise CampaignError(f"--columns {item}: no such column{_closest(item, table.columns)}")
        chosen += [m for m in matches if m not in chosen]
    out = table[chosen]
    out.attrs = dict(table.attrs)
    return out


def top_rows(table: pd.DataFrame, top: int | None) -> pd.DataFrame:
    if top is None:
        return table
    if top < 1:
        raise CampaignError(f"--top {top}: give a positive number of rows")
    out = table.head(top)
    out.attrs = dict(table.attrs)
    return out


# ---------------------------------------------------------------------------------------------- output
SHOWN = ["trial_id", "phase", "state", "value", "rung", "steps_trained", "tree_name", "family", "params", "eval_near.fg_iou",
         "eval_far.fg_iou", "eval_near.fn_401", "eval_far.fn_401", "train_seconds", "reason",
         "members", "val_gain", "val_gain_ci", "inference_gflops"]  # the last four: only ensemble rows have them
GROUP_SHOWN = ["campaign", "base_tree_name", "family", "trees", "trials", "complete", "pruned", "failed", "value.mean",
               "value.std", "value.best", "best_tree", "params.mean", "eval_far.fg_iou.mean", "eval_far.fn_401.mean",
               "eval_far.fn_401.std", "train_seconds.mean"]


def _fmt_value(v: Any) -> str:
    try:
        if v is None or pd.isna(v):
            return "-"
    except (TypeError, ValueError):  # a list or array: not a missing value
        pass
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)) or (isinstance(v, (float, np.floating)) and float(v).is_integer()
                                             and abs(float(v)) < 1e15):
        return f"{int(v):,}" if abs(int(v)) >= 10000 else str(int(v))
    if isinstance(v, (float, np.floating)):
        return f"{v:.4g}"
    return str(v)


def format_table(table: pd.DataFrame, top: int | None = 10, objective: str | None = None,
                 direction: str = "maximize", columns: list[str] | None = None, order: bool = True) -> str:
    """A readable terminal table: the best trials first (``order=False`` keeps the given order), failures
    last with their reason; a chosen set of columns unless ``columns`` names them."""
    if table.empty:
        return "(no trials yet)" if not table.attrs.get("grouped") else "(no rows)"
    view = table.copy()
    grouped = bool(table.attrs.get("grouped") or table.attrs.get("summary"))
    if not grouped and "state" in view:
        empty = pd.Series("", index=view.index, dtype=object)
        fail = view.get("fail_reason", empty).astype(object).where(lambda r: r.notna(), None)
        prune = view.get("prune_reason", empty).astype(object).where(lambda r: r.notna(), "")
        view["reason"] = fail.where(fail.notna(), prune).astype(str).str.slice(0, 60)
    several = len(campaign_infos(table)) > 1 or ("campaign" in view and view["campaign"].nunique() > 1)
    if order:
        view = sort_table(view, direction=direction)
    if top:
        view = view.head(top)
    if columns:
        cols = [c for c in columns if c in view.columns]
    elif table.attrs.get("summary"):
        cols = list(view.columns.drop("run_dir", errors="ignore"))
    elif table.attrs.get("grouped"):
        cols = [c for c in GROUP_SHOWN if c in view.columns and (c != "campaign" or several)]
        if table.attrs["grouped"] == "family":
            cols = [c for c in cols if c not in ("base_tree_name",)]
    else:
        cols = [c for c in SHOWN if c in view.columns and (c not in ("rung", "steps_trained") or view[c].notna().any())]
        if "campaign" in view and several:
            cols = ["campaign"] + cols
    if objective and "value" in cols:
        view = view.rename(columns={"value": f"value ({objective})"})
        cols = [f"value ({objective})" if c == "value" else c for c in cols]
    view = view[cols]
    return view.to_string(index=False, formatters={c: _fmt_value for c in view.columns}, na_rep="-")


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (no extra package needed)."""
    def cell(v: Any) -> str:
        return _fmt_value(v).replace("|", "\\|").replace("\n", " ")

    cols = [str(c) for c in table.columns]
    numeric = [pd.api.types.is_numeric_dtype(table[c]) for c in table.columns]
    lines = ["| " + " | ".join(c.replace("|", "\\|") for c in cols) + " |",
             "| " + " | ".join("---:" if n else "---" for n in numeric) + " |"]
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def to_html_table(table: pd.DataFrame, table_id: str = "runs", classes: str = "runs") -> str:
    """An HTML ``<table>`` with numbers formatted, state classes on rows and numeric cells marked."""
    numeric = [pd.api.types.is_numeric_dtype(table[c]) for c in table.columns]
    head = "".join(f'<th{" class=num" if n else ""} title="{html.escape(str(c))}">{html.escape(str(c))}</th>'
                   for c, n in zip(table.columns, numeric))
    body = []
    states = table["state"] if "state" in table.columns else None
    for i, row in enumerate(table.itertuples(index=False)):
        cls = f' class="{html.escape(str(states.iloc[i]).lower())}"' if states is not None else ""
        cells = []
        for v, n in zip(row, numeric):
            text = html.escape(_fmt_value(v))
            sort_key = "" if not n or text == "-" else f' data-v="{v}"'
            cells.append(f'<td{" class=num" if n else ""}{sort_key}>{text}</td>')
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return (f'<table id="{table_id}" class="{classes}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>")


def write_table(table: pd.DataFrame, out: str | None, fmt: str | None) -> str:
    """Write the table as csv, md, html, parquet or json; return a one-line confirmation (or the text)."""
    fmt = fmt or (Path(out).suffix.lstrip(".").lower() if out else "csv")
    fmt = {"markdown": "md", "htm": "html", "pq": "parquet", "txt": "terminal"}.get(fmt, fmt)
    if fmt == "parquet":
        if not out:
            raise CampaignError("--format parquet needs --out FILE (Parquet is binary)")
        try:
            table.to_parquet(out, index=False)
        except ImportError:
            raise CampaignError("Parquet output needs pyarrow: pip install pyarrow (or write --format csv)") from None
        return f"wrote {len(table)} rows to {out}"
    writers = {"csv": lambda: table.to_csv(index=False), "md": lambda: to_markdown(table),
               "html": lambda: to_html_table(table),
               "json": lambda: table.to_json(orient="records", date_format="iso", indent=1),
               "terminal": lambda: table.to_string(index=False, na_rep="-",
                                                   formatters={c: _fmt_value for c in table.columns})}
    if fmt not in writers:
        raise CampaignError(f"unknown table format {fmt!r}; use csv, md, html, parquet or json")
    text = writers[fmt]()
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)
        return f"wrote {len(table)} rows to {out}"
    return text


# ---------------------------------------------------------------------------------------------- rungs
RANK_COLUMNS = ["campaign", "rung", "steps", "reached", "next_steps", "n_next", "spearman_next", "top_steps", "n_top",
                "spearman_top"]
MIN_RANKED = 3  # fewer trials than this in both rungs: no correlation (NaN), the count is still shown


def _spearman(x: pd.Series, y: pd.Series) -> tuple[int, float]:
    """(n, Spearman's rank correlation) over the rows where both are known; NaN when n < 3 or one is constant."""
    both = x.notna() & y.notna()
    n = int(both.sum())
    if n < MIN_RANKED or x[both].nunique() < 2 or y[both].nunique() < 2:
        return n, math.nan
    return n, float(x[both].astype(float).corr(y[both].astype(float), method="spearman"))


def campaign_rungs(table: pd.DataFrame, campaign: str) -> list[int]:
    """The rung steps of ``campaign``: from its budget (``rung_steps``, or one rung of ``steps``), else from
    the ``value@<steps>`` columns its trials filled."""
    steps = rung_steps_of(campaign_infos(table).get(campaign, {}).get("budget"))
    if steps:
        return steps
    group = table[table["campaign"] == campaign] if "campaign" in table else table
    return [int(c[len(RUNG_PREFIX):]) for c in rung_columns(group.columns) if group[c].notna().any()]


def trained_trials(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of trained trials with a value: COMPLETE ones and PRUNED ones that finished a rung (successive
    halving stopped them below the top; their folders hold the model of their last rung)."""
    stopped = (table["state"] == "PRUNED") & table["rung"].notna() if "rung" in table else False
    return table[((table["state"] == "COMPLETE") | stopped) & table["value"].notna()]


def rank_correlations(table: pd.DataFrame) -> pd.DataFrame:
    """Is the cheap ranking trustworthy? For every campaign and every rung below its top one: how many trials
    reached it, and Spearman's rank correlation of their values at that rung with their values at the next
    rung (``n_next`` trials reached both) and at the top rung (``n_top``). NaN below 3 trials (n shown).
    Campaigns of one rung give no rows."""
    rows = []
    campaigns = list(campaign_infos(table)) or (list(dict.fromkeys(table["campaign"])) if "campaign" in table else [])
    for label in campaigns:
        group = table[table["campaign"] == label] if not table.empty else table
        if "state" in group:
            group = group[group["state"] != "ENSEMBLE"]
        steps = campaign_rungs(table, label)
        if len(steps) < 2:
            continue

        def values(s: int, group: pd.DataFrame = group) -> pd.Series:
            col = f"{RUNG_PREFIX}{s}"
            return group[col] if col in group else pd.Series(math.nan, index=group.index)

        top = values(steps[-1])
        for i, s in enumerate(steps[:-1]):
            here = values(s)
            n_next, rho_next = _spearman(here, values(steps[i + 1]))
            n_top, rho_top = _spearman(here, top)
            rows.append({"campaign": label, "rung": i, "steps": s, "reached": int(here.notna().sum()),
                         "next_steps": steps[i + 1], "n_next": n_next, "spearman_next": rho_next,
                         "top_steps": steps[-1], "n_top": n_top, "spearman_top": rho_top})
    out = pd.DataFrame(rows, columns=RANK_COLUMNS)
    out.attrs = dict(table.attrs)
    return out


# ---------------------------------------------------------------------------------------------- status
def planned_configurations(manifest: dict[str, Any]) -> int:
    """Configurations the campaign plans to train: the plan's ``planned_trials`` where the manifest records it,
    else portfolio trees + random trees + refinements."""
    budget = manifest.get("budget") or {}
    if isinstance(budget.get("planned_trials"), int):
        return int(budget["planned_trials"])
    portfolio = manifest.get("portfolio") or []

    def count(key: str) -> int:
        return int(budget.get(key) or 0)

    return (len(portfolio) if isinstance(portfolio, list) else 0) + count("random_trees") \
        + count("refine_top") * count("refine_trials")


def rung_lines(table: pd.DataFrame, steps: list[int]) -> list[str]:
    """One line per rung: trials that reached it, train towards it, wait at it (paused), went on from it
    (promoted) or stopped at it (pruned); the top rung counts the complete ones."""
    if table.empty or not steps:
        return []
    rung, state = pd.to_numeric(table["rung"], errors="coerce"), table["state"]
    lines = []
    for i, s in enumerate(steps):
        top = i == len(steps) - 1
        counts = {"reached": int((rung >= i).sum()),
                  "running": int(((state == "RUNNING") & ((rung == i - 1) if i else rung.isna())).sum()),
                  "paused": int(((state == "PAUSED") & (rung == i)).sum())}
        if top:
            counts["complete"] = int(((state == "COMPLETE") & (rung >= i)).sum())
        else:
            counts["promoted"] = int(((rung > i) | ((state == "RUNNING") & (rung == i))).sum())
            counts["stopped"] = int(((state == "PRUNED") & (rung == i)).sum())
        shown = ", ".join(f"{n} {what}" for what, n in counts.items() if n or what == "reached")
        lines.append(f"rung {i} ({s:,} steps{', top' if top else ''}): {shown}")
    return lines


def time_split_line(table: pd.DataFrame) -> str:
    """Where the time of the trials' last jobs went, summed over trials: each part's share and its median per job
    (``time.<part>`` columns); '' when no trial recorded a split."""
    columns = [f"time.{part}" for part in TIME_PARTS if f"time.{part}" in table.columns]
    if not columns:
        return ""
    seconds = table[columns].apply(pd.to_numeric, errors="coerce")
    total = float(seconds.sum().sum())
    if total <= 0:
        return ""
    parts = [f"{c.removeprefix('time.')} {100 * seconds[c].sum() / total:.0f}% ({seconds[c].median():.1f} s)"
             for c in columns]
    return f"time of the trials' last jobs ({total:,.0f} s; share, median per job): " + ", ".join(parts)


def campaign_status(run_dir: str | Path) -> str:
    """Trials by state, the budget and each rung (reached, running, paused, promoted, stopped), the best so
    far, and what is running, paused or failed."""
    run = read_run(run_dir)
    manifest = run.manifest
    table = run_table([], campaigns=[run])
    budget = manifest.get("budget") or {}
    counts = table["state"].value_counts().to_dict() if not table.empty else {}
    names = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "PAUSED": "paused", "RUNNING": "running"}
    lines = [f"campaign {manifest['name']}: {len(table)} trials ({planned_configurations(manifest)} configurations "
             "planned); " + ", ".join(f"{word} {counts.get(s, 0)}" for s, word in names.items())]
    steps = rung_steps_of(budget)
    if "rung_steps" in budget:
        trained = int(pd.to_numeric(table["steps_trained"], errors="coerce").fillna(0).sum()) if len(table) else 0
        plan = f"rungs at {', '.join(f'{s:,}' for s in steps)} steps (eta {budget.get('eta', '?')})" \
            if len(steps) > 1 else f"one rung of {steps[0]:,} steps"
        of = [f"{budget[k]:,} {what}" for k, what in (("planned_steps", "planned"), ("total_steps", "budget"))
              if isinstance(budget.get(k), int)]
        lines.append(f"budget: {plan}; {trained:,} train steps so far" + (f" ({', '.join(of)})" if of else ""))
    lines += rung_lines(table, steps)
    done = table[table["state"] == "COMPLETE"] if not table.empty else table
    objective = manifest.get("objective", "value")
    if len(done):
        maximize = manifest.get("direction", "maximize") == "maximize"
        best = done.sort_values("value", ascending=not maximize).iloc[0]
        lines.append(f"best: trial {best['trial_id']} {best['tree_name']} ({best['family']}) "
                     f"{objective}={best['value']:.4f}")

    split = time_split_line(table)
    if split:
        lines.append(split)

    def at(i: Any) -> str:
        return f"rung {int(i)} ({steps[int(i)]:,} steps)" if pd.notna(i) and 0 <= int(i) < len(steps) else "?"

    for _, row in (table[table["state"] == "PAUSED"] if not table.empty else table).iterrows():
        lines.append(f"paused: trial {row['trial_id']} {row['task']} {row['tree_name']} after {at(row['rung'])}, "
                     f"{objective}={row['value']:.4f}, waiting for promotion")
    for _, row in (table[table["state"] == "RUNNING"] if not table.empty else table).iterrows():
        toward = at(row["rung"] + 1 if pd.notna(row["rung"]) else 0) if len(steps) > 1 else ""
        lines.append(f"running: trial {row['trial_id']} {row['task']} {row['tree_name']}"
                     f"{' toward ' + toward if toward else ''} (artifacts {row['artifact_dir']})")
    for _, row in (table[table["state"] == "FAIL"] if not table.empty else table).iterrows():
        lines.append(f"failed: trial {row['trial_id']} {row['task']}: {row['fail_reason']}")
    return "\n".join(lines)
