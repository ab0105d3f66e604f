"""Pictures people would rather look at than read: learning curves and error overlays."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    """Lay out, write (creating the folder) and close a figure; returns the path."""
    path = Path(path)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    _plt().close(fig)
    return path


def learning_curve(history: list[dict], path: str | Path, objective: str) -> Path:
    """Training loss (and its running mean) and the validation objective against steps."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    steps = [h["step"] for h in history if "loss" in h]
    losses = [h["loss"] for h in history if "loss" in h]
    if steps:
        ax.plot(steps, losses, color="#bbbbbb", lw=0.8, label="train loss")
        k = max(1, len(losses) // 20)
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1:], smooth, color="#333333", lw=1.5, label=f"running mean ({k})")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    evals = [(h["step"], h[objective]) for h in history if objective in h]
    if evals:
        ax2 = ax.twinx()
        ax2.plot(*zip(*evals), "o-", color="#d62728", label=f"validation {objective}")
        ax2.set_ylabel(f"validation {objective}", color="#d62728")
    ax.legend(loc="upper right", fontsize=8, frameon=False)
    return save_figure(fig, path)


def error_overlay(raw: np.ndarray, pred: np.ndarray, target: np.ndarray, path: str | Path, title: str = "",
                  background: int | None = 0, ignore_value: int | None = None) -> Path:
    """One slice: raw in grey, false negatives red, false positives yellow (as in the seed paper)."""
    plt = _plt()
    bg = -1 if background is None else background
    valid = np.ones_like(target, dtype=bool) if ignore_value is None else target != ignore_value
    fn = valid & (target != bg) & (pred != target)
    fp = valid & (pred != bg) & (pred != target)
    lo, hi = np.percentile(raw, (1, 99)) if raw.size else (0, 1)
    grey = np.clip((raw - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb = np.stack([grey] * 3, axis=-1)
    rgb[fp] = 0.35 * rgb[fp] + 0.65 * np.array([1.0, 0.9, 0.0])
    rgb[fn] = 0.35 * rgb[fn] + 0.65 * np.array([1.0, 0.0, 0.0])
    h, w = grey.shape
    fig, ax = plt.subplots(figsize=(6, 6 * h / max(w, 1) + 0.4))
    ax.imshow(rgb, interpolation="nearest")
    ax.set_title(f"{title}  FN red ({fn.mean():.2%}), FP yellow ({fp.mean():.2%})", fontsize=9)
    ax.axis("off")
    return save_figure(fig, path)
