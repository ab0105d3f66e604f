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

__all__ = ["tile_slices", "importance_map", "Merger", "ArrayMerger", "tile_probabilities", "predict_volume",
           "predict_labels"]


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


def _has_conv3d(model: Any) -> bool:
    return isinstance(model, torch.nn.Module) and any(
        isinstance(m, torch.nn.modules.conv._ConvNd) and m.weight.dim() == 5 for m in model.modules())


@contextlib.contextmanager
def _channels_last(model: Any, enabled: bool = True):
    """Run a module's 3D convolutions in the channels-last (NDHWC) layout, restored afterwards.

    oneDNN (CPU) and cuDNN (GPU) usually convolve NDHWC faster than NCDHW (1.1-1.2x for thin 3D U-Nets on
    a 2-core CPU, ``benchmarks/README.md``); results agree to float rounding (~1e-7). Yields whether the layout is in use, so callers
    convert their inputs with ``x.contiguous(memory_format=torch.channels_last_3d)``. A no-op for plain
    callables and networks without 3D convolutions.
    """
    use = bool(enabled) and _has_conv3d(model)
    if use:
        _to_format(model, torch.channels_last_3d)
    try:
        yield use
    finally:
        if use:
            _to_format(model, torch.contiguous_format)


def _to_format(model: torch.nn.Module, memory_format: torch.memory_format) -> None:
    """Re-lay the 5D parameters (3D convolution weights) in place; the Parameter objects stay the same
    (optimizers keep working) and 2D weights of hybrid networks are left alone. Done outside inference
    mode even when called inside it: tensors made there could not be trained afterwards."""
    with torch.inference_mode(False), torch.no_grad():
        for param in model.parameters():
            if param.dim() == 5:
                param.data = param.data.contiguous(memory_format=memory_format)


def tile_probabilities(
    model: torch.nn.Module | Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    n_classes: int,
    amp: bool = False,
    channels_last: bool = False,
) -> np.ndarray:
    """Class probabilities (N, C, z, y, x) float32 (C-contiguous numpy) of a batch of windows.

    ``x`` (N, 1, z, y, x) is on the model's device; the logits must keep its spatial size. Softmax over C,
    a sigmoid when ``n_classes == 1``. ``channels_last``: the model is in the NDHWC layout (see
    :func:`_channels_last`) and ``x`` is converted to it. Shared by :func:`predict_volume` and
    :mod:`arborseg.inference.blockwise` so both compute exactly the same tile outputs.
    """
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    logits = _model_call(model, x, amp, x.device)
    if tuple(logits.shape) != (x.shape[0], n_classes, *x.shape[2:]):
        raise DataError(
            f"the model returned logits of shape {tuple(logits.shape)} for input {tuple(x.shape)}; "
            f"expected (N, n_classes={n_classes}, {', '.join(map(str, x.shape[2:]))}): check n_classes and "
            "that the network keeps the window size"
        )
    logits = logits.float()
    probs = torch.sigmoid(logits) if n_classes == 1 else torch.softmax(logits, dim=1)
    return probs.contiguous().cpu().numpy()


def _z_separable(models: Sequence[Any], window: Sequence[int], device: torch.device, amp: bool,
                 channels_last: Sequence[bool]) -> bool:
    """Whether every model treats z-slices independently and alike (a 2D network, or a 3D one whose
    kernels, pooling and normalisation never span z): output slice i depends on input slice i only.

    Checked by behaviour on random windows, so it also covers what happens in ``forward``: changing the
    odd slices must leave the even output slices unchanged (and vice versa), and rolling the input along z
    must roll the output. Normalisation over a whole tile (InstanceNorm3d, GroupNorm on 5D tensors), z
    kernels or z pooling all fail it.
    """
    w = tuple(window)
    if w[0] < 2 or any(_mixes_z(m) for model in models if isinstance(model, torch.nn.Module)
                       for m in model.modules()):
        return False
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((1, 1, *w), generator=gen)
    x_odd, x_even = x.clone(), x.clone()
    x_odd[:, :, 1::2] = torch.rand(x_odd[:, :, 1::2].shape, generator=gen)
    x_even[:, :, 0::2] = torch.rand(x_even[:, :, 0::2].shape, generator=gen)
    rtol = 1e-2 if amp and device.type == "cuda" else 1e-4
    try:
        return _z_separable_check(models, w, device, amp, channels_last, (x, x_odd, x_even), rtol)
    except Exception:  # the prediction itself will raise a clear error if the model cannot run
        return False


def _mixes_z(module: torch.nn.Module) -> bool:
    """Layers that certainly mix z-slices: 3D convolutions/pools with a z kernel or stride above 1, 3D
    instance norm (a cheap first test before the behavioural one)."""
    if isinstance(module, torch.nn.InstanceNorm3d):
        return True
    if isinstance(module, (torch.nn.Conv3d, torch.nn.ConvTranspose3d, torch.nn.MaxPool3d, torch.nn.AvgPool3d)):
        k = module.kernel_size if isinstance(module.kernel_size, tuple) else (module.kernel_size,) * 3
        st = module.stride if isinstance(module.stride, tuple) else (module.stride,) * 3
        return bool(k[0] > 1 or (st[0] or 1) > 1)
    return False


@torch.inference_mode()
def _z_separable_check(models, w, device, amp, channels_last, inputs, rtol) -> bool:
    x, x_odd, x_even = inputs
    for model, cl in zip(models, channels_last):
        outs = []
        for inp in (x, x_odd, x_even, x.roll(1, dims=2)):
            inp = inp.to(device)
            if cl:
                inp = inp.contiguous(memory_format=torch.channels_last_3d)
            out = _model_call(model, inp, amp, device)
            if not isinstance(out, torch.Tensor) or out.dim() != 5 or tuple(out.shape[2:]) != w:
                return False
            outs.append(out.float().cpu())
        y, y_odd, y_even, y_roll = outs
        atol = rtol * float(y.abs().max()) + 1e-6
        same = [(y_odd[:, :, 0::2], y[:, :, 0::2]), (y_even[:, :, 1::2], y[:, :, 1::2]),
                (y_roll, y.roll(1, dims=2))]
        if not all(torch.allclose(a, b, rtol=rtol, atol=atol) for a, b in same):
            return False
    return True


def _tile_outputs(
    models: Sequence[Any],
    read: Callable[[Slices], np.ndarray],
    tiles: Sequence[Slices],
    window: Sequence[int],
    n_classes: int,
    batch_size: int,
    device: torch.device,
    amp: bool,
    channels_last: Sequence[bool],
    reuse_slices: bool,
):
    """Yield ``(tile, crop, [probs of each model])`` for every tile: probabilities (C, *tile shape) float32
    (read-only: they may share memory with other tiles' outputs) and the crop of the window they fill.

    ``read(region)`` returns the float32 input of a region in volume coordinates. With ``reuse_slices``
    (z-separable models, see :func:`_z_separable`; tiles overlapping along z) each (xy tile, z slice) is
    computed once: the slices of all tiles of an xy column are packed densely into windows and the tiles
    are cut from the column's slice outputs, so a window (5, y, x) at overlap 0.25 costs 3/5 of a forward
    pass instead of one. The tiles then come column by column instead of in C order.
    """
    w = tuple(window)
    if not reuse_slices:
        for i in range(0, len(tiles), batch_size):
            batch = tiles[i : i + batch_size]
            padded = [_pad_to(read(t), w) for t in batch]
            x = torch.from_numpy(np.stack([p for p, _ in padded])[:, None]).to(device)
            probs = [tile_probabilities(m, x, n_classes, amp, cl) for m, cl in zip(models, channels_last)]
            for b, (t, (_, crop)) in enumerate(zip(batch, padded)):
                yield t, crop, [p[b][(slice(None), *crop)] for p in probs]
        return

    columns: dict[tuple[int, int, int, int], list[Slices]] = {}  # slices are not hashable before 3.12
    for t in tiles:
        columns.setdefault((t[1].start, t[1].stop, t[2].start, t[2].stop), []).append(t)
    keys = list(columns)
    ranges = [(min(t[0].start for t in columns[k]), max(t[0].stop for t in columns[k])) for k in keys]
    jobs = [(c, z) for c, (lo, hi) in enumerate(ranges) for z in range(lo, hi)]
    per_batch = batch_size * w[0]
    inputs: dict[int, tuple[np.ndarray, Slices]] = {}
    caches: dict[int, list[np.ndarray]] = {}
    flushed = 0

    def column_input(c: int) -> tuple[np.ndarray, Slices]:
        if c not in inputs:
            lo, hi = ranges[c]
            y0, y1, x0, x1 = keys[c]
            col = read((slice(lo, hi), slice(y0, y1), slice(x0, x1)))
            inputs[c] = _pad_to(col, (hi - lo, *w[1:]))
            ty, tx = col.shape[1:]
            caches[c] = [np.empty((n_classes, hi - lo, ty, tx), np.float32) for _ in models]
        return inputs[c]

    def flush(upto: int):
        nonlocal flushed
        while flushed < upto:
            lo = ranges[flushed][0]
            _, crop = inputs.pop(flushed)
            cache = caches.pop(flushed)
            for t in columns[keys[flushed]]:
                zs = slice(t[0].start - lo, t[0].stop - lo)
                yield t, (slice(0, w[0]), *crop[1:]), [c[:, zs] for c in cache]
            flushed += 1

    for i in range(0, len(jobs), per_batch):
        chunk = jobs[i : i + per_batch]
        slots = np.zeros((len(chunk) + (-len(chunk)) % w[0], *w[1:]), np.float32)
        for j, (c, z) in enumerate(chunk):
            slots[j] = column_input(c)[0][z - ranges[c][0]]
        x = torch.from_numpy(slots.reshape(-1, 1, *w)).to(device)
        probs = [tile_probabilities(m, x, n_classes, amp, cl) for m, cl in zip(models, channels_last)]
        for j, (c, z) in enumerate(chunk):
            crop = inputs[c][1]
            b, k = divmod(j, w[0])
            for cache, p in zip(caches[c], probs):
                cache[:, z - ranges[c][0]] = p[b, :, k][(slice(None), *crop[1:])]
        yield from flush(chunk[-1][0])  # columns before the last one touched are complete
    yield from flush(len(keys))


def _reuse_slices(option: bool | None, models, shape, window, device, amp, channels_last) -> bool:
    """Resolve the ``reuse_slices`` option: only worth it (and only done) when z-tiles overlap."""
    if option is False or not shape[0] > window[0] > 1:
        return False
    if option is None:
        option = _z_separable(models, window, device, amp, channels_last)
        log.debug("z-separable network: %s", option)
    return bool(option)


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
    :func:`importance_map`. Tiles smaller than the window (volume smaller than the window along an axis)
    are reflect-padded (edge-padded where reflection is impossible) and the output cropped back. An
    ``nn.Module`` is moved to ``device`` and run in eval mode (its mode is restored afterwards). With a
    custom ``merger`` the return value is whatever its ``finalize`` returns. ``channels_last``: run 3D
    convolutions in the NDHWC layout (faster; same results to float rounding, see :func:`_channels_last`).
    ``reuse_slices``: for networks that treat z-slices independently (2D networks, thin 3D ones with z
    kernels of 1), compute each slice of each xy tile once instead of once per overlapping z-tile; the
    blending (and so the result, to float rounding) is unchanged. ``None`` checks the network (see
    :func:`_z_separable`); ``False`` never does it.
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

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(tiles), desc="predict", unit="tile")
    try:
        with torch.inference_mode(), _channels_last(model, channels_last) as use_cl:
            reuse = _reuse_slices(reuse_slices, [model], shape, w, device, amp, [use_cl])

            def read(sl: Slices) -> np.ndarray:
                return np.asarray(volume[sl], dtype=np.float32)

            for sl, crop, (p,) in _tile_outputs([model], read, tiles, w, n_classes, int(batch_size), device, amp,
                                                [use_cl], reuse):
                merger.add(sl, p, weight[crop])
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
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
