"""Training augmentation on numpy arrays: image (C, Z, Y, X), labels (Z, Y, X), optional weights (Z, Y, X).

Geometric transforms (flips, 90-degree xy rotations, elastic deformation) move labels and weights with
the image: the same flip/rotation, the same displacement field, nearest-neighbour (order 0) for labels.
Intensity changes (contrast, brightness, gamma, noise) touch the image only. Every random draw comes
from the ``np.random.Generator`` passed in, so a seed fixes the result.

Configured from a mapping, e.g. ``{flip: true, rot90: true, elastic: {p: 0.3, alpha: 34, sigma: 4},
intensity: {p: 0.5}}``; ``true`` takes the defaults of a block, ``false``/omitted switches it off.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from arborseg.errors import DataError, did_you_mean

AXES = ("z", "y", "x")
TOP_KEYS = ("flip", "rot90", "elastic", "intensity")
ELASTIC_MODES = ("thin3d", "slice")


@dataclass(frozen=True)
class Flip:
    """Flip each listed axis with probability ``p``."""

    p: float = 0.5
    axes: tuple[str, ...] = AXES


@dataclass(frozen=True)
class Rot90:
    """Rotate in xy by k * 90 degrees (k uniform in 0..3; only 0/180 degrees when y != x) with prob ``p``."""

    p: float = 1.0


@dataclass(frozen=True)
class Elastic:
    """Elastic deformation in xy (Simard et al. 2003 convention).

    The displacement field is uniform(-1, 1) noise smoothed by a Gaussian of ``sigma`` px and scaled by
    ``alpha`` (alpha=34, sigma=4 moves pixels by about 1.4 px rms). ``mode``: ``thin3d`` (default) uses
    one field for every slice of the window, as z is anisotropic; ``slice`` draws a field per slice.
    ``order``: interpolation of the image (labels always use 0).
    """

    p: float = 0.3
    alpha: float = 34.0
    sigma: float = 4.0
    mode: str = "thin3d"
    order: int = 1


@dataclass(frozen=True)
class Intensity:
    """Image-only jitter, in normalised units: contrast factor 1 +- ``contrast`` around the mean,
    brightness shift +- ``brightness``, gamma exp(+-``gamma``) on the window's min..max range, Gaussian
    noise of std ``noise``."""

    p: float = 0.5
    contrast: float = 0.2
    brightness: float = 0.1
    gamma: float = 0.3
    noise: float = 0.0


_BLOCKS: dict[str, type] = {"flip": Flip, "rot90": Rot90, "elastic": Elastic, "intensity": Intensity}


@dataclass(frozen=True)
class Augmenter:
    """A configured augmentation pipeline; call it with arrays and a Generator."""

    flip: Flip | None = field(default_factory=Flip)
    rot90: Rot90 | None = field(default_factory=Rot90)
    elastic: Elastic | None = None
    intensity: Intensity | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, source: str = "augmentation") -> Augmenter:
        """Build from ``{flip: ..., rot90: ..., elastic: ..., intensity: ...}`` (omitted = off)."""
        if d is None:
            return cls(flip=None, rot90=None)
        if not isinstance(d, Mapping):
            raise DataError(f"{source}: must be a mapping of {', '.join(TOP_KEYS)}, got {d!r}")
        blocks: dict[str, Any] = {}
        for key, value in d.items():
            if key not in _BLOCKS:
                raise DataError(f"{source}.{key}: unknown key{did_you_mean(key, TOP_KEYS, 'keys')}")
            blocks[key] = _block(_BLOCKS[key], value, f"{source}.{key}")
        return cls(**{name: blocks.get(name) for name in _BLOCKS})

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in _BLOCKS:
            block = getattr(self, name)
            if block is not None:
                out[name] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(block).items()}
        return out

    def __call__(self, image: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None, *,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Augment one sample; returns new contiguous (image, labels, weights) arrays."""
        squeeze = image.ndim == 3
        if squeeze:
            image = image[None]
        w_shape = None if weights is None else weights.shape
        if image.ndim != 4 or labels.shape != image.shape[1:] or w_shape not in (None, labels.shape):
            raise ValueError(f"augment: expected image (C, Z, Y, X) and labels/weights (Z, Y, X), got image "
                             f"{image.shape}, labels {labels.shape}, weights {w_shape}")
        if self.flip is not None:
            for axis in self.flip.axes:
                if rng.random() < self.flip.p:
                    a = AXES.index(axis)
                    image, labels = np.flip(image, 1 + a), np.flip(labels, a)
                    weights = None if weights is None else np.flip(weights, a)
        if self.rot90 is not None and rng.random() < self.rot90.p:
            k = int(rng.integers(4)) if image.shape[-1] == image.shape[-2] else 2 * int(rng.integers(2))
            if k:
                image, labels = np.rot90(image, k, axes=(-2, -1)), np.rot90(labels, k, axes=(-2, -1))
                weights = None if weights is None else np.rot90(weights, k, axes=(-2, -1))
        if self.elastic is not None and rng.random() < self.elastic.p:
            image, labels, weights = elastic_deform(image, labels, weights, self.elastic, rng)
        if self.intensity is not None and rng.random() < self.intensity.p:
            image = jitter_intensity(image, self.intensity, rng)
        image = np.ascontiguousarray(image[0] if squeeze else image)
        labels = np.ascontiguousarray(labels)
        weights = None if weights is None else np.ascontiguousarray(weights)
        return image, labels, weights


def displacement_field(shape_yx: tuple[int, int], alpha: float, sigma: float,
                       rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A smooth random (dy, dx) field: uniform(-1, 1) noise, Gaussian-smoothed by sigma, times alpha."""
    return tuple(alpha * ndimage.gaussian_filter(rng.uniform(-1, 1, shape_yx), sigma, mode="reflect")
                 for _ in range(2))  # type: ignore[return-value]


def elastic_deform(image: np.ndarray, labels: np.ndarray, weights: np.ndarray | None, params: Elastic,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Warp image (C, Z, Y, X), labels and weights (Z, Y, X) in xy with the same field(s)."""
    _, nz, ny, nx = image.shape
    grid = np.mgrid[0:ny, 0:nx].astype(np.float64)
    fields = [displacement_field((ny, nx), params.alpha, params.sigma, rng)]
    if params.mode == "slice":
        fields += [displacement_field((ny, nx), params.alpha, params.sigma, rng) for _ in range(nz - 1)]
    out_img = np.empty(image.shape, np.result_type(image.dtype, np.float32))
    out_lab = np.empty_like(labels)
    out_w = None if weights is None else np.empty(weights.shape, np.result_type(weights.dtype, np.float32))
    for z in range(nz):
        dy, dx = fields[z if params.mode == "slice" else 0]
        coords = np.stack([grid[0] + dy, grid[1] + dx])
        for c in range(image.shape[0]):
            out_img[c, z] = ndimage.map_coordinates(image[c, z], coords, order=params.order, mode="mirror")
        out_lab[z] = ndimage.map_coordinates(labels[z], coords, order=0, mode="mirror")
        if weights is not None and out_w is not None:
            out_w[z] = ndimage.map_coordinates(weights[z], coords, order=1, mode="mirror")
    return out_img, out_lab, out_w


def jitter_intensity(image: np.ndarray, params: Intensity, rng: np.random.Generator) -> np.ndarray:
    """Random gamma, contrast, brightness and noise per channel (float32; labels are never touched)."""
    out = np.array(image, dtype=np.float32)
    for c in range(out.shape[0]):
        x = out[c]
        if params.gamma:
            lo, hi = float(x.min()), float(x.max())
            if hi > lo:
                g = float(np.exp(rng.uniform(-params.gamma, params.gamma)))
                x = lo + (hi - lo) * ((x - lo) / (hi - lo)) ** g
        if params.contrast:
            mean = float(x.mean())
            x = (x - mean) * float(1 + rng.uniform(-params.contrast, params.contrast)) + mean
        if params.brightness:
            x = x + float(rng.uniform(-params.brightness, params.brightness))
        if params.noise:
            x = x + rng.normal(0, params.noise, x.shape).astype(np.float32)
        out[c] = x
    return out


# ------------------------------------------------------------------------------------------- parsing
def _block(kind: type[Any], value: Any, key: str) -> Any:
    if value is None or value is False:
        return None
    if value is True:
        return kind()
    if not isinstance(value, Mapping):
        raise DataError(f"{key}: {value!r} must be true, false or a mapping of "
                        f"{', '.join(kind.__dataclass_fields__)}")
    valid = tuple(kind.__dataclass_fields__)
    params: dict[str, Any] = {}
    for k, v in value.items():
        if k not in valid:
            raise DataError(f"{key}.{k}: unknown key{did_you_mean(k, valid, 'keys')}")
        params[k] = v
    for k, v in params.items():
        if k == "axes":
            axes = [v] if isinstance(v, str) else v
            if not isinstance(axes, (list, tuple)) or any(a not in AXES for a in axes):
                raise DataError(f"{key}.axes: {v!r} must be a list of axes from {list(AXES)}")
            params[k] = tuple(axes)
        elif k == "mode":
            if v not in ELASTIC_MODES:
                raise DataError(f"{key}.mode: {v!r} is not one of {list(ELASTIC_MODES)}")
        elif k == "order":
            if v not in (0, 1, 2, 3):
                raise DataError(f"{key}.order: {v!r} must be an interpolation order 0..3")
        else:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise DataError(f"{key}.{k}: {v!r} must be a non-negative number")
            if k == "p" and v > 1:
                raise DataError(f"{key}.p: {v!r} is a probability and must lie in 0..1")
            params[k] = float(v)
    return kind(**params)
