"""Ingest statistics, the error map, and the weighted loss (error weighting, pseudo-label lambda)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from arborseg.bootstrap.pseudo import pseudo_weights
from arborseg.bootstrap.stats import FN_ERROR, FP_ERROR, correction_stats, error_codes, error_weights
from arborseg.errors import ArborsegError
from arborseg.train.losses import segmentation_loss

CLASSES = ("bg", "membrane", "mito")
IGNORE = 255


def _case():
    pre = np.zeros((1, 10, 10), np.uint8)
    pre[0, 0:2, :] = 1          # 20 membrane voxels predicted
    corrected = np.zeros((1, 10, 10), np.uint8)
    corrected[0, 0, :] = 1      # the person keeps row 0 as membrane (10), row 1 becomes background (10 removed)
    corrected[0, 5:8, 5:8] = 2  # adds a 3x3 mitochondrion the network missed (9 added)
    corrected[0, 9, :] = IGNORE  # leaves the last row unlabeled
    return pre, corrected


def test_correction_stats_count_what_the_person_changed():
    pre, corrected = _case()
    s = correction_stats(pre, corrected, CLASSES, IGNORE, background=0)
    assert s["labeled"] == 90
    assert s["changed"] == 19
    assert s["changed_fraction"] == pytest.approx(19 / 90)
    assert s["removed/membrane"] == 10 and s["added/membrane"] == 0
    assert s["added/mito"] == 9 and s["removed/mito"] == 0
    assert s["added/bg"] == 10 and s["removed/bg"] == 9
    # FN-0 is the mean over non-background classes of the missed voxels in % of the labeled voxels:
    # membrane 0, mito 9/90 -> (0 + 10) / 2 = 5 %; FN-65 drops the 9-voxel component
    assert s["fn_0"] == pytest.approx(5.0)
    assert s["fn_65"] == pytest.approx(0.0)
    assert s["fp_0"] == pytest.approx((10 / 90 * 100 + 0) / 2)


def test_correction_stats_shape_mismatch_is_an_error():
    with pytest.raises(ArborsegError, match="differ in shape"):
        correction_stats(np.zeros((1, 4, 4)), np.zeros((1, 4, 5)), CLASSES, IGNORE)


def test_error_codes_and_weights_by_mode():
    pre, corrected = _case()
    codes = error_codes(pre, corrected, background=0, ignore_value=IGNORE)
    assert (codes == FN_ERROR).sum() == 9      # the missed mitochondrion
    assert (codes == FP_ERROR).sum() == 10     # membrane that was background
    assert codes[0, 9].max() == 0              # unlabeled voxels are never errors
    w_all = error_weights(codes, "all", 5.0)
    w_fn = error_weights(codes, "fn", 5.0)
    assert (w_all == 5).sum() == 19 and (w_fn == 5).sum() == 9
    assert set(np.unique(w_fn)) == {1.0, 5.0}
    with pytest.raises(ArborsegError, match="error mode"):
        error_weights(codes, "fp")


def test_pseudo_weights_put_lambda_on_pseudo_voxels_only():
    pseudo = np.zeros((2, 3, 3), bool)
    pseudo[1] = True
    base = np.full((2, 3, 3), 5.0, np.float32)
    w = pseudo_weights(pseudo, 0.25, base)
    assert np.all(w[1] == 0.25) and np.all(w[0] == 5.0)
    with pytest.raises(ArborsegError, match="lambda"):
        pseudo_weights(pseudo, -1.0)


def test_weighted_loss_with_lambda_interpolates_between_real_and_pseudo_voxels():
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 2, 4, 4)
    target = torch.randint(0, 3, (1, 2, 4, 4))
    pseudo = torch.zeros(1, 2, 4, 4, dtype=torch.bool)
    pseudo[:, 1] = True  # slice 1 is pseudo-labeled
    real_only = segmentation_loss(logits[:, :, :1], target[:, :1])
    pseudo_only = segmentation_loss(logits[:, :, 1:], target[:, 1:])
    for lam in (0.0, 0.3, 1.0):
        w = torch.from_numpy(pseudo_weights(pseudo.numpy(), lam))
        loss = segmentation_loss(logits, target, voxel_weight=w)
        expected = (real_only * 16 + lam * pseudo_only * 16) / (16 + lam * 16)
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
