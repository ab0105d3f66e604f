"""The 3D CRF-as-RNN refinement (after Zheng et al. 2015): mean-field iterations over the logits of a predictor.

Each iteration: ``Q = softmax(L)``; messages ``M = spatial(Q) + w_c * appearance(Q)``; ``L = U - compat(M)``, where
``U`` are the unary logits the module receives. The kernels:

- **spatial**: a per-class learnable 3 x k x k filter (depthwise convolution), initialised as an anisotropic
  Gaussian with a zero centre and unit sum.
- **appearance** (bilateral, optional): the message a voxel ``i`` receives from each neighbour ``j`` of a
  3 x k x k neighbourhood is weighted by ``g(p_i - p_j) * exp(-|I_i - I_j|^2 / (2 theta_I^2))``: ``g`` is a
  Gaussian over *physical* offsets (z steps scaled by the data's z / xy voxel size, learnable bandwidths
  ``theta_xy`` and ``theta_z``, normalised to unit sum over the neighbourhood) and ``I`` is the network's input
  image (the CRF receives it from :class:`arborseg.nn.builder.ArborNet`). ``theta_I`` starts at half the
  spread (std) of the normalised training image; ``w_c`` (one weight per class) starts at 1.

The appearance kernel is computed **exactly** over the local neighbourhood rather than with the permutohedral
lattice of the original: windows are small (z 3-5, xy 64-256), a 3 x 7 x 7 neighbourhood covers the
membrane-to-membrane distances that matter at EM resolution, the exact sum is differentiable in every bandwidth
without a lattice approximation, and it runs anywhere torch runs (CPU, CUDA, TorchScript, ONNX) with no custom
kernel. Cost per voxel with ``K = 3 k^2 - 1`` neighbours, ``C`` classes and ``T`` iterations: about ``6 K``
FLOPs for the weights (once per forward) plus ``2 K C`` per iteration; memory: the ``K`` weights and ``K``
squared differences per voxel, kept for the backward pass (the messages are accumulated neighbour by neighbour,
so no ``K x C`` tensor is ever built).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from arborseg.log import get_logger

log = get_logger(__name__)

#: the intensity bandwidth starts at this fraction of the normalised image's std
INTENSITY_BANDWIDTH_FRACTION = 0.5


@dataclass(frozen=True)
class ImageFacts:
    """What an appearance kernel's initial bandwidths come from: the data's z step in units of its xy voxel size,
    and the spread (std) of the normalised training image."""

    z_step: float = 1.0
    intensity_spread: float = 0.25

    @classmethod
    def of(cls, voxel_size: Sequence[float] | None, image_std: float) -> ImageFacts:
        """From a data config's ``voxel_size`` (z, y, x; None: isotropic) and its normalised image's std."""
        if voxel_size is None:
            log.info("no voxel_size in the data config: the CRF's appearance kernel treats z steps like xy steps")
            z_step = 1.0
        else:
            z, y, x = (float(v) for v in voxel_size)
            z_step = z / ((y + x) / 2)
        spread = float(image_std) if math.isfinite(image_std) and image_std > 0 else cls.intensity_spread
        return cls(z_step=z_step, intensity_spread=spread)


def neighbourhood(kernel: int) -> list[tuple[int, int, int]]:
    """The (dz, dy, dx) offsets of a 3 x kernel x kernel neighbourhood, centre left out."""
    r = kernel // 2
    return [(dz, dy, dx) for dz in (-1, 0, 1) for dy in range(-r, r + 1) for dx in range(-r, r + 1)
            if (dz, dy, dx) != (0, 0, 0)]


def _window(kernel: int, offset: tuple[int, int, int], shape: Sequence[int]) -> tuple[slice, ...]:
    """The index of a (Z, Y, X) volume moved by ``offset`` inside its padded copy (1 in z, kernel // 2 in y, x)."""
    r, (dz, dy, dx), (z, y, x) = kernel // 2, offset, shape
    return (slice(None), slice(None), slice(1 + dz, 1 + dz + z), slice(r + dy, r + dy + y), slice(r + dx, r + dx + x))


class _NeighbourSum(torch.autograd.Function):
    """``sum_k w_k * shift_k(q)`` with a hand-written backward pass that accumulates in place.

    Autograd of the plain loop would give each of the K shifted views its own zero-filled gradient of the padded
    volume; here the gradient of ``q`` is one padded buffer, and only ``q`` and the weights are kept."""

    @staticmethod
    def forward(ctx: Any, kernel: int, offsets: list[tuple[int, int, int]], q: torch.Tensor,
                *weights: torch.Tensor) -> torch.Tensor:
        r = kernel // 2
        padded = F.pad(q, (r, r, r, r, 1, 1))
        message = torch.zeros_like(q)
        for weight, offset in zip(weights, offsets):
            message.addcmul_(weight, padded[_window(kernel, offset, q.shape[2:])])
        ctx.kernel, ctx.offsets = kernel, offsets
        ctx.save_for_backward(padded, *weights)
        return message

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        padded, *weights = ctx.saved_tensors
        kernel, offsets, shape = ctx.kernel, ctx.offsets, grad.shape[2:]
        grad_padded = torch.zeros_like(padded) if ctx.needs_input_grad[2] else None
        grad_weights: list[torch.Tensor | None] = []
        for weight, offset in zip(weights, offsets):
            index = _window(kernel, offset, shape)
            if grad_padded is not None:
                grad_padded[index].addcmul_(weight, grad)
            grad_weights.append((grad * padded[index]).sum(1, keepdim=True) if weight.requires_grad else None)
        grad_q = grad_padded[_window(kernel, (0, 0, 0), shape)] if grad_padded is not None else None
        return (None, None, grad_q, *grad_weights)


class AppearanceKernel(nn.Module):
    """Exact bilateral message passing over a 3 x k x k neighbourhood (see the module docstring)."""

    #: neighbours whose position weight is below this fraction of the largest are left out (0: none)
    min_relative_weight = 1e-4
    z_step: torch.Tensor  # buffers
    offset_table: torch.Tensor

    def __init__(self, n_classes: int, kernel: int, sigma: float, facts: ImageFacts) -> None:
        super().__init__()
        self.kernel = kernel
        self.offsets = neighbourhood(kernel)
        self.log_theta_xy = nn.Parameter(torch.tensor(math.log(sigma)))
        self.log_theta_z = nn.Parameter(torch.tensor(math.log(sigma)))
        self.log_theta_intensity = nn.Parameter(
            torch.tensor(math.log(INTENSITY_BANDWIDTH_FRACTION * facts.intensity_spread)))
        self.weight = nn.Parameter(torch.ones(n_classes))
        self.register_buffer("z_step", torch.tensor(float(facts.z_step)))  # saved with the weights
        self.register_buffer("offset_table", torch.tensor(self.offsets, dtype=torch.float32), persistent=False)

    def _pad(self, t: torch.Tensor) -> torch.Tensor:
        r = self.kernel // 2
        return F.pad(t, (r, r, r, r, 1, 1))

    def weights(self, image: torch.Tensor) -> tuple[list[tuple[int, int, int]], list[torch.Tensor]]:
        """The neighbours (offsets) that count and, for each, its weight (N, 1, Z, Y, X) at each voxel of ``image``
        (N, C_in, Z, Y, X).

        Offsets whose position weight is below ``min_relative_weight`` of the largest are left out (on anisotropic
        data the z neighbours, far away in nm, usually are): each would carry less than that fraction of the
        nearest neighbour's weight. Weights are a list rather than one (N, K, ...) tensor: the backward pass of K
        slices of one tensor would build K tensors of its full size (quadratic in K)."""
        table = self.offset_table.to(image.dtype)
        dz, dyx2 = table[:, 0] * self.z_step, table[:, 1] ** 2 + table[:, 2] ** 2
        position = -0.5 * (dz ** 2 * torch.exp(-2 * self.log_theta_z) + dyx2 * torch.exp(-2 * self.log_theta_xy))
        log_g = torch.log_softmax(position, dim=0)  # the Gaussian over offsets, normalised to unit sum
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # an exported net keeps its trained offsets
            floor = math.log(self.min_relative_weight) if self.min_relative_weight > 0 else -math.inf
            kept = [k for k, v in enumerate((log_g - log_g.max()).tolist()) if v >= floor]
        scale = 0.5 * torch.exp(-2 * self.log_theta_intensity)
        padded, shape = self._pad(image), image.shape[2:]
        offsets = [self.offsets[k] for k in kept]
        weights = [torch.exp(log_g[k] - scale * ((image - padded[_window(self.kernel, self.offsets[k], shape)]) ** 2)
                             .sum(1, keepdim=True)) for k in kept]
        return offsets, weights

    def forward(self, q: torch.Tensor, offsets: list[tuple[int, int, int]], weights: list[torch.Tensor]) -> torch.Tensor:
        """Messages (N, C, Z, Y, X): sum over neighbours j of weights_ij * q_j, times the per-class weight (zero
        padding: neighbours outside the window send nothing); ``offsets, weights`` from :meth:`weights`."""
        needs_grad = torch.is_grad_enabled() and (q.requires_grad or any(w.requires_grad for w in weights))
        if needs_grad and not torch.jit.is_tracing():
            message = _NeighbourSum.apply(self.kernel, offsets, q, *weights)
        else:  # the same sum in plain ops: what TorchScript and ONNX record
            message = torch.zeros_like(q)
            padded, shape = self._pad(q), q.shape[2:]
            for weight, offset in zip(weights, offsets):
                message = message + weight * padded[_window(self.kernel, offset, shape)]
        return message * self.weight.view(1, -1, 1, 1, 1)

    def flops_per_voxel(self, n_classes: int, iterations: int, in_channels: int = 1) -> int:
        """Elementwise FLOPs per voxel (PyTorch's flop counter counts only convolutions and matmuls)."""
        k = len(self.offsets)
        return k * (3 * in_channels + 3) + iterations * (2 * k * n_classes + n_classes)


class CRF3d(nn.Module):
    """CRF-as-RNN mean-field refinement: the spatial kernel, and optionally the appearance kernel (module docs).

    With the appearance kernel the module needs the network's input image: :class:`ArborNet` sets ``image``
    before each forward pass (``needs_image`` is True) and clears it after.
    """

    def __init__(self, n_classes: int, iterations: int, kernel: int, sigma: float,
                 appearance: AppearanceKernel | None = None) -> None:
        super().__init__()
        self.iterations = iterations
        self.spatial = nn.Conv3d(n_classes, n_classes, (3, kernel, kernel), padding=(1, kernel // 2, kernel // 2),
                                 groups=n_classes, bias=False)
        self.compat = nn.Conv3d(n_classes, n_classes, 1, bias=False)
        self.appearance = appearance
        self.image: torch.Tensor | None = None
        with torch.no_grad():
            zz, yy, xx = torch.meshgrid(torch.arange(3) - 1.0, torch.arange(kernel) - kernel // 2.0,
                                        torch.arange(kernel) - kernel // 2.0, indexing="ij")
            g = torch.exp(-(yy ** 2 + xx ** 2) / (2 * sigma ** 2) - zz ** 2 / (2 * (sigma / 2) ** 2))
            g[1, kernel // 2, kernel // 2] = 0.0
            self.spatial.weight.copy_((g / g.sum()).expand(n_classes, 1, *g.shape))
            potts = 1.0 - torch.eye(n_classes)
            self.compat.weight.copy_(potts.view(n_classes, n_classes, 1, 1, 1))

    @property
    def needs_image(self) -> bool:
        return self.appearance is not None

    def forward(self, unary: torch.Tensor) -> torch.Tensor:
        weights = None
        if self.appearance is not None:
            if self.image is None:
                raise RuntimeError("the CRF's appearance kernel needs the input image: run it inside ArborNet")
            offsets, weights = self.appearance.weights(self.image.to(unary.dtype))
        logits = unary
        for _ in range(self.iterations):
            q = F.softmax(logits, dim=1)
            messages = self.spatial(q)
            if self.appearance is not None and weights is not None:
                messages = messages + self.appearance(q, offsets, weights)
            logits = unary - self.compat(messages)
        return logits

    def extra_flops(self, window: Sequence[int], in_channels: int = 1) -> int:
        """FLOPs of one window (batch 1) beyond what PyTorch's flop counter sees (the appearance kernel)."""
        if self.appearance is None:
            return 0
        n_classes = self.compat.weight.shape[0]
        return math.prod(window) * self.appearance.flops_per_voxel(n_classes, self.iterations, in_channels)
