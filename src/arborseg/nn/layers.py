"""Dimension-aware building layers: the same block code makes 2D, thin-3D and full-3D layers.

Every arborseg module takes and returns (N, C, Z, Y, X). 2D modules are built from real 2D
layers and wrapped in :class:`SliceWise`, which folds z into the batch, so they run per slice.
Thin 3D uses kernels (kernel_z, k, k) with zero padding and never pools along z; full 3D uses
k x k x k kernels.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Dims:
    """Layer factory for one dimensionality ('2d', 'thin3d' or '3d')."""

    name: str
    kernel_z: int = 3

    @property
    def nd(self) -> int:
        return 2 if self.name == "2d" else 3

    def kernel(self, k: int) -> tuple[int, ...]:
        if self.name == "2d":
            return (k, k)
        if self.name == "thin3d":
            return (self.kernel_z if k > 1 else 1, k, k)
        return (k, k, k)

    def dilation(self, d: int) -> tuple[int, ...]:
        """Dilation in xy only for 2D and thin 3D (z is thin); in all axes for full 3D."""
        if self.name == "2d":
            return (d, d)
        return (1, d, d) if self.name == "thin3d" else (d, d, d)

    @property
    def pool_factor(self) -> tuple[int, ...]:
        return {"2d": (2, 2), "thin3d": (1, 2, 2), "3d": (2, 2, 2)}[self.name]

    def conv(self, cin: int, cout: int, k: int = 3, dilation: int = 1, groups: int = 1, bias: bool = True,
             stride: tuple[int, ...] | int = 1) -> nn.Module:
        kernel = self.kernel(k)
        dil = self.dilation(dilation)
        padding = tuple((kk - 1) // 2 * dd for kk, dd in zip(kernel, dil))
        cls: Callable[..., nn.Module] = nn.Conv2d if self.nd == 2 else nn.Conv3d
        return cls(cin, cout, kernel, stride=stride, padding=padding, dilation=dil, groups=groups, bias=bias)

    def conv1x1(self, cin: int, cout: int, bias: bool = True) -> nn.Module:
        return (nn.Conv2d if self.nd == 2 else nn.Conv3d)(cin, cout, 1, bias=bias)

    def down(self, channels: int, mode: str) -> nn.Module:
        if mode == "max":
            return (nn.MaxPool2d if self.nd == 2 else nn.MaxPool3d)(self.pool_factor)
        cls: Callable[..., nn.Module] = nn.Conv2d if self.nd == 2 else nn.Conv3d
        return cls(channels, channels, self.pool_factor, stride=self.pool_factor)

    def up(self, cin: int, cout: int, mode: str) -> nn.Module:
        if mode == "transposed":
            cls: Callable[..., nn.Module] = nn.ConvTranspose2d if self.nd == 2 else nn.ConvTranspose3d
            return cls(cin, cout, self.pool_factor, stride=self.pool_factor)
        interp = "bilinear" if self.nd == 2 else "trilinear"
        return nn.Sequential(nn.Upsample(scale_factor=self.pool_factor, mode=interp, align_corners=False),
                             self.conv1x1(cin, cout))

    def norm(self, kind: str, channels: int) -> nn.Module:
        if kind == "none":
            return nn.Identity()
        if kind == "instance":
            return (nn.InstanceNorm2d if self.nd == 2 else nn.InstanceNorm3d)(channels, affine=True)
        if kind == "batch":
            return (nn.BatchNorm2d if self.nd == 2 else nn.BatchNorm3d)(channels)
        if kind == "group":
            return nn.GroupNorm(math.gcd(8, channels), channels)
        raise ValueError(f"unknown norm {kind!r}")

    def dropout(self, p: float) -> nn.Module:
        if p <= 0:
            return nn.Identity()
        return (nn.Dropout2d if self.nd == 2 else nn.Dropout3d)(p)

    def global_pool(self) -> nn.Module:
        """Average over xy (and z for full 3D), keeping the thin z axis of thin 3D."""
        if self.nd == 2:
            return nn.AdaptiveAvgPool2d(1)
        return nn.AdaptiveAvgPool3d((None, 1, 1) if self.name == "thin3d" else 1)


def activation(kind: str) -> nn.Module:
    return {"relu": lambda: nn.ReLU(inplace=True), "leaky_relu": lambda: nn.LeakyReLU(0.01, inplace=True),
            "elu": lambda: nn.ELU(inplace=True), "gelu": nn.GELU}[kind]()


class SliceWise(nn.Module):
    """Run a 2D module on every z slice: (N, C, Z, Y, X) -> fold z into the batch -> unfold."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, z, y, xx = x.shape
        out = self.module(x.permute(0, 2, 1, 3, 4).reshape(n * z, c, y, xx))
        return out.reshape(n, z, out.shape[1], out.shape[2], out.shape[3]).permute(0, 2, 1, 3, 4)


def conv_unit(dims: Dims, cin: int, cout: int, k: int, norm: str, act: str, separable: bool,
              dropout: float = 0.0, dilation: int = 1) -> nn.Sequential:
    """conv (or depthwise + pointwise) -> norm -> activation -> dropout."""
    bias = norm == "none"
    conv: nn.Module
    if separable and k > 1:
        conv = nn.Sequential(dims.conv(cin, cin, k, dilation, groups=cin, bias=False), dims.conv1x1(cin, cout, bias))
    else:
        conv = dims.conv(cin, cout, k, dilation, bias=bias)
    return nn.Sequential(conv, dims.norm(norm, cout), activation(act), dims.dropout(dropout))
