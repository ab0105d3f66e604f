"""Named boxes of a volume (train, validation, eval_near, eval_far) as [start, stop) ranges per axis."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

AXES = ("z", "y", "x")
REGION_NAMES = ("train", "validation", "eval_near", "eval_far")


@dataclass(frozen=True)
class Region:
    """A box of a volume: ``z``, ``y``, ``x`` are half-open [start, stop) index ranges."""

    name: str
    z: tuple[int, int]
    y: tuple[int, int]
    x: tuple[int, int]

    @classmethod
    def whole(cls, name: str, shape: tuple[int, int, int]) -> Region:
        return cls(name, (0, shape[0]), (0, shape[1]), (0, shape[2]))

    @property
    def ranges(self) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        return (self.z, self.y, self.x)

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(a, b) for a, b in self.ranges)  # type: ignore[return-value]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(b - a for a, b in self.ranges)  # type: ignore[return-value]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def read(self, volume: Any, halo_yx: int = 0) -> np.ndarray:
        """Read this box from a volume (anything sliceable: Volume, ndarray, h5py/zarr array).

        ``halo_yx`` extra pixels on each side in y and x are included where the volume has them (for
        filters that need context); use :meth:`crop_halo` to cut them off again.
        """
        if not halo_yx:
            return np.asarray(volume[self.slices])
        return np.asarray(volume[self.expanded(volume.shape, halo_yx)])

    def expanded(self, shape: tuple[int, ...], halo_yx: int) -> tuple[slice, slice, slice]:
        """Slices of this box grown by ``halo_yx`` in y and x, clamped to the volume."""
        (y0, y1), (x0, x1) = self.y, self.x
        return (slice(*self.z), slice(max(0, y0 - halo_yx), min(shape[1], y1 + halo_yx)),
                slice(max(0, x0 - halo_yx), min(shape[2], x1 + halo_yx)))

    def crop_halo(self, array: np.ndarray, shape: tuple[int, ...], halo_yx: int) -> np.ndarray:
        """Cut the box out of an array read with :meth:`read` and the same ``halo_yx``."""
        grown = self.expanded(shape, halo_yx)
        dy, dx = self.y[0] - grown[1].start, self.x[0] - grown[2].start
        return array[..., dy:dy + self.shape[1], dx:dx + self.shape[2]]

    def overlaps(self, other: Region) -> bool:
        return all(max(a0, b0) < min(a1, b1) for (a0, a1), (b0, b1) in zip(self.ranges, other.ranges))

    def contains(self, point: tuple[int, int, int]) -> bool:
        return all(a <= p < b for p, (a, b) in zip(point, self.ranges))

    def to_dict(self) -> dict[str, list[int]]:
        return {axis: list(r) for axis, r in zip(AXES, self.ranges)}

    def __str__(self) -> str:
        return f"{self.name} " + " ".join(f"{a}[{r[0]}:{r[1]}]" for a, r in zip(AXES, self.ranges))
