"""Metrics on hand-computed cases, and FN-n against skimage's remove_small_objects."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from skimage.morphology import remove_small_objects

from arborseg import metrics as M
from arborseg.errors import DataError


def keep_at_least(mask: np.ndarray, n: int) -> np.ndarray:
    """skimage reference: keep components of size >= n (connectivity 1), across skimage versions."""
    if "max_size" in inspect.signature(remove_small_objects).parameters:  # skimage >= 0.26: removes <= max_size
        return remove_small_objects(mask, max_size=n - 1, connectivity=1)
    return remove_small_objects(mask, min_size=n, connectivity=1)  # older: removes < min_size


# 1x4x4: target class 1 has 3 voxels, prediction finds 2 of them and nothing else.
TARGET = np.array([[[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]]])
PRED = np.array([[[0, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]]])


def test_confusion_and_scores_by_hand():
    cm = M.confusion_matrix(PRED, TARGET, 2)
    np.testing.assert_array_equal(cm, [[13, 0], [1, 2]])  # rows target, columns prediction
    np.testing.assert_allclose(M.iou(cm), [13 / 14, 2 / 3])
    np.testing.assert_allclose(M.dice(cm), [26 / 27, 4 / 5])
    np.testing.assert_allclose(M.precision(cm), [13 / 14, 2 / 2])
    np.testing.assert_allclose(M.recall(cm), [13 / 13, 2 / 3])


def test_absent_class_is_nan_and_skipped_in_means():
    cm = M.confusion_matrix(PRED, TARGET, 3)
    ious = M.iou(cm)
    assert np.isnan(ious[2])
    s = M.score_segmentation(PRED, TARGET, ["bg", "cell", "mito"], ns=(0,))
    assert s["miou"] == pytest.approx((13 / 14 + 2 / 3) / 2)
    assert s["fg_iou"] == pytest.approx(2 / 3)
    assert np.isnan(s["iou/mito"]) and np.isnan(s["precision/mito"]) and np.isnan(s["recall/mito"])
    assert s["fn_0/mito"] == 0.0


def test_confusion_ignore_and_range():
    target = TARGET.copy()
    target[0, 2, 1] = 255  # the missed voxel is now ignored
    cm = M.confusion_matrix(PRED, target, 2, ignore_value=255)
    np.testing.assert_array_equal(cm, [[13, 0], [0, 2]])
    with pytest.raises(DataError, match="outside 0..1"):
        M.confusion_matrix(PRED, target, 2)


def test_fn_n_by_hand():
    # 16 voxels; false negatives: one component of 3 (row 0), one of 1 (corner).
    target = np.zeros((1, 4, 4), bool)
    target[0, 0, :3] = True
    target[0, 3, 3] = True
    target[0, 2, 0] = True  # found by the prediction -> not an FN
    pred = np.zeros_like(target)
    pred[0, 2, 0] = True
    assert M.fn_n(pred, target, 2) == pytest.approx(100 * 3 / 16)  # 18.75 %
    assert M.fn_n(pred, target, 0) == pytest.approx(100 * 4 / 16)
    assert M.fn_n(pred, target, 1) == pytest.approx(100 * 4 / 16)
    assert M.fn_n(pred, target, 4) == 0.0
    # the same masks swapped are false positives
    assert M.fp_n(target, pred, 2) == pytest.approx(18.75)
    assert M.fp_n(pred, target, 0) == 0.0


def test_fn_n_denominator_is_valid_voxels_and_ignored_voxels_do_not_count():
    target = np.zeros((1, 4, 4), bool)
    target[0, 0, :3] = True
    pred = np.zeros_like(target)
    valid = np.ones_like(target)
    valid[0, 3, :] = False  # 12 valid voxels
    assert M.fn_n(pred, target, 3, valid=valid) == pytest.approx(100 * 3 / 12)
    valid[0, 0, 1] = False  # ignoring the middle voxel splits the component into 1 + 1
    assert M.fn_n(pred, target, 2, valid=valid) == 0.0
    assert M.fn_n(pred, target, 1, valid=valid) == pytest.approx(100 * 2 / 11)


def test_fn_n_2d_vs_3d():
    target = np.zeros((2, 3, 3), bool)
    target[:, 1, 1] = True  # one voxel per slice, stacked in z
    pred = np.zeros_like(target)
    assert M.fn_n(pred, target, 2, mode="3d") == pytest.approx(100 * 2 / 18)
    assert M.fn_n(pred, target, 2, mode="2d") == 0.0
    # diagonal neighbours are not connected (connectivity 1)
    diag = np.zeros((1, 3, 3), bool)
    diag[0, 0, 0] = diag[0, 1, 1] = True
    assert M.fn_n(np.zeros_like(diag), diag, 2) == 0.0


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n", [0, 1, 2, 3, 5, 9])
def test_fn_n_equals_skimage(seed, n):
    rng = np.random.default_rng(seed)
    target = rng.random((5, 17, 13)) < 0.45
    pred = rng.random(target.shape) < 0.3
    fn = target & ~pred
    ref3d = 100 * keep_at_least(fn, n).sum() / fn.size
    ref2d = 100 * sum(keep_at_least(s, n).sum() for s in fn) / fn.size
    assert M.fn_n(pred, target, n, mode="3d") == pytest.approx(ref3d)
    assert M.fn_n(pred, target, n, mode="2d") == pytest.approx(ref2d)
    fp = pred & ~target
    assert M.fp_n(pred, target, n, mode="3d") == pytest.approx(100 * keep_at_least(fp, n).sum() / fp.size)


def test_adapted_rand():
    # two cells separated by a membrane column (class 1)
    target = np.zeros((1, 4, 5), int)
    target[0, :, 2] = 1
    assert M.adapted_rand_error(target, target) == pytest.approx(0.0)
    merged = np.zeros_like(target)  # membrane missed -> one segment
    err, prec, rec = M.adapted_rand_error(merged, target, return_prec_rec=True)
    assert err > 0 and rec == pytest.approx(1.0) and prec < 1  # a merge lowers precision, not recall
    # by hand: true cells of 8 and 8 voxels, one predicted segment of 16 (membrane ignored in the target);
    # pairs (ordered, i != j) together in both: 2 * 8 * 7 = 112, in the prediction: 16 * 15 = 240
    assert prec == pytest.approx(112 / 240)
    assert err == pytest.approx(1 - 2 * 112 / (240 + 112))
    # 2d: the same cells in two slices are separate instances, 3d: joined; both perfect on themselves
    stack = np.concatenate([target, target])
    assert M.adapted_rand_error(stack, stack, mode="3d") == pytest.approx(0.0)
    assert M.adapted_rand_error(stack, stack, mode="2d") == pytest.approx(0.0)
    assert np.isnan(M.adapted_rand_error(target, np.ones_like(target)))


def test_score_segmentation_keys_and_values():
    target = np.zeros((2, 4, 4), int)
    target[0, 0, :3] = 1
    target[1, 1:3, 1:3] = 2
    target[1, 3, 3] = 9  # ignored
    pred = target.copy()
    pred[0, 0, :3] = 0  # miss the class-1 component of 3
    pred[1, 3, 3] = 2  # prediction in the ignored voxel does not count
    s = M.score_segmentation(pred, target, ["bg", "a", "b"], ignore_value=9, ns=(0, 2, 5), membrane_class=1)
    names = ["bg", "a", "b"]
    expected = {"miou", "mdice", "fg_iou", "rand_error", "rand_precision", "rand_recall"}
    expected |= {f"{m}/{c}" for m in ("iou", "dice", "precision", "recall", "positive_fraction") for c in names}
    expected |= {f"{e}_{n}/{c}" for e in ("fn", "fp") for n in (0, 2, 5) for c in names}
    expected |= {f"{e}_{n}" for e in ("fn", "fp") for n in (0, 2, 5)}
    assert set(s) == expected
    assert all(isinstance(v, float) for v in s.values())
    valid = 31
    assert s["fn_2/a"] == pytest.approx(100 * 3 / valid)
    assert s["fn_5/a"] == 0.0
    assert s["fp_0/bg"] == pytest.approx(100 * 3 / valid)
    assert s["fn_2"] == pytest.approx((100 * 3 / valid + 0.0) / 2)  # mean over a, b
    assert s["iou/a"] == 0.0 and s["iou/b"] == 1.0
    assert s["positive_fraction/b"] == pytest.approx(4 / valid)
    assert s["fg_iou"] == pytest.approx(0.5)
    s_all = M.score_segmentation(pred, target, names, ignore_value=9, ns=(2,), background=None)
    assert s_all["fn_2"] == pytest.approx(100 * 3 / valid / 3)


def test_bootstrap_ci():
    assert M.bootstrap_ci([2.0] * 10) == (2.0, 2.0, 2.0)
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 1.0, 200), rng.normal(0.0, 1.0, 200)
    mean, lo, hi = M.bootstrap_ci(a, b, n_boot=500, seed=3)
    assert lo < mean < hi and lo > 0.5 and hi < 1.5
    assert M.bootstrap_ci(a, b, n_boot=500, seed=3) == (mean, lo, hi)
    assert all(np.isnan(M.bootstrap_ci([np.nan])))
