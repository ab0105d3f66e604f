"""Where blended tile outputs accumulate: one :class:`Merger` protocol, in memory or in Zarr (numpy only).

:class:`ArrayMerger` keeps weighted sums and weight totals in numpy, for a whole volume
(:func:`~arborseg.inference.predict_volume`) or for one block of a large one (block-wise prediction, which
also hands partial sums on to later blocks: :class:`PendingSums`). :class:`ZarrMerger` keeps them in a Zarr
group, for outputs larger than memory.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from arborseg.errors import WindowError
from arborseg.inference.store import DEFAULT_CHUNKS, create_array, zarr_module
from arborseg.inference.tiles import Slices, shift

__all__ = ["Merger", "ArrayMerger", "ZarrMerger", "PendingSums"]

UNCOVERED = "some voxels were covered by no tile; the tiles must cover the volume"


class Merger(Protocol):
    """Accumulates weighted tile outputs; ``finalize`` returns the blended (C, Z, Y, X) result."""

    def add(self, slices: Slices, tile_probs: np.ndarray, weights: np.ndarray) -> None: ...

    def finalize(self) -> Any: ...


class ArrayMerger:
    """In-memory merger: weighted sums and weight totals in numpy, divided in :meth:`finalize`.

    ``origin``: volume coordinates of the merger's first voxel (a block's region; slices given to it are
    in volume coordinates). Ensemble members that run on the same tiles share one merger (``members``):
    :meth:`add` then takes one array per member, kept apart (``keep_members``: channels member by member,
    M x C) or summed, each multiplied by its ``scales`` entry (a weighted mean needs no per-member sums).
    """

    def __init__(self, n_classes: int, shape: Sequence[int], dtype: Any = np.float32, *,
                 origin: Sequence[int] = (0, 0, 0), members: int = 1, keep_members: bool = False,
                 scales: Sequence[float] | None = None) -> None:
        self.n_classes = int(n_classes)
        self.origin = tuple(int(o) for o in origin)
        self.keep_members = bool(keep_members)
        self.scales = [1.0] * int(members) if scales is None else [float(s) for s in scales]
        channels = self.n_classes * (len(self.scales) if self.keep_members else 1)
        self.values = np.zeros((channels, *shape), dtype=dtype)
        self.weights = np.zeros(tuple(shape), dtype=dtype)
        self._tmp = np.empty(0, np.float32)

    def add(self, slices: Slices, tile_probs: np.ndarray | Sequence[np.ndarray], weights: np.ndarray) -> None:
        """Add ``tile_probs`` (C, z, y, x), or one such array per member, weighted by ``weights`` (z, y, x)
        at ``slices``. The probabilities are only read (they may be shared with other tiles)."""
        probs = [tile_probs] if isinstance(tile_probs, np.ndarray) else tile_probs
        loc = shift(slices, self.origin)
        for m, p in enumerate(probs):
            weighted = self._weighted(p, weights)
            if not self.keep_members and self.scales[m] != 1.0:
                weighted *= np.float32(self.scales[m])
            first = m * self.n_classes if self.keep_members else 0
            self.values[(slice(first, first + self.n_classes), *loc)] += weighted
        self.weights[loc] += weights

    def _weighted(self, p: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """``p * weights`` in a buffer reused from tile to tile."""
        if p.dtype != np.float32 or weights.dtype != np.float32:
            return p * weights
        if self._tmp.ndim != p.ndim or any(t < s for t, s in zip(self._tmp.shape, p.shape)):
            self._tmp = np.empty(tuple(max(t, s) for t, s in itertools.zip_longest(self._tmp.shape, p.shape,
                                                                                   fillvalue=0)), np.float32)
        out = self._tmp[tuple(slice(0, s) for s in p.shape)]
        return np.multiply(p, weights, out=out)

    def partial(self, region: Slices) -> tuple[np.ndarray, np.ndarray]:
        """The sums and weight totals of ``region`` (views), to hand on to another merger."""
        loc = shift(region, self.origin)
        return self.values[(slice(None), *loc)], self.weights[loc]

    def add_partial(self, region: Slices, sums: np.ndarray, weights: np.ndarray) -> None:
        """Add sums and weight totals handed on by another merger (:meth:`partial`) at ``region``."""
        loc = shift(region, self.origin)
        self.values[(slice(None), *loc)] += sums
        self.weights[loc] += weights

    def finalize(self, region: Slices | None = None) -> np.ndarray:
        """Divide the sums by the weights (in place) and return them: (C, ...), or (M x C, ...) with
        ``keep_members``. ``region``: only that part (volume coordinates; finalise each part once)."""
        if region is None:
            if not (self.weights > 0).all():
                raise WindowError(UNCOVERED)
            self.values /= self.weights
            return self.values
        loc = shift(region, self.origin)
        wsum = self.weights[loc]
        if not (wsum > 0).all():
            raise WindowError(UNCOVERED)
        sums = self.values[(slice(None), *loc)]
        np.divide(sums, wsum, out=sums)
        return sums


class ZarrMerger:
    """A :class:`Merger` whose sums live in a Zarr group, for outputs larger than memory.

    ``predict_volume(model, volume, window, C, merger=ZarrMerger("p.zarr", C, volume.shape))`` adds each
    tile by reading, updating and writing back the chunks it touches (each add costs a chunk
    decompress/compress, so :func:`~arborseg.inference.predict_to_store`, which keeps a block in memory, is
    much faster); :meth:`finalize` divides block by block and returns the zarr array ``probs`` (C, Z, Y, X)
    float32.
    """

    def __init__(self, path: str | Path, n_classes: int, shape: Sequence[int],
                 chunks: Sequence[int] | None = None, overwrite: bool = True) -> None:
        zarr = zarr_module()
        self.shape = tuple(int(s) for s in shape)
        self.chunks = tuple(min(s, int(c)) for s, c in zip(self.shape, chunks or DEFAULT_CHUNKS))
        self.group = zarr.open_group(str(path), mode="w" if overwrite else "w-")
        self.values = create_array(self.group, "probs", (int(n_classes), *self.shape), np.float32, (1, *self.chunks))
        self.weights = create_array(self.group, "weights", self.shape, np.float32, self.chunks)

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
                raise WindowError(UNCOVERED)
            self.values[(slice(None), *sl)] = self.values[(slice(None), *sl)] / wsum
        return self.values


class PendingSums:
    """Partial sums handed on from block to block (:meth:`ArrayMerger.partial`), keyed by the receiving
    block: in memory up to ``max_bytes``, in ``.npy`` files (in a folder under ``tmp_parent``) beyond."""

    def __init__(self, max_bytes: int, tmp_parent: Path) -> None:
        self.max_bytes = int(max_bytes)
        self.tmp_parent = tmp_parent
        self.items: dict[tuple[int, ...], list[tuple[Slices, list[Any]]]] = defaultdict(list)
        self.in_memory = 0
        self.peak_in_memory = 0
        self.spilled_bytes = 0
        self._dir: Path | None = None
        self._n = 0

    def put(self, key: tuple[int, ...], region: Slices, parts: Sequence[np.ndarray]) -> None:
        """Keep ``parts`` (arrays of ``region``, copied) for block ``key``."""
        nbytes = sum(a.nbytes for a in parts)
        if self.in_memory + nbytes <= self.max_bytes:
            self.items[key].append((region, [a.copy() for a in parts]))
            self.in_memory += nbytes
            self.peak_in_memory = max(self.peak_in_memory, self.in_memory)
            return
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix=".arborseg-pending-", dir=self.tmp_parent))
        paths = []
        for a in parts:
            path = self._dir / f"{self._n}.npy"
            self._n += 1
            np.save(path, a)
            paths.append(path)
        self.spilled_bytes += nbytes
        self.items[key].append((region, paths))

    def take(self, key: tuple[int, ...]) -> Iterator[tuple[Slices, list[np.ndarray]]]:
        """Yield (and forget) the ``(region, parts)`` kept for block ``key``."""
        for region, items in self.items.pop(key, []):
            parts = []
            for item in items:
                if isinstance(item, Path):
                    parts.append(np.load(item))
                    item.unlink()
                else:
                    parts.append(item)
                    self.in_memory -= item.nbytes
            yield region, parts

    def close(self) -> None:
        """Remove the spill folder."""
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
