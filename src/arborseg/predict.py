"""Tiled sliding-window prediction with blended overlaps.

Where the tiles are (:func:`tile_slices`) and how their outputs are merged (a :class:`Merger`) are two
separate pieces, as in MONAI's splitter/merger: :class:`ArrayMerger` keeps everything in memory; a merger
backed by Zarr can be passed to :func:`predict_volume` for outputs larger than memory.

Input volumes only need ``.shape`` and ``volume[z0:z1, y0:y1, x0:x1]`` (numpy, h5py, zarr); only the tiles
are read.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol

import numpy as np
import torch

from arborseg.errors import DataError, WindowError
from arborseg.log import get_logger

log = get_logger(__name__)

Slices = tuple[slice, slice, slice]
Blending = Literal["average", "gaussian"]

__all__ = ["tile_slices", "importance_map", "Merger", "ArrayMerger", "predict_volume", "predict_labels"]


def _check_window(window: Sequence[int]) -> tuple[int, int, int]:
    try:
        w = tuple(int(v) for v in window)
        ok = len(w) == 3 and all(v > 0 and v == wv for v, wv in zip(w, window))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise WindowError(f"window must be three positive integers (z, y, x), got {window!r}")
    return w  # type: ignore[return-value]


def _check_overlap(overlap: float | Sequence[float]) -> tuple[float, float, float]:
    o = (overlap,) * 3 if np.isscalar(overlap) else tuple(overlap)  # type: ignore[arg-type]
    if len(o) != 3 or not all(0 <= float(v) < 1 for v in o):
        raise WindowError(f"overlap must be a number in [0, 1) or three of them, got {overlap!r}")
    return tuple(float(v) for v in o)  # type: ignore[return-value]


def tile_slices(
    shape: Sequence[int], window: Sequence[int], overlap: float | Sequence[float] = 0.25
) -> list[Slices]:
    """Windows covering every voxel of ``shape``, in C order (z slowest).

    Along each axis the step is ``floor(window * (1 - overlap))`` (at least 1) and the last window is flush
    with the end. Where the volume is smaller than the window along an axis, the tile is the whole axis and
    is smaller than the window: the caller pads it (see :func:`predict_volume`).
    """
    w = _check_window(window)
    o = _check_overlap(overlap)
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
    w = _check_window(window)
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


class Merger(Protocol):
    """Accumulates weighted tile outputs; ``finalize`` returns the blended (C, Z, Y, X) result."""

    def add(self, slices: Slices, tile_probs: np.ndarray, weights: np.ndarray) -> None: ...

    def finalize(self) -> Any: ...


class ArrayMerger:
    """In-memory merger: weighted sums and weight totals in numpy, divided in :meth:`finalize`."""

    def __init__(self, n_classes: int, shape: Sequence[int], dtype: Any = np.float32) -> None:
        self.values = np.zeros((n_classes, *shape), dtype=dtype)
        self.weights = np.zeros(tuple(shape), dtype=dtype)

    def add(self, slices: Slices, tile_probs: np.ndarray, weights: np.ndarray) -> None:
        """Add ``tile_probs`` (C, z, y, x) weighted by ``weights`` (z, y, x) at ``slices``."""
        self.values[(slice(None), *slices)] += tile_probs * weights
        self.weights[slices] += weights

    def finalize(self) -> np.ndarray:
        """Divide the sums by the weights (in place) and return them."""
        if not (self.weights > 0).all():
            raise WindowError("some voxels were covered by no tile; the tiles must cover the volume")
        self.values /= self.weights
        return self.values


def _pad_to(tile: np.ndarray, window: Sequence[int]) -> tuple[np.ndarray, Slices]:
    """Pad a tile (centred) to ``window``; returns the padded tile and the crop that undoes it."""
    pad = [((w - s) // 2, w - s - (w - s) // 2) for s, w in zip(tile.shape, window)]
    crop: Slices = tuple(slice(b, b + s) for (b, _), s in zip(pad, tile.shape))  # type: ignore[assignment]
    if not any(b or a for b, a in pad):
        return tile, crop
    try:
        return np.pad(tile, pad, mode="reflect"), crop
    except ValueError:
        return np.pad(tile, pad, mode="edge"), crop


def _model_call(model: torch.nn.Module | Callable, x: torch.Tensor, amp: bool, device: torch.device):
    ctx = torch.autocast(device_type="cuda") if amp and device.type == "cuda" else contextlib.nullcontext()
    with ctx:
        return model(x)


def predict_volume(
    model: torch.nn.Module | Callable[[torch.Tensor], torch.Tensor],
    volume: Any,
    window: Sequence[int],
    n_classes: int,
    overlap: float | Sequence[float] = 0.25,
    blending: Blending = "gaussian",
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    merger: Merger | None = None,
    progress: bool = False,
    amp: bool = False,
) -> Any:
    """Predict class probabilities (C, Z, Y, X) float32 over a volume, window by window.

    The model maps a float tensor (N, 1, z, y, x) to logits (N, C, z, y, x); probabilities are the softmax
    over C (a sigmoid when ``n_classes == 1``). Overlapping outputs are blended with
    :func:`importance_map`. Tiles smaller than the window (volume smaller than the window along an axis)
    are reflect-padded (edge-padded where reflection is impossible) and the output cropped back. An
    ``nn.Module`` is moved to ``device`` and run in eval mode (its mode is restored afterwards). With a
    custom ``merger`` the return value is whatever its ``finalize`` returns.
    """
    shape = tuple(int(s) for s in getattr(volume, "shape", ()))
    if len(shape) != 3 or min(shape) < 1:
        raise DataError(f"volume must be 3D (z, y, x) and non-empty, got shape {shape}; add a z axis to 2D images")
    w = _check_window(window)
    if int(n_classes) < 1:
        raise DataError(f"n_classes must be >= 1, got {n_classes}")
    if int(batch_size) < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    tiles = tile_slices(shape, w, overlap)
    weight = importance_map(w, blending)
    merger = ArrayMerger(n_classes, shape) if merger is None else merger
    device = torch.device(device)
    is_module = isinstance(model, torch.nn.Module)
    was_training = bool(is_module and model.training)
    if is_module:
        model.to(device).eval()
    log.debug("predicting %s in %d tiles of %s", shape, len(tiles), w)

    batches = [tiles[i : i + batch_size] for i in range(0, len(tiles), batch_size)]
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="predict", unit="batch")
    try:
        with torch.inference_mode():
            for batch in batches:
                padded = [_pad_to(np.asarray(volume[sl], dtype=np.float32), w) for sl in batch]
                x = torch.from_numpy(np.stack([p for p, _ in padded])[:, None]).to(device)
                logits = _model_call(model, x, amp, device)
                if tuple(logits.shape) != (len(batch), n_classes, *w):
                    raise DataError(
                        f"the model returned logits of shape {tuple(logits.shape)} for input {tuple(x.shape)}; "
                        f"expected (N, n_classes={n_classes}, {', '.join(map(str, w))}): check n_classes and "
                        "that the network keeps the window size"
                    )
                logits = logits.float()
                probs = (torch.sigmoid(logits) if n_classes == 1 else torch.softmax(logits, dim=1)).cpu().numpy()
                for sl, (_, crop), p in zip(batch, padded, probs):
                    merger.add(sl, p[(slice(None), *crop)], weight[crop])
    finally:
        if is_module:
            model.train(was_training)
    return merger.finalize()


def predict_labels(model, volume, window, n_classes, **kwargs) -> np.ndarray:
    """Argmax of :func:`predict_volume` (threshold 0.5 when ``n_classes == 1``): uint8 labels (Z, Y, X),
    uint16 above 256 classes. Takes the same arguments."""
    probs = np.asarray(predict_volume(model, volume, window, n_classes, **kwargs))
    dtype = np.uint8 if n_classes <= 256 else np.uint16
    if n_classes == 1:
        return (probs[0] >= 0.5).astype(dtype)
    return probs.argmax(axis=0).astype(dtype)
