"""Tables and plots of a bootstrap: the per-iteration history and the simulation's learning curves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from arborseg.viz.figures import save_figure

HISTORY_COLUMNS = (("iteration", "it", "{:d}"), ("strategy", "strategy", "{}"), ("units", "units", "{:d}"),
                   ("labeled_units", "labeled", "{:d}"), ("labeled_fraction", "frac", "{:.3f}"),
                   ("changed", "changed", "{:d}"), ("changed_fraction", "chg%", "{:.2%}"),
                   ("fg_iou", "pre fg_iou", "{:.3f}"), ("fn_401", "pre FN-401", "{:.3f}"),
                   ("fp_401", "pre FP-401", "{:.3f}"), ("train_seconds", "train s", "{:.1f}"))


def _fmt(fmt: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def format_history(history: Sequence[dict[str, Any]]) -> str:
    """A fixed-width table of the ingested iterations (pre-segmentation scored against its correction)."""
    heads = [h for _, h, _ in HISTORY_COLUMNS]
    rows = [[_fmt(f, rec.get(k)) for k, _, f in HISTORY_COLUMNS] for rec in history]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(heads, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_history(history: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Correction effort per iteration: changed fraction and FN-401 / FP-401 of the pre-segmentation."""
    plt = _plt()
    it = [h["iteration"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    axes[0].plot(it, [100 * h.get("changed_fraction", np.nan) for h in history], "o-")
    axes[0].set(xlabel="iteration", ylabel="voxels changed by the correction (%)", title="correction effort")
    axes[1].plot(it, [h.get("fn_401", np.nan) for h in history], "o-", label="FN-401")
    axes[1].plot(it, [h.get("fp_401", np.nan) for h in history], "s--", label="FP-401")
    axes[1].set(xlabel="iteration", ylabel="% of labeled voxels", title="pre-segmentation errors")
    axes[1].legend()
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return save_figure(fig, path, 100)


def plot_learning_curves(rows: Sequence[dict[str, Any]], path: str | Path, x: str = "labeled_units",
                         metrics: Sequence[str] = ("fg_iou", "fn_401")) -> Path:
    """One panel per (dataset, metric): mean over seeds (band: min..max) against labeled units, one line
    per method."""
    plt = _plt()
    datasets = sorted({r["dataset"] for r in rows})
    # one colour per method in every panel, so that a method is the same line whatever the others run
    colours = {m: f"C{k % 10}" for k, m in enumerate(sorted({r["method"] for r in rows}))}
    fig, axes = plt.subplots(len(datasets), len(metrics), figsize=(5.2 * len(metrics), 3.8 * len(datasets)),
                             squeeze=False)
    for i, ds in enumerate(datasets):
        sub = [r for r in rows if r["dataset"] == ds]
        for j, metric in enumerate(metrics):
            ax = axes[i, j]
            for method in sorted({r["method"] for r in sub}):
                pts = sorted({r[x] for r in sub if r["method"] == method})
                vals = [[r[metric] for r in sub if r["method"] == method and r[x] == p] for p in pts]
                mean = [np.nanmean(v) for v in vals]
                style = "--" if method.startswith(("random", "adjacent")) else "-"
                ax.plot(pts, mean, style, marker="o", ms=3, label=method, color=colours[method])
                ax.fill_between(pts, [np.nanmin(v) for v in vals], [np.nanmax(v) for v in vals],
                                color=colours[method], alpha=0.12)
            ax.set(xlabel=x.replace("_", " "), ylabel=metric, title=f"{ds}: {metric}")
            ax.grid(alpha=0.3)
        axes[i, 0].legend(fontsize=7)
    return save_figure(fig, path, 100)
