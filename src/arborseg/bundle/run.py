"""``arborseg predict``: segment a TIFF/HDF5/Zarr volume with a bundle, with bounded memory.

Prediction runs block by block into Zarr (:func:`arborseg.inference.predict_to_store`: the input is read
block by block, the outputs written chunk by chunk; the memory budget chooses the block). For a
``.tif``/``.h5`` output the Zarr result (kept in a temporary folder next to it) is then copied z-slab by
z-slab: TIFF page by page (labels ``OUT.tif``, probabilities ``OUT_probs.tif`` (C, Z, Y, X),
uncertainty ``OUT_uncertainty.tif``), HDF5 into datasets ``labels``, ``probs``, ``uncertainty`` of one
file. Memory stays bounded in every case.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from arborseg.errors import BundleError
from arborseg.log import get_logger

if TYPE_CHECKING:
    import zarr

log = get_logger(__name__)

OUT_SUFFIXES = (".zarr", ".tif", ".tiff", ".h5", ".hdf5")

__all__ = ["predict_bundle", "OUT_SUFFIXES"]


def predict_bundle(bundle: Any, volume: Any, out: str | Path, *, probs: bool = False,
                   uncertainty: str | None = None, memory_mb: float | None = None, device: str = "auto",
                   batch_size: int = 4, overlap: float | Sequence[float] = 0.25,
                   block: Sequence[int] | None = None, probs_dtype: str = "float16", overwrite: bool = False,
                   progress: bool = True) -> dict[str, Any]:
    """Segment ``volume`` (a spec such as ``raw.tif``, ``data.h5:raw``, ``raw.zarr``, or an array) with
    ``bundle`` (a :class:`~arborseg.bundle.load.Bundle` or its path) into ``out`` (``.zarr``, ``.tif`` or
    ``.h5``). Returns ``{"labels", "probs", "uncertainty"}`` (paths or specs, None when not written) and
    ``"stats"``."""
    from arborseg.bundle.load import Bundle, load_bundle
    from arborseg.device import resolve_device
    from arborseg.inference import PredictOptions, predict_to_store

    dev = resolve_device(device)
    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle, device=str(dev))
    out = Path(out).expanduser()
    suffix = out.suffix.lower()
    if suffix not in OUT_SUFFIXES:
        raise BundleError(f"{out}: the output must end in one of {', '.join(OUT_SUFFIXES)}")
    targets = _targets(out, suffix, probs, uncertainty)
    existing = [p for p in targets if p.exists()]
    if existing and not overwrite:
        raise BundleError(f"{existing[0]}: already exists; choose another --out or pass --overwrite")
    # a TIFF/HDF5 output is copied from a float32 store (uint8 is quantised by the store itself)
    store_dtype = probs_dtype if suffix == ".zarr" or probs_dtype == "uint8" else "float32"
    options = PredictOptions(
        window=bundle.windows, n_classes=bundle.n_classes, overlap=overlap, batch_size=batch_size, device=dev,
        fusion=bundle.fusion, weights=bundle.weights, normalizer=bundle.normalizer, write_probs=probs,
        uncertainty=uncertainty, block=block, memory_budget_mb=memory_mb, probs_dtype=store_dtype,
        progress=progress, overwrite=overwrite,
        activation_estimates=[m.info.get("activation_bytes") for m in bundle.members])
    if suffix == ".zarr":
        result = predict_to_store(bundle.modules, volume, out, options)
        return {**result, "outputs": [str(out)]}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))  # same disk as the output
    try:
        result = predict_to_store(bundle.modules, volume, tmp / "pred.zarr", replace(options, overwrite=True))
        written = _copy_out(tmp / "pred.zarr", out, suffix, targets, probs, uncertainty, probs_dtype, progress)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {**result, **written, "path": str(out), "outputs": [str(p) for p in targets]}


def _targets(out: Path, suffix: str, probs: bool, uncertainty: str | None) -> list[Path]:
    if suffix in (".zarr", ".h5", ".hdf5"):
        return [out]
    paths = [out]
    if probs:
        paths.append(out.with_name(out.stem + "_probs" + out.suffix))
    if uncertainty:
        paths.append(out.with_name(out.stem + "_uncertainty" + out.suffix))
    return paths


def _slabs(n: int, step: int):
    for z0 in range(0, n, step):
        yield slice(z0, min(n, z0 + step))


def _array(group: zarr.Group, name: str) -> zarr.Array:
    """The array ``name`` of the prediction store (zarr types a member as an array or a group)."""
    import zarr

    arr = group[name]
    if not isinstance(arr, zarr.Array):
        raise BundleError(f"{name} in the prediction store is not an array")
    return arr


def _copy_out(store: Path, out: Path, suffix: str, targets: list[Path], probs: bool, uncertainty: str | None,
              probs_dtype: str, progress: bool) -> dict[str, Any]:
    """Copy the Zarr result into TIFF files or one HDF5 file, a z-slab of whole chunks at a time."""
    import zarr

    group = zarr.open_group(str(store), mode="r")
    names = ["labels"] + (["probs"] if probs else []) + (["uncertainty"] if uncertainty else [])
    tiff = suffix in (".tif", ".tiff")
    # TIFF readers (Fiji) rarely read float16: probabilities go to TIFF as float32 unless uint8 is asked for
    dtypes = {"labels": None, "uncertainty": np.dtype(np.float32),
              "probs": np.dtype(np.float32 if tiff and probs_dtype == "float16" else probs_dtype)}
    out.parent.mkdir(parents=True, exist_ok=True)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        pages = sum(int(np.prod(_array(group, n).shape[:-2])) for n in names)  # z-slices (x classes for probs)
        bar = tqdm(total=pages, desc="write", unit="slice")
    try:
        if tiff:
            import tifffile

            for name, path in zip(names, targets):
                arr = _array(group, name)
                dtype = dtypes[name] or arr.dtype

                def slices_of(arr=arr, dtype=dtype):
                    lead = arr.shape[:-3]  # (C,) for probabilities
                    for c in np.ndindex(*lead):
                        for sl in _slabs(arr.shape[-3], int(arr.chunks[-3])):
                            slab = np.asarray(arr[(*c, sl)]).astype(dtype, copy=False)
                            if bar is not None:
                                bar.update(slab.shape[0])
                            yield from slab

                path.unlink(missing_ok=True)
                big = int(np.prod(arr.shape)) * np.dtype(dtype).itemsize > 2**31
                tifffile.imwrite(path, slices_of(), shape=arr.shape, dtype=dtype, photometric="minisblack",
                                 bigtiff=big)
            return {n: str(p) for n, p in zip(names, targets)} | {n: None for n in ("probs", "uncertainty")
                                                                  if n not in names}
        import h5py

        out.unlink(missing_ok=True)
        with h5py.File(out, "w") as f:
            for name in names:
                arr = _array(group, name)
                dtype = dtypes[name] or arr.dtype
                ds = f.create_dataset(name, shape=arr.shape, dtype=dtype, chunks=tuple(arr.chunks),
                                      compression="gzip", compression_opts=1)
                for sl in _slabs(arr.shape[-3], int(arr.chunks[-3])):
                    key = (slice(None),) * (arr.ndim - 3) + (sl,)
                    ds[key] = np.asarray(arr[key]).astype(dtype, copy=False)
                    if bar is not None:
                        bar.update((sl.stop - sl.start) * int(np.prod(arr.shape[:-3])))
            f.attrs.update({k: str(v) for k, v in dict(group.attrs).items()})
        return {n: f"{out}:{n}" if n in names else None for n in ("labels", "probs", "uncertainty")}
    finally:
        if bar is not None:
            bar.close()
