"""In-memory sliding-window prediction of a volume with blended overlaps.

Input volumes only need ``.shape`` and ``volume[z0:z1, y0:y1, x0:x1]`` (numpy, h5py, zarr); only the tiles
are read. The outputs go into a :class:`~arborseg.inference.mergers.Merger` (in memory by default, or a
:class:`~arborseg.inference.mergers.ZarrMerger`); for volumes whose input or output does not fit in memory,
see :func:`~arborseg.inference.predict_to_store`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from arborseg.errors import DataError
from arborseg.inference.forward import channels_last_layout, eval_mode, resolve_reuse_slices, tile_outputs
from arborseg.inference.fusion import labels_of
from arborseg.inference.mergers import ArrayMerger, Merger
from arborseg.inference.tiles import Blending, Slices, check_window, importance_map, tile_slices
from arborseg.log import get_logger

log = get_logger(__name__)

__all__ = ["predict_volume", "predict_labels"]


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
    channels_last: bool = True,
    reuse_slices: bool | None = None,
) -> Any:
    """Predict class probabilities (C, Z, Y, X) float32 over a volume, window by window.

    The model maps a float tensor (N, 1, z, y, x) to logits (N, C, z, y, x); probabilities are the softmax
    over C (a sigmoid when ``n_classes == 1``). Overlapping outputs are blended with
    :func:`~arborseg.inference.tiles.importance_map`. Tiles smaller than the window (volume smaller than the
    window along an axis) are reflect-padded (edge-padded where reflection is impossible) and the output
    cropped back. An ``nn.Module`` is moved to ``device`` and run in eval mode (its mode is restored
    afterwards). With a custom ``merger`` the return value is whatever its ``finalize`` returns.
    ``channels_last``: run 3D convolutions in the NDHWC layout (faster; same results to float rounding, see
    :func:`~arborseg.inference.forward.channels_last_layout`). ``reuse_slices``: for networks that treat
    z-slices independently (2D networks, thin 3D ones with z kernels of 1), compute each slice of each xy
    tile once instead of once per overlapping z-tile; the blending (and so the result, to float rounding)
    is unchanged. ``None`` checks the network (see :func:`~arborseg.inference.forward.is_z_separable`);
    ``False`` never does it. ``amp``: run the network under autocast in the reduced precision ``auto`` picks
    for the device (bf16/fp16 on CUDA, bf16 on CPUs with native bfloat16; float32 elsewhere); probabilities
    are float32 either way.
    """
    shape = tuple(int(s) for s in getattr(volume, "shape", ()))
    if len(shape) != 3 or min(shape) < 1:
        raise DataError(f"volume must be 3D (z, y, x) and non-empty, got shape {shape}; add a z axis to 2D images")
    w = check_window(window)
    if int(n_classes) < 1:
        raise DataError(f"n_classes must be >= 1, got {n_classes}")
    if int(batch_size) < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    tiles = tile_slices(shape, w, overlap)
    weight = importance_map(w, blending)
    merger = ArrayMerger(n_classes, shape) if merger is None else merger
    device = torch.device(device)
    log.debug("predicting %s in %d tiles of %s", shape, len(tiles), w)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(tiles), desc="predict", unit="tile")
    try:
        with eval_mode([model], device), torch.inference_mode(), channels_last_layout(model, channels_last) as cl:
            reuse = resolve_reuse_slices(reuse_slices, [model], shape, w, device, amp, [cl])

            def read(sl: Slices) -> np.ndarray:
                return np.asarray(volume[sl], dtype=np.float32)

            for sl, crop, (p,) in tile_outputs([model], read, tiles, w, n_classes, int(batch_size), device, amp,
                                               [cl], reuse):
                merger.add(sl, p, weight[crop])
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return merger.finalize()


def predict_labels(model, volume, window, n_classes, **kwargs) -> np.ndarray:
    """Labels of :func:`predict_volume` (:func:`~arborseg.inference.fusion.labels_of`: argmax, threshold 0.5
    when ``n_classes == 1``): uint8 (Z, Y, X), uint16 above 256 classes. Takes the same arguments."""
    return labels_of(np.asarray(predict_volume(model, volume, window, n_classes, **kwargs)))
