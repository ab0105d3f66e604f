"""Pairs of augmented views of unlabeled EM for contrastive pre-training (torch, batched, on the CPU or GPU).

Following CEM500K's MoCo v2 recipe (random resized crop 0.2-1, rotations, flips, brightness/contrast, Gaussian
noise and blur; no colour jitter: EM is grey): both views of a pair are cut from the same region of a slice (or
of a small z-stack for thin-3D encoders), each with its own crop, orientation and intensity changes. The same
xy transform applies to every slice of a stack, so z stays as the microscope recorded it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ViewAugmentation:
    """The ranges of one view's random changes (CEM500K / MoCo v2 defaults, intensities in 0..1 units)."""

    scale: tuple[float, float] = (0.2, 1.0)  # area of the crop relative to the region
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    brightness: float = 0.2  # added offset in [-b, b] x the region's std
    contrast: float = 0.3  # gain in [1 - c, 1 + c] around the mean
    noise_p: float = 0.5
    noise_sigma: float = 0.3  # x the region's std, at most
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # in output pixels


def _crop_box(rng: np.random.Generator, size: int, aug: ViewAugmentation) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box (y0, x0, h, w) inside a size x size region."""
    area = size * size
    for _ in range(10):
        target = area * rng.uniform(*aug.scale)
        aspect = math.exp(rng.uniform(math.log(aug.ratio[0]), math.log(aug.ratio[1])))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= size and 0 < h <= size:
            return int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1)), h, w
    return 0, 0, size, size


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (C, Y, X) with reflect padding."""
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = (k / k.sum()).view(1, 1, -1)
    c, h, w = x.shape
    radius = min(radius, h - 1, w - 1)
    k = k[..., k.shape[-1] // 2 - radius: k.shape[-1] // 2 + radius + 1]
    k = k / k.sum()
    y = F.conv2d(F.pad(x.unsqueeze(1), (radius, radius, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), k.view(1, 1, -1, 1))
    return y.squeeze(1)


def augment_view(region: torch.Tensor, patch: int, rng: np.random.Generator,
                 aug: ViewAugmentation = ViewAugmentation()) -> torch.Tensor:
    """One view (Z, patch, patch) of a region (Z, S, S): crop-resize, rotate/flip, intensity, noise, blur."""
    size = region.shape[-1]
    y0, x0, h, w = _crop_box(rng, size, aug)
    crop = region[:, y0:y0 + h, x0:x0 + w].unsqueeze(0)
    view = F.interpolate(crop, size=(patch, patch), mode="bilinear", align_corners=False, antialias=True)[0]
    view = torch.rot90(view, int(rng.integers(0, 4)), dims=(-2, -1))
    if rng.random() < 0.5:
        view = torch.flip(view, dims=(-1,))
    mean, std = view.mean(), view.std().clamp_min(1e-3)
    gain = 1 + rng.uniform(-aug.contrast, aug.contrast)
    view = (view - mean) * gain + mean + rng.uniform(-aug.brightness, aug.brightness) * std
    if rng.random() < aug.blur_p:
        view = _gaussian_blur(view, float(rng.uniform(*aug.blur_sigma)))
    if rng.random() < aug.noise_p:
        view = view + torch.randn(view.shape, generator=_torch_generator(rng)) * float(rng.uniform(0, aug.noise_sigma)) * std
    return view


def _torch_generator(rng: np.random.Generator) -> torch.Generator:
    return torch.Generator().manual_seed(int(rng.integers(0, 2**62)))


def view_pairs(regions: list[torch.Tensor], patch: int, rng: np.random.Generator,
               aug: ViewAugmentation = ViewAugmentation()) -> tuple[torch.Tensor, torch.Tensor]:
    """Two batches (N, 1, Z, patch, patch) of views: row i of both comes from ``regions[i]``."""
    first = torch.stack([augment_view(r, patch, rng, aug) for r in regions]).unsqueeze(1)
    second = torch.stack([augment_view(r, patch, rng, aug) for r in regions]).unsqueeze(1)
    return first, second
