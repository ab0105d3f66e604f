"""Run tables: one row per trial, built from the Optuna storage and the trial folders.

Columns: campaign, study, phase, trial, state, value (the campaign objective on validation),
tree id / name / family / depth / width, params, FLOPs per voxel, the tree's training values,
every metric as ``<region>.<metric>`` (e.g. ``eval_far.fn_401``), train time, steps, seed,
attempt, failure or pruning reason, and the artifact folder.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from arborseg.errors import CampaignError

BASE_COLUMNS = ["campaign", "study", "phase", "trial", "trial_id", "task", "state", "value", "tree_name", "tree_id",
                "family", "depth", "width", "window_z", "params", "flops_per_voxel", "steps", "train_seconds", "seed",
                "attempt", "duration_s", "fail_reason", "prune_reason", "artifact_dir"]


def read_manifest(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / "campaign.json"
    if not path.is_file():
        raise CampaignError(f"{run_dir}: not a campaign folder (no campaign.json); campaigns live in runs/<name>/")
    return json.loads(path.read_text())


def _trials(manifest: dict) -> list[tuple[str, Any]]:
    import optuna

    from arborseg.campaign.storage import open_storage

    storage = open_storage(manifest["storage_url"])
    out = []
    for summary in optuna.get_all_study_summaries(storage):
        if summary.study_name.startswith(f"{manifest['name']}."):
            study = optuna.load_study(study_name=summary.study_name, storage=storage)
            out += [(summary.study_name, t) for t in study.get_trials(deepcopy=False)]
    return out


def _tree_columns(tree_file: str | None) -> dict[str, Any]:
    from arborseg.errors import ArborsegError
    from arborseg.tree import ModuleTree

    if not tree_file or not Path(tree_file).is_file():
        return {}
    try:
        tree = ModuleTree.load(tree_file)
    except ArborsegError:
        return {}
    row = {"depth": tree.depth, "width": tree.width, "window_z": tree.window[0]}
    row.update({f"hp.{k}": v for k, v in tree.training})
    return row


def trial_row(campaign: str, study: str, trial) -> dict[str, Any]:
    attrs = trial.user_attrs
    row: dict[str, Any] = {
        "campaign": campaign, "study": study, "phase": attrs.get("phase"), "trial": trial.number,
        "trial_id": trial._trial_id, "task": attrs.get("task"), "state": trial.state.name,
        "value": trial.value if trial.value is not None else math.nan,
        "tree_name": attrs.get("tree_name"), "tree_id": attrs.get("tree_id"), "family": attrs.get("family"),
        "params": attrs.get("params"), "flops_per_voxel": attrs.get("flops_per_voxel"), "steps": attrs.get("steps"),
        "train_seconds": attrs.get("train_seconds"), "seed": attrs.get("seed"), "attempt": attrs.get("attempt"),
        "duration_s": trial.duration.total_seconds() if trial.duration else math.nan,
        "fail_reason": attrs.get("fail_reason"), "prune_reason": attrs.get("prune_reason"),
        "artifact_dir": attrs.get("artifact_dir"),
    }
    row.update(_tree_columns(attrs.get("tree_file")))
    metrics = attrs.get("metrics")
    if metrics is None and attrs.get("artifact_dir"):
        path = Path(attrs["artifact_dir"]) / "metrics.json"
        if path.is_file() and trial.state.name == "COMPLETE":
            metrics = json.loads(path.read_text()).get("regions")
    for region, scores in (metrics or {}).items():
        row.update({f"{region}.{key}": value for key, value in scores.items()})
    return row


def run_table(run_dirs: list[str | Path]) -> pd.DataFrame:
    """One row per trial of every campaign folder given."""
    rows = []
    for run_dir in run_dirs:
        manifest = read_manifest(run_dir)
        rows += [trial_row(manifest["name"], study, t) for study, t in _trials(manifest)]
    table = pd.DataFrame(rows)
    if table.empty:
        return pd.DataFrame(columns=BASE_COLUMNS)
    first = [c for c in BASE_COLUMNS if c in table.columns]
    rest = sorted(c for c in table.columns if c not in first)
    return table[first + rest].sort_values(["campaign", "trial_id"]).reset_index(drop=True)


SHOWN = ["trial_id", "phase", "state", "value", "tree_name", "family", "params", "eval_near.fg_iou",
         "eval_far.fg_iou", "eval_near.fn_401", "eval_far.fn_401", "train_seconds", "reason"]


def format_table(table: pd.DataFrame, top: int | None = 10, objective: str | None = None,
                 direction: str = "maximize") -> str:
    """A readable terminal table: the best trials first, failures last with their reason."""
    if table.empty:
        return "(no trials yet)"
    view = table.copy()
    view["reason"] = view.get("fail_reason", pd.Series(dtype=object)).fillna(
        view.get("prune_reason", pd.Series(dtype=object))).fillna("").astype(str).str.slice(0, 60)
    order = {"COMPLETE": 0, "PRUNED": 1, "RUNNING": 2, "FAIL": 3}
    view["_order"] = view["state"].map(order).fillna(4)
    view = view.sort_values(["_order", "value"], ascending=[True, direction != "maximize"])
    if top:
        view = view.head(top)
    cols = [c for c in SHOWN if c in view.columns]
    if objective:
        view = view.rename(columns={"value": f"value ({objective})"})
        cols = [f"value ({objective})" if c == "value" else c for c in cols]
    return view[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep="-")


def write_table(table: pd.DataFrame, out: str | None, fmt: str | None) -> str:
    """Write the table as csv, md, html, parquet or json; return a one-line confirmation (or the text)."""
    fmt = fmt or (Path(out).suffix.lstrip(".") if out else "csv")
    fmt = {"markdown": "md", "htm": "html"}.get(fmt, fmt)
    if fmt == "parquet" and not out:
        raise CampaignError("--format parquet needs --out FILE")
    writers = {"csv": lambda: table.to_csv(index=False), "md": lambda: table.to_markdown(index=False),
               "html": lambda: table.to_html(index=False, na_rep="-"), "json": lambda: table.to_json(orient="records")}
    if fmt == "parquet":
        table.to_parquet(out, index=False)
        return f"wrote {len(table)} rows to {out}"
    if fmt not in writers:
        raise CampaignError(f"unknown table format {fmt!r}; use csv, md, html, parquet or json")
    try:
        text = writers[fmt]()
    except ImportError as exc:
        raise CampaignError(f"format {fmt} needs an extra package: {exc}") from None
    if out:
        Path(out).write_text(text)
        return f"wrote {len(table)} rows to {out}"
    return text


def campaign_status(run_dir: str | Path) -> str:
    """Trials by state, the best so far, and what is running."""
    manifest = read_manifest(run_dir)
    table = run_table([run_dir])
    budget = manifest.get("budget", {})
    planned = budget.get("random_trees", 0) + budget.get("refine_top", 0) * budget.get("refine_trials", 0)
    counts = table["state"].value_counts().to_dict() if not table.empty else {}
    lines = [f"campaign {manifest['name']}: {len(table)} trials ({planned} tasks planned); "
             + ", ".join(f"{s.lower()} {counts.get(s, 0)}" for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING"))]
    done = table[table["state"] == "COMPLETE"] if not table.empty else table
    if len(done):
        maximize = manifest.get("direction", "maximize") == "maximize"
        best = done.sort_values("value", ascending=not maximize).iloc[0]
        lines.append(f"best: trial {best['trial_id']} {best['tree_name']} ({best['family']}) "
                     f"{manifest['objective']}={best['value']:.4f}")
    for _, row in (table[table["state"] == "RUNNING"] if not table.empty else table).iterrows():
        lines.append(f"running: trial {row['trial_id']} {row['task']} {row['tree_name']} (artifacts {row['artifact_dir']})")
    for _, row in (table[table["state"] == "FAIL"] if not table.empty else table).iterrows():
        lines.append(f"failed: trial {row['trial_id']} {row['task']}: {row['fail_reason']}")
    return "\n".join(lines)
