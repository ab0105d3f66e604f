"""The per-block step of block-wise prediction: read a block's input once, run each window group's tiles
into an :class:`~arborseg.inference.mergers.ArrayMerger` over the block and its halo, hand the halo's
partial sums on to later blocks, then divide, fuse and write the block slab by slab.

What is computed where is decided by the pure :mod:`arborseg.inference.planner`; the whole run is
:func:`arborseg.inference.predict_to_store`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from arborseg.errors import DataError
from arborseg.inference.forward import tile_outputs
from arborseg.inference.fusion import fuse
from arborseg.inference.mergers import ArrayMerger, PendingSums
from arborseg.inference.options import PredictOptions
from arborseg.inference.planner import BlockPlan, WindowGroup, context_region, input_region
from arborseg.inference.store import OutputStore
from arborseg.inference.tiles import Slices, shift

__all__ = ["GroupRun", "BlockStep", "read_input"]


@dataclass
class GroupRun:
    """A window group at run time: its plan, its models, its blending weights, the channels-last flag of
    each model and whether slices are reused."""

    plan: WindowGroup
    models: list[Any]
    weight: np.ndarray
    use_cl: list[bool] = field(default_factory=list)
    reuse: bool = False


def read_input(vol: Any, region: Slices, normalizer: Any, halo: int, shape: Sequence[int]) -> np.ndarray:
    """float32 input of ``region``, normalised with ``halo`` extra xy voxels of context (then cropped)."""
    ext = context_region(region, halo, shape) if normalizer is not None and halo > 0 else region
    raw = np.asarray(vol[tuple(ext)], dtype=np.float32)
    if normalizer is not None:
        normed = np.asarray(normalizer(raw), dtype=np.float32)
        if normed.shape != raw.shape:
            raise DataError(f"the normalizer changed the block shape from {raw.shape} to {normed.shape}")
        raw = normed
    crop = tuple(slice(r.start - e.start, r.stop - e.start) for r, e in zip(region, ext))
    return raw[crop]


class BlockStep:
    """Predicts one block after another (in the plan's order) into ``store``; ``stats`` collects the
    seconds spent reading, computing and writing."""

    def __init__(self, vol: Any, plan: BlockPlan, groups: list[GroupRun], options: PredictOptions,
                 device: torch.device, store: OutputStore, pending: PendingSums, stats: dict[str, Any],
                 bar: Any = None) -> None:
        self.vol, self.plan, self.groups, self.options = vol, plan, groups, options
        self.device, self.store, self.pending, self.stats, self.bar = device, store, pending, stats, bar
        self.owned = [dict(g.plan.owned) for g in groups]  # tiles not yet computed, by owning block
        # member weights in group order (the order of the fused members; the rules do not depend on it)
        w = plan.weights
        self.weights = None if w is None else [w[i] for g in groups for i in g.plan.members]

    @property
    def tiles_left(self) -> int:
        return sum(len(v) for owned in self.owned for v in owned.values())

    def __call__(self, key: tuple[int, int, int], own: Slices) -> None:
        """Predict, fuse and write block ``key`` (region ``own``)."""
        mine = [owned.pop(key, []) for owned in self.owned]
        inp = self._read([t for ts in mine for t in ts])
        mergers = []
        for gi, (g, tiles) in enumerate(zip(self.groups, mine)):
            local = self.plan.accumulator_region(own, tiles)
            merger = ArrayMerger(self.options.n_classes, tuple(sl.stop - sl.start for sl in local),
                                 origin=tuple(sl.start for sl in local), members=len(g.models),
                                 keep_members=self.plan.keep_members, scales=g.plan.scales)
            for region, parts in self.pending.take((gi, *key)):
                merger.add_partial(region, *parts)
            if tiles:
                self._run_tiles(g, inp, tiles, merger)
            for other, region in self.plan.hand_on(local, key):
                self.pending.put((gi, *other), region, merger.partial(region))
            mergers.append(merger)
        del inp
        t0 = time.perf_counter()
        for part in self.plan.slabs(own):  # chunk-thick slabs: whole chunks
            self._finish(mergers, part)
        self.stats["write_s"] += time.perf_counter() - t0

    def _read(self, tiles: Sequence[Slices]) -> tuple[np.ndarray, tuple[int, ...]] | None:
        """The normalised input of the region the block's tiles (of every window group) cover, read once."""
        if not tiles:
            return None
        t0 = time.perf_counter()
        region = input_region(tiles)
        inp = read_input(self.vol, region, self.options.normalizer, self.options.halo, self.plan.shape)
        self.stats["read_s"] += time.perf_counter() - t0
        return inp, tuple(sl.start for sl in region)

    def _run_tiles(self, g: GroupRun, inp, tiles: Sequence[Slices], merger: ArrayMerger) -> None:
        """Predict a group's tiles that the block owns and add them (weighted) into its merger."""
        t1 = time.perf_counter()
        data, rorigin = inp

        def read(sl: Slices) -> np.ndarray:
            return data[shift(sl, rorigin)]

        o = self.options
        for t, crop, probs in tile_outputs(g.models, read, tiles, g.plan.window, o.n_classes, int(o.batch_size),
                                           self.device, o.amp, g.use_cl, g.reuse):
            merger.add(t, probs, g.weight[crop])
            if self.bar is not None:
                self.bar.update(1)
        self.stats["compute_s"] += time.perf_counter() - t1

    def _finish(self, mergers: list[ArrayMerger], part: Slices) -> None:
        """Divide each group's sums by its weights in ``part``, fuse the members and write the outputs."""
        c = self.options.n_classes
        parts = [m.finalize(part).reshape(-1, c, *(sl.stop - sl.start for sl in part)) for m in mergers]
        fusion, weights = self.options.fusion, self.weights
        if self.plan.keep_members:
            member = parts[0] if len(parts) == 1 else np.concatenate(parts)
        else:  # the (weighted) sum over all members: mean/weighted fusion or a single member
            member = parts[0]
            for p in parts[1:]:
                member += p
            if self.plan.total_factor != 1.0:
                member /= np.float32(self.plan.total_factor)
            fusion, weights = "mean", None
        probs, labels, unc = fuse(member, fusion, self.options.uncertainty, weights)
        self.store.write(part, probs, labels, unc)
