"""Deep supervision (nnU-Net): segmentation heads at the decoder levels of an encoder-decoder, training only.

nnU-Net's decoder has a 1x1 segmentation head at every decoder resolution; the loss is a weighted sum over them
(:func:`arborseg.train.losses.deep_supervision_weights`, the lowest resolution's weight is 0). Here the network's
own output is the full-resolution one (whatever follows the encoder-decoder: predictor, 3D modules, CRF), and
:class:`DeepSupervisionHeads` adds 1x1 heads at the decoder levels between, highest resolution first; the lowest
decoder level, whose weight is 0, gets none. Only the first encoder-decoder of a tree (in tree order) with such a
level (``depth`` >= 4) is supervised: 2D (per slice, also the per-slice part of a hybrid tree), thin 3D (z kept)
and 3D (z pooled too; targets are sampled to each output's size).
"""

from __future__ import annotations

import torch
from torch import nn

from arborseg.nn.blocks import EncoderDecoder

#: the fewest encoder-decoder levels that give an auxiliary output (levels 1 .. depth - 3)
MIN_DEPTH = 4


def supervised_encoder_decoder(body: nn.Module) -> tuple[str, EncoderDecoder] | None:
    """(submodule name, module) of the first encoder-decoder in ``body`` with an auxiliary level, or None."""
    for name, module in body.named_modules():
        if isinstance(module, EncoderDecoder) and len(module.widths) >= MIN_DEPTH:
            return name, module
    return None


class DeepSupervisionHeads(nn.Module):
    """1x1 heads to ``n_classes`` at decoder levels 1 .. depth - 3 of ``encoder_decoder`` (level 0: full resolution).

    ``levels`` is the number of decoder resolutions (depth - 1), the length of nnU-Net's weight list."""

    def __init__(self, encoder_decoder: EncoderDecoder, n_classes: int) -> None:
        super().__init__()
        depth = len(encoder_decoder.widths)
        self.levels = depth - 1
        self.heads = nn.ModuleList(encoder_decoder.dims.conv1x1(encoder_decoder.widths[level], n_classes)
                                   for level in range(1, depth - 2))

    def forward(self, taps: list[torch.Tensor], batch: int) -> list[torch.Tensor]:
        """Logits (N, n_classes, z, y, x) per head, highest resolution first. ``taps``: the decoder outputs of one
        forward pass, lowest resolution first (2D ones with z folded into the batch: (N * Z, C, y, x));
        ``batch``: N."""
        if len(taps) != self.levels:
            raise RuntimeError(f"expected {self.levels} decoder outputs, got {len(taps)}")
        outputs = []
        for level, head in enumerate(self.heads, start=1):
            out = head(taps[-1 - level])
            if out.dim() == 4:  # per slice: (N * Z, C, y, x) -> (N, C, Z, y, x)
                out = out.reshape(batch, out.shape[0] // batch, *out.shape[1:]).permute(0, 2, 1, 3, 4)
            outputs.append(out)
        return outputs


def head_parameter_ids(model: nn.Module) -> set[int]:
    """ids of the parameters of every :class:`DeepSupervisionHeads` in ``model`` (not part of inference)."""
    return {id(p) for m in model.modules() if isinstance(m, DeepSupervisionHeads) for p in m.parameters()}
