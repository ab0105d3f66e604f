"""Running networks on tiles (torch): probabilities of a batch of windows, the channels-last layout, slice
reuse for networks that treat z-slices independently, the tile iterator shared by in-memory and block-wise
prediction, and the activation memory of one window."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from arborseg.device import autocast, resolve_precision
from arborseg.errors import DataError
from arborseg.inference.tiles import Slices, check_window, pad_to
from arborseg.log import get_logger

log = get_logger(__name__)

Model = torch.nn.Module | Callable[[torch.Tensor], torch.Tensor]

__all__ = ["Model", "tile_probabilities", "channels_last_layout", "is_z_separable", "resolve_reuse_slices",
           "tile_outputs", "activation_bytes", "eval_mode"]


def _model_call(model: Model, x: torch.Tensor, amp: bool, device: torch.device):
    """``model(x)``; ``amp``: under autocast in the reduced precision ``auto`` picks for the device (bf16 or fp16
    on CUDA, bf16 on CPUs with native bfloat16, none elsewhere; :func:`arborseg.device.resolve_precision`)."""
    with autocast(device, resolve_precision("auto", device)[1] if amp else None):
        return model(x)


def _has_conv3d(model: Any) -> bool:
    return isinstance(model, torch.nn.Module) and any(
        isinstance(m, torch.nn.modules.conv._ConvNd) and m.weight.dim() == 5 for m in model.modules())


@contextlib.contextmanager
def channels_last_layout(model: Any, enabled: bool = True) -> Iterator[bool]:
    """Run a module's 3D convolutions in the channels-last (NDHWC) layout, restored afterwards.

    oneDNN (CPU) and cuDNN (GPU) usually convolve NDHWC faster than NCDHW (1.1-1.2x for thin 3D U-Nets on
    a 2-core CPU, ``benchmarks/README.md``); results agree to float rounding (~1e-7). Yields whether the
    layout is in use, so callers convert their inputs with ``x.contiguous(memory_format=torch.channels_last_3d)``.
    A no-op for plain callables and networks without 3D convolutions.
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


@contextlib.contextmanager
def eval_mode(models: Sequence[Any], device: torch.device) -> Iterator[None]:
    """Move the ``nn.Module`` members to ``device`` in eval mode; their training modes are restored after."""
    modules = [m for m in models if isinstance(m, torch.nn.Module)]
    modes = [m.training for m in modules]
    for m in modules:
        m.to(device).eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


def tile_probabilities(
    model: Model,
    x: torch.Tensor,
    n_classes: int,
    amp: bool = False,
    channels_last: bool = False,
) -> np.ndarray:
    """Class probabilities (N, C, z, y, x) float32 (C-contiguous numpy) of a batch of windows.

    ``x`` (N, 1, z, y, x) is on the model's device; the logits must keep its spatial size. Softmax over C,
    a sigmoid when ``n_classes == 1``. ``channels_last``: the model is in the NDHWC layout (see
    :func:`channels_last_layout`) and ``x`` is converted to it.
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


def is_z_separable(models: Sequence[Any], window: Sequence[int], device: torch.device, amp: bool,
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
    rtol = 1e-2 if amp and resolve_precision("auto", device)[1] is not None else 1e-4
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


def resolve_reuse_slices(option: bool | None, models: Sequence[Any], shape: Sequence[int], window: Sequence[int],
                         device: torch.device, amp: bool, channels_last: Sequence[bool]) -> bool:
    """Resolve the ``reuse_slices`` option: only worth it (and only done) when z-tiles overlap; ``None``
    checks the networks (:func:`is_z_separable`)."""
    if option is False or not shape[0] > window[0] > 1:
        return False
    if option is None:
        option = is_z_separable(models, window, device, amp, channels_last)
        log.debug("z-separable network: %s", option)
    return bool(option)


def tile_outputs(
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
) -> Iterator[tuple[Slices, Slices, list[np.ndarray]]]:
    """Yield ``(tile, crop, [probs of each model])`` for every tile: probabilities (C, *tile shape) float32
    (read-only: they may share memory with other tiles' outputs) and the crop of the window they fill.

    ``read(region)`` returns the float32 input of a region in volume coordinates. With ``reuse_slices``
    (z-separable models, see :func:`is_z_separable`; tiles overlapping along z) each (xy tile, z slice) is
    computed once: the slices of all tiles of an xy column are packed densely into windows and the tiles
    are cut from the column's slice outputs, so a window (5, y, x) at overlap 0.25 costs 3/5 of a forward
    pass instead of one. The tiles then come column by column instead of in C order.
    """
    w = tuple(window)
    if not reuse_slices:
        for i in range(0, len(tiles), batch_size):
            batch = tiles[i : i + batch_size]
            padded = [pad_to(read(t), w) for t in batch]
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
            inputs[c] = pad_to(col, (hi - lo, *w[1:]))
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


def leaf_output_bytes(model: torch.nn.Module, window: Sequence[int], device: str | torch.device = "cpu"
                      ) -> list[int]:
    """Bytes of every leaf module's output for one zero window (one forward pass in eval mode, with hooks), in
    the order they were produced; the model's training mode is restored afterwards."""
    sizes: list[int] = []

    def hook(_module, _inputs, output):
        for t in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(t, torch.Tensor):
                sizes.append(t.numel() * t.element_size())

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    was_training = model.training
    try:
        model.eval()
        param = next(model.parameters(), None)
        dev = param.device if param is not None else torch.device(device)
        with torch.inference_mode():
            model(torch.zeros((1, 1, *window), device=dev))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return sizes


def activation_bytes(model: Any, window: Sequence[int], device: str | torch.device = "cpu") -> int:
    """Rough peak memory of the model's activations for ONE window, in bytes.

    Runs one zero window through the network with forward hooks on its leaf modules and takes
    ``3 x`` the largest single activation + the sum of all activations / 4 (the largest tensor with its
    input and a skip connection alive at once, plus the encoder features kept for the decoder). Measured
    RSS growth of a batch of 4 windows of four thin 3D U-Nets on CPU was 0.5-1.3x of this estimate. For a
    callable that is not an ``nn.Module`` and for TorchScript modules (no hooks): 256 bytes per window voxel
    (64 float32 channels); compute the estimate on the eager network instead and pass it to block-wise
    prediction (``PredictOptions.activation_estimates``), as bundles do.
    """
    w = check_window(window)
    voxels = int(np.prod(w))
    if not isinstance(model, torch.nn.Module) or isinstance(model, torch.jit.ScriptModule):
        return 256 * voxels  # no hooks on TorchScript modules: give their estimate to predict_to_store
    sizes = leaf_output_bytes(model, w, device)
    if not sizes:
        return 256 * voxels
    return int(3 * max(sizes) + sum(sizes) / 4)
