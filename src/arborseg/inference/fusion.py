"""Fusing the probabilities of ensemble members: the one set of rules (numpy only, no torch).

:func:`fuse` is used by `arborseg ensemble` (choosing and scoring members on stored probabilities), by
block-wise prediction (:func:`arborseg.inference.predict_to_store`, bundles) and, through them, by the
in-memory reference of the tests. Every rule takes optional per-member weights (non-negative; only their
ratios matter; members of weight 0 take no part; equal weights give the unweighted rules):

* ``mean`` and ``weighted``: the (weighted) mean of the members' probabilities;
* ``max``: the class-wise maximum over the members, renormalised to sum 1 (a single sigmoid channel is not
  renormalised; repeating a member does not change a maximum, so the weights only say who takes part);
* ``vote``: each member votes for its own label (with its weight); the label is the class with the most
  votes; **ties** (leaders within 1e-6 of each other when weighted) go to the highest (weighted) mean
  probability; the "probabilities" are the (weighted) vote fractions.

Labels of probabilities are :func:`labels_of` everywhere: the argmax over classes, ``p >= 0.5`` for one
sigmoid channel; uint8, uint16 above 256 classes.

Uncertainty: ``entropy`` of the fused probabilities (natural log, in [0, log C], log 2 for one sigmoid
channel; of the vote fractions under ``vote``), or ``disagreement``: the (weighted) fraction of members
whose own label differs from the fused label (0 when all agree).

``weighted`` differs from ``mean`` only in where the weights come from: :func:`fit_weights` fits them on
the validation region by minimising the **class-balanced log-loss** of the weighted mean (each voxel
weighted by the inverse frequency of its true class, so thin membranes and small mitochondria count as
much as the cell interiors that dominate the voxels; ignored voxels are left out). The weights are a
softmax of free parameters (non-negative, summing to 1) optimised with L-BFGS on up to ``max_voxels``
voxels sampled with a fixed seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

import numpy as np

from arborseg.errors import ArborsegError, DataError
from arborseg.log import get_logger

log = get_logger(__name__)

Fusion = Literal["mean", "max", "vote", "weighted"]
Uncertainty = Literal["entropy", "disagreement"]
FUSIONS = ("mean", "max", "vote", "weighted")
UNCERTAINTIES = ("entropy", "disagreement")

__all__ = ["Fusion", "Uncertainty", "FUSIONS", "UNCERTAINTIES", "Fused", "fuse", "labels_of", "label_dtype",
           "entropy", "fit_weights"]


class Fused(NamedTuple):
    """What :func:`fuse` returns: ``probs`` (C, ...) float32 (vote fractions under ``vote``), ``labels``
    (...) uint8/uint16 and ``uncertainty`` (...) float32 or None."""

    probs: np.ndarray
    labels: np.ndarray
    uncertainty: np.ndarray | None


def label_dtype(n_classes: int) -> type:
    """The dtype of label maps: uint8, uint16 above 256 classes."""
    return np.uint8 if max(n_classes, 2) <= 256 else np.uint16


def labels_of(probs: np.ndarray) -> np.ndarray:
    """Labels of (C, ...) probabilities: argmax over C, or ``p >= 0.5`` for one sigmoid channel."""
    dtype = label_dtype(probs.shape[0])
    if probs.shape[0] == 1:
        return (probs[0] >= 0.5).astype(dtype)
    return probs.argmax(axis=0).astype(dtype)


def _xlogx(p: np.ndarray) -> np.ndarray:
    out = np.zeros(p.shape, np.float32)
    np.log(p, out=out, where=p > 0)
    out *= p
    return out


def entropy(probs: np.ndarray) -> np.ndarray:
    """Entropy (natural log) of (C, ...) probabilities per voxel, float32, clipped to [0, log C]
    (one sigmoid channel: the entropy of (1 - p, p), at most log 2)."""
    if probs.shape[0] == 1:
        p = probs[0]
        h = _xlogx(p)
        h += _xlogx(np.float32(1) - p)
        limit = math.log(2)
    else:
        h = np.zeros(probs.shape[1:], np.float32)
        for c in range(probs.shape[0]):
            h += _xlogx(probs[c])
        limit = math.log(probs.shape[0])
    np.negative(h, out=h)
    return np.clip(h, 0, limit, out=h)


def _normalised(weights: Sequence[float] | np.ndarray | None, m: int) -> np.ndarray | None:
    """Member weights divided by their sum (float64), or None without weights."""
    if weights is None:
        return None
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape != (m,) or not np.isfinite(w).all() or np.any(w < 0) or w.sum() <= 0:
        raise DataError(f"fusion weights must be {m} non-negative numbers, not all 0; got {list(w)}")
    return w / w.sum()


def fuse(
    member_probs: np.ndarray,
    fusion: Fusion | str = "mean",
    uncertainty: Uncertainty | str | None = None,
    weights: Sequence[float] | np.ndarray | None = None,
) -> Fused:
    """Fuse the members' probabilities (M, C, ...) into :class:`Fused` ``(probs, labels, uncertainty)``.

    See the module doc for the rules. ``weights``: one non-negative number per member (None: all equal).
    Float32 and float16 inputs give the same result as their float32 values.
    """
    member_probs = np.asarray(member_probs)
    if member_probs.ndim < 2:
        raise DataError(f"member probabilities must be (members, classes, ...), got shape {member_probs.shape}")
    if fusion not in FUSIONS:
        raise DataError(f"fusion must be one of {list(FUSIONS)}, got {fusion!r}")
    if uncertainty is not None and uncertainty not in UNCERTAINTIES:
        raise DataError(f"uncertainty must be one of {list(UNCERTAINTIES)} or None, got {uncertainty!r}")
    w = _normalised(weights, member_probs.shape[0])
    if w is not None:
        used = np.flatnonzero(w > 0)
        if used.size < w.size:  # members of weight 0 take no part
            member_probs, w = member_probs[used], w[used]
        if np.allclose(w, w[0]):
            w = None
    if fusion == "weighted":
        fusion = "mean"
    if w is None or fusion == "max":
        probs, labels, member_labels = _equal_rules(np.asarray(member_probs, dtype=np.float32), fusion)
    else:
        probs, labels, member_labels = _weighted_rules(member_probs, fusion, w)
    unc = None
    if uncertainty == "entropy":
        unc = entropy(probs)
    elif uncertainty == "disagreement":
        if member_labels is None:
            member_labels = np.stack([labels_of(_member(member_probs, i)) for i in range(len(member_probs))])
        if w is None:
            unc = (member_labels != labels).mean(axis=0, dtype=np.float32)
        else:
            unc = np.zeros(labels.shape, np.float32)
            for i in range(len(w)):
                unc += np.float32(w[i]) * (member_labels[i] != labels)
    return Fused(probs, labels, unc)


def _member(member_probs: np.ndarray, i: int) -> np.ndarray:
    """One member's probabilities as float32 (members are converted one at a time, not the whole stack)."""
    return member_probs[i].astype(np.float32, copy=False)


def _equal_rules(member_probs: np.ndarray, fusion: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(probs, labels, member labels or None) with equal weights, and of ``max`` (which ignores them);
    ``member_probs`` is float32."""
    m, c = member_probs.shape[:2]
    if fusion == "max":
        probs = member_probs.max(axis=0)
        if c > 1:
            probs /= probs.sum(axis=0, keepdims=True)
        return probs, labels_of(probs), None
    if fusion == "mean":
        probs = member_probs[0].copy() if m == 1 else member_probs.mean(axis=0, dtype=np.float32)
        return probs, labels_of(probs), None
    member_labels = np.stack([labels_of(p) for p in member_probs])  # vote
    mean = member_probs.mean(axis=0, dtype=np.float32)
    if c == 1:
        probs = (member_labels.sum(axis=0, dtype=np.float32) / m)[None]
        labels = ((probs[0] > 0.5) | ((probs[0] == 0.5) & (mean[0] >= 0.5))).astype(label_dtype(c))
        return probs, labels, member_labels
    counts = np.stack([(member_labels == k).sum(axis=0, dtype=np.float32) for k in range(c)])
    # a difference of one vote (>= 1) always beats the tie-break term (<= 0.5)
    labels = (counts + np.float32(0.5) * mean).argmax(axis=0).astype(label_dtype(c))
    return counts / np.float32(m), labels, member_labels


def _weighted_rules(member_probs: np.ndarray, fusion: str, w: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(probs, labels, member labels or None) of ``mean`` and ``vote`` with unequal weights ``w`` (sum 1,
    all > 0)."""
    m, c = member_probs.shape[:2]
    mean = np.zeros(member_probs.shape[1:], np.float32)
    for i in range(m):
        mean += np.float32(w[i]) * _member(member_probs, i)
    if fusion == "mean":
        return mean, labels_of(mean), None
    member_labels = np.stack([labels_of(_member(member_probs, i)) for i in range(m)])  # vote
    if c == 1:
        votes = np.zeros(member_probs.shape[2:], np.float32)
        for i in range(m):
            votes += np.float32(w[i]) * member_labels[i]
        labels = ((votes > 0.5) | (np.isclose(votes, 0.5) & (mean[0] >= 0.5))).astype(label_dtype(c))
        return votes[None], labels, member_labels
    votes = np.zeros(member_probs.shape[1:], np.float32)
    for i in range(m):
        for k in range(c):
            votes[k] += np.float32(w[i]) * (member_labels[i] == k)
    # the classes with the most weight (to float rounding) tie; the highest weighted mean probability wins
    leaders = votes >= votes.max(axis=0, keepdims=True) - np.float32(1e-6)
    labels = np.where(leaders, mean, np.float32(-1)).argmax(axis=0).astype(label_dtype(c))
    return votes, labels, member_labels


def fit_weights(member_probs: np.ndarray, labels: np.ndarray, ignore_value: int | None = None,
                init: Sequence[float] | np.ndarray | None = None, max_voxels: int = 200_000, seed: int = 0) -> np.ndarray:
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
