"""Prediction of volumes larger than memory, block by block, into a Zarr store; ensembles and uncertainty.

:func:`predict_to_store` segments a lazily readable (Z, Y, X) volume (TIFF, HDF5, Zarr, NumPy, see
:func:`arborseg.data.volumes.open_volume`) with one model or an ensemble and writes labels, optionally the
probabilities and an uncertainty map, into a Zarr group, with memory bounded by the block size.

How it works (and why block seams are invisible)
------------------------------------------------
The tile grid is the one of the in-memory :func:`arborseg.inference.tiled.predict_volume` over the **whole**
volume (:func:`arborseg.inference.tiled.tile_slices` on the full shape), with the same Gaussian/average weights.
The volume is cut into blocks; each tile is *owned* by the block holding its first voxel and is computed
exactly once. A block's accumulator covers the block plus a high-side halo of ``window - 1`` voxels (the
reach of the tiles it owns); the block's input is read for the same region (plus the normaliser's xy
context). Blocks are visited in lexicographic order, so every tile that touches a block is owned by that
block or by one visited before it: after a block's own tiles are added, the parts of its accumulator that
lie in later blocks (weighted sums and weight totals) are handed on to them ("pending" partial sums, kept in
memory up to an allowance and in ``.npy`` files beyond it), and the block itself is complete: it is divided
by its weights, fused, and written, in z-slabs one output chunk thick. The result is the in-memory result:
same tiles, same weights, same probabilities; only the order of the floating-point additions (and the
batches the tiles run in) differ, so probabilities agree to float32 rounding (the tests hold them to 2e-6
of ``predict_volume``) and labels agree except where two classes tie to that precision. No tile is
computed twice and no input voxel is read more than ``prod(1 + (window-1)/block)`` times. Why not the
classic "block + halo, crop" scheme: with a tile grid per block the tiles near a seam differ from the
whole-volume grid, so the result depends on the block size (seams can be made invisible only
approximately, and the halo tiles are computed twice).

Tiles come from :func:`arborseg.inference.tiled._tile_outputs`, shared with ``predict_volume``: channels-last
convolutions and, for networks that treat z-slices independently, each slice of each xy tile computed once
(``reuse_slices``).

Ensembles
---------
Each member's blended probabilities are fused per voxel, exactly as if each member had predicted the whole
volume with ``predict_volume`` (with its own window) and the results were fused (:func:`fuse`): ``mean``;
``weighted`` (the weighted mean with the members' ``weights``); ``max`` per class, then renormalised to
sum 1 (a single sigmoid channel is not renormalised); ``vote``: each member votes for its argmax class
(with its weight, when weights are given), the label is the majority (ties go to the highest mean
probability) and the "probabilities" written are the vote fractions. Members may have different windows
(a 2D member z=1, thin 3D members z=3 or 5): members are grouped by window, each group has its own tile
grid (the one ``predict_volume`` would use with that window), its own tile ownership and its own
accumulator with its own halo, and hands its partial sums on separately; the input of a block is read
and normalised once for all groups, and the groups' probabilities meet only when the block is finished.
With ``mean``/``weighted`` fusion and no ``disagreement`` map only the (weighted) sum over members is
accumulated (memory does not grow with the members of a group).

Uncertainty: ``entropy`` of the fused probabilities (natural log, in [0, log C], log 2 for one sigmoid
channel; of the vote fractions under ``vote``), or ``disagreement``: the fraction of members whose own
label differs from the fused label (0 when all agree; at most 1 - 1/M).

Outputs (a Zarr group ``OUT.zarr``): ``labels`` uint8 (uint16 above 256 classes), (Z, Y, X);
``probs`` (C, Z, Y, X) float16 by default (absolute error <= 2.5e-4 on [0, 1]), uint8 quantised as
``round(255 p)`` or float32 (``probs_dtype``);
``uncertainty`` float16 (Z, Y, X). Arrays are chunked so that every block writes whole chunks (chunks =
the block, or the block is a multiple of ``chunks``); the settings are in the group's attributes.

Memory
------
``memory_budget_mb`` (the peak increase of resident memory over what the process holds when called)
chooses the block: see :func:`estimate_memory` for the terms and :func:`choose_block` for the search; 80%
of the budget is for the block (its estimate times 1.25), 20% for pending partial sums in memory. After each
block, freed heap memory is handed back to the system (glibc ``malloc_trim``). Measured: 64 x 2048 x 2048
uint8 in, 2 classes: budget 400 MB -> peak RSS increase 284 MB, 250 MB -> 217 MB
(``benchmarks/README.md``).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from arborseg.errors import DataError, WindowError
from arborseg.log import get_logger
from arborseg.inference.tiled import (
    Blending,
    Slices,
    _channels_last,
    _check_overlap,
    _check_window,
    _reuse_slices,
    _tile_outputs,
    importance_map,
    tile_slices,
)

log = get_logger(__name__)

Fusion = Literal["mean", "max", "vote", "weighted"]
Uncertainty = Literal["entropy", "disagreement"]
FUSIONS = ("mean", "max", "vote", "weighted")
UNCERTAINTIES = ("entropy", "disagreement")
PROBS_DTYPES = ("float16", "uint8", "float32")
DEFAULT_BLOCK = (32, 512, 512)
DEFAULT_CHUNKS = (8, 256, 256)
ZARR_HINT = "writing predictions needs zarr: pip install arborseg[io]"
# share of the memory budget for partial sums handed on between blocks (beyond it they go to disk)
PENDING_SHARE = 0.2
# the block estimate is multiplied by this before it is compared with the rest of the budget
# (allocator slack, zarr codec buffers, Python objects)
SAFETY = 1.25
# resident memory the run needs whatever the block: zarr's codec threads and their malloc arenas, numpy
# and torch temporaries (measured: a 200 MB budget without this term peaked at 202 MB)
RUNTIME_BYTES = 32 * 2**20

__all__ = ["predict_to_store", "fuse", "estimate_memory", "choose_block", "activation_bytes", "ZarrMerger"]


# ------------------------------------------------------------------------------------------- fusion
def _label_dtype(n_classes: int) -> type:
    return np.uint8 if max(n_classes, 2) <= 256 else np.uint16


def _labels(probs: np.ndarray) -> np.ndarray:
    """Labels of (C, ...) probabilities: argmax, or p >= 0.5 for one sigmoid channel."""
    dtype = _label_dtype(probs.shape[0])
    if probs.shape[0] == 1:
        return (probs[0] >= 0.5).astype(dtype)
    return probs.argmax(axis=0).astype(dtype)


def _xlogx(p: np.ndarray) -> np.ndarray:
    out = np.zeros(p.shape, np.float32)
    np.log(p, out=out, where=p > 0)
    out *= p
    return out


def _entropy(probs: np.ndarray) -> np.ndarray:
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


def _member_weights(weights: Sequence[float] | None, m: int) -> np.ndarray | None:
    """Normalised member weights (sum 1), or None when all members weigh the same (the unweighted rules)."""
    if weights is None:
        return None
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape != (m,) or not np.isfinite(w).all() or np.any(w <= 0):
        raise DataError(f"ensemble weights must be {m} positive numbers (one per member), got {list(w)}; drop "
                        "members of weight 0 from the ensemble")
    w = w / w.sum()
    return None if np.allclose(w, w[0]) else w


def fuse(
    member_probs: np.ndarray,
    fusion: Fusion = "mean",
    uncertainty: Uncertainty | None = None,
    weights: Sequence[float] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Fuse the members' probabilities (M, C, ...) into (probs (C, ...), labels (...), uncertainty).

    See the module doc for the rules. ``weights``: one positive number per member (only their ratios
    matter; equal weights give the unweighted rules): ``mean`` and ``weighted`` take the weighted mean,
    ``vote`` counts weighted votes (leaders within 1e-6 tie, the highest weighted mean probability wins),
    ``max`` ignores them, ``disagreement`` is the weighted fraction of disagreeing members. The same
    rules as :func:`arborseg.ensemble.fusion.fuse_weighted`. ``probs`` is float32 (vote fractions under
    ``vote``), ``labels`` uint8 (uint16 above 256 classes), ``uncertainty`` float32 or None.
    """
    member_probs = np.asarray(member_probs, dtype=np.float32)
    if member_probs.ndim < 2:
        raise DataError(f"member probabilities must be (members, classes, ...), got shape {member_probs.shape}")
    if fusion not in FUSIONS:
        raise DataError(f"fusion must be one of {list(FUSIONS)}, got {fusion!r}")
    if uncertainty is not None and uncertainty not in UNCERTAINTIES:
        raise DataError(f"uncertainty must be one of {list(UNCERTAINTIES)} or None, got {uncertainty!r}")
    m, c = member_probs.shape[:2]
    w = _member_weights(weights, m)
    if fusion == "weighted":
        fusion = "mean"
    member_labels = None
    if fusion == "max":
        probs = member_probs.max(axis=0)
        if c > 1:
            probs /= probs.sum(axis=0, keepdims=True)
        labels = _labels(probs)
    elif w is not None:
        mean = np.zeros(member_probs.shape[1:], np.float32)
        for i in range(m):
            mean += np.float32(w[i]) * member_probs[i]
        if fusion == "mean":
            probs, labels = mean, _labels(mean)
        else:  # weighted vote
            member_labels = np.stack([_labels(p) for p in member_probs])
            if c == 1:
                votes = np.zeros(member_probs.shape[2:], np.float32)
                for i in range(m):
                    votes += np.float32(w[i]) * member_labels[i]
                labels = ((votes > 0.5) | (np.isclose(votes, 0.5) & (mean[0] >= 0.5))).astype(_label_dtype(c))
                probs = votes[None]
            else:
                probs = np.zeros(member_probs.shape[1:], np.float32)
                for i in range(m):
                    for k in range(c):
                        probs[k] += np.float32(w[i]) * (member_labels[i] == k)
                leaders = probs >= probs.max(axis=0, keepdims=True) - np.float32(1e-6)
                labels = np.where(leaders, mean, np.float32(-1)).argmax(axis=0).astype(_label_dtype(c))
    elif fusion == "mean":
        probs = member_probs[0].copy() if m == 1 else member_probs.mean(axis=0, dtype=np.float32)
        labels = _labels(probs)
    else:  # vote
        member_labels = np.stack([_labels(p) for p in member_probs])
        mean = member_probs.mean(axis=0, dtype=np.float32)
        if c == 1:
            probs = (member_labels.sum(axis=0, dtype=np.float32) / m)[None]
            labels = ((probs[0] > 0.5) | ((probs[0] == 0.5) & (mean[0] >= 0.5))).astype(_label_dtype(c))
        else:
            counts = np.stack([(member_labels == k).sum(axis=0, dtype=np.float32) for k in range(c)])
            # a difference of one vote (>= 1) always beats the tie-break term (<= 0.5)
            labels = (counts + np.float32(0.5) * mean).argmax(axis=0).astype(_label_dtype(c))
            probs = counts / np.float32(m)
    unc = None
    if uncertainty == "entropy":
        unc = _entropy(probs)
    elif uncertainty == "disagreement":
        if member_labels is None:
            member_labels = np.stack([_labels(p) for p in member_probs])
        if w is None:
            unc = (member_labels != labels).mean(axis=0, dtype=np.float32)
        else:
            unc = np.zeros(labels.shape, np.float32)
            for i in range(m):
                unc += np.float32(w[i]) * (member_labels[i] != labels)
    return probs, labels, unc


# ------------------------------------------------------------------------------------------- memory
def activation_bytes(model: Any, window: Sequence[int], device: str | torch.device = "cpu") -> int:
    """Rough peak memory of the model's activations for ONE window, in bytes.

    Runs one zero window through the network with forward hooks on its leaf modules and takes
    ``3 x`` the largest single activation + the sum of all activations / 4 (the largest tensor with its
    input and a skip connection alive at once, plus the encoder features kept for the decoder). Measured
    RSS growth of a batch of 4 windows of four thin 3D U-Nets on CPU was 0.5-1.3x of this estimate. For a
    callable that is not
    an ``nn.Module`` and for TorchScript modules (no hooks): 256 bytes per window voxel (64 float32
    channels); compute the estimate on the eager network instead and pass it to :func:`predict_to_store`
    (``activation_estimates``), as bundles do.
    """
    w = _check_window(window)
    voxels = int(np.prod(w))
    if not isinstance(model, torch.nn.Module) or isinstance(model, torch.jit.ScriptModule):
        return 256 * voxels  # no hooks on TorchScript modules: give their estimate to predict_to_store
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
            model(torch.zeros((1, 1, *w), device=dev))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if not sizes:
        return 256 * voxels
    return int(3 * max(sizes) + sum(sizes) / 4)


def _local_shape(shape, block, window, extra=(0, 0, 0)) -> tuple[int, ...]:
    return tuple(min(s, b + w - 1 + 2 * e) for s, b, w, e in zip(shape, block, window, extra))


def estimate_memory(
    shape: Sequence[int],
    block: Sequence[int],
    window: Sequence[int],
    n_classes: int,
    n_members: int = 1,
    *,
    per_member: bool = False,
    batch_size: int = 4,
    activation_bytes_per_window: int = 0,
    input_itemsize: int = 4,
    normalizer_halo: int = 0,
    write_probs: bool = False,
    chunks: Sequence[int] | None = None,
    groups: Sequence[tuple[Sequence[int], int]] | None = None,
) -> dict[str, int]:
    """Bytes that :func:`predict_to_store` holds at once for one block (an estimate; see the terms).

    With ``b`` = block voxels, ``l`` = voxels of the block + high halo (``block + window - 1`` per axis,
    clipped to the volume), ``i`` = ``l`` grown by the normaliser's xy context, ``K`` accumulated channels
    (``C``, or ``M * C`` when each member is kept: max/vote fusion or a disagreement map), ``w`` window
    voxels, ``B`` the batch size:

    * ``input``: ``i * (itemsize + 8)`` - the raw read, its float32 copy and the normaliser's output;
    * ``accumulator``: ``l * (K + 1) * 4`` - weighted sums and the weight total, float32;
    * ``finalise``: ``f * (8 C + M + 24)`` (``+ 2 C f`` with probabilities) - fused probabilities and their
      argmax (int64), member labels, the float16/uint8 outputs and the uncertainty, zarr's encode buffers;
      ``f`` is the block voxels of one z-slab as thick as the output chunks (blocks are finished slab by slab);
    * ``tiles``: ``B * w * 4 * (1 + 2 C)`` - the input batch and the probabilities (torch and numpy);
    * ``activations``: ``B * activation_bytes_per_window`` (see :func:`activation_bytes`);
    * ``runtime``: a fixed 32 MB (zarr's codec threads, allocator arenas, temporaries).

    ``groups``: for an ensemble whose members have different windows, ``(window, members)`` of each group
    of members sharing a window; each group has an accumulator of its own (``l`` and ``K`` of its window
    and members, summed) and ``window`` should be the largest window (input halo, tile batches).

    Not included: the partial sums handed on between blocks (bounded separately, see
    :func:`predict_to_store`), the model weights and the libraries (already resident when called).
    """
    c = int(n_classes)
    b = int(np.prod([min(s, bl) for s, bl in zip(shape, block)]))
    bz = min(int(shape[0]), int(block[0]))
    f = b * min(bz, int(chunks[0])) // bz if chunks is not None else b
    iv = int(np.prod(_local_shape(shape, block, window, (0, normalizer_halo, normalizer_halo))))
    wv = int(np.prod(window))
    accumulator = 0
    for gw, gm in groups or [(window, n_members)]:
        gk = c * (int(gm) if per_member else 1)
        accumulator += int(np.prod(_local_shape(shape, block, gw))) * (gk + 1) * 4
    terms = {
        "input": iv * (int(input_itemsize) + 8),
        "accumulator": accumulator,
        "finalise": f * (8 * c + int(n_members) + 24) + (f * c * 2 if write_probs else 0),
        "tiles": int(batch_size) * wv * 4 * (1 + 2 * c),
        "activations": int(batch_size) * int(activation_bytes_per_window),
        "runtime": RUNTIME_BYTES,
    }
    terms["total"] = sum(terms.values())
    return terms


def choose_block(
    shape: Sequence[int],
    window: Sequence[int],
    budget_bytes: int,
    chunks: Sequence[int] | None = None,
    **estimate_kwargs: Any,
) -> tuple[int, int, int]:
    """The largest block (a multiple of ``chunks`` along each axis, or the whole axis) whose
    :func:`estimate_memory` total times ``SAFETY`` fits ``budget_bytes``.

    Starts from the whole volume and halves (in chunk units) the axis where the block is longest relative
    to the window, so blocks stay large compared with the window (little halo re-reading). Raises
    :class:`DataError` when even one chunk per axis does not fit.
    """
    shape = tuple(int(s) for s in shape)
    w = _check_window(window)
    ch = tuple(min(s, int(c)) for s, c in zip(shape, chunks or DEFAULT_CHUNKS))
    units = [math.ceil(s / c) for s, c in zip(shape, ch)]  # block size in chunks

    def block_of(u):
        return tuple(min(s, n * c) for s, n, c in zip(shape, u, ch))

    while True:
        block = block_of(units)
        need = SAFETY * estimate_memory(shape, block, w, chunks=ch, **estimate_kwargs)["total"]
        if need <= budget_bytes:
            return block  # type: ignore[return-value]
        candidates = [a for a in range(3) if units[a] > 1]
        if not candidates:
            raise DataError(
                f"a block budget of {budget_bytes / 2**20:.0f} MB is too small for window {w} and chunks {ch}: "
                f"the smallest block {block} needs about {need / 2**20:.0f} MB; raise the budget, or use smaller "
                "chunks, batch size or window")
        a = max(candidates, key=lambda i: (block[i] / w[i], i))
        units[a] = math.ceil(units[a] / 2)


def _malloc_trim() -> Callable[[], Any]:
    """glibc's ``malloc_trim(0)`` (hands freed heap pages back to the system, so block after block of
    differently sized arrays does not ratchet the resident memory up), or a no-op elsewhere."""
    try:
        import ctypes

        trim = ctypes.CDLL("libc.so.6").malloc_trim
        return lambda: trim(0)
    except (OSError, AttributeError):
        return lambda: None


# ------------------------------------------------------------------------------------- pending sums
class _Pending:
    """Partial sums handed on to later blocks: in memory up to ``max_bytes``, in ``.npy`` files beyond."""

    def __init__(self, max_bytes: int, tmp_parent: Path) -> None:
        self.max_bytes = int(max_bytes)
        self.tmp_parent = tmp_parent
        self.items: dict[tuple[int, ...], list[tuple[Slices, Any]]] = defaultdict(list)
        self.in_memory = 0
        self.peak_in_memory = 0
        self.spilled_bytes = 0
        self._dir: Path | None = None
        self._n = 0

    def put(self, key: tuple[int, ...], region: Slices, array: np.ndarray) -> None:
        if self.in_memory + array.nbytes <= self.max_bytes:
            self.items[key].append((region, array.copy()))
            self.in_memory += array.nbytes
            self.peak_in_memory = max(self.peak_in_memory, self.in_memory)
            return
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix=".arborseg-pending-", dir=self.tmp_parent))
        path = self._dir / f"{self._n}.npy"
        self._n += 1
        np.save(path, array)
        self.spilled_bytes += array.nbytes
        self.items[key].append((region, path))

    def take(self, key: tuple[int, ...]):
        for region, item in self.items.pop(key, []):
            if isinstance(item, Path):
                array = np.load(item)
                item.unlink()
            else:
                array = item
                self.in_memory -= array.nbytes
            yield region, array

    def close(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)


# ---------------------------------------------------------------------------------------- the store
def _zarr():
    try:
        import zarr
    except ImportError:
        raise DataError(ZARR_HINT) from None
    return zarr


def _create_array(group: Any, name: str, shape, dtype, chunks) -> Any:
    kwargs = dict(shape=tuple(shape), dtype=dtype, chunks=tuple(chunks), fill_value=0, overwrite=True)
    if hasattr(group, "create_array"):  # zarr 3
        return group.create_array(name, **kwargs)
    return group.create_dataset(name, **kwargs)  # zarr 2


def _open_input(volume: Any) -> Any:
    if isinstance(volume, (str, Path)):
        from arborseg.data.volumes import open_volume

        return open_volume(volume)
    return volume


def _block_order(shape, window, block) -> tuple[int, int, int]:
    """Axes from slowest to fastest: the slowest is the one whose hand-on (``window - 1`` voxels times the
    other two axes) is smallest, as those partial sums wait longest."""
    def cost(a, others):
        return (window[a] - 1) * int(np.prod([shape[o] for o in others]))

    slow = min(range(3), key=lambda a: (cost(a, [o for o in range(3) if o != a]), a))
    rest = [a for a in range(3) if a != slow]
    mid = min(rest, key=lambda a: ((window[a] - 1) * block[slow] * shape[[r for r in rest if r != a][0]], a))
    return (slow, mid, [a for a in rest if a != mid][0])


@dataclass
class _Group:
    """Ensemble members sharing a window: they run on the same tiles into one accumulator."""

    window: tuple[int, int, int]
    members: list[int]  # indices into the ensemble
    models: list[Any]
    factors: list[float]  # each member's scale in a summed accumulator (mean/weighted fusion)
    k: int = 0  # accumulated channels (the weight total is channel k)
    weight: np.ndarray | None = None
    tiles: list[Slices] = field(default_factory=list)
    owned: dict[tuple[int, int, int], list[Slices]] = field(default_factory=dict)
    use_cl: list[bool] = field(default_factory=list)
    reuse: bool = False


def _member_windows(window: Sequence[int] | Sequence[Sequence[int]], n_members: int) -> list[tuple[int, int, int]]:
    """One window for every member from a shared window (z, y, x) or a list of one window per member."""
    if len(window) and all(isinstance(v, (list, tuple, np.ndarray)) for v in window):
        if len(window) != n_members:
            raise WindowError(f"got {len(window)} windows for {n_members} ensemble members; give one window per "
                              "member or one shared window (z, y, x)")
        return [_check_window(v) for v in window]  # type: ignore[arg-type]
    return [_check_window(window)] * n_members  # type: ignore[arg-type]


def _make_groups(members, windows, factors) -> list[_Group]:
    """Members grouped by window, groups in order of first appearance, members in ensemble order."""
    groups: dict[tuple[int, int, int], _Group] = {}
    for i, (m, w, f) in enumerate(zip(members, windows, factors)):
        g = groups.setdefault(w, _Group(w, [], [], []))
        g.members.append(i)
        g.models.append(m)
        g.factors.append(f)
    return list(groups.values())


def predict_to_store(
    models: Sequence[torch.nn.Module | Callable] | torch.nn.Module | Callable,
    volume: Any,
    out_path: str | Path,
    window: Sequence[int] | Sequence[Sequence[int]],
    n_classes: int,
    overlap: float | Sequence[float] = 0.25,
    blending: Blending = "gaussian",
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    fusion: Fusion = "mean",
    normalizer: Callable[[np.ndarray], np.ndarray] | None = None,
    write_probs: bool = False,
    uncertainty: Uncertainty | None = None,
    block: Sequence[int] | None = None,
    memory_budget_mb: float | None = None,
    chunks: Sequence[int] | None = None,
    probs_dtype: Literal["float16", "uint8", "float32"] = "float16",
    progress: bool = True,
    amp: bool = False,
    channels_last: bool = True,
    reuse_slices: bool | None = None,
    overwrite: bool = False,
    weights: Sequence[float] | None = None,
    activation_estimates: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Segment ``volume`` block by block into the Zarr group ``out_path`` (a ``.zarr`` folder).

    ``models``: one model or an ensemble (list); each maps (N, 1, z, y, x) float32 to logits
    (N, n_classes, z, y, x). ``window``: the window (z, y, x) all members share, or a list of one window
    per member (members with equal windows run on the same tiles; each member's probabilities are blended
    over its own tile grid, exactly as ``predict_volume`` with its window, before they are fused).
    ``weights``: one positive weight per member for the fusion (see :func:`fuse`; ``fusion="weighted"``
    without weights is ``mean``). ``activation_estimates``: bytes of activations per window of each member
    (:func:`activation_bytes` of the eager network), for members it cannot measure (TorchScript).
    ``volume``: a volume spec (``raw.tif``,
    ``data.h5:raw``, ``raw.zarr``; see :func:`~arborseg.data.volumes.open_volume`) or anything with
    ``.shape`` and 3D slicing. ``normalizer``: applied to each input block (float32) before prediction; an
    object with an integer ``halo`` attribute (:class:`~arborseg.data.preprocess.Normalizer`) gets that
    many extra xy voxels of context so filters match the whole-volume result. ``block``: the processing
    block (z, y, x); ``memory_budget_mb`` chooses it instead (the block given wins, with a warning when
    its estimate exceeds the budget); neither: ``(32, 512, 512)``. ``chunks``: the output chunks (default:
    the block when ``block`` is given, else ``(8, 256, 256)``, and the block is made a multiple of them).
    ``device``: "cpu", "cuda", "cuda:1" or "auto". ``channels_last``, ``reuse_slices`` (each z-slice computed
    once for z-separable networks) and the other arguments as in
    :func:`~arborseg.inference.tiled.predict_volume`; see the module doc for fusion, uncertainty and outputs.

    Returns ``{"labels": spec, "probs": spec | None, "uncertainty": spec | None, "path": out_path, "block":
    block, "stats": {...}}`` where each spec (``out.zarr:labels``) opens with ``open_volume`` (``probs``
    is 4D: open it with zarr).
    """
    t_start = time.perf_counter()
    members = list(models) if isinstance(models, (list, tuple)) else [models]
    if not members:
        raise DataError("predict_to_store needs at least one model")
    if not all(callable(m) for m in members):
        raise DataError("every ensemble member must be a torch module or a callable")
    vol = _open_input(volume)
    shape = tuple(int(s) for s in getattr(vol, "shape", ()))
    if len(shape) != 3 or min(shape) < 1:
        raise DataError(f"volume must be 3D (z, y, x) and non-empty, got shape {shape}; add a z axis to 2D images")
    n_members = len(members)
    windows = _member_windows(window, n_members)
    ov = _check_overlap(overlap)
    n_classes = int(n_classes)
    if n_classes < 1:
        raise DataError(f"n_classes must be >= 1, got {n_classes}")
    if int(batch_size) < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    if fusion not in FUSIONS:
        raise DataError(f"fusion must be one of {list(FUSIONS)}, got {fusion!r}")
    if uncertainty is not None and uncertainty not in UNCERTAINTIES:
        raise DataError(f"uncertainty must be one of {list(UNCERTAINTIES)} or None, got {uncertainty!r}")
    if probs_dtype not in PROBS_DTYPES:
        raise DataError(f"probs_dtype must be one of {list(PROBS_DTYPES)}, got {probs_dtype!r}")
    member_w = _member_weights(weights, n_members)
    out = Path(out_path).expanduser()
    if out.suffix.lower() != ".zarr":
        raise DataError(f"{out}: the output must be a .zarr folder (e.g. {out.with_suffix('.zarr')})")
    if out.exists() and not overwrite:
        raise DataError(f"{out}: already exists; choose another path or pass overwrite=True (--overwrite)")
    zarr = _zarr()

    # mean/weighted fusion without a disagreement map only accumulates the (weighted) sum over members
    per_member = n_members > 1 and (fusion not in ("mean", "weighted") or uncertainty == "disagreement")
    factors = [1.0] * n_members if member_w is None else [float(v) for v in member_w]
    total_factor = float(n_members) if member_w is None else 1.0
    groups = _make_groups(members, windows, factors)
    for g in groups:
        g.k = n_classes * (len(g.members) if per_member else 1)  # channel k = weight total
        g.weight = importance_map(g.window, blending)
    w_max = tuple(max(g.window[a] for g in groups) for a in range(3))
    halo = int(getattr(normalizer, "halo", 0) or 0) if normalizer is not None else 0

    from arborseg.device import resolve_device

    dev = resolve_device(device) if isinstance(device, str) else torch.device(device)

    # ---- block and chunks
    est_kwargs = dict(n_classes=n_classes, n_members=n_members, per_member=per_member, batch_size=int(batch_size),
                      input_itemsize=int(np.dtype(getattr(vol, "dtype", np.float32)).itemsize),
                      normalizer_halo=halo, write_probs=write_probs,
                      groups=[(g.window, len(g.members)) for g in groups])
    budget = None if memory_budget_mb is None else float(memory_budget_mb) * 2**20
    if budget is not None or block is None:
        if activation_estimates is not None and len(activation_estimates) != n_members:
            raise DataError(f"activation_estimates: give one number per member ({n_members}), got "
                            f"{len(activation_estimates)}")
        act = max(int(activation_estimates[i]) if activation_estimates is not None and activation_estimates[i]
                  else activation_bytes(m, wm, dev) for i, (m, wm) in enumerate(zip(members, windows)))
    else:
        act = 0
    est_kwargs["activation_bytes_per_window"] = act
    if block is not None:
        blk = tuple(int(b) for b in block)
        if len(blk) != 3 or min(blk) < 1:
            raise DataError(f"block must be three positive sizes (z, y, x), got {tuple(block)}")
        blk = tuple(min(s, b) for s, b in zip(shape, blk))
        ch = blk if chunks is None else tuple(min(s, int(c)) for s, c in zip(shape, chunks))
        fixed = tuple(b if b >= s else math.ceil(b / c) * c for b, c, s in zip(blk, ch, shape))
        if fixed != blk:
            log.info("block %s rounded up to %s, a multiple of the chunks %s", blk, fixed, ch)
            blk = tuple(min(s, b) for s, b in zip(shape, fixed))
        if budget is not None:
            need = SAFETY * estimate_memory(shape, blk, w_max, chunks=ch, **est_kwargs)["total"]
            if need > (1 - PENDING_SHARE) * budget:
                log.warning("block %s needs about %.0f MB, more than memory_budget_mb=%.0f allows; drop block= to "
                            "let the budget choose it", blk, need / 2**20, memory_budget_mb)
    elif budget is not None:
        ch = tuple(min(s, int(c)) for s, c in zip(shape, chunks or DEFAULT_CHUNKS))
        try:
            blk = choose_block(shape, w_max, int((1 - PENDING_SHARE) * budget), ch, **est_kwargs)
        except DataError as exc:
            raise DataError(f"memory_budget_mb={memory_budget_mb:g}: {exc} ({PENDING_SHARE:.0%} of the budget is "
                            "kept for partial sums handed between blocks)") from None
    else:
        ch = tuple(min(s, int(c)) for s, c in zip(shape, chunks or DEFAULT_CHUNKS))
        blk = tuple(min(s, math.ceil(b / c) * c) for s, b, c in zip(shape, DEFAULT_BLOCK, ch))
    pending_bytes = int(PENDING_SHARE * budget) if budget is not None else 1 << 62

    # ---- tiles (each group on the grid of its own window), owners, block order
    n_blocks = tuple(math.ceil(s / b) for s, b in zip(shape, blk))
    for g in groups:
        g.tiles = tile_slices(shape, g.window, ov)
        g.owned = defaultdict(list)
        for t in g.tiles:
            g.owned[tuple(sl.start // b for sl, b in zip(t, blk))].append(t)  # type: ignore[index]
    n_tiles = sum(len(g.tiles) for g in groups)
    # any axis order visits a tile's owner before (or at) every block the tile touches
    order = _block_order(shape, w_max, blk)
    estimate = estimate_memory(shape, blk, w_max, chunks=ch, **est_kwargs)
    log.info("predicting %s with %d model(s) in %d window group(s) %s: %d tiles in %d blocks of %s (about %.0f MB "
             "per block)", shape, n_members, len(groups), [g.window for g in groups], n_tiles,
             int(np.prod(n_blocks)), blk, estimate["total"] / 2**20)

    # ---- the store
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        shutil.rmtree(out)
    group = zarr.open_group(str(out), mode="w")
    label_dtype = _label_dtype(n_classes)
    arrays = {"labels": _create_array(group, "labels", shape, label_dtype, ch)}
    if write_probs:
        arrays["probs"] = _create_array(group, "probs", (n_classes, *shape), np.dtype(probs_dtype), (1, *ch))
    if uncertainty is not None:
        arrays["uncertainty"] = _create_array(group, "uncertainty", shape, np.float16, ch)
    group.attrs.update({
        "arborseg": "predict_to_store", "window": list(windows[0]) if len(groups) == 1 else None,
        "windows": [list(v) for v in windows], "overlap": list(ov), "blending": blending,
        "n_classes": n_classes, "members": n_members, "fusion": fusion,
        "weights": None if member_w is None else [float(v) for v in member_w], "uncertainty": uncertainty,
        "probs_dtype": probs_dtype if write_probs else None,
        "probs_scale": (1 / 255 if probs_dtype == "uint8" else 1.0) if write_probs else None,
        "block": list(blk), "complete": False,
    })

    pending = _Pending(pending_bytes, out.parent)
    trim = _malloc_trim()
    modules = [m for m in members if isinstance(m, torch.nn.Module)]
    modes = [m.training for m in modules]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_tiles, desc="predict", unit="tile")
    stats = {"tiles": n_tiles, "blocks": int(np.prod(n_blocks)), "groups": len(groups), "read_s": 0.0,
             "compute_s": 0.0, "write_s": 0.0}
    finish = dict(n_classes=n_classes, per_member=per_member, fusion=fusion, total_factor=total_factor,
                  weights=None if member_w is None else [member_w[i] for g in groups for i in g.members],
                  uncertainty=uncertainty, probs_dtype=probs_dtype, arrays=arrays)
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.inference_mode())
            for g in groups:
                for m in g.models:
                    if isinstance(m, torch.nn.Module):
                        m.to(dev).eval()
                    g.use_cl.append(stack.enter_context(_channels_last(m, channels_last)))
                g.reuse = _reuse_slices(reuse_slices, g.models, shape, g.window, dev, amp, g.use_cl)
            stats["reuse_slices"] = [g.reuse for g in groups] if len(groups) > 1 else groups[0].reuse
            ranges = [range(n_blocks[a]) for a in order]
            for idx_perm in itertools.product(*ranges):
                bidx = [0, 0, 0]
                for a, i in zip(order, idx_perm):
                    bidx[a] = i
                key = tuple(bidx)
                own = tuple(slice(i * b, min(s, (i + 1) * b)) for i, b, s in zip(key, blk, shape))
                origin = tuple(sl.start for sl in own)
                mine = [g.owned.pop(key, []) for g in groups]
                inp = _read_block_input(vol, [t for ts in mine for t in ts], normalizer, halo, shape, stats)
                accs = []
                for gi, (g, tiles) in enumerate(zip(groups, mine)):
                    stop = [sl.stop for sl in own]
                    for t in tiles:
                        stop = [max(a, sl.stop) for a, sl in zip(stop, t)]
                    local = tuple(slice(o.start, e) for o, e in zip(own, stop))
                    acc = np.zeros((g.k + 1, *(sl.stop - sl.start for sl in local)), np.float32)
                    for region, piece in pending.take((gi, *key)):
                        acc[(slice(None), *_shift(region, origin))] += piece
                    if tiles:
                        _run_tiles(g, inp, tiles, acc, origin, n_classes, per_member, int(batch_size), dev, amp,
                                   stats, bar)
                    _hand_on(acc, local, key, blk, shape, pending, gi)
                    accs.append(acc)
                del inp
                t0 = time.perf_counter()
                for z0 in range(own[0].start, own[0].stop, ch[0]):  # chunk-thick slabs: whole chunks
                    part = (slice(z0, min(own[0].stop, z0 + ch[0])), *own[1:])
                    _finish_block(accs, groups, _shift(part, origin), part, **finish)
                stats["write_s"] += time.perf_counter() - t0
                del accs
                trim()
    finally:
        pending.close()
        if bar is not None:
            bar.close()
        for m, mode in zip(modules, modes):
            m.train(mode)
    left = sum(len(v) for g in groups for v in g.owned.values())
    if left:  # pragma: no cover - every tile start lies in some block
        raise WindowError(f"{left} tiles were not assigned to a block")
    group.attrs["complete"] = True
    stats.update(pending_peak_mb=pending.peak_in_memory / 2**20, pending_on_disk_mb=pending.spilled_bytes / 2**20,
                 estimate_mb=estimate["total"] / 2**20, total_s=time.perf_counter() - t_start)
    log.info("wrote %s in %.1f s (%d tiles)", out, stats["total_s"], n_tiles)
    return {
        "path": str(out),
        "labels": f"{out}:labels",
        "probs": f"{out}:probs" if write_probs else None,
        "uncertainty": f"{out}:uncertainty" if uncertainty is not None else None,
        "block": blk,
        "stats": stats,
    }


def _shift(region: Sequence[slice], origin: Sequence[int]) -> Slices:
    return tuple(slice(sl.start - o, sl.stop - o) for sl, o in zip(region, origin))  # type: ignore[return-value]


def _read_input(vol, region: Slices, normalizer, halo: int, shape) -> np.ndarray:
    """float32 input of ``region``, normalised with ``halo`` extra xy voxels of context (then cropped)."""
    ext = list(region)
    if normalizer is not None and halo > 0:
        for a in (1, 2):
            ext[a] = slice(max(0, region[a].start - halo), min(shape[a], region[a].stop + halo))
    raw = np.asarray(vol[tuple(ext)], dtype=np.float32)
    if normalizer is not None:
        normed = np.asarray(normalizer(raw), dtype=np.float32)
        if normed.shape != raw.shape:
            raise DataError(f"the normalizer changed the block shape from {raw.shape} to {normed.shape}")
        raw = normed
    crop = tuple(slice(r.start - e.start, r.stop - e.start) for r, e in zip(region, ext))
    return raw[crop]


def _read_block_input(vol, tiles: Sequence[Slices], normalizer, halo, shape, stats) -> tuple[np.ndarray, tuple] | None:
    """The normalised input of the region the block's tiles (of every window group) cover, read once."""
    if not tiles:
        return None
    t0 = time.perf_counter()
    region = tuple(slice(min(t[a].start for t in tiles), max(t[a].stop for t in tiles)) for a in range(3))
    inp = _read_input(vol, region, normalizer, halo, shape)
    stats["read_s"] += time.perf_counter() - t0
    return inp, tuple(sl.start for sl in region)


def _run_tiles(g: _Group, inp, tiles, acc, origin, n_classes, per_member, batch_size, dev, amp, stats, bar) -> None:
    """Predict a group's tiles that a block owns and add them (weighted) into the group's accumulator."""
    t1 = time.perf_counter()
    data, rorigin = inp

    def read(sl: Slices) -> np.ndarray:
        return data[_shift(sl, rorigin)]

    k = acc.shape[0] - 1
    tmp = np.empty((n_classes, *g.window), np.float32)
    for t, crop, probs in _tile_outputs(g.models, read, tiles, g.window, n_classes, batch_size, dev, amp, g.use_cl,
                                        g.reuse):
        wc = g.weight[crop]
        loc = _shift(t, origin)
        tv = tmp[(slice(None), *(slice(0, sl.stop - sl.start) for sl in t))]
        for m, p in enumerate(probs):  # p may be shared with other tiles: multiply out of place
            first = m * n_classes if per_member else 0
            np.multiply(p, wc, out=tv)
            if not per_member and g.factors[m] != 1.0:
                tv *= np.float32(g.factors[m])
            acc[(slice(first, first + n_classes), *loc)] += tv
        acc[(k, *loc)] += wc
        if bar is not None:
            bar.update(1)
    stats["compute_s"] += time.perf_counter() - t1


def _hand_on(acc, local, key, blk, shape, pending: _Pending, group: int = 0) -> None:
    """Pass the parts of ``acc`` outside the block (its high-side halo) to the later blocks they lie in."""
    last = [(sl.stop - 1) // b for sl, b in zip(local, blk)]
    origin = tuple(sl.start for sl in local)
    for other in itertools.product(*(range(i, j + 1) for i, j in zip(key, last))):
        if other == key:
            continue
        region = tuple(slice(max(l.start, i * b), min(l.stop, (i + 1) * b, s))
                       for l, i, b, s in zip(local, other, blk, shape))
        pending.put((group, *other), region, acc[(slice(None), *_shift(region, origin))])


def _finish_block(accs, groups, own_local, own, n_classes, per_member, fusion, total_factor, weights, uncertainty,
                  probs_dtype, arrays) -> None:
    """Divide each group's sums by its weights, fuse the members and write the outputs.

    Members come in group order (``weights`` is in that order too); the fusion rules do not depend on the
    order of the members.
    """
    parts = []
    for acc, g in zip(accs, groups):
        a = acc[(slice(None), *own_local)]
        wsum = a[g.k]
        if not (wsum > 0).all():
            raise WindowError("some voxels were covered by no tile; the tiles must cover the volume")
        sums = a[: g.k]
        np.divide(sums, wsum, out=sums)
        parts.append(sums.reshape(-1, n_classes, *wsum.shape))
    if per_member:
        member = parts[0] if len(parts) == 1 else np.concatenate(parts)
    else:  # the (weighted) sum over all members: mean/weighted fusion or a single member
        member = parts[0]
        for p in parts[1:]:
            member += p
        if total_factor != 1.0:
            member /= np.float32(total_factor)
        fusion, weights = "mean", None
    probs, labels, unc = fuse(member, fusion, uncertainty, weights)
    arrays["labels"][own] = labels
    if "probs" in arrays:
        if probs_dtype == "uint8":
            enc = np.empty(probs.shape, np.uint8)
            np.rint(np.clip(probs * 255, 0, 255), out=probs)
            enc[...] = probs
        else:
            enc = probs.astype(probs_dtype, copy=False)
        arrays["probs"][(slice(None), *own)] = enc
    if unc is not None:
        arrays["uncertainty"][own] = unc.astype(np.float16)


# ------------------------------------------------------------------------------------------ merger
class ZarrMerger:
    """A :class:`~arborseg.inference.tiled.Merger` whose sums live in a Zarr group, for outputs larger than memory.

    ``predict_volume(model, volume, window, C, merger=ZarrMerger("p.zarr", C, volume.shape))`` adds each
    tile by reading, updating and writing back the chunks it touches (each add costs a chunk
    decompress/compress, so :func:`predict_to_store`, which keeps a block in memory, is much faster);
    :meth:`finalize` divides block by block and returns the zarr array ``probs`` (C, Z, Y, X) float32.
    """

    def __init__(self, path: str | Path, n_classes: int, shape: Sequence[int],
                 chunks: Sequence[int] | None = None, overwrite: bool = True) -> None:
        zarr = _zarr()
        self.shape = tuple(int(s) for s in shape)
        self.chunks = tuple(min(s, int(c)) for s, c in zip(self.shape, chunks or DEFAULT_CHUNKS))
        self.group = zarr.open_group(str(path), mode="w" if overwrite else "w-")
        self.values = _create_array(self.group, "probs", (int(n_classes), *self.shape), np.float32, (1, *self.chunks))
        self.weights = _create_array(self.group, "weights", self.shape, np.float32, self.chunks)

    def add(self, slices: Slices, tile_probs: np.ndarray, weights: np.ndarray) -> None:
        """Add ``tile_probs`` (C, z, y, x) weighted by ``weights`` (z, y, x) at ``slices``."""
        region = (slice(None), *slices)
        self.values[region] = self.values[region] + tile_probs * weights
        self.weights[slices] = self.weights[slices] + weights

    def finalize(self, block: Sequence[int] | None = None) -> Any:
        """Divide the sums by the weights block by block (in place) and return the zarr array."""
        step = tuple(block or tuple(4 * c for c in self.chunks))
        for start in itertools.product(*(range(0, s, b) for s, b in zip(self.shape, step))):
            sl = tuple(slice(a, min(s, a + b)) for a, s, b in zip(start, self.shape, step))
            wsum = self.weights[sl]
            if not (wsum > 0).all():
                raise WindowError("some voxels were covered by no tile; the tiles must cover the volume")
            self.values[(slice(None), *sl)] = self.values[(slice(None), *sl)] / wsum
        return self.values
