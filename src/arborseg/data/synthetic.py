"""A small EM-like labelled volume from a seed, so arborseg can be tried without downloads.

Cells are a 3D Voronoi tessellation (z stretched by ``anisotropy``, so cells change slowly along z),
outlined by dark 2-3 px membranes; dark elongated mitochondria sit inside cells; small unlabelled
vesicles and a grainy cytoplasm texture act as distractors; then blur, Poisson and Gaussian noise.
Labels: 0 cell interior, 1 membrane, 2 mitochondria.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from arborseg.errors import DataError

CLASSES = ("interior", "membrane", "mitochondria")
CELL_DIAMETER = 48.0  # xy pixels (z in units of xy pixels, i.e. slices * anisotropy)
MITO_FRACTION = 0.035  # aimed-at share of mitochondria voxels (the VNC stack has about 5%)


def make_em_volume(shape: tuple[int, int, int] = (12, 256, 256), seed: int = 0,
                   anisotropy: float = 8) -> tuple[np.ndarray, np.ndarray]:
    """Return (raw uint8, labels uint8) of the given (z, y, x) shape; deterministic for a seed."""
    if len(tuple(shape)) != 3 or min(shape) < 1:
        raise DataError(f"synthetic.shape: {list(shape)} must be three positive sizes [z, y, x]")
    if min(shape[1:]) < 16:
        raise DataError(f"synthetic.shape: {list(shape)} is too small in y/x (at least 16 pixels)")
    if anisotropy <= 0:
        raise DataError(f"synthetic.anisotropy: {anisotropy} must be positive")
    nz, ny, nx = (int(n) for n in shape)
    rng = np.random.default_rng(seed)

    cells = _voronoi_cells(rng, nz, ny, nx, float(anisotropy))
    membrane = _membranes(cells)
    mito = _mitochondria(rng, cells, membrane)
    labels = np.zeros(cells.shape, np.uint8)
    labels[membrane] = 1
    labels[mito] = 2

    raw = _render(rng, cells, membrane, mito)
    return raw, labels


def _voronoi_cells(rng: np.random.Generator, nz: int, ny: int, nx: int, aniso: float) -> np.ndarray:
    """Cell id of each voxel: nearest seed point in physical units (z scaled by anisotropy)."""
    margin = CELL_DIAMETER
    extent = np.array([nz * aniso + 2 * margin, ny + 2 * margin, nx + 2 * margin])
    n_seeds = max(4, int(round(np.prod(extent) / CELL_DIAMETER ** 3 * 1.9)))
    seeds = rng.uniform(0, 1, (n_seeds, 3)) * extent - margin
    tree = cKDTree(seeds)
    yy, xx = np.meshgrid(np.arange(ny, dtype=np.float32), np.arange(nx, dtype=np.float32), indexing="ij")
    cells = np.empty((nz, ny, nx), np.int32)
    for z in range(nz):
        pts = np.stack([np.full(yy.size, (z + 0.5) * aniso, np.float32), yy.ravel(), xx.ravel()], axis=1)
        cells[z] = tree.query(pts, k=1)[1].reshape(ny, nx)
    return cells


def _membranes(cells: np.ndarray) -> np.ndarray:
    """A 3 px membrane along every in-slice cell boundary (xy neighbours only, never across z)."""
    edge = np.zeros(cells.shape, bool)  # 1 px on the side of the lower cell id
    edge[:, :-1, :] |= cells[:, :-1, :] < cells[:, 1:, :]
    edge[:, 1:, :] |= cells[:, 1:, :] < cells[:, :-1, :]
    edge[:, :, :-1] |= cells[:, :, :-1] < cells[:, :, 1:]
    edge[:, :, 1:] |= cells[:, :, 1:] < cells[:, :, :-1]
    return ndimage.binary_dilation(edge, structure=np.array([[[0, 1, 0], [1, 1, 1], [0, 1, 0]]], bool))


def _mitochondria(rng: np.random.Generator, cells: np.ndarray, membrane: np.ndarray) -> np.ndarray:
    """A few elongated ellipsoids, each clipped to the cell of its centre and kept off membranes."""
    nz, ny, nx = cells.shape
    mito = np.zeros(cells.shape, bool)
    away = ~ndimage.binary_dilation(membrane, structure=np.ones((1, 5, 5), bool))
    candidates = np.flatnonzero(away)
    if candidates.size == 0:
        return mito
    n_mito = max(2, int(round(nz * ny * nx * MITO_FRACTION / 200)))  # ~200 voxels each after clipping
    for center in rng.choice(candidates, size=n_mito, replace=n_mito > candidates.size):
        cz, cy, cx = np.unravel_index(center, cells.shape)
        a = rng.uniform(7, 14)        # long semi-axis (xy px)
        b = rng.uniform(3.0, 5.0)     # short semi-axis
        c = rng.uniform(1.0, 2.5)     # z semi-axis in slices
        theta = rng.uniform(0, np.pi)
        r = int(np.ceil(a)) + 1
        rz = int(np.ceil(c))
        z0, z1 = max(0, cz - rz), min(nz, cz + rz + 1)
        y0, y1 = max(0, cy - r), min(ny, cy + r + 1)
        x0, x1 = max(0, cx - r), min(nx, cx + r + 1)
        zz, yy, xx = np.meshgrid(np.arange(z0, z1) - cz, np.arange(y0, y1) - cy, np.arange(x0, x1) - cx,
                                 indexing="ij")
        u = xx * np.cos(theta) + yy * np.sin(theta)
        v = -xx * np.sin(theta) + yy * np.cos(theta)
        inside = (u / a) ** 2 + (v / b) ** 2 + (zz / c) ** 2 <= 1.0
        box = np.s_[z0:z1, y0:y1, x0:x1]
        mito[box] |= inside & (cells[box] == cells[cz, cy, cx]) & away[box]
    return mito


def _render(rng: np.random.Generator, cells: np.ndarray, membrane: np.ndarray, mito: np.ndarray) -> np.ndarray:
    """EM-like intensities: bright textured cytoplasm, dark membranes and mitochondria, noise."""
    shape = cells.shape
    texture = ndimage.gaussian_filter(rng.normal(0, 1, shape).astype(np.float32), sigma=(0, 1.5, 1.5))
    texture /= texture.std() + 1e-6
    cell_tone = rng.normal(0, 9, int(cells.max()) + 1).astype(np.float32)
    img = 175.0 + cell_tone[cells] + 9.0 * texture
    # unlabelled distractors: small dark vesicles inside cells
    n_vesicles = max(1, shape[0] * shape[1] * shape[2] // 2500)
    centres = rng.integers(0, shape, size=(n_vesicles, 3))
    vesicles = np.zeros(shape, bool)
    vesicles[tuple(centres.T)] = True
    vesicles = ndimage.binary_dilation(vesicles, structure=np.array([[[0, 1, 0], [1, 1, 1], [0, 1, 0]]], bool))
    img[vesicles & ~membrane & ~mito] -= 35.0
    # mitochondria: dark with a faint cristae texture; membranes darkest
    img[mito] = 95.0 + 12.0 * texture[mito]
    img[membrane] = 60.0 + 8.0 * texture[membrane]
    img = ndimage.gaussian_filter(img, sigma=(0, 0.9, 0.9))
    img = rng.poisson(np.clip(img, 0, None) / 4.0).astype(np.float32) * 4.0   # shot noise
    img += rng.normal(0, 6.0, shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)
