"""Intensity normalisation and the optional per-slice filters (unsharp mask, median).

Filters work on each z-slice alone (the data are anisotropic). A :class:`Normalizer` holds the
preprocessing settings and the statistics fitted on the training region, so that prediction on new
volumes applies exactly the same transform (``Normalizer.from_dict(bundle["normalizer"]).apply(raw)``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from arborseg.errors import DataError

MODES = ("percentile", "zscore", "none")
FILTERS = ("unsharp", "median")
FIT_MAX_VOXELS = 16_000_000  # fit statistics on an evenly strided subsample above this size


def unsharp_mask(array: np.ndarray, radius: float = 2.0, amount: float = 1.0) -> np.ndarray:
    """Sharpen each z-slice: ``x + amount * (x - gaussian(x, radius))`` (no clipping), float32."""
    from skimage.filters import unsharp_mask as _unsharp

    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 2:
        return _unsharp(array, radius=radius, amount=amount, preserve_range=True).astype(np.float32)
    # channel_axis=0: a 2D Gaussian per z-slice, never across z
    return _unsharp(array, radius=radius, amount=amount, preserve_range=True, channel_axis=0).astype(np.float32)


def median_filter(array: np.ndarray, size: int = 3) -> np.ndarray:
    """Median filter of each z-slice with a (1, size, size) footprint, float32."""
    array = np.asarray(array, dtype=np.float32)
    footprint = (size, size) if array.ndim == 2 else (1, size, size)
    return ndimage.median_filter(array, size=footprint, mode="reflect")


def preprocess(array: np.ndarray, steps: Mapping[str, Any] | None) -> np.ndarray:
    """Apply the filters of a ``preprocessing`` mapping in the order written, float32.

    ``{unsharp: {radius: 2, amount: 1.0}, median: 3}`` -> unsharp mask, then a 3x3 median per slice.
    """
    out = np.asarray(array, dtype=np.float32)
    for name, params in (steps or {}).items():
        if name == "unsharp":
            out = unsharp_mask(out, **dict(params or {}))
        elif name == "median":
            out = median_filter(out, int(params))
        else:
            raise DataError(f"preprocessing: unknown filter {name!r}; use one of {list(FILTERS)}")
    return out


def preprocess_halo(steps: Mapping[str, Any] | None) -> int:
    """How many xy pixels of context the filters need for a crop to match the full-image result."""
    halo = 0
    for name, params in (steps or {}).items():
        if name == "unsharp":
            halo += int(math.ceil(4 * float(dict(params or {}).get("radius", 2.0))))
        elif name == "median":
            halo += int(params) // 2
    return halo


def fit_stats(array: np.ndarray, mode: str, low: float = 1.0, high: float = 99.0) -> dict[str, float]:
    """Statistics for :func:`normalize`: percentiles ``lo``/``hi`` or ``mean``/``std``."""
    flat = np.asarray(array).reshape(-1)
    if flat.size > FIT_MAX_VOXELS:
        flat = flat[:: int(math.ceil(flat.size / FIT_MAX_VOXELS))]
    flat = flat.astype(np.float64, copy=False)
    if mode == "percentile":
        lo, hi = np.percentile(flat, [low, high])
        return {"lo": float(lo), "hi": float(hi)}
    if mode == "zscore":
        return {"mean": float(flat.mean()), "std": float(flat.std())}
    if mode == "none":
        return {}
    raise DataError(f"normalization.mode: {mode!r} is not one of {list(MODES)}")


def normalize(array: np.ndarray, mode: str = "percentile", *, low: float = 1.0, high: float = 99.0,
              stats: Mapping[str, float] | None = None) -> np.ndarray:
    """Normalise intensities to float32.

    ``percentile``: map the ``low``..``high`` percentiles to 0..1 and clip to [0, 1]; ``zscore``: subtract
    the mean, divide by the standard deviation; ``none``: only cast. ``stats`` (from :func:`fit_stats`,
    e.g. of the training region) are used instead of the array's own statistics when given.
    """
    array = np.asarray(array, dtype=np.float32)
    stats = dict(stats) if stats is not None else fit_stats(array, mode, low, high)
    if mode == "percentile":
        span = stats["hi"] - stats["lo"]
        out = (array - np.float32(stats["lo"])) / np.float32(span if span > 0 else 1.0)
        return np.clip(out, 0.0, 1.0, out=out)
    if mode == "zscore":
        std = stats["std"]
        return (array - np.float32(stats["mean"])) / np.float32(std if std > 0 else 1.0)
    if mode == "none":
        return array
    raise DataError(f"normalization.mode: {mode!r} is not one of {list(MODES)}")


@dataclass(frozen=True)
class Normalizer:
    """Preprocessing filters + a normalisation mode with fitted statistics; serialisable as a dict."""

    mode: str = "percentile"
    low: float = 1.0
    high: float = 99.0
    stats: dict[str, float] = field(default_factory=dict)
    preprocessing: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def fit(cls, raw: np.ndarray, mode: str = "percentile", low: float = 1.0, high: float = 99.0,
            preprocessing: Mapping[str, Any] | None = None, *, preprocessed: bool = False) -> Normalizer:
        """Fit on (training) raw data; pass ``preprocessed=True`` if the filters were applied already."""
        steps = dict(preprocessing or {})
        data = raw if preprocessed else preprocess(raw, steps)
        return cls(mode, float(low), float(high), fit_stats(data, mode, low, high), steps)

    @property
    def halo(self) -> int:
        return preprocess_halo(self.preprocessing)

    def preprocess(self, array: np.ndarray) -> np.ndarray:
        return preprocess(array, self.preprocessing)

    def normalize(self, array: np.ndarray) -> np.ndarray:
        return normalize(array, self.mode, low=self.low, high=self.high, stats=self.stats)

    def apply(self, array: np.ndarray) -> np.ndarray:
        """Filters, then normalisation with the fitted statistics: raw -> network input (float32)."""
        return self.normalize(self.preprocess(array))

    __call__ = apply

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "low": self.low, "high": self.high, "stats": dict(self.stats),
                "preprocessing": _plain(self.preprocessing)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Normalizer:
        unknown = set(d) - {"mode", "low", "high", "stats", "preprocessing"}
        if unknown:
            raise DataError(f"normalizer: unknown keys {sorted(unknown)}")
        return cls(str(d.get("mode", "percentile")), float(d.get("low", 1.0)), float(d.get("high", 99.0)),
                   {k: float(v) for k, v in dict(d.get("stats") or {}).items()},
                   dict(d.get("preprocessing") or {}))


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
