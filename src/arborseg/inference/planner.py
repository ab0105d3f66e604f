"""The block planner of block-wise prediction: pure arithmetic on shapes, no torch, no I/O.

How block-wise prediction works (and why block seams are invisible)
--------------------------------------------------------------------
The tile grid is the one of the in-memory :func:`~arborseg.inference.predict_volume` over the **whole**
volume (:func:`~arborseg.inference.tiles.tile_slices` on the full shape), with the same Gaussian/average
weights. The volume is cut into blocks; each tile is *owned* by the block holding its first voxel and is
computed exactly once. A block's accumulator covers the block plus a high-side halo of ``window - 1``
voxels (the reach of the tiles it owns); the block's input is read for the same region (plus the
normaliser's xy context). Blocks are visited in lexicographic order of :meth:`BlockPlan.order`, so every
tile that touches a block is owned by that block or by one visited before it: after a block's own tiles
are added, the parts of its accumulator that lie in later blocks (weighted sums and weight totals) are
handed on to them (:meth:`BlockPlan.hand_on`), and the block itself is complete: it is divided by its
weights, fused, and written, in z-slabs one output chunk thick. The result is the in-memory result: same
tiles, same weights, same probabilities; only the order of the floating-point additions (and the batches
the tiles run in) differ, so probabilities agree to float32 rounding and labels agree except where two
classes tie to that precision. No tile is computed twice and no input voxel is read more than
``prod(1 + (window-1)/block)`` times. Why not the classic "block + halo, crop" scheme: with a tile grid per
block the tiles near a seam differ from the whole-volume grid, so the result depends on the block size.

Ensemble members may have different windows: members are grouped by window (:class:`WindowGroup`), each
group has its own tile grid, tile ownership and accumulator with its own halo. With ``mean``/``weighted``
fusion and no ``disagreement`` map only the (weighted) sum over members is accumulated
(:attr:`BlockPlan.keep_members` is false), so memory does not grow with the members of a group.

Memory: ``memory_budget_mb`` (the peak increase of resident memory over what the process holds when
called) chooses the block: :func:`estimate_memory` gives the terms and :func:`choose_block` searches;
80% of the budget is for the block (its estimate times ``SAFETY``), 20% (``PENDING_SHARE``) for partial
sums handed on in memory (beyond it they go to disk). Measured: 64 x 2048 x 2048 uint8 in, 2 classes:
budget 400 MB -> peak RSS increase 284 MB, 250 MB -> 217 MB (``benchmarks/README.md``).
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from arborseg.errors import DataError, WindowError
from arborseg.inference.options import PredictOptions
from arborseg.inference.store import DEFAULT_CHUNKS
from arborseg.inference.tiles import Slices, Window, check_overlap, check_window, tile_slices
from arborseg.log import get_logger

log = get_logger(__name__)

DEFAULT_BLOCK = (32, 512, 512)
# share of the memory budget for partial sums handed on between blocks (beyond it they go to disk)
PENDING_SHARE = 0.2
# the block estimate is multiplied by this before it is compared with the rest of the budget
# (allocator slack, zarr codec buffers, Python objects)
SAFETY = 1.25
# resident memory the run needs whatever the block: zarr's codec threads and their malloc arenas, numpy
# and torch temporaries (measured: a 200 MB budget without this term peaked at 202 MB)
RUNTIME_BYTES = 32 * 2**20

__all__ = ["DEFAULT_BLOCK", "PENDING_SHARE", "SAFETY", "RUNTIME_BYTES", "estimate_memory", "choose_block",
           "member_windows", "member_weights", "WindowGroup", "BlockPlan", "plan_blocks"]


# ------------------------------------------------------------------------------------------- memory
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
    """Bytes that block-wise prediction holds at once for one block (an estimate; see the terms).

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
    * ``activations``: ``B * activation_bytes_per_window`` (see :func:`~arborseg.inference.activation_bytes`);
    * ``runtime``: a fixed 32 MB (zarr's codec threads, allocator arenas, temporaries).

    ``groups``: for an ensemble whose members have different windows, ``(window, members)`` of each group
    of members sharing a window; each group has an accumulator of its own (``l`` and ``K`` of its window
    and members, summed) and ``window`` should be the largest window (input halo, tile batches).

    Not included: the partial sums handed on between blocks (bounded separately, see ``PENDING_SHARE``),
    the model weights and the libraries (already resident when called).
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
    w = check_window(window)
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


# ------------------------------------------------------------------------------------------ members
def member_windows(window: Sequence[int] | Sequence[Sequence[int]], n_members: int) -> list[Window]:
    """One window for every member from a shared window (z, y, x) or a list of one window per member."""
    if len(window) and all(isinstance(v, (list, tuple, np.ndarray)) for v in window):
        if len(window) != n_members:
            raise WindowError(f"got {len(window)} windows for {n_members} ensemble members; give one window per "
                              "member or one shared window (z, y, x)")
        return [check_window(v) for v in window]  # type: ignore[arg-type]
    return [check_window(window)] * n_members  # type: ignore[arg-type]


def member_weights(weights: Sequence[float] | None, m: int) -> np.ndarray | None:
    """Normalised member weights (sum 1), or None when all members weigh the same (the unweighted rules).

    Block-wise prediction refuses weights of 0 (such a member would be computed for nothing)."""
    if weights is None:
        return None
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape != (m,) or not np.isfinite(w).all() or np.any(w <= 0):
        raise DataError(f"ensemble weights must be {m} positive numbers (one per member), got {list(w)}; drop "
                        "members of weight 0 from the ensemble")
    w = w / w.sum()
    return None if np.allclose(w, w[0]) else w


@dataclass(frozen=True)
class WindowGroup:
    """Ensemble members sharing a window: they run on the same tiles into one accumulator.

    ``scales``: each member's factor in a summed accumulator (its normalised weight, or 1). ``owned``: the
    tiles of the group's grid by the block that owns them (the block holding their first voxel)."""

    window: Window
    members: tuple[int, ...]
    scales: tuple[float, ...]
    tiles: tuple[Slices, ...]
    owned: dict[tuple[int, int, int], list[Slices]]


# ------------------------------------------------------------------------------------------- blocks
def _block_order(shape, window, block) -> tuple[int, int, int]:
    """Axes from slowest to fastest: the slowest is the one whose hand-on (``window - 1`` voxels times the
    other two axes) is smallest, as those partial sums wait longest."""
    def cost(a, others):
        return (window[a] - 1) * int(np.prod([shape[o] for o in others]))

    slow = min(range(3), key=lambda a: (cost(a, [o for o in range(3) if o != a]), a))
    rest = [a for a in range(3) if a != slow]
    mid = min(rest, key=lambda a: ((window[a] - 1) * block[slow] * shape[[r for r in rest if r != a][0]], a))
    return (slow, mid, [a for a in rest if a != mid][0])


@dataclass(frozen=True)
class BlockPlan:
    """Where the blocks are, in which order they are visited, which tiles each owns, and what memory the
    plan expects (:func:`plan_blocks` makes it)."""

    shape: tuple[int, int, int]
    block: tuple[int, int, int]
    chunks: tuple[int, int, int]
    order: tuple[int, int, int]
    groups: tuple[WindowGroup, ...]
    keep_members: bool  # each member's probabilities accumulated apart (max/vote fusion, disagreement map)
    total_factor: float  # the summed accumulators are divided by this (the member count without weights)
    weights: tuple[float, ...] | None  # normalised member weights, None when all are equal
    estimate: dict[str, int]
    pending_bytes: int  # partial sums kept in memory at most; beyond, on disk

    @property
    def n_blocks(self) -> tuple[int, int, int]:
        return tuple(math.ceil(s / b) for s, b in zip(self.shape, self.block))  # type: ignore[return-value]

    @property
    def n_tiles(self) -> int:
        return sum(len(g.tiles) for g in self.groups)

    @property
    def window_max(self) -> Window:
        return tuple(max(g.window[a] for g in self.groups) for a in range(3))  # type: ignore[return-value]

    def blocks(self) -> Iterator[tuple[tuple[int, int, int], Slices]]:
        """``(key, region)`` of every block, in the order they are visited: a tile's owner comes before (or
        is) every block the tile touches."""
        for idx_perm in itertools.product(*(range(self.n_blocks[a]) for a in self.order)):
            bidx = [0, 0, 0]
            for a, i in zip(self.order, idx_perm):
                bidx[a] = i
            key = tuple(bidx)
            yield key, tuple(slice(i * b, min(s, (i + 1) * b)) for i, b, s in  # type: ignore[misc]
                             zip(key, self.block, self.shape))

    @staticmethod
    def accumulator_region(own: Slices, tiles: Sequence[Slices]) -> Slices:
        """The block's region grown (on the high side) to the reach of the tiles it owns."""
        stop = [sl.stop for sl in own]
        for t in tiles:
            stop = [max(a, sl.stop) for a, sl in zip(stop, t)]
        return tuple(slice(o.start, e) for o, e in zip(own, stop))  # type: ignore[return-value]

    def hand_on(self, local: Slices, key: tuple[int, int, int]) -> Iterator[tuple[tuple[int, int, int], Slices]]:
        """``(later block, region)`` for every part of an accumulator over ``local`` that lies outside its
        own block ``key``."""
        last = [(sl.stop - 1) // b for sl, b in zip(local, self.block)]
        for other in itertools.product(*(range(i, j + 1) for i, j in zip(key, last))):
            if other == key:
                continue
            yield other, tuple(slice(max(lo.start, i * b), min(lo.stop, (i + 1) * b, s))  # type: ignore[misc]
                               for lo, i, b, s in zip(local, other, self.block, self.shape))

    def slabs(self, own: Slices) -> Iterator[Slices]:
        """The block in z-slabs one output chunk thick (whole chunks of the output arrays)."""
        for z0 in range(own[0].start, own[0].stop, self.chunks[0]):
            yield (slice(z0, min(own[0].stop, z0 + self.chunks[0])), *own[1:])  # type: ignore[misc]


def input_region(tiles: Sequence[Slices]) -> Slices:
    """The smallest region holding every tile of ``tiles`` (not empty)."""
    return tuple(slice(min(t[a].start for t in tiles), max(t[a].stop for t in tiles))  # type: ignore[return-value]
                 for a in range(3))


def context_region(region: Slices, halo: int, shape: Sequence[int]) -> Slices:
    """``region`` grown by ``halo`` voxels in y and x (clipped to the volume): the normaliser's context."""
    ext = list(region)
    for a in (1, 2):
        ext[a] = slice(max(0, region[a].start - halo), min(shape[a], region[a].stop + halo))
    return tuple(ext)  # type: ignore[return-value]


def _resolve_block(shape, w_max, options: PredictOptions, est_kwargs: dict[str, Any]
                   ) -> tuple[tuple[int, int, int], tuple[int, int, int], float | None]:
    """(block, chunks, budget in bytes or None) from the options: the block given, the budget's, or the default."""
    budget = None if options.memory_budget_mb is None else float(options.memory_budget_mb) * 2**20
    if options.block is not None:
        blk = tuple(min(s, int(b)) for s, b in zip(shape, options.block))
        ch = blk if options.chunks is None else tuple(min(s, int(c)) for s, c in zip(shape, options.chunks))
        fixed = tuple(b if b >= s else math.ceil(b / c) * c for b, c, s in zip(blk, ch, shape))
        if fixed != blk:
            log.info("block %s rounded up to %s, a multiple of the chunks %s", blk, fixed, ch)
            blk = tuple(min(s, b) for s, b in zip(shape, fixed))
        if budget is not None:
            need = SAFETY * estimate_memory(shape, blk, w_max, chunks=ch, **est_kwargs)["total"]
            if need > (1 - PENDING_SHARE) * budget:
                log.warning("block %s needs about %.0f MB, more than memory_budget_mb=%.0f allows; drop block= to "
                            "let the budget choose it", blk, need / 2**20, options.memory_budget_mb)
    elif budget is not None:
        ch = tuple(min(s, int(c)) for s, c in zip(shape, options.chunks or DEFAULT_CHUNKS))
        try:
            blk = choose_block(shape, w_max, int((1 - PENDING_SHARE) * budget), ch, **est_kwargs)
        except DataError as exc:
            raise DataError(f"memory_budget_mb={options.memory_budget_mb:g}: {exc} ({PENDING_SHARE:.0%} of the "
                            "budget is kept for partial sums handed between blocks)") from None
    else:
        ch = tuple(min(s, int(c)) for s, c in zip(shape, options.chunks or DEFAULT_CHUNKS))
        blk = tuple(min(s, math.ceil(b / c) * c) for s, b, c in zip(shape, DEFAULT_BLOCK, ch))
    return blk, ch, budget  # type: ignore[return-value]


def plan_blocks(shape: Sequence[int], n_members: int, options: PredictOptions, *, input_itemsize: int = 4,
                activation_bytes: Callable[[list[Window]], int] | None = None) -> BlockPlan:
    """The plan of a block-wise prediction of a volume of ``shape`` by ``n_members`` models.

    ``activation_bytes(windows)``: bytes of activations per window (the largest over the members), asked
    only when the block comes from the memory budget or the default (0 when not given).
    """
    z, y, x = (int(s) for s in shape)
    shape = (z, y, x)
    windows = member_windows(options.window, n_members)
    ov = check_overlap(options.overlap)
    n_classes = int(options.n_classes)
    member_w = member_weights(options.weights, n_members)
    # mean/weighted fusion without a disagreement map only accumulates the (weighted) sum over members
    keep = n_members > 1 and (options.fusion not in ("mean", "weighted") or options.uncertainty == "disagreement")
    factors = [1.0] * n_members if member_w is None else [float(v) for v in member_w]
    by_window: dict[Window, list[int]] = {}  # groups in order of first appearance, members in ensemble order
    for i, w in enumerate(windows):
        by_window.setdefault(w, []).append(i)
    w_max = tuple(max(w[a] for w in by_window) for a in range(3))
    est_kwargs: dict[str, Any] = dict(
        n_classes=n_classes, n_members=n_members, per_member=keep, batch_size=int(options.batch_size),
        input_itemsize=int(input_itemsize), normalizer_halo=options.halo, write_probs=options.write_probs,
        groups=[(w, len(m)) for w, m in by_window.items()])
    needs_act = options.memory_budget_mb is not None or options.block is None
    est_kwargs["activation_bytes_per_window"] = activation_bytes(windows) if needs_act and activation_bytes else 0
    blk, ch, budget = _resolve_block(shape, w_max, options, est_kwargs)
    groups = []
    for w, members in by_window.items():
        tiles = tile_slices(shape, w, ov)
        owned: dict[tuple[int, int, int], list[Slices]] = defaultdict(list)
        for t in tiles:
            owned[tuple(sl.start // b for sl, b in zip(t, blk))].append(t)  # type: ignore[index]
        groups.append(WindowGroup(w, tuple(members), tuple(factors[i] for i in members), tuple(tiles), dict(owned)))
    return BlockPlan(
        shape=shape, block=blk, chunks=ch, order=_block_order(shape, w_max, blk), groups=tuple(groups),
        keep_members=keep, total_factor=float(n_members) if member_w is None else 1.0,
        weights=None if member_w is None else tuple(float(v) for v in member_w),
        estimate=estimate_memory(shape, blk, w_max, chunks=ch, **est_kwargs),
        pending_bytes=int(PENDING_SHARE * budget) if budget is not None else 1 << 62)
