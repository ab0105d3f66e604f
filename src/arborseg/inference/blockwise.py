"""Prediction of volumes larger than memory, block by block, into a Zarr store; ensembles and uncertainty.

:func:`predict_to_store` segments a lazily readable (Z, Y, X) volume (TIFF, HDF5, Zarr, NumPy, see
:func:`arborseg.data.volumes.open_volume`) with one model or an ensemble and writes labels, optionally the
probabilities and an uncertainty map, into a Zarr group (:mod:`arborseg.inference.store`), with memory
bounded by the block size. The plan (blocks, halos, order, memory) is :mod:`arborseg.inference.planner`,
each block is :class:`~arborseg.inference.block_step.BlockStep`, the fusion of members
:func:`arborseg.inference.fusion.fuse`: each member's blended probabilities are fused per voxel, exactly as
if each member had predicted the whole volume with ``predict_volume`` (with its own window) and the results
were fused. After each block, freed heap memory is handed back to the system (glibc ``malloc_trim``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from arborseg.errors import DataError, WindowError
from arborseg.inference.block_step import BlockStep, GroupRun
from arborseg.inference.forward import activation_bytes, channels_last_layout, eval_mode, resolve_reuse_slices
from arborseg.inference.fusion import label_dtype
from arborseg.inference.mergers import PendingSums
from arborseg.inference.options import PredictOptions
from arborseg.inference.planner import member_weights, member_windows, plan_blocks
from arborseg.inference.store import OutputStore, zarr_module
from arborseg.inference.tiles import Window, check_overlap, importance_map
from arborseg.log import get_logger

log = get_logger(__name__)

__all__ = ["predict_to_store"]


def _malloc_trim() -> Callable[[], Any]:
    """glibc's ``malloc_trim(0)`` (hands freed heap pages back to the system, so block after block of
    differently sized arrays does not ratchet the resident memory up), or a no-op elsewhere."""
    try:
        import ctypes

        trim = ctypes.CDLL("libc.so.6").malloc_trim
        return lambda: trim(0)
    except (OSError, AttributeError):
        return lambda: None


def _open_input(volume: Any) -> Any:
    if isinstance(volume, (str, Path)):
        from arborseg.data.volumes import open_volume

        return open_volume(volume)
    return volume


def predict_to_store(
    models: Sequence[torch.nn.Module | Callable] | torch.nn.Module | Callable,
    volume: Any,
    out_path: str | Path,
    options: PredictOptions,
) -> dict[str, Any]:
    """Segment ``volume`` block by block into the Zarr group ``out_path`` (a ``.zarr`` folder).

    ``models``: one model or an ensemble (list); each maps (N, 1, z, y, x) float32 to logits
    (N, n_classes, z, y, x). ``volume``: a volume spec (``raw.tif``, ``data.h5:raw``, ``raw.zarr``; see
    :func:`~arborseg.data.volumes.open_volume`) or anything with ``.shape`` and 3D slicing. ``options``: see
    :class:`~arborseg.inference.options.PredictOptions`.

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
    n_members, o = len(members), options
    member_windows(o.window, n_members)
    check_overlap(o.overlap)
    member_weights(o.weights, n_members)
    out = Path(out_path).expanduser()
    if out.suffix.lower() != ".zarr":
        raise DataError(f"{out}: the output must be a .zarr folder (e.g. {out.with_suffix('.zarr')})")
    if out.exists() and not o.overwrite:
        raise DataError(f"{out}: already exists; choose another path or pass overwrite=True (--overwrite)")
    zarr_module()

    from arborseg.device import resolve_device

    dev = resolve_device(o.device) if isinstance(o.device, str) else torch.device(o.device)

    def activations(windows: list[Window]) -> int:
        est = o.activation_estimates
        if est is not None and len(est) != n_members:
            raise DataError(f"activation_estimates: give one number per member ({n_members}), got {len(est)}")
        given = [None] * n_members if est is None else list(est)
        return max(int(g) if g else activation_bytes(m, wm, dev) for g, m, wm in zip(given, members, windows))

    plan = plan_blocks(shape, n_members, o, input_itemsize=int(np.dtype(getattr(vol, "dtype", np.float32)).itemsize),
                       activation_bytes=activations)
    groups = [GroupRun(g, [members[i] for i in g.members], importance_map(g.window, o.blending)) for g in plan.groups]
    n_blocks = int(np.prod(plan.n_blocks))
    log.info("predicting %s with %d model(s) in %d window group(s) %s: %d tiles in %d blocks of %s (about %.0f MB "
             "per block)", shape, n_members, len(groups), [g.plan.window for g in groups], plan.n_tiles, n_blocks,
             plan.block, plan.estimate["total"] / 2**20)
    windows = member_windows(o.window, n_members)
    store = OutputStore(
        out, shape, int(o.n_classes), plan.chunks, label_dtype=label_dtype(int(o.n_classes)),
        write_probs=o.write_probs, probs_dtype=o.probs_dtype, uncertainty=o.uncertainty is not None,
        attrs={"arborseg": "predict_to_store", "window": list(windows[0]) if len(groups) == 1 else None,
               "windows": [list(v) for v in windows], "overlap": list(check_overlap(o.overlap)),
               "blending": o.blending, "n_classes": int(o.n_classes), "members": n_members, "fusion": o.fusion,
               "weights": None if plan.weights is None else list(plan.weights), "uncertainty": o.uncertainty,
               "probs_dtype": o.probs_dtype if o.write_probs else None,
               "probs_scale": (1 / 255 if o.probs_dtype == "uint8" else 1.0) if o.write_probs else None,
               "block": list(plan.block)})

    pending = PendingSums(plan.pending_bytes, out.parent)
    trim = _malloc_trim()
    bar = None
    if o.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=plan.n_tiles, desc="predict", unit="tile")
    stats: dict[str, Any] = {"tiles": plan.n_tiles, "blocks": n_blocks, "groups": len(groups), "read_s": 0.0,
                             "compute_s": 0.0, "write_s": 0.0}
    step = BlockStep(vol, plan, groups, o, dev, store, pending, stats, bar)
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(eval_mode(members, dev))
            stack.enter_context(torch.inference_mode())
            for g in groups:
                for m in g.models:
                    g.use_cl.append(stack.enter_context(channels_last_layout(m, o.channels_last)))
                g.reuse = resolve_reuse_slices(o.reuse_slices, g.models, shape, g.plan.window, dev, o.amp, g.use_cl)
            stats["reuse_slices"] = [g.reuse for g in groups] if len(groups) > 1 else groups[0].reuse
            for key, own in plan.blocks():
                step(key, own)
                trim()
    finally:
        pending.close()
        if bar is not None:
            bar.close()
    if step.tiles_left:  # pragma: no cover - every tile start lies in some block
        raise WindowError(f"{step.tiles_left} tiles were not assigned to a block")
    store.complete()
    stats.update(pending_peak_mb=pending.peak_in_memory / 2**20, pending_on_disk_mb=pending.spilled_bytes / 2**20,
                 estimate_mb=plan.estimate["total"] / 2**20, total_s=time.perf_counter() - t_start)
    log.info("wrote %s in %.1f s (%d tiles)", out, stats["total_s"], plan.n_tiles)
    return {
        "path": str(out),
        "labels": f"{out}:labels",
        "probs": f"{out}:probs" if o.write_probs else None,
        "uncertainty": f"{out}:uncertainty" if o.uncertainty is not None else None,
        "block": plan.block,
        "stats": stats,
    }
