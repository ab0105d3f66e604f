"""Gain of the ensemble over the best single member, with bootstrap confidence intervals over eval slices.

For each eval region and metric, both segmentations are scored slice by slice (2D components for FN-n),
the paired differences ``ensemble - member`` are resampled ``n_boot`` times (percentile bootstrap of
their mean, :func:`arborseg.metrics.bootstrap_ci`) and the 95 % interval is reported. The gain keeps the
metric's sign: for IoU higher is better, for FN-n / FP-n / Rand error a *negative* gain is an improvement
(``improved`` says whether the whole interval lies on the good side of 0). With few slices the interval
is coarse (two slices give at most three distinct resampled means): read ``slices`` with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from arborseg.ensemble.objective import Scoring, direction_of, slice_scores
from arborseg.metrics import bootstrap_ci


def gain_metrics(objective: str) -> list[str]:
    """The objective, then IoU and FN-401 (the seed work's headline), without repeats."""
    return list(dict.fromkeys([objective, "fg_iou", "fn_401"]))


def region_gain(ensemble_pred: np.ndarray, member_pred: np.ndarray, labels: np.ndarray, metrics: Sequence[str],
                scoring: Scoring, n_boot: int = 1000, seed: int = 0) -> dict[str, dict[str, float]]:
    """Per metric: slice means of ensemble and member, the mean paired gain and its 95 % interval."""
    ens = slice_scores(ensemble_pred, labels, metrics, scoring)
    mem = slice_scores(member_pred, labels, metrics, scoring)
    out: dict[str, dict[str, float]] = {}
    for metric in metrics:
        out[metric] = gain_ci(ens[metric], mem[metric], metric, n_boot, seed)
    return out


def gain_ci(ensemble_values: np.ndarray, member_values: np.ndarray, metric: str, n_boot: int = 1000,
            seed: int = 0) -> dict[str, Any]:
    """Bootstrap CI of the mean of paired per-slice differences ``ensemble - member`` of ``metric``."""
    a, b = np.asarray(ensemble_values, float), np.asarray(member_values, float)
    mean, lo, hi = bootstrap_ci(a, b, n_boot=n_boot, seed=seed)
    ok = ~(np.isnan(a) | np.isnan(b))
    good = direction_of(metric)
    improved = bool(lo > 0) if good == "maximize" else bool(hi < 0)
    return {"ensemble": float(np.mean(a[ok])) if ok.any() else float("nan"),
            "member": float(np.mean(b[ok])) if ok.any() else float("nan"),
            "gain": mean, "lo": lo, "hi": hi, "slices": int(ok.sum()), "direction": good, "improved": improved}
