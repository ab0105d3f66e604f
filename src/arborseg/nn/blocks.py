"""The module registry: one builder per module type of ``arborseg.space.catalog``.

A builder has the signature ``build(node, in_channels, ctx) -> (module, out_channels)``; every
module maps (N, C, Z, Y, X) to (N, C', Z, Y, X). Register new ones with :func:`register_builder`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from arborseg.errors import TreeError
from arborseg.nn.crf import AppearanceKernel, CRF3d, ImageFacts
from arborseg.nn.layers import Dims, SliceWise, activation, conv_unit
from arborseg.nn.resnet import ResNetUNet2d
from arborseg.space.catalog import MODULE_SPECS
from arborseg.tree import ModuleNode

Builder = Callable[[ModuleNode, int, "BuildContext"], tuple[nn.Module, int]]
BUILDERS: dict[str, Builder] = {}


def register_builder(name: str) -> Callable[[Builder], Builder]:
    """Decorator registering the builder of module type ``name`` (which must be in the catalogue)."""

    def deco(fn: Builder) -> Builder:
        if name not in MODULE_SPECS:
            raise ValueError(f"{name!r} has no ModuleSpec; register it in arborseg.space.catalog first")
        BUILDERS[name] = fn
        return fn

    return deco


@dataclass
class BuildContext:
    n_classes: int
    image_facts: ImageFacts = ImageFacts()  # what a CRF's appearance kernel starts from

    def build(self, node: ModuleNode, cin: int) -> tuple[nn.Module, int]:
        if node.type not in BUILDERS:
            raise TreeError(f"unknown module type {node.type!r} (known: {', '.join(sorted(BUILDERS))})")
        return BUILDERS[node.type](node, cin, self)


def _dims(node: ModuleNode) -> Dims:
    return Dims(node.get("dims", "2d"), node.get("kernel_z", 3))


def _slicewise(dims: Dims, module: nn.Module) -> nn.Module:
    return SliceWise(module) if dims.name == "2d" else module


def _stack(dims: Dims, cin: int, cout: int, p: dict, layers: int, dilation_growth: int = 1) -> nn.Sequential:
    units = []
    for i in range(layers):
        units.append(conv_unit(dims, cin if i == 0 else cout, cout, p["kernel_size"], p["norm"], p["activation"],
                               p["separable"], p["dropout"], dilation=dilation_growth ** i))
    return nn.Sequential(*units)


# ---------------------------------------------------------------------- containers
class Sequence(nn.Sequential):
    pass


class Parallel(nn.Module):
    """Branches on the same input, merged by channel concatenation or addition."""

    def __init__(self, branches: list[nn.Module], merge: str, projections: list[nn.Module]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)
        self.projections = nn.ModuleList(projections)
        self.merge = merge

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [proj(branch(x)) for branch, proj in zip(self.branches, self.projections)]
        return torch.cat(outs, dim=1) if self.merge == "concat" else torch.stack(outs).sum(0)


class Residual(nn.Module):
    def __init__(self, body: nn.Module, skip: nn.Module) -> None:
        super().__init__()
        self.body, self.skip = body, skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.skip(x)


@register_builder("sequence")
def build_sequence(node: ModuleNode, cin: int, ctx: BuildContext) -> tuple[nn.Module, int]:
    modules = []
    for child in node.children:
        module, cin = ctx.build(child, cin)
        modules.append(module)
    return Sequence(*modules), cin


@register_builder("parallel")
def build_parallel(node: ModuleNode, cin: int, ctx: BuildContext) -> tuple[nn.Module, int]:
    built = [ctx.build(child, cin) for child in node.children]
    widths = [c for _, c in built]
    merge = node.get("merge", "concat")
    projections: list[nn.Module]
    if merge == "concat":
        projections, cout = [nn.Identity() for _ in built], sum(widths)
    else:  # add: project every branch to the widest one where widths differ
        cout = max(widths)
        projections = [nn.Identity() if c == cout else nn.Conv3d(c, cout, 1) for c in widths]
    return Parallel([m for m, _ in built], merge, projections), cout


@register_builder("residual")
def build_residual(node: ModuleNode, cin: int, ctx: BuildContext) -> tuple[nn.Module, int]:
    body, cout = ctx.build(node.children[0], cin)
    return Residual(body, nn.Identity() if cout == cin else nn.Conv3d(cin, cout, 1)), cout


@register_builder("repeat")
def build_repeat(node: ModuleNode, cin: int, ctx: BuildContext) -> tuple[nn.Module, int]:
    modules = []
    for _ in range(node.get("times", 1)):
        module, cin = ctx.build(node.children[0], cin)
        modules.append(module)
    return Sequence(*modules), cin


@register_builder("identity")
def build_identity(node: ModuleNode, cin: int, ctx: BuildContext) -> tuple[nn.Module, int]:
    return nn.Identity(), cin


# ---------------------------------------------------------------------- convolution blocks
@register_builder("conv_block")
def build_conv_block(node: ModuleNode, cin: int, ctx: BuildContext) -> tuple[nn.Module, int]:
    p, dims = node.p, _dims(node)
    return _slicewise(dims, _stack(dims, cin, p["width"], p, p["layers"])), p["width"]


@register_builder("dilated_block")
def build_dilated_block(node: ModuleNode, cin: int, ctx: BuildContext) -> tuple[nn.Module, int]:
    p, dims = node.p, _dims(node)
    return _slicewise(dims, _stack(dims, cin, p["width"], p, p["layers"], p["dilation_growth"])), p["width"]


class EncoderDecoder(nn.Module):
    """A U-Net with ``depth`` resolution levels (``depth - 1`` poolings, never along z in thin 3D).

    While ``taps`` is a list (deep supervision sets one for a training forward pass), the output of every
    decoder level is appended to it, lowest resolution first; the output itself does not change."""

    def __init__(self, dims: Dims, cin: int, p: dict) -> None:
        super().__init__()
        depth = p["depth"]
        self.dims = dims
        self.taps: list[torch.Tensor] | None = None
        #: where the encoder (``encoders``, ``downs``) starts: "random" or a checkpoint (arborseg.nn.pretrained)
        self.init_source = str(p.get("init", "random"))
        self.widths = [max(1, int(round(p["width"] * p["width_growth"] ** i))) for i in range(depth)]
        self.skip_merge = p["skip_merge"]

        def block(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(*[_stack(dims, c_in if b == 0 else c_out, c_out, p, p["layers_per_block"])
                                   for b in range(p["blocks_per_level"])])

        self.encoders = nn.ModuleList()
        self.downs = nn.ModuleList()
        c = cin
        for level, w in enumerate(self.widths):
            if level > 0:
                self.downs.append(dims.down(c, p["pooling"]))
            self.encoders.append(block(c, w))
            c = w
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level in range(depth - 2, -1, -1):
            w = self.widths[level]
            self.ups.append(dims.up(self.widths[level + 1], w, p["upsampling"]))
            self.decoders.append(block(2 * w if self.skip_merge == "concat" else w, w))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level, encoder in enumerate(self.encoders):
            if level > 0:
                x = self.downs[level - 1](x)
            x = encoder(x)
            skips.append(x)
        for up, decoder, skip in zip(self.ups, self.decoders, reversed(skips[:-1])):
            x = up(x)
            x = torch.cat([x, skip], dim=1) if self.skip_merge == "concat" else x + skip
            x = decoder(x)
            if self.taps is not None:
                self.taps.append(x)
        return x


@register_builder("encoder_decoder")
def build_encoder_decoder(node: ModuleNode, cin: int, ctx: BuildContext) -> tuple[nn.Module, int]:
    dims = _dims(node)
    module = EncoderDecoder(dims, cin, node.p)
    return _slicewise(dims, module), module.widths[0]


class SpatialPyramid(nn.Module):
    """Parallel dilated branches (rates 1, base, base^2, ...) and optional image pooling, merged."""

    def __init__(self, dims: Dims, cin: int, p: dict) -> None:
        super().__init__()
        w = p["width"]
        self.branches = nn.ModuleList(
            conv_unit(dims, cin, w, p["kernel_size"], p["norm"], p["activation"], p["separable"],
                      dilation=p["dilation_base"] ** i)
            for i in range(p["branches"]))
        self.pooling = None
        if p["image_pooling"]:
            self.pooling = nn.Sequential(dims.global_pool(), dims.conv1x1(cin, w), activation(p["activation"]))
        self.merge = p["merge"]
        n = p["branches"] + (1 if self.pooling is not None else 0)
        self.project = conv_unit(dims, w * n, w, 1, p["norm"], p["activation"], False, p["dropout"]) \
            if self.merge == "concat" else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [branch(x) for branch in self.branches]
        if self.pooling is not None:
            outs.append(self.pooling(x).expand_as(outs[0]))
        return self.project(torch.cat(outs, 1) if self.merge == "concat" else torch.stack(outs).sum(0))


@register_builder("resnet_unet")
def build_resnet_unet(node: ModuleNode, cin: int, ctx: BuildContext) -> tuple[nn.Module, int]:
    module = ResNetUNet2d(cin, node.get("decoder_width", 16))
    module.init_source = str(node.get("init", "random"))
    return SliceWise(module), module.out_channels


@register_builder("spatial_pyramid")
def build_spatial_pyramid(node: ModuleNode, cin: int, ctx: BuildContext) -> tuple[nn.Module, int]:
    dims = _dims(node)
    return _slicewise(dims, SpatialPyramid(dims, cin, node.p)), node.get("width")


# ---------------------------------------------------------------------- heads
@register_builder("predictor")
def build_predictor(node: ModuleNode, cin: int, ctx: BuildContext) -> tuple[nn.Module, int]:
    # A 1x1x1 convolution is the same per slice (2D) and per volume (3D).
    return nn.Conv3d(cin, ctx.n_classes, 1), ctx.n_classes


@register_builder("crf3d")
def build_crf3d(node: ModuleNode, cin: int, ctx: BuildContext) -> tuple[nn.Module, int]:
    if cin != ctx.n_classes:
        raise TreeError(f"crf3d needs one input channel per class ({ctx.n_classes}) but gets {cin}; "
                        "put it right after a predictor")
    p = node.p
    appearance = None
    if node.get("kernels", "spatial") == "spatial+appearance":
        appearance = AppearanceKernel(ctx.n_classes, node.get("appearance_kernel", 5),
                                      node.get("appearance_sigma", 2.0), ctx.image_facts)
    return CRF3d(ctx.n_classes, p["iterations"], p["spatial_kernel"], p["spatial_sigma"], appearance), ctx.n_classes
