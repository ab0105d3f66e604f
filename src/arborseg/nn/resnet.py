"""A ResNet-50 encoder inside a U-Net decoder (2D, run per slice): the network CEM500K's weights load into.

The encoder is torchvision's ResNet-50 (He et al. 2016) with one input channel, written out here with
torchvision's module names (``conv1``, ``bn1``, ``layer1`` .. ``layer4``, ``downsample.0/1``), so that a
state_dict of ``torchvision.models.resnet50`` with a one-channel ``conv1``, and therefore the MoCo v2
checkpoints of CEM500K (Conrad & Narayan 2021: keys ``module.encoder_q.conv1.weight`` ...), load tensor for
tensor. Why not torchvision itself: its PyPI wheels are CUDA builds that fail to import beside a CPU build of
torch (``operator torchvision::nms does not exist``), and the encoder is the only part needed.

The decoder follows segmentation_models_pytorch's U-Net (the one CEM500K fine-tuned): five nearest-neighbour
upsamplings, each followed by concatenation with the encoder's feature map of that resolution and two
3 x 3 conv-BN-ReLU units, with widths ``16 w, 8 w, 4 w, 2 w, w`` for ``decoder_width`` w. The input is
normalised inside the network with the mean and standard deviation the encoder was pre-trained with
(buffers ``input_mean``, ``input_std``; 0 and 1 for a random start), so exported networks carry them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: ResNet-50: blocks per stage and the bottleneck widths of each stage (output = 4 x width)
RESNET50_LAYERS = (3, 4, 6, 3)
RESNET50_WIDTHS = (64, 128, 256, 512)
#: xy size a window must be a multiple of (the encoder halves the resolution five times)
RESNET_MULTIPLE = 32


class Bottleneck(nn.Module):
    """torchvision's Bottleneck (v1.5: the stride sits on the 3 x 3 convolution)."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50Encoder(nn.Module):
    """ResNet-50 without its classifier: (N, C, Y, X) -> feature maps at strides 2, 4, 8, 16, 32."""

    def __init__(self, in_channels: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        cin = 64
        self.channels = [64]
        for i, (blocks, width) in enumerate(zip(RESNET50_LAYERS, RESNET50_WIDTHS)):
            stage = []
            for b in range(blocks):
                stage.append(Bottleneck(cin, width, stride=2 if (b == 0 and i > 0) else 1))
                cin = width * Bottleneck.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
            self.channels.append(cin)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.relu(self.bn1(self.conv1(x)))
        features = [x]
        x = self.maxpool(x)
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            features.append(x)
        return features


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DecoderBlock(nn.Module):
    def __init__(self, cin: int, skip: int, cout: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn_relu(cin + skip, cout)
        self.conv2 = _conv_bn_relu(cout, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class ResNetUNet2d(nn.Module):
    """ResNet-50 encoder + U-Net decoder, (N, 1, Y, X) -> (N, decoder_width, Y, X); Y, X multiples of 32."""

    input_mean: torch.Tensor
    input_std: torch.Tensor
    init_source: str

    def __init__(self, in_channels: int = 1, decoder_width: int = 16) -> None:
        super().__init__()
        self.register_buffer("input_mean", torch.zeros(()))
        self.register_buffer("input_std", torch.ones(()))
        self.encoder = ResNet50Encoder(in_channels)
        skips = self.encoder.channels[:-1][::-1] + [0]  # 1024, 512, 256, 64, then none at full resolution
        widths = [decoder_width * f for f in (16, 8, 4, 2, 1)]
        blocks, cin = [], self.encoder.channels[-1]
        for skip, width in zip(skips, widths):
            blocks.append(DecoderBlock(cin, skip, width))
            cin = width
        self.decoder = nn.ModuleList(blocks)
        self.out_channels = widths[-1]
        #: where a pre-trained encoder comes from ("random" or a checkpoint); set by the builder
        self.init_source = "random"

    def set_input_norms(self, mean: float, std: float) -> None:
        """The intensity mean and standard deviation the encoder was trained with (inputs in 0..1)."""
        self.input_mean.fill_(float(mean))
        self.input_std.fill_(float(std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder((x - self.input_mean) / self.input_std)
        x = features[-1]
        skips: list[torch.Tensor | None] = [*features[:-1][::-1], None]
        for block, skip in zip(self.decoder, skips):
            x = block(x, skip)
        return x
