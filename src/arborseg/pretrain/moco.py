"""MoCo v2 (He et al. 2020; Chen et al. 2020), as CEM500K pre-trained its ResNet-50 on EM.

A query encoder learns by gradient; a key encoder follows it as a moving average (``momentum``); a queue keeps
the keys of the last ``queue`` views as negatives. Each view's pair partner is its one positive, and the loss is
InfoNCE at ``temperature``. Both encoders are a backbone (the encoder whose weights a tree's ``init`` loads),
global average pooling and a two-layer projection head (MoCo v2's MLP), the head being thrown away afterwards.

Backbones: the encoder half of an ``encoder_decoder`` (its ``encoders`` and ``downs``, built by the same code as
in a tree, so the weights' names and shapes are those of the tree's) or the ResNet-50 of ``resnet_unet``. In one
process there is no cross-GPU batch shuffle, so for backbones with batch norm the batch is split into groups and
the keys' groups are a random permutation of the queries' (MoCo's shuffling BN, emulated).

:meth:`MoCo.encoder_checkpoint` writes the query encoder in MoCo's layout (``module.encoder_q.<name>``, the head
as ``module.encoder_q.fc.0`` / ``fc.2``) with the ``norms`` it was trained with: CEM500K's format, which
:mod:`arborseg.nn.pretrained` reads.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from arborseg.nn.blocks import BuildContext, EncoderDecoder
from arborseg.nn.layers import SliceWise
from arborseg.nn.resnet import ResNet50Encoder
from arborseg.tree import ModuleNode

#: batch-norm groups of the emulated shuffling BN
BN_GROUPS = 2


class EncoderHalf(nn.Module):
    """The encoder of an :class:`EncoderDecoder`: its ``encoders`` and ``downs`` (same names), returning the
    bottleneck features. 2D encoders take (N, 1, Y, X), thin-3D ones (N, 1, Z, Y, X)."""

    def __init__(self, full: EncoderDecoder) -> None:
        super().__init__()
        self.encoders = full.encoders
        self.downs = full.downs
        self.out_channels = full.widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for level, encoder in enumerate(self.encoders):
            if level > 0:
                x = self.downs[level - 1](x)
            x = encoder(x)
        return x


class ResNetBackbone(nn.Module):
    """ResNet-50's last feature map; the input standardised with the pre-training intensities' mean and std."""

    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        self.net = ResNet50Encoder(1)
        self.mean, self.std = float(mean), float(std)
        self.out_channels = self.net.channels[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net((x - self.mean) / self.std)[-1]
        return out


def build_backbone(encoder: str | dict[str, Any], norms: tuple[float, float]
                   ) -> tuple[EncoderHalf | ResNetBackbone, str]:
    """(backbone, the prefix of its parameter names that a checkpoint drops)."""
    if encoder == "resnet50":
        return ResNetBackbone(*norms), "net."
    assert isinstance(encoder, dict)
    node = ModuleNode("encoder_decoder", tuple(sorted(encoder.items())))
    built, _ = BuildContext(2).build(node, 1)
    full = built.module if isinstance(built, SliceWise) else built
    assert isinstance(full, EncoderDecoder)
    return EncoderHalf(full), ""


class Branch(nn.Module):
    """Backbone -> projection head -> L2-normalised embedding.

    MoCo v2's head (pool, Linear, ReLU, Linear) suits batch-norm backbones (ResNet-50), whose features are centred
    over the batch. After instance norm (arborseg's encoders, nnU-Net's) every channel of the bottleneck has the
    same mean for every input: pooled, every patch looks alike, and measured on EM the embeddings of a batch
    started and stayed at a mean pairwise cosine of 0.997 (collapsed), the loss sitting near chance. For those the
    head follows MoCo v3 / SimCLR instead: its hidden layer runs at every position (1 x 1 convolution, batch
    norm, ReLU) before the pooling, and the output is batch-normalised, which centres the embeddings.
    """

    def __init__(self, backbone: EncoderHalf | ResNetBackbone, dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        width = backbone.out_channels
        first_conv = next(m for m in backbone.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d)))
        self.two_d = isinstance(first_conv, nn.Conv2d)
        self.pointwise = not _has_batch_norm(backbone)
        hidden = max(width, dim)
        self.fc: nn.Sequential
        if self.pointwise:
            conv = nn.Conv2d if self.two_d else nn.Conv3d
            norm = nn.BatchNorm2d if self.two_d else nn.BatchNorm3d
            self.fc = nn.Sequential(conv(width, hidden, 1, bias=False), norm(hidden), nn.ReLU(inplace=True),
                                    nn.Linear(hidden, dim, bias=False), nn.BatchNorm1d(dim, affine=False))
        else:
            self.fc = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (N, hidden or width) of views (N, 1, Z, Y, X): what nearest neighbours are judged by."""
        out = self.backbone(x[:, :, 0] if self.two_d else x)
        if self.pointwise:
            out = self.fc[2](self.fc[1](self.fc[0](out)))
        return out.flatten(2).mean(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        head = self.fc[3:] if self.pointwise else self.fc
        return F.normalize(head(f), dim=1)


def _has_batch_norm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


class MoCo(nn.Module):
    """Query and key branches, the queue, and the InfoNCE loss of one batch of view pairs."""

    queue: torch.Tensor
    queue_ptr: torch.Tensor

    def __init__(self, encoder: str | dict[str, Any], norms: tuple[float, float], dim: int = 128,
                 queue: int = 4096, momentum: float = 0.99, temperature: float = 0.2) -> None:
        super().__init__()
        backbone, self.drop_prefix = build_backbone(encoder, norms)
        self.encoder_q = Branch(backbone, dim)
        self.encoder_k = copy.deepcopy(self.encoder_q)
        for p in self.encoder_k.parameters():
            p.requires_grad_(False)
        self.momentum, self.temperature = float(momentum), float(temperature)
        self.register_buffer("queue", F.normalize(torch.randn(dim, queue), dim=0))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.shuffle_bn = _has_batch_norm(self.encoder_q)  # the backbone's or the head's batch norm

    @torch.no_grad()
    def _momentum_update(self) -> None:
        for q, k in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
            k.mul_(self.momentum).add_(q.detach(), alpha=1 - self.momentum)

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor) -> None:
        n, ptr = keys.shape[0], int(self.queue_ptr)
        self.queue[:, ptr:ptr + n] = keys.T
        self.queue_ptr.fill_((ptr + n) % self.queue.shape[1])

    def _grouped(self, branch: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if not self.shuffle_bn or x.shape[0] < 2 * BN_GROUPS:
            out: torch.Tensor = branch(x)
            return out
        return torch.cat([branch(part) for part in x.chunk(BN_GROUPS)])

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(InfoNCE loss, top-1 accuracy of finding the positive among the queue) of one batch of pairs."""
        q = self._grouped(self.encoder_q, first)
        with torch.no_grad():
            self._momentum_update()
            order = torch.randperm(second.shape[0], device=second.device)
            k = torch.empty_like(q)
            k[order] = self._grouped(self.encoder_k, second[order])  # BN groups differ from the queries'
        positive = (q * k).sum(1, keepdim=True)
        negative = q @ self.queue.clone().detach()
        logits = torch.cat([positive, negative], dim=1) / self.temperature
        labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        loss = F.cross_entropy(logits, labels)
        accuracy = (logits.argmax(1) == 0).float().mean()
        self._enqueue(k)
        return loss, accuracy

    def encoder_checkpoint(self, norms: tuple[float, float], meta: dict[str, Any]) -> dict[str, Any]:
        """The query encoder in MoCo / CEM500K layout, with its training norms and arborseg's description."""
        state = {}
        for key, value in self.encoder_q.state_dict().items():
            if key.startswith("backbone."):
                key = key[len("backbone."):]
                key = key[len(self.drop_prefix):] if key.startswith(self.drop_prefix) else key
            state[f"module.encoder_q.{key}"] = value.detach().cpu().clone()
        return {"state_dict": state, "norms": [float(norms[0]), float(norms[1])], "arch": meta.get("arch", ""),
                "step": int(meta.get("step", 0)), "arborseg": meta}
