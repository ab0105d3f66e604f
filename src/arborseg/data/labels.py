"""Label values: remapping (``label_map``) and a lazy scan of the values a volume holds."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

KEEP = "keep"


def map_value(value: int, label_map: Mapping[int, int] | None, map_rest: int | str | None,
              ignore_value: int | None) -> int:
    """Where one stored label value ends up (the ignore value always stays as it is)."""
    if ignore_value is not None and value == ignore_value:
        return value
    if not label_map:
        return value
    if value in label_map:
        return label_map[value]
    return value if map_rest in (None, KEEP) else int(map_rest)


def apply_label_map(labels: np.ndarray, label_map: Mapping[int, int] | None, map_rest: int | str | None = 0,
                    ignore_value: int | None = None) -> np.ndarray:
    """Remap stored label values to class indices (int64).

    Values in ``label_map`` go to their target; the others go to ``map_rest`` (default 0; ``"keep"``
    leaves them); ``ignore_value`` voxels are never remapped. Without a map the labels are only cast.
    """
    labels = np.asarray(labels)
    if not label_map:
        return labels.astype(np.int64, copy=False)
    if labels.dtype in (np.uint8, np.uint16, np.bool_):
        lut = np.array([map_value(v, label_map, map_rest, ignore_value)
                        for v in range(2 if labels.dtype == np.bool_ else np.iinfo(labels.dtype).max + 1)],
                       np.int64)
        return lut[labels.astype(np.intp, copy=False)]
    values, inverse = np.unique(labels, return_inverse=True)
    mapped = np.array([map_value(int(v), label_map, map_rest, ignore_value) for v in values], np.int64)
    return mapped[inverse].reshape(labels.shape)


def slab_values(slab: np.ndarray) -> np.ndarray:
    """The distinct values of an integer array (bincount for small unsigned types, else unique)."""
    slab = np.asarray(slab)
    if slab.dtype in (np.uint8, np.bool_) or (slab.dtype == np.uint16 and slab.size > 65536):
        return np.flatnonzero(np.bincount(slab.ravel().astype(np.intp, copy=False)))
    return np.unique(slab)


def scan_values(slabs: Iterable[tuple[Any, np.ndarray]]) -> dict[int, Any]:
    """{value: where it was first seen} over (where, slab) pairs, e.g. one z-slice at a time."""
    first: dict[int, Any] = {}
    for where, slab in slabs:
        for v in slab_values(slab).tolist():
            first.setdefault(int(v), where)
    return first
