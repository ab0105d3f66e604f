"""Units of annotation: whole z-slices or square xy tiles of one slice.

A person labels one unit at a time (paints a slice or a tile), so selection strategies rank units and the
project records which units are labeled. Units of one kind all have the same shape, so a proposal of k
units stacks into one (k, h, w) image for painting.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from arborseg.errors import ArborsegError

UNIT_KINDS = ("slice", "tile")


@dataclass(frozen=True, order=True)
class Unit:
    """One slice (the whole xy plane of ``z``) or one tile ``[y0, y0+h) x [x0, x0+w)`` of slice ``z``."""

    z: int
    y0: int
    x0: int
    h: int
    w: int

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        """Index of the unit in the volume (a (1, h, w) block)."""
        return slice(self.z, self.z + 1), slice(self.y0, self.y0 + self.h), slice(self.x0, self.x0 + self.w)

    @property
    def voxels(self) -> int:
        return self.h * self.w

    def to_list(self) -> list[int]:
        return [self.z, self.y0, self.x0, self.h, self.w]

    @classmethod
    def from_list(cls, values: Sequence[int]) -> Unit:
        return cls(*(int(v) for v in values))

    def __str__(self) -> str:
        return f"z{self.z}:y{self.y0}:x{self.x0}"


def make_units(shape: Sequence[int], kind: str = "slice", tile: int = 256,
               z_range: Sequence[int] | None = None) -> list[Unit]:
    """Every unit of a (Z, Y, X) volume (optionally only slices ``z_range = [start, stop)``).

    Tiles are ``tile`` x ``tile`` on a regular grid; a Y or X that ``tile`` does not divide is an error,
    so that every voxel of the pool belongs to exactly one unit."""
    nz, ny, nx = (int(s) for s in shape)
    if kind not in UNIT_KINDS:
        raise ArborsegError(f"unit {kind!r} is not one of {', '.join(UNIT_KINDS)}")
    z0, z1 = z_range if z_range is not None else (0, nz)
    if not 0 <= z0 < z1 <= nz:
        raise ArborsegError(f"slices [{z0}, {z1}) lie outside the volume (0..{nz})")
    if kind == "slice":
        return [Unit(z, 0, 0, ny, nx) for z in range(z0, z1)]
    if tile < 8 or ny % tile or nx % tile:
        raise ArborsegError(f"tile size {tile} must divide the slice size {ny} x {nx} (and be at least 8); "
                            f"try one of {[t for t in (32, 64, 128, 256, 512) if ny % t == 0 and nx % t == 0]}")
    return [Unit(z, y, x, tile, tile) for z in range(z0, z1) for y in range(0, ny, tile) for x in range(0, nx, tile)]


def labeled_units(labels: np.ndarray, units: Iterable[Unit], ignore_value: int) -> np.ndarray:
    """Boolean per unit: True where the unit holds at least one labeled voxel."""
    return np.array([bool(np.any(labels[u.slices] != ignore_value)) for u in units], bool)


def stack_units(volume: np.ndarray, units: Sequence[Unit]) -> np.ndarray:
    """The units of a (Z, Y, X) (or (C, Z, Y, X)) array stacked along z: (k, h, w) (or (C, k, h, w))."""
    if not units:
        raise ArborsegError("no units to stack")
    if volume.ndim == 4:
        return np.stack([volume[(slice(None),) + u.slices][:, 0] for u in units], axis=1)
    return np.stack([volume[u.slices][0] for u in units])


def scatter_units(volume: np.ndarray, units: Sequence[Unit], stack: np.ndarray) -> None:
    """Write a (k, h, w) stack back into the units of ``volume`` (in place)."""
    if stack.shape[0] != len(units):
        raise ArborsegError(f"the stack has {stack.shape[0]} images but the proposal has {len(units)} units")
    for u, image in zip(units, stack):
        volume[u.slices] = image[None]


def unit_distance(a: Unit, b: Unit, z_scale: float = 1.0) -> float:
    """Distance between unit centres, z in slices times ``z_scale`` and xy in units of the tile size."""
    size = max(a.h, a.w, 1)
    dy = (a.y0 + a.h / 2 - b.y0 - b.h / 2) / size
    dx = (a.x0 + a.w / 2 - b.x0 - b.w / 2) / size
    return float(np.sqrt(((a.z - b.z) * z_scale) ** 2 + dy ** 2 + dx ** 2))
