"""Random training windows from a region's arrays, with optional foreground bias and augmentation."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from arborseg.data.augment import Augmenter
from arborseg.data.labels import slab_values
from arborseg.errors import DataError


class PatchSampler:
    """Draw (z, y, x) windows from ``raw`` (float32, Z, Y, X) and ``labels`` (int, Z, Y, X).

    With probability ``foreground_bias`` a window is centred on a random voxel of ``foreground_classes``
    (default: every class but 0); otherwise its position is uniform. A region smaller than the window is
    padded: reflected raw, labels set to ``ignore_value`` (or 0), weights 0. ``rng``: a Generator or seed.
    """

    def __init__(self, raw: np.ndarray, labels: np.ndarray, window: Sequence[int],
                 rng: np.random.Generator | int | None = None, foreground_bias: float = 0.0,
                 foreground_classes: Iterable[int] | None = None, augmenter: Augmenter | None = None,
                 weights: np.ndarray | None = None, ignore_value: int | None = None) -> None:
        raw, labels = np.asarray(raw), np.asarray(labels)
        window = tuple(int(w) for w in window)
        if raw.ndim != 3 or raw.shape != labels.shape:
            raise DataError(f"PatchSampler: raw {raw.shape} and labels {labels.shape} must be the same 3D shape")
        if weights is not None and np.shape(weights) != raw.shape:
            raise DataError(f"PatchSampler: weights {np.shape(weights)} must have the raw shape {raw.shape}")
        if len(window) != 3 or min(window) < 1:
            raise DataError(f"PatchSampler: window {window} must be three positive sizes (z, y, x)")
        if not 0.0 <= foreground_bias <= 1.0:
            raise DataError(f"PatchSampler: foreground_bias {foreground_bias} must lie in 0..1")
        self.window = window
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        self.foreground_bias = float(foreground_bias)
        self.augmenter = augmenter
        self.ignore_value = ignore_value
        self.region_shape = raw.shape
        pads = [(max(0, w - n) // 2, max(0, w - n) - max(0, w - n) // 2) for w, n in zip(window, raw.shape)]
        self.padding = tuple(pads)
        if any(sum(p) for p in pads):
            raw = np.pad(raw, pads, mode="reflect" if min(raw.shape) > 1 else "edge")
            labels = np.pad(labels, pads, constant_values=0 if ignore_value is None else ignore_value)
            weights = None if weights is None else np.pad(weights, pads, constant_values=0)
        self.raw = raw.astype(np.float32, copy=False)
        self.labels = labels
        self.weights = None if weights is None else np.asarray(weights, np.float32)
        classes = None if foreground_classes is None else [int(c) for c in foreground_classes]
        self.foreground_classes = classes
        self._foreground: np.ndarray | None = None

    @property
    def foreground(self) -> np.ndarray:
        """Flat indices of the foreground voxels (computed once, on first use)."""
        if self._foreground is None:
            lab = self.labels
            if self.foreground_classes is None:
                mask = lab != 0
                if self.ignore_value is not None:
                    mask &= lab != self.ignore_value
            else:
                mask = np.isin(lab, self.foreground_classes)
            self._foreground = np.flatnonzero(mask)
        return self._foreground

    def _start(self) -> tuple[int, ...]:
        shape = self.raw.shape
        if self.foreground_bias and self.rng.random() < self.foreground_bias and self.foreground.size:
            centre = np.unravel_index(self.foreground[self.rng.integers(self.foreground.size)], shape)
            return tuple(int(min(max(c - w // 2, 0), n - w)) for c, w, n in zip(centre, self.window, shape))
        return tuple(int(self.rng.integers(0, n - w + 1)) for w, n in zip(self.window, shape))

    def sample(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """One window: (x (1, z, y, x) float32, y (z, y, x) int64, w (z, y, x) float32 or None)."""
        start = self._start()
        box = tuple(slice(s, s + w) for s, w in zip(start, self.window))
        x = self.raw[box][None]
        y = self.labels[box]
        w = None if self.weights is None else self.weights[box]
        if self.augmenter is not None:
            x, y, w = self.augmenter(x, y, w, rng=self.rng)
        return (np.asarray(x, np.float32), np.asarray(y, np.int64),
                None if w is None else np.asarray(w, np.float32))

    def sample_batch(self, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(x (N, 1, z, y, x) float32, y (N, z, y, x) int64, w (N, z, y, x) float32 or None)."""
        samples = [self.sample() for _ in range(int(batch_size))]
        x = np.stack([s[0] for s in samples])
        y = np.stack([s[1] for s in samples])
        weights = [s[2] for s in samples if s[2] is not None]
        w = None if self.weights is None else np.stack(weights)
        return x, y, w

    def __iter__(self):
        while True:
            yield self.sample()


def class_frequencies(labels: Any, n_classes: int, ignore_value: int | None = None) -> np.ndarray:
    """Fraction of the labelled voxels in each class (float64, sums to 1; ignore_value left out).

    Works on arrays and lazily sliceable volumes alike (one z-slice at a time). Use e.g.
    ``1 / np.maximum(freq, 1e-6)`` (normalised) as inverse-frequency loss weights.
    """
    counts = np.zeros(n_classes, np.int64)
    for z in range(labels.shape[0]):
        slab = np.asarray(labels[z]).ravel()
        if ignore_value is not None:
            slab = slab[slab != ignore_value]
        if slab.size == 0:
            continue
        if slab.min() < 0 or slab.max() >= n_classes:
            bad = [int(v) for v in slab_values(slab) if not 0 <= v < n_classes]
            raise DataError(f"class_frequencies: label values {bad[:5]} are outside the classes 0..{n_classes - 1}")
        counts += np.bincount(slab.astype(np.intp, copy=False), minlength=n_classes)
    total = counts.sum()
    return counts / total if total else np.zeros(n_classes)
