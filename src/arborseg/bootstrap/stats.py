"""What a correction changed: the statistics ``ingest`` records and the error map for the next training."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from arborseg.errors import ArborsegError
from arborseg.metrics import score_segmentation

NO_ERROR, FP_ERROR, FN_ERROR = 0, 1, 2  # codes of the error map
ERROR_MODES = ("all", "fn")


def error_codes(pre: np.ndarray, corrected: np.ndarray, background: int | None, ignore_value: int) -> np.ndarray:
    """uint8 map: 2 where the pre-segmentation missed a non-background class (a false negative),
    1 where it was wrong on background, 0 where it was right or the voxel is unlabeled."""
    wrong = (pre != corrected) & (corrected != ignore_value)
    out = np.zeros(corrected.shape, np.uint8)
    is_fn = corrected != (background if background is not None else -1)
    out[wrong & is_fn] = FN_ERROR
    out[wrong & ~is_fn] = FP_ERROR
    return out


def error_weights(codes: np.ndarray, mode: str = "all", weight: float = 5.0) -> np.ndarray:
    """Per-voxel loss weights from an error map: ``weight`` on all errors (mode 'all') or on false
    negatives only (mode 'fn'), 1 elsewhere, as in the seed work's prediction-error weighting."""
    if mode not in ERROR_MODES:
        raise ArborsegError(f"error mode {mode!r} must be one of {', '.join(ERROR_MODES)}")
    hit = codes == FN_ERROR if mode == "fn" else codes != NO_ERROR
    out = np.ones(codes.shape, np.float32)
    out[hit] = float(weight)
    return out


def correction_stats(pre: np.ndarray, corrected: np.ndarray, classes: Sequence[str], ignore_value: int,
                     background: int | None = 0) -> dict[str, float]:
    """How much a person's correction changed a pre-segmentation (same-shape class maps).

    ``labeled``: voxels the correction labels; ``changed``: of those, voxels whose class it changed
    (``changed_fraction`` = changed / labeled); ``added/<c>`` / ``removed/<c>``: voxels the correction
    gave to / took from class c; ``fn_<n>``, ``fp_<n>``, ``fg_iou``: the pre-segmentation scored against the
    correction (FN-n / FP-n in percent of the labeled voxels, per slice, as in the house plan)."""
    if pre.shape != corrected.shape:
        raise ArborsegError(f"pre-segmentation {pre.shape} and correction {corrected.shape} differ in shape")
    valid = corrected != ignore_value
    labeled = int(valid.sum())
    changed = int(((pre != corrected) & valid).sum())
    out: dict[str, float] = {"labeled": labeled, "changed": changed,
                             "changed_fraction": changed / labeled if labeled else float("nan")}
    for c, name in enumerate(classes):
        out[f"added/{name}"] = int(((corrected == c) & (pre != c)).sum())
        out[f"removed/{name}"] = int(((pre == c) & (corrected != c) & valid).sum())
    if labeled:
        scores = score_segmentation(pre, corrected, list(classes), ignore_value=ignore_value, mode="2d",
                                    background=background)
        for key in ("fg_iou", "miou", "fn_0", "fn_5", "fn_65", "fn_401", "fp_0", "fp_5", "fp_65", "fp_401"):
            out[key] = float(scores[key])
    return out
