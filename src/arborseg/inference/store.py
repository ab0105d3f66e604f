"""The Zarr output of block-wise prediction: labels, probabilities, uncertainty (numpy; zarr imported lazily).

A group ``OUT.zarr`` with ``labels`` uint8 (uint16 above 256 classes), (Z, Y, X); ``probs`` (C, Z, Y, X)
float16 by default (absolute error <= 2.5e-4 on [0, 1]), uint8 quantised as ``round(255 p)`` or float32;
``uncertainty`` float16 (Z, Y, X). The arrays are chunked so that every block writes whole chunks; the
settings are in the group's attributes, ``complete`` turns true at the end.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from arborseg.errors import DataError
from arborseg.inference.tiles import Slices

DEFAULT_CHUNKS = (8, 256, 256)
PROBS_DTYPES = ("float16", "uint8", "float32")
ZARR_HINT = "writing predictions needs zarr: pip install arborseg[io]"

__all__ = ["DEFAULT_CHUNKS", "PROBS_DTYPES", "ZARR_HINT", "zarr_module", "create_array", "OutputStore"]


def zarr_module() -> Any:
    """The zarr module, or a :class:`DataError` saying how to install it."""
    try:
        import zarr
    except ImportError:
        raise DataError(ZARR_HINT) from None
    return zarr


def create_array(group: Any, name: str, shape: Sequence[int], dtype: Any, chunks: Sequence[int]) -> Any:
    """A zero-filled array ``name`` in a zarr group (zarr 2 and 3)."""
    kwargs = dict(shape=tuple(shape), dtype=dtype, chunks=tuple(chunks), fill_value=0, overwrite=True)
    if hasattr(group, "create_array"):  # zarr 3
        return group.create_array(name, **kwargs)
    return group.create_dataset(name, **kwargs)  # zarr 2


class OutputStore:
    """The output group at ``path`` (replaced if it exists), its arrays and attributes."""

    def __init__(self, path: Path, shape: Sequence[int], n_classes: int, chunks: Sequence[int], *,
                 label_dtype: Any, write_probs: bool, probs_dtype: str, uncertainty: bool,
                 attrs: dict[str, Any]) -> None:
        zarr = zarr_module()
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            shutil.rmtree(path)
        self.path = path
        self.probs_dtype = probs_dtype
        self.group = zarr.open_group(str(path), mode="w")
        self.arrays = {"labels": create_array(self.group, "labels", shape, label_dtype, chunks)}
        if write_probs:
            self.arrays["probs"] = create_array(self.group, "probs", (n_classes, *shape), np.dtype(probs_dtype),
                                                (1, *chunks))
        if uncertainty:
            self.arrays["uncertainty"] = create_array(self.group, "uncertainty", shape, np.float16, chunks)
        self.group.attrs.update({**attrs, "complete": False})

    def write(self, region: Slices, probs: np.ndarray, labels: np.ndarray, uncertainty: np.ndarray | None) -> None:
        """Write the fused outputs of ``region`` (``probs`` float32 is overwritten when quantised to uint8)."""
        self.arrays["labels"][region] = labels
        if "probs" in self.arrays:
            if self.probs_dtype == "uint8":
                enc = np.empty(probs.shape, np.uint8)
                np.rint(np.clip(probs * 255, 0, 255), out=probs)
                enc[...] = probs
            else:
                enc = probs.astype(self.probs_dtype, copy=False)
            self.arrays["probs"][(slice(None), *region)] = enc
        if uncertainty is not None:
            self.arrays["uncertainty"][region] = uncertainty.astype(np.float16)

    def complete(self) -> None:
        """Mark the store complete (every block written)."""
        self.group.attrs["complete"] = True
