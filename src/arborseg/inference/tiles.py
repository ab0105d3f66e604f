"""Where the tiles of a volume are and how much each voxel of a tile weighs (numpy only, no torch).

Where the tiles are (:func:`tile_slices`) and how their outputs are merged (:mod:`arborseg.inference.mergers`)
are two separate pieces, as in MONAI's splitter/merger.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from arborseg.errors import DataError, WindowError

Slices = tuple[slice, slice, slice]
Window = tuple[int, int, int]
Blending = Literal["average", "gaussian"]

__all__ = ["Slices", "Window", "Blending", "check_window", "check_overlap", "tile_slices", "importance_map",
           "pad_to", "shift"]


def check_window(window: Sequence[int]) -> Window:
    """``window`` as three positive ints (z, y, x); :class:`WindowError` otherwise."""
    try:
        w = tuple(int(v) for v in window)
        ok = len(w) == 3 and all(v > 0 and v == wv for v, wv in zip(w, window))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise WindowError(f"window must be three positive integers (z, y, x), got {window!r}")
    return w  # type: ignore[return-value]


def check_overlap(overlap: float | Sequence[float]) -> tuple[float, float, float]:
    """``overlap`` as three floats in [0, 1) (one number is used along every axis)."""
    o: tuple[Any, ...] = (overlap,) * 3 if np.isscalar(overlap) else tuple(overlap)  # type: ignore[arg-type]
    if len(o) != 3 or not all(0 <= float(v) < 1 for v in o):
        raise WindowError(f"overlap must be a number in [0, 1) or three of them, got {overlap!r}")
    return tuple(float(v) for v in o)  # type: ignore[return-value]


def tile_slices(
    shape: Sequence[int], window: Sequence[int], overlap: float | Sequence[float] = 0.25
) -> list[Slices]:
    """Windows covering every voxel of ``shape``, in C order (z slowest).

    Along each axis the step is ``floor(window * (1 - overlap))`` (at least 1) and the last window is flush
    with the end. Where the volume is smaller than the window along an axis, the tile is the whole axis and
    is smaller than the window: the caller pads it (:func:`pad_to`).
    """
    w = check_window(window)
    o = check_overlap(overlap)
    if len(shape) != 3 or any(int(s) < 1 for s in shape):
        raise DataError(f"volume shape must be three positive sizes (z, y, x), got {tuple(shape)}")
    axes = []
    for size, win, ov in zip((int(s) for s in shape), w, o):
        if size <= win:
            axes.append([slice(0, size)])
            continue
        step = max(1, int(win * (1 - ov)))
        starts = list(range(0, size - win + 1, step))
        if starts[-1] != size - win:
            starts.append(size - win)
        axes.append([slice(s, s + win) for s in starts])
    return list(itertools.product(*axes))


def importance_map(
    window: Sequence[int], mode: Blending = "gaussian", sigma_scale: float = 0.125, floor: float = 1e-3
) -> np.ndarray:
    """Per-voxel weight of a window's output, float32, max 1.

    "average": all ones. "gaussian" (as nnU-Net/MONAI): a separable Gaussian centred on the window with
    sigma = window * sigma_scale, normalised to max 1 and clipped below at ``floor`` so no weight is 0.
    """
    w = check_window(window)
    if mode == "average":
        return np.ones(w, dtype=np.float32)
    if mode != "gaussian":
        raise WindowError(f"blending must be 'average' or 'gaussian', got {mode!r}")
    g = np.ones((), dtype=np.float64)
    for n in w:
        x = np.arange(n) - (n - 1) / 2
        g = np.multiply.outer(g, np.exp(-0.5 * (x / (n * sigma_scale)) ** 2))
    g /= g.max()
    return np.maximum(g, floor).astype(np.float32)


def pad_to(tile: np.ndarray, window: Sequence[int]) -> tuple[np.ndarray, Slices]:
    """Pad a tile (centred) to ``window``; returns the padded tile and the crop that undoes it.

    Reflect padding, edge padding where reflection is impossible (an axis of size 1).
    """
    pad = [((w - s) // 2, w - s - (w - s) // 2) for s, w in zip(tile.shape, window)]
    crop: Slices = tuple(slice(b, b + s) for (b, _), s in zip(pad, tile.shape))  # type: ignore[assignment]
    if not any(b or a for b, a in pad):
        return tile, crop
    try:
        return np.pad(tile, pad, mode="reflect"), crop
    except ValueError:
        return np.pad(tile, pad, mode="edge"), crop


def shift(region: Sequence[slice], origin: Sequence[int]) -> Slices:
    """``region`` in the coordinates of an array whose first voxel is at ``origin``."""
    return tuple(slice(sl.start - o, sl.stop - o) for sl, o in zip(region, origin))  # type: ignore[return-value]
