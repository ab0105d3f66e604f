"""Plots of run tables that people would rather look at than read.

Every function takes a run table (:func:`arborseg.table.run_table`), draws one figure with labelled axes
and a legend, saves it (``path`` with suffix ``.png`` or ``.svg``, or ``formats=("png", "svg")`` for both)
and returns the files written. Families have the same colour and marker in every plot
(:data:`FAMILY_COLOURS`, :func:`family_style`); pruned trials are hollow, failed trials are red crosses.

* :func:`plot_history`     objective vs trial, best-so-far line, pruned / failed marked, one panel per campaign
* :func:`plot_pareto`      objective vs parameters and vs FLOPs per voxel, with the Pareto front
* :func:`plot_fn_curves`   FN-n and FP-n against n for the top trees, eval-near and eval-far
* :func:`plot_importance`  hyperparameter importance (Optuna's evaluators), a note when there are too few trials
* :func:`plot_near_far`    eval-near against eval-far (objective metric and FN-401) with the diagonal
* :func:`plot_rungs`       successive halving: each trial's objective at every rung it finished against its
                           train steps, the top rung's survivors highlighted, one panel per campaign
* :func:`make_plots`       all of them into a folder
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import pandas as pd

from arborseg.log import get_logger
from arborseg.metrics import minimise
from arborseg.table import (
    RUNG_PREFIX,
    campaign_infos,
    campaign_rungs,
    rank_correlations,
    table_direction,
    table_objective,
)

log = get_logger(__name__)

# The hues of treeplot.COLOURS (2D blue, thin 3D orange, 3D red), darker so points stand out; hybrid green.
FAMILY_COLOURS = {"2d": "#2b7bba", "thin3d": "#e6550d", "3d": "#c2182b", "hybrid": "#2ca25f"}
CRF_COLOURS = {"2d": "#08306b", "thin3d": "#8c2d04", "3d": "#67000d", "hybrid": "#00441b"}
FAMILY_LABELS = {"2d": "2D", "thin3d": "thin 3D", "3d": "3D", "hybrid": "hybrid 2D/3D"}
FAMILY_MARKERS = {"2d": "o", "thin3d": "s", "3d": "^", "hybrid": "P"}
OTHER_COLOUR = "#7f7f7f"
FAIL_COLOUR = "#d62728"
BEST_COLOUR = "#222222"
PLOT_NAMES = ("history", "pareto", "fn_curves", "importance", "near_far", "rungs")
LINESTYLES = ["-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1))]


def family_label(family: Any) -> str:
    """'2d' -> '2D', 'thin3d+crf' -> 'thin 3D + CRF'; unknown or missing families as they are / 'unknown'."""
    if not isinstance(family, str) or not family:
        return "unknown"
    base, crf = family.split("+")[0], "+crf" in family
    return FAMILY_LABELS.get(base, base) + (" + CRF" if crf else "")


def family_style(family: Any) -> dict[str, Any]:
    """Colour and marker of a family (the same in every plot): CRF variants are darker diamonds."""
    if not isinstance(family, str) or not family:
        return {"color": OTHER_COLOUR, "marker": "o"}
    base = family.split("+")[0]
    if "+crf" in family:
        return {"color": CRF_COLOURS.get(base, OTHER_COLOUR), "marker": "D"}
    return {"color": FAMILY_COLOURS.get(base, OTHER_COLOUR), "marker": FAMILY_MARKERS.get(base, "o")}


def family_order(families: Iterable[Any]) -> list[Any]:
    known = list(FAMILY_COLOURS)
    fams = list(dict.fromkeys(f for f in families))

    def key(f: Any) -> tuple:
        if not isinstance(f, str):
            return (len(known) + 1, "")
        base = f.split("+")[0]
        return (known.index(base) if base in known else len(known), f)

    return sorted(fams, key=key)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path, formats: Iterable[str] | None) -> list[Path]:
    plt = _plt()
    path = Path(path)
    if formats is None:
        formats = [path.suffix.lstrip(".") or "png"]
    out = []
    path.parent.mkdir(parents=True, exist_ok=True)
    for fmt in formats:
        fmt = fmt.lower().lstrip(".")
        if fmt not in ("png", "svg", "pdf"):
            raise ValueError(f"plot format {fmt!r}: use png, svg or pdf")
        target = path.with_suffix(f".{fmt}")
        fig.savefig(target, dpi=120 if fmt == "png" else None, bbox_inches="tight")
        out.append(target)
    plt.close(fig)
    return out


def _finish(fig, handles: list, title: str, ncol: int | None = None, legend_title: str | None = None) -> None:
    """Lay the figure out with its title on top and the legend below the panels."""
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    if handles:
        fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), frameon=False, fontsize=9,
                   ncol=ncol or min(len(handles), 6), title=legend_title, title_fontsize=9)


def _log_ticks(ax) -> None:
    from matplotlib.ticker import EngFormatter, LogLocator, NullFormatter

    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _note(ax, text: str, **kw) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=10, color="#555555",
            wrap=True, **kw)


def _empty(ax, text: str) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_color("#dddddd")
    _note(ax, text)


def _objective_label(table: pd.DataFrame) -> str:
    objective = table_objective(table)
    return f"validation {objective}" if objective else "objective (validation)"


def _family_handles(families: Iterable[Any]) -> list:
    from matplotlib.lines import Line2D

    return [Line2D([], [], linestyle="none", markersize=7, markeredgecolor="white", markeredgewidth=0.5,
                   label=family_label(f), markerfacecolor=family_style(f)["color"], marker=family_style(f)["marker"])
            for f in family_order(families)]


def _complete(table: pd.DataFrame) -> pd.DataFrame:
    if table.empty or "state" not in table:
        return table.iloc[0:0] if not table.empty else table
    done = table[(table["state"] == "COMPLETE") & table["value"].notna()]
    return done


def _grid(n: int, width: float = 6.4, height: float = 4.2, max_cols: int = 2):
    plt = _plt()
    cols = min(max_cols, max(n, 1))
    rows = math.ceil(max(n, 1) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    axes = axes.ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes


# ---------------------------------------------------------------------------------------------- history
def plot_history(table: pd.DataFrame, path: str | Path, formats: Iterable[str] | None = None,
                 direction: str | None = None) -> list[Path]:
    """Objective against trial (order of creation) for each campaign: completed trials coloured by family,
    pruned trials hollow at their last reported value, failed trials as red crosses along the bottom, the
    best-so-far line, and where refinement began."""
    from matplotlib.lines import Line2D

    campaigns = list(dict.fromkeys(table["campaign"])) if not table.empty else []
    fig, axes = _grid(len(campaigns), width=7.0, height=4.2, max_cols=2)
    infos = campaign_infos(table)
    if not campaigns:
        _empty(axes[0], "no trials yet")
    families_seen: set = set()
    extra: dict[str, Any] = {}
    for ax, name in zip(axes, campaigns):
        rows = table[table["campaign"] == name].sort_values("trial_id").reset_index(drop=True)
        x = np.arange(1, len(rows) + 1)
        maximize = table_direction(table, direction or infos.get(name, {}).get("direction")) == "maximize"
        values = rows["value"].to_numpy(dtype=float)
        finite = values[np.isfinite(values)]
        low = float(finite.min()) if len(finite) else 0.0
        high = float(finite.max()) if len(finite) else 1.0
        span = (high - low) or max(abs(high), 1.0) * 0.1
        fail_y = low - 0.12 * span
        for fam in family_order(rows["family"]):
            style = family_style(fam)
            mask = (rows["family"] == fam) if isinstance(fam, str) else rows["family"].isna()
            done = mask & (rows["state"] == "COMPLETE") & np.isfinite(values)
            pruned = mask & (rows["state"] == "PRUNED") & np.isfinite(values)
            if done.any():
                families_seen.add(fam)
                ax.scatter(x[done], values[done], s=46, color=style["color"], marker=style["marker"], zorder=3,
                           edgecolors="white", linewidths=0.5)
            if pruned.any():
                families_seen.add(fam)
                extra["pruned"] = Line2D([], [], linestyle="none", marker="o", markerfacecolor="none",
                                         markeredgecolor="#555555", label="pruned (last reported value)")
                ax.scatter(x[pruned], values[pruned], s=46, facecolors="none", edgecolors=style["color"],
                           marker=style["marker"], linewidths=1.4, zorder=3)
        failed = (rows["state"] == "FAIL").to_numpy()
        if failed.any():
            extra["failed"] = Line2D([], [], linestyle="none", marker="x", color=FAIL_COLOUR, label="failed")
            ax.scatter(x[failed], np.full(failed.sum(), fail_y), marker="x", color=FAIL_COLOUR, s=40, zorder=3,
                       clip_on=False)
        running = (rows["state"] == "RUNNING").to_numpy()
        if running.any():
            extra["running"] = Line2D([], [], linestyle="none", marker="|", color="#999999", label="running")
            ax.scatter(x[running], np.full(running.sum(), fail_y), marker="|", color="#999999", s=60, zorder=3)
        complete = ((rows["state"] == "COMPLETE").to_numpy()) & np.isfinite(values)
        if complete.any():
            best, ys = (-np.inf if maximize else np.inf), []
            for v, ok in zip(values, complete):
                if ok:
                    best = max(best, v) if maximize else min(best, v)
                ys.append(best if np.isfinite(best) else np.nan)
            ax.step(x, ys, where="post", color=BEST_COLOUR, lw=1.6, zorder=2)
            extra["best"] = Line2D([], [], color=BEST_COLOUR, lw=1.6, label="best so far")
        if "phase" in rows and (rows["phase"] == "refine").any():
            first = int(x[(rows["phase"] == "refine").to_numpy()][0])
            ax.axvline(first - 0.5, color="#999999", ls="--", lw=1)
            ax.text(first - 0.4, 0.98, "refinement →", transform=ax.get_xaxis_transform(), va="top", fontsize=8,
                    color="#666666")
            ax.text(first - 0.6, 0.98, "← random trees", transform=ax.get_xaxis_transform(), va="top",
                    ha="right", fontsize=8, color="#666666")
        ax.set_xlim(0.3, len(rows) + 0.7)
        if failed.any() or running.any() or len(finite):
            ax.set_ylim(fail_y - 0.08 * span, high + 0.15 * span)
        ax.set_xlabel("trial (in order of creation)")
        ax.set_ylabel(f"validation {infos.get(name, {}).get('objective', 'objective')}")
        ax.set_title(f"{name}: {int(complete.sum())} complete, {int((rows['state'] == 'PRUNED').sum())} pruned, "
                     f"{int(failed.sum())} failed", fontsize=10)
        ax.grid(alpha=0.25)
        if len(rows) <= 30:
            ax.set_xticks(x if len(rows) <= 15 else x[::2])
    handles = _family_handles(families_seen) + [extra[k] for k in ("pruned", "failed", "running", "best")
                                                if k in extra]
    _finish(fig, handles, "Optimisation history")
    return _save(fig, path, formats)


# ---------------------------------------------------------------------------------------------- pareto
def pareto_front(cost: np.ndarray, score: np.ndarray, maximize: bool = True) -> np.ndarray:
    """Indices of the points no other point beats in both lower cost and better score, by increasing cost."""
    cost, score = np.asarray(cost, dtype=float), np.asarray(score, dtype=float)
    ok = np.where(np.isfinite(cost) & np.isfinite(score))[0]
    s = score if maximize else -score
    order = ok[np.lexsort((-s[ok], cost[ok]))]  # by cost, then best score first
    front, best = [], -np.inf
    for i in order:
        if s[i] > best:
            front.append(i)
            best = s[i]
    return np.array(front, dtype=int)


def plot_pareto(table: pd.DataFrame, path: str | Path, formats: Iterable[str] | None = None,
                direction: str | None = None, annotate: int = 6) -> list[Path]:
    """Objective against parameters and against FLOPs per voxel (log x), families coloured, the Pareto front
    (nothing is both smaller and better) drawn and its trees named."""
    from matplotlib.lines import Line2D

    plt = _plt()
    done = _complete(table)
    costs = [(c, label) for c, label in (("params", "parameters"), ("flops_per_voxel", "FLOPs per voxel"))
             if c in table.columns]
    fig, axes = plt.subplots(1, max(len(costs), 1), figsize=(6.4 * max(len(costs), 1), 4.6), squeeze=False)
    axes = axes.ravel()
    maximize = table_direction(table, direction) == "maximize"
    if done.empty or not costs:
        _empty(axes[0], "no completed trials yet" if done.empty else "no size columns in the table")
        for ax in axes[1:]:
            ax.set_visible(False)
        fig.tight_layout()
        return _save(fig, path, formats)
    for ax, (col, label) in zip(axes, costs):
        rows = done[done[col].notna() & (done[col] > 0)].reset_index(drop=True)
        if rows.empty:
            _empty(ax, f"no {label} recorded")
            continue
        for fam in family_order(rows["family"]):
            mask = (rows["family"] == fam) if isinstance(fam, str) else rows["family"].isna()
            style = family_style(fam)
            ax.scatter(rows.loc[mask, col], rows.loc[mask, "value"], s=46, color=style["color"],
                       marker=style["marker"], edgecolors="white", linewidths=0.5, zorder=3)
        front = pareto_front(rows[col].to_numpy(), rows["value"].to_numpy(), maximize)
        fx, fy = rows[col].to_numpy()[front], rows["value"].to_numpy()[front]
        ax.step(fx, fy, where="post", color=BEST_COLOUR, lw=1.4, zorder=2, alpha=0.8)
        ax.scatter(fx, fy, s=120, facecolors="none", edgecolors=BEST_COLOUR, linewidths=1.0, zorder=4)
        for i in front[:annotate]:
            ax.annotate(str(rows.loc[i, "tree_name"]), (rows.loc[i, col], rows.loc[i, "value"]),
                        textcoords="offset points", xytext=(6, -10 if maximize else 6), fontsize=7, color="#333333")
        ax.set_xscale("log")
        _log_ticks(ax)
        ax.set_xlabel(f"{label} (log scale)")
        ax.set_ylabel(_objective_label(table))
        ax.set_title(f"{_objective_label(table)} vs {label}", fontsize=10)
        ax.grid(alpha=0.25, which="both")
    handles = _family_handles(done["family"]) + [
        Line2D([], [], color=BEST_COLOUR, lw=1.4, marker="o", markerfacecolor="none", label="Pareto front")]
    _finish(fig, handles, "Score against size and cost")
    return _save(fig, path, formats)


# ---------------------------------------------------------------------------------------------- FN-n
def top_trees(table: pd.DataFrame, k: int = 5, direction: str | None = None) -> pd.DataFrame:
    """The best COMPLETE trial of each base tree (its best seed or refinement), the ``k`` best of those."""
    done = _complete(table)
    if done.empty:
        return done
    maximize = table_direction(table, direction) == "maximize"
    ordered = done.sort_values("value", ascending=not maximize, kind="stable")
    best = ordered.drop_duplicates(subset=["campaign", "base_tree_id"], keep="first")
    return best.head(k)


def _ns(table: pd.DataFrame, region: str, kind: str) -> list[int]:
    pattern = re.compile(rf"^{re.escape(region)}\.{kind}_(\d+)$")
    return sorted(int(m.group(1)) for c in table.columns if (m := pattern.match(str(c))))


def plot_fn_curves(table: pd.DataFrame, path: str | Path, formats: Iterable[str] | None = None, top: int = 5,
                   regions: tuple[str, ...] = ("eval_near", "eval_far"), direction: str | None = None) -> list[Path]:
    """FN-n (top row) and FP-n (bottom row) against the minimum error-component size n, for the ``top`` best
    trees, one column per eval region. Lower is better; the curve falling with n shows how much of the error
    lies in small components."""
    plt = _plt()
    best = top_trees(table, top, direction)
    regions = tuple(r for r in regions if _ns(table, r, "fn")) or regions
    fig, axes = plt.subplots(2, len(regions), figsize=(6.2 * len(regions), 7.6), squeeze=False, sharex=True)
    if best.empty or not any(_ns(table, r, "fn") for r in regions):
        for ax in axes.ravel():
            _empty(ax, "no completed trials with FN-n metrics yet")
        fig.tight_layout()
        return _save(fig, path, formats)
    from matplotlib.lines import Line2D

    handles = []
    for rank, (_, row) in enumerate(best.iterrows()):
        style = family_style(row["family"])
        ls = LINESTYLES[rank % len(LINESTYLES)]
        for r, region in enumerate(regions):
            for k, kind in enumerate(("fn", "fp")):
                ns = _ns(table, region, kind)
                ys = [row.get(f"{region}.{kind}_{n}", np.nan) for n in ns]
                axes[k, r].plot(ns, ys, color=style["color"], marker=style["marker"], ls=ls, lw=1.6, ms=5)
        handles.append(Line2D([], [], color=style["color"], marker=style["marker"], ls=ls, lw=1.6,
                              label=f"{rank + 1}. {row['tree_name']} ({family_label(row['family'])}, "
                                    f"{row['value']:.3f})"))
    for r, region in enumerate(regions):
        ns = _ns(table, region, "fn") or [0, 5, 65, 401]
        for k, kind in enumerate(("fn", "fp")):
            ax = axes[k, r]
            ax.set_xscale("symlog", linthresh=5)
            ax.set_xticks(ns)
            ax.set_xticklabels([str(n) for n in ns])
            ax.set_ylabel(f"{kind.upper()}-n (% of {region.replace('_', '-')} voxels)")
            ax.set_title(f"{kind.upper()}-n, {region.replace('_', '-')}", fontsize=10)
            ax.grid(alpha=0.25)
            ax.set_ylim(bottom=0)
            if k == 1:
                ax.set_xlabel("n: minimum size of an error component (voxels)")
    _finish(fig, handles, "Errors by component size (lower is better)", ncol=2,
            legend_title=f"best trees (rank. name (family, {_objective_label(table)}))")
    return _save(fig, path, formats)


# ---------------------------------------------------------------------------------------------- importance
MIN_IMPORTANCE_TRIALS = 4


def _evaluator(name: str):
    import optuna

    name = name.lower().replace("_", "-")
    has_sklearn = True
    try:
        import sklearn  # noqa: F401 - only whether it is there
    except ImportError:
        has_sklearn = False
    note = ""
    if name == "auto":
        name = "fanova" if has_sklearn else "ped-anova"
    if name in ("fanova", "mdi", "mean-decrease-impurity") and not has_sklearn:
        note = f"{name} needs scikit-learn (pip install scikit-learn); used PED-ANOVA instead"
        name = "ped-anova"
    if name == "fanova":
        return optuna.importance.FanovaImportanceEvaluator(seed=0), "fANOVA", note
    if name in ("mdi", "mean-decrease-impurity"):
        return optuna.importance.MeanDecreaseImpurityImportanceEvaluator(seed=0), "mean decrease impurity", note
    if name in ("ped-anova", "pedanova"):
        return optuna.importance.PedAnovaImportanceEvaluator(), "PED-ANOVA", note
    raise ValueError(f"importance evaluator {name!r}: use auto, fanova, mdi or ped-anova")


def param_importances(trials: list, direction: str = "maximize", evaluator: str = "auto",
                      min_trials: int = MIN_IMPORTANCE_TRIALS) -> tuple[dict[str, float], str]:
    """Importance of each Optuna parameter for the objective over the COMPLETE ``trials`` (FrozenTrials),
    with a note (the evaluator used, or why there is nothing to show). Never raises for too little data."""
    import optuna
    from optuna.trial import TrialState

    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None
            and math.isfinite(t.value) and t.params]
    if len(done) < min_trials:
        return {}, (f"too few completed trials for hyperparameter importance: {len(done)} "
                    f"(needs at least {min_trials})")
    ev, ev_name, note = _evaluator(evaluator)
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        # optuna checks the string itself (an unknown direction is reported below like any evaluator failure)
        study = optuna.create_study(direction=cast(Literal["minimize", "maximize"], direction))
        study.add_trials(done)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            importances = optuna.importance.get_param_importances(study, evaluator=ev)
    except Exception as exc:  # an evaluator that cannot cope with this data: say so
        return {}, f"{ev_name} could not rate the parameters of {len(done)} trials: {exc}"
    finally:
        optuna.logging.set_verbosity(level)
    text = f"{ev_name} over {len(done)} completed trials" + (f"; {note}" if note else "")
    if caught:
        text += "; few trials per value: rough estimate"
    importances = {k: float(v) for k, v in importances.items() if v is not None and math.isfinite(v)}
    if not importances or not any(v > 0 for v in importances.values()):
        return {}, f"no parameter explains the differences between the {len(done)} completed trials ({ev_name})"
    return importances, text


def _short_param(name: str) -> str:
    name = name.replace("training.", "").replace("defaults.", "default ")
    return name if len(name) <= 34 else "…" + name[-33:]


def plot_importance(campaigns: list, path: str | Path, formats: Iterable[str] | None = None,
                    evaluator: str = "auto", top: int = 12) -> list[Path]:
    """Hyperparameter importance per campaign (horizontal bars, top ``top`` parameters), computed with
    Optuna's evaluators over all completed trials of the campaign (structural and refinable parameters).
    ``campaigns`` are :class:`arborseg.table.CampaignRun` objects. Too few trials give a note, not an error."""
    fig, axes = _grid(len(campaigns), width=6.6, height=max(3.0, 0.32 * top + 1.6), max_cols=2)
    if not campaigns:
        _empty(axes[0], "no campaigns")
    drawn = False
    for ax, run in zip(axes, campaigns):
        trials = [t for _, t in run.trials]
        importances, note = param_importances(trials, run.direction, evaluator)
        title = f"{run.label or run.name}: what matters for {run.objective}"
        if not importances:
            _empty(ax, note)
            ax.set_title(title, fontsize=10)
            continue
        drawn = True
        items = sorted(importances.items(), key=lambda kv: kv[1], reverse=True)[:top][::-1]
        names = [_short_param(k) for k, _ in items]
        vals = [v for _, v in items]
        colours = ["#8c6bb1" if ("oneof" in k or k.startswith("window")) else "#4a90c2" for k, _ in items]
        ax.barh(names, vals, color=colours)
        for y, v in enumerate(vals):
            ax.text(v, y, f" {v:.2f}", va="center", fontsize=8)
        ax.set_xlim(0, max(vals) * 1.18)
        ax.set_xlabel("importance (share of explained variation)")
        ax.set_title(title, fontsize=10)
        ax.text(0.99, 0.02, note, transform=ax.transAxes, ha="right", va="bottom", fontsize=7.5, color="#555555")
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(alpha=0.25, axis="x")
    from matplotlib.patches import Patch

    _finish(fig, [Patch(color="#8c6bb1", label="structure / window"),
                  Patch(color="#4a90c2", label="training and width values")] if drawn else [],
            "Hyperparameter importance")
    return _save(fig, path, formats)


# ---------------------------------------------------------------------------------------------- near vs far
def plot_near_far(table: pd.DataFrame, path: str | Path, formats: Iterable[str] | None = None,
                  metrics: tuple[str, ...] | None = None, annotate: int = 3,
                  direction: str | None = None) -> list[Path]:
    """eval-near against eval-far for the objective metric and FN-401: points on the diagonal generalise
    evenly; IoU-like scores below it (errors above it) get worse far from the training data."""
    plt = _plt()
    done = _complete(table)
    objective = table_objective(table) or "fg_iou"
    if metrics is None:
        metrics = tuple(m for m in dict.fromkeys((objective, "fg_iou"))
                        if f"eval_near.{m}" in table.columns and f"eval_far.{m}" in table.columns)[:1] or ("fg_iou",)
        metrics += (_headline_fn(done),)
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.4 * len(metrics), 5.0), squeeze=False)
    axes = axes.ravel()
    best = top_trees(table, annotate, direction)
    for ax, metric in zip(axes, metrics):
        near, far = f"eval_near.{metric}", f"eval_far.{metric}"
        if done.empty or near not in done or far not in done or done[[near, far]].dropna().empty:
            _empty(ax, f"no completed trials with eval-near and eval-far {metric} yet")
            continue
        rows = done[done[near].notna() & done[far].notna()]
        if rows[[near, far]].nunique().max() <= 1:
            _empty(ax, f"every completed trial has eval-near {metric} = {rows[near].iloc[0]:.3g} and "
                       f"eval-far {metric} = {rows[far].iloc[0]:.3g}")
            ax.set_title(f"{metric}: near vs far", fontsize=10)
            continue
        for fam in family_order(rows["family"]):
            mask = (rows["family"] == fam) if isinstance(fam, str) else rows["family"].isna()
            style = family_style(fam)
            ax.scatter(rows.loc[mask, near], rows.loc[mask, far], s=46, color=style["color"], marker=style["marker"],
                       edgecolors="white", linewidths=0.5, zorder=3)
        lo = float(min(rows[near].min(), rows[far].min()))
        hi = float(max(rows[near].max(), rows[far].max()))
        pad = (hi - lo) * 0.08 or 0.05 * max(abs(hi), 1.0)
        lo, hi = (lo - pad if lo - pad >= 0 or lo < 0 else -0.2 * pad), hi + pad
        ax.plot([lo, hi], [lo, hi], color="#999999", ls="--", lw=1, zorder=1)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_aspect("equal", adjustable="box")
        for _, row in best.iterrows() if metric == metrics[0] else ():
            if pd.notna(row.get(near)) and pd.notna(row.get(far)):
                ax.annotate(str(row["tree_name"]), (row[near], row[far]), textcoords="offset points", xytext=(5, 5),
                            fontsize=7, color="#333333")
        lower_better = minimise(metric)
        ax.text(0.02, 0.98, "above the line: worse far away" if lower_better else "below the line: worse far away",
                transform=ax.transAxes, va="top", fontsize=8, color="#666666")
        ax.set_xlabel(f"eval-near {metric}")
        ax.set_ylabel(f"eval-far {metric}")
        ax.set_title(f"{metric}: near vs far" + (" (lower is better)" if lower_better else ""), fontsize=10)
        ax.grid(alpha=0.25)
    _finish(fig, _family_handles(done["family"]) if not done.empty else [],
            "Generalisation: eval-near against eval-far")
    return _save(fig, path, formats)


# ---------------------------------------------------------------------------------------------- rungs
STOPPED_COLOUR = "#a0a0a0"
WAITING_COLOUR = "#6baed6"


def plot_rungs(table: pd.DataFrame, path: str | Path, formats: Iterable[str] | None = None) -> list[Path]:
    """The picture of successive halving: for each campaign of more than one rung, every trial's objective on
    validation at the end of each rung it finished against the train steps (one line per trial); the trials
    that reached the top rung in their family's colour, those stopped below it grey (a cross where they
    stopped), paused and running ones dashed blue, failed ones red. Spearman's rank correlation of the first
    rung with the top one is in each panel's title."""
    from matplotlib.lines import Line2D

    trials = table[table["state"] != "ENSEMBLE"] if "state" in table else table
    campaigns = [c for c in (dict.fromkeys(trials["campaign"]) if not trials.empty else [])
                 if len(campaign_rungs(table, c)) > 1]
    fig, axes = _grid(len(campaigns), width=7.0, height=4.4, max_cols=2)
    if not campaigns:
        _empty(axes[0], "no campaign trained more than one rung: nothing to compare across rungs")
    ranks = rank_correlations(table) if campaigns else pd.DataFrame()
    infos = campaign_infos(table)
    families: set = set()
    extra: dict[str, Any] = {}
    for ax, name in zip(axes, campaigns):
        steps = campaign_rungs(table, name)
        rows = trials[trials["campaign"] == name]
        cols = [f"{RUNG_PREFIX}{s}" for s in steps]
        survivors = 0
        for _, row in rows.iterrows():
            points = [(s, float(row[c])) for s, c in zip(steps, cols) if c in row.index and pd.notna(row[c])]
            if not points:
                continue
            xs, ys = zip(*points)
            state = row["state"]
            if xs[-1] == steps[-1]:
                survivors += 1
                style = family_style(row["family"])
                families.add(row["family"])
                ax.plot(xs, ys, color=style["color"], lw=2.0, marker=style["marker"], ms=6, zorder=4,
                        markeredgecolor="white", markeredgewidth=0.5)
            elif state == "FAIL":
                extra["failed"] = Line2D([], [], color=FAIL_COLOUR, lw=1, marker="x", label="failed")
                ax.plot(xs, ys, color=FAIL_COLOUR, lw=0.9, alpha=0.8, zorder=2)
                ax.plot(xs[-1], ys[-1], color=FAIL_COLOUR, marker="x", ms=6, zorder=3, linestyle="none")
            elif state in ("PAUSED", "RUNNING"):
                extra["waiting"] = Line2D([], [], color=WAITING_COLOUR, lw=1.2, ls="--", marker="o",
                                          markerfacecolor="none", label="paused or running")
                ax.plot(xs, ys, color=WAITING_COLOUR, lw=1.2, ls="--", marker="o", ms=5, markerfacecolor="none",
                        zorder=3)
            else:
                extra["stopped"] = Line2D([], [], color=STOPPED_COLOUR, lw=1, marker="x", label="stopped below top")
                ax.plot(xs, ys, color=STOPPED_COLOUR, lw=0.9, marker="o", ms=3, zorder=2)
                ax.plot(xs[-1], ys[-1], color=STOPPED_COLOUR, marker="x", ms=6, zorder=2, linestyle="none")
        for i, s in enumerate(steps):
            ax.axvline(s, color="#cccccc", ls=":", lw=1, zorder=1)
            ax.text(s, 1.0, f" rung {i}", transform=ax.get_xaxis_transform(), va="bottom", ha="center",
                    fontsize=8, color="#666666")
        ax.set_xscale("log")
        ax.set_xticks(steps)
        ax.set_xticklabels([f"{s:,}" for s in steps])
        ax.minorticks_off()
        ax.set_xlim(steps[0] / 1.3, steps[-1] * 1.3)
        first = ranks[(ranks["campaign"] == name) & (ranks["rung"] == 0)] if not ranks.empty else ranks
        rho = ""
        if len(first):
            r = first.iloc[0]
            rho = f"; ρ(rung 0, top) = {r['spearman_top']:.2f} (n={int(r['n_top'])})" \
                if pd.notna(r["spearman_top"]) else f"; ρ(rung 0, top): n={int(r['n_top'])}, too few"
        ax.set_title(f"{name}: {int(rows[cols[0]].notna().sum()) if cols[0] in rows else 0} trials, {survivors} "
                     f"reached the top rung{rho}", fontsize=10, pad=14)
        ax.set_xlabel("train steps (cumulative, log scale)")
        ax.set_ylabel(f"validation {infos.get(name, {}).get('objective', 'objective')}")
        ax.grid(alpha=0.25, axis="y")
    handles = _family_handles(families) + [extra[k] for k in ("stopped", "waiting", "failed") if k in extra]
    _finish(fig, handles, "Successive halving: the objective at each rung")
    return _save(fig, path, formats)


def _headline_fn(done: pd.DataFrame) -> str:
    """fn_401 (the seed work's headline), or the largest n whose FN-n still differs between trials."""
    ns = sorted(set(_ns(done, "eval_near", "fn")) & set(_ns(done, "eval_far", "fn")), reverse=True)
    for n in ns:
        cols = [f"eval_near.fn_{n}", f"eval_far.fn_{n}"]
        if not done.empty and done[cols].nunique().max() > 1:
            return f"fn_{n}"
    return "fn_401"


# ---------------------------------------------------------------------------------------------- all
def make_plots(table: pd.DataFrame, out_dir: str | Path, campaigns: list | None = None,
               formats: Iterable[str] = ("png", "svg"), top: int = 5, evaluator: str = "auto",
               which: Iterable[str] = PLOT_NAMES) -> dict[str, list[Path]]:
    """Every plot of ``table`` into ``out_dir`` (``history.png``, ``history.svg``, ...). ``campaigns``
    (for the importance plot) are loaded from the table's campaign folders when not given."""
    out_dir = Path(out_dir)
    formats = tuple(formats)
    which = tuple(which)
    unknown = set(which) - set(PLOT_NAMES)
    if unknown:
        raise ValueError(f"unknown plots {sorted(unknown)}; choose from {', '.join(PLOT_NAMES)}")
    out: dict[str, list[Path]] = {}
    if "history" in which:
        out["history"] = plot_history(table, out_dir / "history", formats)
    if "pareto" in which:
        out["pareto"] = plot_pareto(table, out_dir / "pareto", formats)
    if "fn_curves" in which:
        out["fn_curves"] = plot_fn_curves(table, out_dir / "fn_curves", formats, top=top)
    if "importance" in which:
        if campaigns is None:
            from arborseg.table import read_runs

            dirs = [i["run_dir"] for i in campaign_infos(table).values() if i.get("run_dir")]
            campaigns = read_runs(dirs) if dirs else []
        out["importance"] = plot_importance(campaigns, out_dir / "importance", formats, evaluator=evaluator)
    if "near_far" in which:
        out["near_far"] = plot_near_far(table, out_dir / "near_far", formats)
    if "rungs" in which:
        out["rungs"] = plot_rungs(table, out_dir / "rungs", formats)
    return out
