"""Fusing member probabilities with weights, and fitting the weights of ``weighted`` fusion.

Every fusion takes per-member weights (non-negative; only their ratios matter). Equal weights give
exactly :func:`arborseg.inference.blockwise.fuse` (which the prediction of large volumes uses too):

* ``mean`` and ``weighted``: the weighted mean of the members' probabilities;
* ``max``: the class-wise maximum over the members with a weight > 0, renormalised to sum 1
  (repeating a member does not change a maximum, so the weights only say who takes part);
* ``vote``: each member votes for its argmax class with its weight; the label is the class with the
  most weight, ties going to the highest weighted mean probability; the "probabilities" are the
  weighted vote fractions.

``weighted`` differs from ``mean`` only in where the weights come from: :func:`fit_weights` fits them
on the validation region by minimising the **class-balanced log-loss** of the weighted mean (each voxel
weighted by the inverse frequency of its true class, so thin membranes and small mitochondria count as
much as the cell interiors that dominate the voxels; ignored voxels are left out). The weights are a
softmax of free parameters (non-negative, summing to 1) optimised with L-BFGS on up to
``max_voxels`` voxels sampled with a fixed seed.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from arborseg.errors import ArborsegError
from arborseg.inference.blockwise import fuse
from arborseg.log import get_logger

log = get_logger(__name__)

FUSIONS = ("mean", "max", "vote", "weighted")


def _check(member_probs: np.ndarray, weights: Sequence[float] | None) -> np.ndarray:
    m = member_probs.shape[0]
    w = np.ones(m) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (m,) or np.any(w < 0) or not np.isfinite(w).all() or w.sum() <= 0:
        raise ArborsegError(f"fusion weights must be {m} non-negative numbers, not all 0; got {list(w)}")
    return w / w.sum()


def fuse_weighted(member_probs: np.ndarray, fusion: str, weights: Sequence[float] | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Fuse (M, C, ...) member probabilities with ``fusion`` and per-member ``weights``: (probs, labels)."""
    if fusion not in FUSIONS:
        raise ArborsegError(f"fusion {fusion!r} is not one of {', '.join(FUSIONS)}")
    member_probs = np.asarray(member_probs)
    w = _check(member_probs, weights)
    used = np.flatnonzero(w > 0)
    if np.allclose(w[used], w[used][0]):
        probs, labels, _ = fuse(member_probs[used], "mean" if fusion == "weighted" else fusion)
        return probs, labels
    if fusion == "max":
        probs, labels, _ = fuse(member_probs[used], "max")
        return probs, labels
    mean = np.zeros(member_probs.shape[1:], np.float32)
    for i in used:
        mean += np.float32(w[i]) * member_probs[i].astype(np.float32, copy=False)
    if fusion in ("mean", "weighted"):
        return mean, _argmax(mean)
    c = member_probs.shape[1]
    if c == 1:
        votes = np.zeros(member_probs.shape[2:], np.float32)
        for i in used:
            votes += np.float32(w[i]) * (member_probs[i, 0] >= 0.5)
        labels = ((votes > 0.5) | (np.isclose(votes, 0.5) & (mean[0] >= 0.5))).astype(np.uint8)
        return votes[None], labels
    votes = np.zeros(member_probs.shape[1:], np.float32)
    for i in used:
        own = member_probs[i].argmax(axis=0)
        for k in range(c):
            votes[k] += np.float32(w[i]) * (own == k)
    # the classes with the most weight (to float rounding) tie; the highest weighted mean probability wins
    leaders = votes >= votes.max(axis=0, keepdims=True) - np.float32(1e-6)
    labels = np.where(leaders, mean, np.float32(-1)).argmax(axis=0).astype(np.uint8 if c <= 256 else np.uint16)
    return votes, labels


def _argmax(probs: np.ndarray) -> np.ndarray:
    if probs.shape[0] == 1:
        return (probs[0] >= 0.5).astype(np.uint8)
    return probs.argmax(axis=0).astype(np.uint8 if probs.shape[0] <= 256 else np.uint16)


def fit_weights(member_probs: np.ndarray, labels: np.ndarray, ignore_value: int | None = None,
                init: Sequence[float] | None = None, max_voxels: int = 200_000, seed: int = 0) -> np.ndarray:
    """Non-negative weights (sum 1) minimising the class-balanced log-loss of the weighted mean on ``labels``.

    ``member_probs`` (M, C, ...) and ``labels`` (...) of the validation region; ``init``: starting weights
    (default equal). Returns float64 weights; tiny ones (< 1e-3) are set to 0 and the rest renormalised.
    """
    from scipy.optimize import minimize

    member_probs = np.asarray(member_probs)
    m, c = member_probs.shape[:2]
    if m == 1:
        return np.ones(1)
    flat_labels = np.asarray(labels).reshape(-1)
    valid = np.ones(flat_labels.shape, bool) if ignore_value is None else flat_labels != ignore_value
    if c > 1:
        valid &= (flat_labels >= 0) & (flat_labels < c)
    index = np.flatnonzero(valid)
    if index.size == 0:
        raise ArborsegError("cannot fit fusion weights: the validation region has no labelled voxels")
    if index.size > max_voxels:
        index = np.sort(np.random.default_rng(seed).choice(index, max_voxels, replace=False))
    y = flat_labels[index].astype(np.int64)
    p = member_probs.reshape(m, c, -1)[:, :, index].astype(np.float64)
    if c == 1:  # one sigmoid channel: two-class probabilities
        p = np.concatenate([1 - p, p], axis=1)
        c = 2
    own = p[:, y, np.arange(y.size)]  # (M, N): each member's probability of the true class
    counts = np.bincount(y, minlength=c).astype(np.float64)
    voxel_w = (1.0 / np.maximum(counts, 1))[y]
    voxel_w /= voxel_w.sum()
    eps = 1e-6

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w = np.exp(theta - theta.max())
        w /= w.sum()
        q = w @ own + eps
        value = -float(voxel_w @ np.log(q))
        grad_w = -(own / q) @ voxel_w  # d loss / d w
        grad = w * (grad_w - w @ grad_w)  # through the softmax
        return value, grad

    start = np.ones(m) / m if init is None else np.asarray(init, dtype=np.float64) / np.sum(init)
    theta0 = np.log(np.maximum(start, 1e-6))
    result = minimize(loss, theta0, jac=True, method="L-BFGS-B")
    w = np.exp(result.x - result.x.max())
    w /= w.sum()
    w[w < 1e-3] = 0.0
    log.debug("fitted fusion weights %s (class-balanced log-loss %.4f -> %.4f)", np.round(w, 3),
              loss(theta0)[0], result.fun)
    return w / w.sum()
