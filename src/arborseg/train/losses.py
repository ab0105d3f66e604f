"""Segmentation losses: class-weighted cross-entropy with per-voxel weights, plus optional Dice.

Per-voxel weights combine (a) class-frequency weights and (b) prediction-error weights: voxels a
previous prediction got wrong (or only its false negatives) are upweighted, as in the
bootstrapping paper's error-weighted retraining. Voxels labelled ``ignore_value`` never count.
Deep supervision (nnU-Net) sums this loss over a network's outputs at several resolutions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def class_weights(frequencies: np.ndarray, mode: str = "inverse_sqrt", cap: float = 50.0) -> np.ndarray:
    """Weights per class from class frequencies: 'none', 'inverse' or 'inverse_sqrt', mean 1 over classes.

    Classes absent from the training labels get weight 0 (nothing to learn from them)."""
    freq = np.asarray(frequencies, dtype=np.float64)
    if mode == "none":
        return np.ones_like(freq, dtype=np.float32)
    present = freq > 0
    weights = np.zeros_like(freq)
    power = 1.0 if mode == "inverse" else 0.5
    weights[present] = (1.0 / freq[present]) ** power
    weights[present] /= weights[present].mean()
    return np.minimum(weights, cap).astype(np.float32)


def error_weight_map(previous: np.ndarray, target: np.ndarray, mode: str = "all", weight: float = 5.0,
                     background: int | None = 0, ignore_value: int | None = None) -> np.ndarray:
    """Voxel weights that upweight where ``previous`` (a label map) was wrong.

    mode 'all': every wrong voxel gets ``weight``; mode 'fn': only false negatives (target is a
    non-background class that ``previous`` missed). Other voxels get 1."""
    if previous.shape != target.shape:
        raise ValueError(f"previous prediction {previous.shape} and labels {target.shape} differ in shape")
    wrong = previous != target
    if mode == "fn":
        wrong &= target != (background if background is not None else -1)
    elif mode != "all":
        raise ValueError(f"error weighting mode must be 'all' or 'fn', not {mode!r}")
    if ignore_value is not None:
        wrong &= target != ignore_value
    out = np.ones(target.shape, dtype=np.float32)
    out[wrong] = weight
    return out


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, class_weight: torch.Tensor | None = None,
                      voxel_weight: torch.Tensor | None = None, ignore_value: int | None = None,
                      dice_weight: float = 0.0, dice_background: int | None = 0) -> torch.Tensor:
    """Weighted cross-entropy (+ ``dice_weight`` x soft Dice over non-background classes).

    logits (N, C, Z, Y, X); target (N, Z, Y, X) int64; voxel_weight (N, Z, Y, X) or None.
    The CE is normalised by the summed weights of the valid voxels, so weighting changes the
    balance between voxels, not the scale of the loss."""
    valid = torch.ones_like(target, dtype=torch.bool) if ignore_value is None else target != ignore_value
    safe_target = torch.where(valid, target, torch.zeros_like(target))
    ce = F.cross_entropy(logits.float(), safe_target, reduction="none")
    weight = valid.float()
    if class_weight is not None:
        weight = weight * class_weight[safe_target]
    if voxel_weight is not None:
        weight = weight * voxel_weight
    loss = (ce * weight).sum() / weight.sum().clamp_min(1e-6)
    if dice_weight > 0:
        loss = loss + dice_weight * soft_dice_loss(logits, safe_target, valid, dice_background)
    return loss


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
                   background: int | None = 0, eps: float = 1.0) -> torch.Tensor:
    """1 - mean soft Dice over the classes (background left out), valid voxels only."""
    n_classes = logits.shape[1]
    probs = F.softmax(logits.float(), dim=1) * valid.unsqueeze(1)
    onehot = F.one_hot(target, n_classes).movedim(-1, 1).float() * valid.unsqueeze(1)
    dims = (0, 2, 3, 4)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + eps) / (denom + eps)
    keep = [c for c in range(n_classes) if c != background] or list(range(n_classes))
    return 1.0 - dice[keep].mean()


def deep_supervision_weights(levels: int) -> list[float]:
    """nnU-Net's loss weights for ``levels`` decoder resolutions, full resolution first: 1/2^i, the lowest
    resolution's set to 0, normalised to sum 1 (nnUNetTrainer._build_loss); [1.0] for one level."""
    if levels < 1:
        raise ValueError(f"deep supervision needs at least one level, got {levels}")
    if levels == 1:
        return [1.0]
    weights = [0.5 ** i for i in range(levels - 1)] + [0.0]
    total = sum(weights)
    return [w / total for w in weights]


def downsample_nearest(values: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``values`` (N, Z, Y, X) sampled at the voxels nearest to the centres of a (z, y, x) = ``size`` grid
    (PyTorch's 'nearest-exact', as nnU-Net's DownsampleSegForDSTransform): labels, ignore values and voxel
    weights keep their exact values and dtype."""
    for axis, out in enumerate(size, start=1):
        n = values.shape[axis]
        if n != out:
            index = ((torch.arange(out, device=values.device, dtype=torch.float64) + 0.5) * (n / out)).floor()
            values = values.index_select(axis, index.long().clamp_max(n - 1))
    return values


def deep_supervision_loss(outputs: Sequence[torch.Tensor], weights: Sequence[float], target: torch.Tensor,
                          class_weight: torch.Tensor | None = None, voxel_weight: torch.Tensor | None = None,
                          ignore_value: int | None = None, dice_weight: float = 0.0,
                          dice_background: int | None = 0) -> torch.Tensor:
    """sum_i ``weights[i]`` x :func:`segmentation_loss` of ``outputs[i]`` (logits, full resolution first), with
    ``target`` and ``voxel_weight`` sampled to each output's size (:func:`downsample_nearest`). Weights beyond
    the outputs must be 0 (the lowest decoder level, which has no head)."""
    if not outputs or len(outputs) > len(weights) or any(weights[len(outputs):]):
        raise ValueError(f"{len(outputs)} outputs do not fit the deep supervision weights {list(weights)}")
    terms = []
    for logits, weight in zip(outputs, weights):
        if weight == 0:
            continue
        size = tuple(logits.shape[2:])
        vw = None if voxel_weight is None else downsample_nearest(voxel_weight, size)
        terms.append(weight * segmentation_loss(logits, downsample_nearest(target, size), class_weight, vw,
                                                ignore_value, dice_weight, dice_background))
    return torch.stack(terms).sum()
