"""Models Genesis (Zhou et al., MICCAI 2019 / MedIA 2021): self-supervised restoration of distorted patches.

A whole encoder-decoder (the tree's ``encoder_decoder``: encoder *and* decoder) learns to restore a patch of
unlabeled EM from a distorted copy of it, with a mean squared error. The distortions are Models Genesis' four,
with its probabilities: a random monotonic intensity curve (a cubic Bezier through (0, 0) and (1, 1), inverted
half of the time; p = 0.9), local pixel shuffling (pixels permuted inside many small blocks; p = 0.5), and
painting (p = 0.9): out-painting (noise everywhere but a few boxes; 0.8 of the time) or in-painting (a few boxes
filled with noise). Each sample is also rotated by a multiple of 90° and flipped, input and target alike.

Two changes for EM and for arborseg's instance-norm networks, both measured on the unlabeled EM with a small 2D
U-Net: the target is the patch standardised (:func:`standardise`, why there), and the intensity curve does not
invert intensities by default (``invert`` 0; Models Genesis inverts half of its curves). EM's polarity is fixed
by the stain (membranes are dark in every volume a tree will segment), so an inverted patch teaches nothing a
segmentation needs, and it made the task unlearnable at this budget: with inversion the restoration error stayed
at that of predicting zero (1.0) for 100 steps, without it fell to 0.6 (``genesis: {invert: 0.5}`` restores
Models Genesis' choice).

Why it is here beside MoCo v2: restoration trains the decoder too, so a tree starts with both halves of its
U-Net pre-trained (Models Genesis' fine-tuning recipe), and it learns from every voxel of every patch, which on
a CPU budget of a few thousand steps gives a much stronger training signal than one positive among a queue.

Thin-3D encoders see small z-stacks; the xy distortions are the same on every slice of a stack (EM's z spacing
is coarse, so the boxes span the stack as a structure would). :meth:`Genesis.encoder_checkpoint` writes the
encoder-decoder in MoCo / CEM500K layout (``module.encoder_q.<name>``): the encoder tensors load as any
pre-trained encoder does, and the decoder tensors (``ups.*``, ``decoders.*``) load too where the tree's decoder
has their shapes (:func:`arborseg.nn.pretrained.load_encoder`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import comb
from torch import nn

from arborseg.nn.blocks import BuildContext, EncoderDecoder
from arborseg.nn.layers import SliceWise
from arborseg.tree import ModuleNode


@dataclass(frozen=True)
class Distortions:
    """Models Genesis' probabilities (``pytorch/config.py`` of MrGiovanni/ModelsGenesis)."""

    nonlinear: float = 0.9  # a random intensity curve
    invert: float = 0.0  # of the curves, the share that inverts intensities (Models Genesis: 0.5)
    local_shuffle: float = 0.5  # pixels permuted inside small blocks
    paint: float = 0.9  # in- or out-painting
    outpaint: float = 0.8  # of the painted samples, the share out-painted (the rest in-painted)


#: local pixel shuffling: blocks of 1 .. side / 10 pixels a side, about this many per 64 x 64 slice (Models
#: Genesis permutes 10 000 blocks of a 64 x 64 x 32 cube: ~310 per 64 x 64 slice)
SHUFFLE_BLOCKS_PER_4096_PIXELS = 312


def bezier_curve(rng: np.random.Generator, invert: float = 0.0, n: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """A cubic Bezier from (0, 0) to (1, 1) through two random control points: (x, y) samples, x increasing; with
    probability ``invert`` the y samples run the other way (a decreasing map)."""
    points = np.array([[0.0, 0.0], rng.random(2), rng.random(2), [1.0, 1.0]])
    t = np.linspace(0.0, 1.0, n)
    basis = np.array([comb(3, i) * t ** (3 - i) * (1 - t) ** i for i in range(4)])  # (4, n)
    xs, ys = points[:, 0] @ basis, points[:, 1] @ basis  # from (1, 1) at t = 0 to (0, 0) at t = 1
    # as Models Genesis: both sorted (an increasing map), or x sorted and y in curve order (a decreasing map: the
    # intensities inverted), which Models Genesis draws half the time
    return np.sort(xs), (ys if rng.random() < invert else np.sort(ys))


def nonlinear_intensity(x: np.ndarray, rng: np.random.Generator, invert: float = 0.0) -> np.ndarray:
    xs, ys = bezier_curve(rng, invert)
    return np.interp(np.clip(x, 0.0, 1.0), xs, ys).astype(x.dtype)


def local_pixel_shuffle(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Permute the pixels inside many small xy blocks of every slice of ``x`` (Z, Y, X)."""
    out = x.copy()
    _, h, w = x.shape
    n = max(1, round(SHUFFLE_BLOCKS_PER_4096_PIXELS * h * w / 4096))
    for _ in range(n):
        bh, bw = int(rng.integers(1, max(2, h // 10 + 1))), int(rng.integers(1, max(2, w // 10 + 1)))
        y0, x0 = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
        for z in range(x.shape[0]):
            block = x[z, y0:y0 + bh, x0:x0 + bw].ravel()
            out[z, y0:y0 + bh, x0:x0 + bw] = rng.permutation(block).reshape(bh, bw)
    return out


def _box(rng: np.random.Generator, h: int, w: int, lo: float, hi: float) -> tuple[int, int, int, int]:
    """A box (y0, x0, bh, bw) of lo..hi of each side, at least 3 pixels from the border where it fits."""
    bh = int(rng.integers(max(1, int(h * lo)), max(2, int(h * hi)) + 1))
    bw = int(rng.integers(max(1, int(w * lo)), max(2, int(w * hi)) + 1))
    margin_y, margin_x = min(3, (h - bh) // 2), min(3, (w - bw) // 2)
    y0 = int(rng.integers(margin_y, h - bh - margin_y + 1))
    x0 = int(rng.integers(margin_x, w - bw - margin_x + 1))
    return y0, x0, bh, bw


def in_paint(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Up to 5 boxes of 1/6-1/3 of each side filled with uniform noise."""
    out = x.copy()
    _, h, w = x.shape
    for _ in range(5):
        if rng.random() >= 0.95:
            break
        y0, x0, bh, bw = _box(rng, h, w, 1 / 6, 1 / 3)
        out[:, y0:y0 + bh, x0:x0 + bw] = rng.random((x.shape[0], bh, bw))
    return out


def out_paint(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Uniform noise everywhere except 1-5 boxes of 3/7-4/7 of each side, which keep the image."""
    out = rng.random(x.shape).astype(x.dtype)
    _, h, w = x.shape
    for i in range(5):
        if i > 0 and rng.random() >= 0.95:
            break
        y0, x0, bh, bw = _box(rng, h, w, 3 / 7, 4 / 7)
        out[:, y0:y0 + bh, x0:x0 + bw] = x[:, y0:y0 + bh, x0:x0 + bw]
    return out


def distort(x: np.ndarray, rng: np.random.Generator, d: Distortions = Distortions()) -> np.ndarray:
    """A distorted copy of one patch (Z, Y, X) of 0..1 intensities, in Models Genesis' order."""
    out = local_pixel_shuffle(x, rng) if rng.random() < d.local_shuffle else x.copy()
    if rng.random() < d.nonlinear:
        out = nonlinear_intensity(out, rng, d.invert)
    if rng.random() < d.paint:
        out = out_paint(out, rng) if rng.random() < d.outpaint else in_paint(out, rng)
    return out


def restoration_pairs(patches: list[np.ndarray], rng: np.random.Generator, d: Distortions = Distortions()
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(distorted, target) batches (N, 1, Z, P, P) of patches (Z, P, P), each rotated and flipped at random."""
    inputs, targets = [], []
    for patch in patches:
        target = np.rot90(patch, int(rng.integers(0, 4)), axes=(-2, -1))
        if rng.random() < 0.5:
            target = target[..., ::-1]
        target = np.ascontiguousarray(target, dtype=np.float32)
        inputs.append(distort(target, rng, d))
        targets.append(target)
    return (torch.from_numpy(np.stack(inputs)).unsqueeze(1).float(),
            torch.from_numpy(np.stack(targets)).unsqueeze(1).float())


def standardise(x: torch.Tensor) -> torch.Tensor:
    """Each patch of (N, 1, Z, Y, X) to mean 0 and standard deviation 1.

    The target of the restoration. Models Genesis restores raw intensities with a batch-norm U-Net; arborseg's
    encoder-decoders use instance norm, after which the output cannot carry a patch's own brightness and contrast
    (every image's features are normalised away from them): measured on the unlabeled EM, a 2D U-Net restoring
    raw intensities settled within 200 steps at the error of predicting every patch's mean (MSE ~0.06) and drew
    grey blurs. Segmentation does not depend on a patch's brightness either, so the network restores the
    standardised patch: its structure."""
    dims = tuple(range(1, x.dim()))
    return (x - x.mean(dims, keepdim=True)) / x.std(dims, keepdim=True).clamp_min(1e-3)


class Genesis(nn.Module):
    """An ``encoder_decoder`` (built as in a tree) and a 1 x 1 convolution to one intensity channel."""

    def __init__(self, values: dict[str, Any]) -> None:
        super().__init__()
        built, width = BuildContext(2).build(ModuleNode("encoder_decoder", tuple(sorted(values.items()))), 1)
        net = built.module if isinstance(built, SliceWise) else built
        assert isinstance(net, EncoderDecoder)
        self.net = net
        self.two_d = values.get("dims", "2d") == "2d"
        conv = nn.Conv2d if self.two_d else nn.Conv3d
        self.head = conv(width, 1, 1)

    def restore(self, x: torch.Tensor) -> torch.Tensor:
        """Restored patches (N, 1, Z, P, P) of distorted ones of the same shape."""
        if self.two_d:
            return self.head(self.net(x[:, :, 0])).unsqueeze(2)
        out: torch.Tensor = self.head(self.net(x))
        return out

    def forward(self, distorted: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(MSE of the restoration, {"copy_mse": the MSE of returning the input unchanged}) of one batch, both
        on patches standardised one by one (see :func:`standardise`)."""
        target = standardise(target)
        loss = F.mse_loss(self.restore(distorted), target)
        with torch.no_grad():
            copy_mse = F.mse_loss(standardise(distorted), target)
        return loss, {"copy_mse": copy_mse}

    def encoder_checkpoint(self, norms: tuple[float, float], meta: dict[str, Any]) -> dict[str, Any]:
        """The encoder-decoder in MoCo / CEM500K layout (``module.encoder_q.<name>``; the head is left out)."""
        state = {f"module.encoder_q.{k}": v.detach().cpu().clone() for k, v in self.net.state_dict().items()}
        return {"state_dict": state, "norms": [float(norms[0]), float(norms[1])], "arch": meta.get("arch", ""),
                "step": int(meta.get("step", 0)), "arborseg": meta}
