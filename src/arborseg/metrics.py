"""Segmentation metrics: pure, vectorised numpy functions.

Conventions
-----------
* Class maps are integer arrays ``(Z, Y, X)``; confusion matrices have rows = target, columns = prediction.
* Per-class scores are NaN where undefined: IoU/Dice of a class absent from both prediction and target,
  precision of a class never predicted, recall of a class absent from the target. Means use ``nanmean``,
  so undefined classes are skipped (and a mean over only undefined classes is NaN).
* FN-n / FP-n (see DESIGN.md, "Words"): the percentage of *eval voxels* (all voxels of the region, or all
  valid voxels when an ignore mask is given; NOT the positive voxels) that are false negatives (false
  positives) lying in a connected component of false negatives (positives) of size >= n. Connectivity 1
  (faces only); components per z slice (``mode="2d"``) or per volume (``mode="3d"``). n = 0 or 1 keeps all.
  Ignored voxels are never errors and never join components.

Keys of :func:`score_segmentation` (others depend on these names exactly)
-------------------------------------------------------------------------
``miou``, ``mdice``
    mean IoU / Dice over all classes (nanmean).
``fg_iou``
    mean IoU over the non-background classes (all classes if ``background`` is None).
``iou/<c>``, ``dice/<c>``, ``precision/<c>``, ``recall/<c>``
    per class, ``<c>`` the class name.
``positive_fraction/<c>``
    fraction (0..1) of valid voxels that are class ``c`` in the target.
``fn_<n>/<c>``, ``fp_<n>/<c>``
    FN-n / FP-n of class ``c`` in percent, for each n in ``ns`` (e.g. ``fn_401/mito``).
``fn_<n>``, ``fp_<n>``
    headline: mean of the per-class values over the non-background classes (all if ``background`` is None).
``rand_error``, ``rand_precision``, ``rand_recall``
    adapted Rand error and its parts, only when ``membrane_class`` is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, overload

import numpy as np
from scipy import ndimage

from arborseg.errors import DataError

Mode = Literal["2d", "3d"]

__all__ = [
    "confusion_matrix",
    "iou",
    "dice",
    "precision",
    "recall",
    "fn_n",
    "fp_n",
    "adapted_rand_error",
    "score_segmentation",
    "bootstrap_ci",
    "minimise",
    "direction_of",
]


def minimise(metric: str) -> bool:
    """Whether lower is better for ``metric`` (FN-n, FP-n, Rand error, VOI, losses): the one definition."""
    name = metric.split("/")[0].split(".")[-1]
    return name.startswith(("fn_", "fp_", "rand_error", "loss", "voi"))


def direction_of(metric: str) -> str:
    """Optuna's direction for ``metric``: "minimize" or "maximize"."""
    return "minimize" if minimise(metric) else "maximize"


def _div(num: np.ndarray, den: np.ndarray | float) -> np.ndarray:
    """num / den as float64, NaN where den == 0."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else float("nan")


def confusion_matrix(
    pred: np.ndarray, target: np.ndarray, n_classes: int, ignore_value: int | None = None
) -> np.ndarray:
    """Confusion matrix ``(K, K)`` int64, rows = target class, columns = predicted class.

    Voxels where ``target == ignore_value`` are left out. Other values must lie in ``0..n_classes-1``.
    """
    pred = np.asarray(pred)
    target = np.asarray(target)
    if pred.shape != target.shape:
        raise DataError(f"prediction shape {pred.shape} differs from target shape {target.shape}; pass one shape")
    p = pred.ravel().astype(np.int64, copy=False)
    t = target.ravel().astype(np.int64, copy=False)
    if ignore_value is not None:
        keep = t != ignore_value
        p, t = p[keep], t[keep]
    for name, a in (("target", t), ("prediction", p)):
        if a.size and (a.min() < 0 or a.max() >= n_classes):
            raise DataError(
                f"{name} holds label values {a.min()}..{a.max()} outside 0..{n_classes - 1}; "
                "check n_classes / class_names or set ignore_value"
            )
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _tp_fp_fn(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    tp = np.diag(cm).astype(np.float64)
    return tp, cm.sum(axis=0) - tp, cm.sum(axis=1) - tp


def iou(cm: np.ndarray) -> np.ndarray:
    """Per-class IoU (Jaccard) tp / (tp + fp + fn); NaN for a class absent from prediction and target."""
    tp, fp, fn = _tp_fp_fn(cm)
    return _div(tp, tp + fp + fn)


def dice(cm: np.ndarray) -> np.ndarray:
    """Per-class Dice 2tp / (2tp + fp + fn); NaN for a class absent from prediction and target."""
    tp, fp, fn = _tp_fp_fn(cm)
    return _div(2 * tp, 2 * tp + fp + fn)


def precision(cm: np.ndarray) -> np.ndarray:
    """Per-class precision tp / (tp + fp); NaN for a class never predicted."""
    tp, fp, _ = _tp_fp_fn(cm)
    return _div(tp, tp + fp)


def recall(cm: np.ndarray) -> np.ndarray:
    """Per-class recall tp / (tp + fn); NaN for a class absent from the target."""
    tp, _, fn = _tp_fp_fn(cm)
    return _div(tp, tp + fn)


def _structure(ndim: int, mode: Mode) -> np.ndarray:
    """Connectivity-1 structuring element: over all axes ("3d") or the last two axes only ("2d")."""
    if mode not in ("2d", "3d"):
        raise DataError(f"mode must be '2d' or '3d', got {mode!r}")
    if mode == "3d" or ndim <= 2:
        return ndimage.generate_binary_structure(ndim, 1)
    s = np.zeros((3,) * ndim, dtype=bool)
    s[(1,) * (ndim - 2)] = ndimage.generate_binary_structure(2, 1)
    return s


def _component_voxels(mask: np.ndarray, ns: Sequence[int], mode: Mode) -> np.ndarray:
    """For each n, the number of mask voxels in connected components of size >= n."""
    labels, count = ndimage.label(mask, structure=_structure(mask.ndim, mode))
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    sizes = np.sort(sizes)
    tail = np.concatenate([np.cumsum(sizes[::-1])[::-1], [0]])  # tail[i] = sum(sizes[i:])
    return tail[np.searchsorted(sizes, np.asarray(ns), side="left")]


def _error_n(err: np.ndarray, ns: Sequence[int], mode: Mode, valid: np.ndarray | None) -> np.ndarray:
    denom = err.size if valid is None else int(np.count_nonzero(valid))
    if valid is not None:
        err = err & valid
    return 100.0 * _div(_component_voxels(err, ns, mode), denom)


def _masks(pred_mask, target_mask, valid):
    pred_mask = np.asarray(pred_mask, dtype=bool)
    target_mask = np.asarray(target_mask, dtype=bool)
    if pred_mask.shape != target_mask.shape or (valid is not None and np.shape(valid) != pred_mask.shape):
        raise DataError("pred_mask, target_mask and valid must have one shape")
    return pred_mask, target_mask, None if valid is None else np.asarray(valid, dtype=bool)


def fn_n(
    pred_mask: np.ndarray, target_mask: np.ndarray, n: int, mode: Mode = "2d", valid: np.ndarray | None = None
) -> float:
    """FN-n in percent: false-negative voxels in FN components of size >= n, over all (valid) voxels.

    Same as ``skimage.morphology.remove_small_objects(fn, max_size=n - 1)`` (skimage >= 0.26; the
    deprecated ``min_size=n``) with connectivity 1, per z slice for "2d" or per volume for "3d".
    NaN when there are no valid voxels.
    """
    p, t, v = _masks(pred_mask, target_mask, valid)
    return float(_error_n(t & ~p, [n], mode, v)[0])


def fp_n(
    pred_mask: np.ndarray, target_mask: np.ndarray, n: int, mode: Mode = "2d", valid: np.ndarray | None = None
) -> float:
    """FP-n in percent: like :func:`fn_n` for false positives (predicted but not in the target)."""
    p, t, v = _masks(pred_mask, target_mask, valid)
    return float(_error_n(p & ~t, [n], mode, v)[0])


def _instances(labels: np.ndarray, boundary_class: int, mode: Mode, valid: np.ndarray | None) -> np.ndarray:
    fg = labels != boundary_class
    if valid is not None:
        fg &= valid
    return ndimage.label(fg, structure=_structure(labels.ndim, mode))[0]


@overload
def adapted_rand_error(pred_labels: np.ndarray, target_labels: np.ndarray, boundary_class: int = ...,
                       mode: Mode = ..., ignore_value: int | None = ...,
                       return_prec_rec: Literal[False] = ...) -> float: ...
@overload
def adapted_rand_error(pred_labels: np.ndarray, target_labels: np.ndarray, boundary_class: int = ...,
                       mode: Mode = ..., ignore_value: int | None = ...,
                       *, return_prec_rec: Literal[True]) -> tuple[float, float, float]: ...
@overload
def adapted_rand_error(pred_labels: np.ndarray, target_labels: np.ndarray, boundary_class: int = ...,
                       mode: Mode = ..., ignore_value: int | None = ...,
                       return_prec_rec: bool = ...) -> float | tuple[float, float, float]: ...
def adapted_rand_error(
    pred_labels: np.ndarray,
    target_labels: np.ndarray,
    boundary_class: int = 1,
    mode: Mode = "2d",
    ignore_value: int | None = None,
    return_prec_rec: bool = False,
) -> float | tuple[float, float, float]:
    """Adapted Rand error (SNEMI3D) of two class maps of a membrane task.

    Both maps become instance segmentations by connected components (connectivity 1, per z slice for
    "2d") of their non-boundary voxels. Target boundary and ignored voxels are left out of the score
    (label 0); predicted boundary voxels form one segment (label 0 of the prediction), so a prediction
    that is mostly boundary is penalised. Returns the error, or (error, precision, recall); NaN if the
    target has no non-boundary voxel. Precision (pairs together in both / pairs together in the prediction)
    drops with merges, recall with splits: skimage returns these two swapped against its own docs
    (scikit-image issue #6485), so they are swapped back here.
    """
    from skimage.metrics import adapted_rand_error as _are

    pred_labels = np.asarray(pred_labels)
    target_labels = np.asarray(target_labels)
    if pred_labels.shape != target_labels.shape:
        raise DataError(f"prediction shape {pred_labels.shape} differs from target shape {target_labels.shape}")
    valid = None if ignore_value is None else target_labels != ignore_value
    true = _instances(target_labels, boundary_class, mode, valid)
    if not true.any():
        nan = float("nan")
        return (nan, nan, nan) if return_prec_rec else nan
    test = _instances(pred_labels, boundary_class, mode, None)
    err, rec, prec = _are(true, test)  # skimage's order is (error, recall, precision), see above
    return (float(err), float(prec), float(rec)) if return_prec_rec else float(err)


def score_segmentation(
    pred: np.ndarray,
    target: np.ndarray,
    class_names: Sequence[str],
    ignore_value: int | None = None,
    ns: Sequence[int] = (0, 5, 65, 401),
    mode: Mode = "2d",
    background: int | None = 0,
    membrane_class: int | None = None,
) -> dict[str, float]:
    """Score a class map against a target; returns the flat dict described in the module docstring."""
    pred = np.asarray(pred)
    target = np.asarray(target)
    k = len(class_names)
    cm = confusion_matrix(pred, target, k, ignore_value)
    valid = None if ignore_value is None else target != ignore_value
    n_valid = int(cm.sum())
    ious, dices, precs, recs = iou(cm), dice(cm), precision(cm), recall(cm)
    pos = _div(cm.sum(axis=1), n_valid)
    fg = [c for c in range(k) if c != background]

    out: dict[str, float] = {"miou": _nanmean(ious), "mdice": _nanmean(dices), "fg_iou": _nanmean(ious[fg])}
    fns = np.empty((k, len(ns)))
    fps = np.empty((k, len(ns)))
    for c, name in enumerate(class_names):
        p, t = pred == c, target == c
        fns[c] = _error_n(t & ~p, ns, mode, valid)
        fps[c] = _error_n(p & ~t, ns, mode, valid)
        out[f"iou/{name}"] = float(ious[c])
        out[f"dice/{name}"] = float(dices[c])
        out[f"precision/{name}"] = float(precs[c])
        out[f"recall/{name}"] = float(recs[c])
        out[f"positive_fraction/{name}"] = float(pos[c])
        for j, n in enumerate(ns):
            out[f"fn_{n}/{name}"] = float(fns[c, j])
            out[f"fp_{n}/{name}"] = float(fps[c, j])
    for j, n in enumerate(ns):
        out[f"fn_{n}"] = _nanmean(fns[fg, j])
        out[f"fp_{n}"] = _nanmean(fps[fg, j])
    if membrane_class is not None:
        err, prec, rec = adapted_rand_error(pred, target, membrane_class, mode, ignore_value, return_prec_rec=True)
        out.update(rand_error=err, rand_precision=prec, rand_recall=rec)
    return out


def bootstrap_ci(
    values_a: Sequence[float] | np.ndarray,
    values_b: Sequence[float] | np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float, float]:
    """Percentile-bootstrap confidence interval of a mean over slices: returns (mean, lo, hi).

    ``values_a`` are per-slice values of a statistic (or of a difference); with ``values_b`` the paired
    differences ``a - b`` are used (e.g. ensemble minus member). Pairs with a NaN are dropped; with no
    values left the result is (nan, nan, nan).
    """
    d = np.asarray(values_a, dtype=np.float64)
    if values_b is not None:
        b = np.asarray(values_b, dtype=np.float64)
        if b.shape != d.shape:
            raise DataError(f"values_a {d.shape} and values_b {b.shape} must be paired (one shape)")
        d = d - b
    d = d[~np.isnan(d)].ravel()
    if d.size == 0:
        nan = float("nan")
        return nan, nan, nan
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(d.mean()), float(lo), float(hi)
