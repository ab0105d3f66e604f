"""The campaign objective on a predicted class map, fast where it can be, and per-slice scores.

Greedy selection scores hundreds of candidate ensembles on the validation region, so
:func:`objective_score` computes only what the objective needs: a confusion matrix for IoU, Dice,
precision and recall (no connected components), ``score_segmentation`` restricted to one ``n`` for
FN-n / FP-n, and the adapted Rand error only when the objective asks for it. Values equal those of
:func:`arborseg.metrics.score_segmentation` (the tests check it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from arborseg.errors import ArborsegError
from arborseg.metrics import Mode, confusion_matrix, dice, iou, precision, recall, score_segmentation
from arborseg.metrics import direction_of as direction_of  # re-exported (it moved to metrics)
from arborseg.metrics import minimise as minimise  # re-exported (it moved to metrics)

CM_METRICS = {"iou": iou, "dice": dice, "precision": precision, "recall": recall}


@dataclass(frozen=True)
class Scoring:
    """How class maps are scored: class names, ignore value, FN-n mode, background and membrane classes."""

    classes: tuple[str, ...]
    ignore_value: int | None = None
    fn_mode: Mode = "2d"
    background: int | None = 0
    membrane_class: int | None = None

    @classmethod
    def from_data(cls, data, fn_mode: Mode = "2d") -> Scoring:
        """The scoring of a :class:`arborseg.data.DataConfig` (as the trainer scores trials)."""
        return cls(tuple(data.classes), data.ignore_value, fn_mode, data.background_class, data.membrane_class)

    def score(self, pred: np.ndarray, labels: np.ndarray, mode: Mode | None = None) -> dict[str, float]:
        """Every metric of :func:`arborseg.metrics.score_segmentation`."""
        return score_segmentation(pred, labels, list(self.classes), ignore_value=self.ignore_value,
                                  mode=mode or self.fn_mode, background=self.background,
                                  membrane_class=self.membrane_class)


def better(a: float | None, b: float | None, direction: str) -> bool:
    """Whether ``a`` is strictly better than ``b`` (NaN is never better; anything beats NaN)."""
    if a is None or math.isnan(a):
        return False
    if b is None or math.isnan(b):
        return True
    return a > b if direction == "maximize" else a < b


def worst(direction: str) -> float:
    return -math.inf if direction == "maximize" else math.inf


def objective_score(pred: np.ndarray, labels: np.ndarray, metric: str, scoring: Scoring) -> float:
    """The value of ``metric`` (a key of ``score_segmentation``) for class map ``pred`` against ``labels``."""
    head, _, cls = metric.partition("/")
    k = len(scoring.classes)
    if head in ("miou", "mdice", "fg_iou") or (head in CM_METRICS and cls):
        cm = confusion_matrix(pred, labels, k, scoring.ignore_value)
        if head in CM_METRICS:
            if cls not in scoring.classes:
                raise ArborsegError(f"objective {metric}: no class {cls!r}; classes are {list(scoring.classes)}")
            return float(CM_METRICS[head](cm)[scoring.classes.index(cls)])
        values = iou(cm) if head in ("miou", "fg_iou") else dice(cm)
        if head == "fg_iou":
            values = values[[c for c in range(k) if c != scoring.background]]
        values = values[~np.isnan(values)]
        return float(values.mean()) if values.size else math.nan
    ns: Sequence[int] = (0, 5, 65, 401)
    if head.startswith(("fn_", "fp_")) and head[3:].isdigit():
        ns = (int(head[3:]),)
    membrane = scoring.membrane_class if head.startswith("rand") else None
    scores = score_segmentation(pred, labels, list(scoring.classes), ignore_value=scoring.ignore_value, ns=ns,
                                mode=scoring.fn_mode, background=scoring.background, membrane_class=membrane)
    if metric not in scores:
        raise ArborsegError(f"objective {metric!r} is not a metric arborseg computes; use e.g. fg_iou, miou, "
                            "fn_401, iou/<class>")
    return float(scores[metric])


def slice_scores(pred: np.ndarray, labels: np.ndarray, metrics: Sequence[str],
                 scoring: Scoring) -> dict[str, np.ndarray]:
    """Per z-slice values of ``metrics`` (2D components for FN-n / FP-n): the units of the bootstrap."""
    out = {m: np.full(pred.shape[0], np.nan) for m in metrics}
    if not any(m.startswith("rand") for m in metrics):
        scoring = replace(scoring, membrane_class=None)  # the Rand error is the slow part: only when asked
    for z in range(pred.shape[0]):
        scores = scoring.score(pred[z:z + 1], labels[z:z + 1], mode="2d")
        for m in metrics:
            out[m][z] = scores.get(m, math.nan)
    return out
