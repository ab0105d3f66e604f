"""ModuleTree -> torch.nn.Module, with the windows it accepts, its size and its cost."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from arborseg.errors import WindowError
from arborseg.log import get_logger
from arborseg.nn.blocks import BuildContext, EncoderDecoder
from arborseg.nn.crf import CRF3d, ImageFacts
from arborseg.nn.resnet import RESNET_MULTIPLE
from arborseg.nn.supervision import DeepSupervisionHeads, head_parameter_ids, supervised_encoder_decoder
from arborseg.tree import ModuleTree

log = get_logger(__name__)

#: state_dict prefix of the deep-supervision heads (training only; dropped when loaded into a net without them)
AUX_PREFIX = "aux_heads."


def window_multiple(tree: ModuleTree) -> tuple[int, int, int]:
    """Each axis of a valid window must be a multiple of this (from the encoder-decoders' poolings)."""
    mz = mxy = 1
    for node in tree.root.walk():
        if node.type == "encoder_decoder":
            factor = 2 ** (node.get("depth", 1) - 1)
            mxy = math.lcm(mxy, factor)
            if node.get("dims") == "3d":
                mz = math.lcm(mz, factor)
        elif node.type == "resnet_unet":
            mxy = math.lcm(mxy, RESNET_MULTIPLE)
    return mz, mxy, mxy


def check_window(tree: ModuleTree, window: Sequence[int]) -> None:
    """Raise :class:`WindowError` with a suggestion when ``window`` (z, y, x) does not fit the tree."""
    if len(window) != 3 or any(int(v) < 1 for v in window):
        raise WindowError(f"window must be three positive sizes (z, y, x), got {tuple(window)}")
    multiple = window_multiple(tree)
    small = [axis for axis, size, m in zip("zyx", window, multiple) if m > 1 and size < 2 * m]
    if small:
        minimum = tuple(2 * m if m > 1 else s for s, m in zip(window, multiple))
        raise WindowError(
            f"window {tuple(window)} is too small for {tree.name}: the bottleneck of its encoder-decoder must keep "
            f"at least 2 voxels along {', '.join(small)}; use at least {minimum}")
    bad = [axis for axis, size, m in zip("zyx", window, multiple) if size % m]
    if bad:
        fixed = tuple(max(m, int(round(s / m)) * m) for s, m in zip(window, multiple))
        raise WindowError(
            f"window {tuple(window)} does not fit {tree.name}: {', '.join(bad)} must be multiples of "
            f"{dict(zip('zyx', multiple))} (the encoder-decoder pools {int(math.log2(max(multiple)))} times); "
            f"try {fixed}")


class ArborNet(nn.Module):
    """The network of a module tree: (N, 1, Z, Y, X) -> logits (N, n_classes, Z, Y, X).

    With ``deep_supervision`` it also has 1x1 heads at the decoder levels of its first deep enough encoder-decoder
    (:mod:`arborseg.nn.supervision`): a forward pass in training mode keeps those levels' features and
    :meth:`deep_supervision_outputs` turns them into auxiliary logits. The output, evaluation, export and FLOPs
    are those of the network without heads; a state_dict with head weights loads into a network without them.
    """

    def __init__(self, tree: ModuleTree, n_classes: int, in_channels: int = 1, deep_supervision: bool = False,
                 image_facts: ImageFacts | None = None) -> None:
        super().__init__()
        self.tree = tree
        self.n_classes = n_classes
        self.in_channels = in_channels
        self.multiple = window_multiple(tree)
        self.body, out = BuildContext(n_classes, image_facts or ImageFacts()).build(tree.root, in_channels)
        assert out == n_classes, f"network ends with {out} channels, expected {n_classes}"
        # modules that see the input image as well as their input (a CRF's appearance kernel)
        self._image_users = [m for m in self.body.modules() if isinstance(m, CRF3d) and m.needs_image]
        self.aux_heads: DeepSupervisionHeads | None = None
        self._tap_name = ""
        self._aux: tuple[list[torch.Tensor], int] | None = None
        if deep_supervision:
            found = supervised_encoder_decoder(self.body)
            if found is None:
                log.debug("deep supervision has no effect on %s: no encoder_decoder of depth >= 4", tree.name)
            else:  # built after the body: the body's initial weights do not depend on deep supervision
                self._tap_name = found[0]
                self.aux_heads = DeepSupervisionHeads(found[1], n_classes)

    @property
    def deep_supervision_levels(self) -> int:
        """The number of decoder resolutions the loss weights cover (nnU-Net's list), 0 without heads."""
        return 0 if self.aux_heads is None else self.aux_heads.levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise WindowError(f"{self.tree.name} expects input (N, {self.in_channels}, Z, Y, X), got {tuple(x.shape)}")
        if any(s % m or (m > 1 and s < 2 * m) for s, m in zip(x.shape[2:], self.multiple)):
            check_window(self.tree, tuple(x.shape[2:]))
        for user in self._image_users:
            user.image = x
        try:
            return self._body(x)
        finally:
            for user in self._image_users:
                user.image = None

    def _body(self, x: torch.Tensor) -> torch.Tensor:
        if self.aux_heads is None or not self.training:
            return self.body(x)
        tapped = self.body.get_submodule(self._tap_name)
        assert isinstance(tapped, EncoderDecoder)
        taps: list[torch.Tensor] = []
        tapped.taps = taps
        try:
            out = self.body(x)
            self._aux = (taps, x.shape[0])
        finally:
            tapped.taps = None
        return out

    def deep_supervision_outputs(self) -> list[torch.Tensor]:
        """The auxiliary logits of the last training-mode forward pass, highest resolution first (each
        (N, n_classes, z, y, x)); [] without heads. Each pass's features are used once: a second call returns []."""
        if self.aux_heads is None or self._aux is None:
            return []
        taps, batch = self._aux
        self._aux = None
        return self.aux_heads(taps, batch)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """As :meth:`torch.nn.Module.load_state_dict`; deep-supervision head weights are skipped when this network
        has no heads (a model trained with deep supervision predicts without them)."""
        if self.aux_heads is None and any(k.startswith(AUX_PREFIX) for k in state_dict):
            kept: OrderedDict[str, Any] = OrderedDict((k, v) for k, v in state_dict.items()
                                                      if not k.startswith(AUX_PREFIX))
            metadata = getattr(state_dict, "_metadata", None)
            if metadata is not None:
                kept._metadata = metadata  # type: ignore[attr-defined]
            state_dict = kept
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def build_network(tree: ModuleTree, n_classes: int, in_channels: int = 1, deep_supervision: bool = False,
                  image_facts: ImageFacts | None = None) -> ArborNet:
    """Build the PyTorch network of ``tree`` for ``n_classes`` output classes; ``deep_supervision``: with the
    training-only heads of :class:`ArborNet` (the trainer asks for them when the tree's training value does);
    ``image_facts``: the data's voxel size and intensity spread, where a CRF's appearance kernel starts from
    (trained weights carry them, so a network built to load weights needs none)."""
    return ArborNet(tree, n_classes, in_channels, deep_supervision, image_facts)


def uses_image_facts(tree: ModuleTree) -> bool:
    """Whether the tree's network starts from :class:`ImageFacts` (it has a CRF with the appearance kernel)."""
    return any(n.type == "crf3d" and n.get("kernels", "spatial") == "spatial+appearance" for n in tree.root.walk())


def count_parameters(model: nn.Module) -> int:
    """Parameters of the network as it predicts (deep supervision's training-only heads left out)."""
    heads = head_parameter_ids(model)
    return sum(p.numel() for p in model.parameters() if id(p) not in heads)


def count_flops(model: nn.Module, window: tuple[int, int, int], in_channels: int = 1) -> int:
    """Floating-point operations of one forward pass over one window (PyTorch's flop counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, in_channels, *window))
    finally:
        model.train(was_training)
    elementwise = sum(m.extra_flops(window, in_channels) for m in model.modules() if isinstance(m, CRF3d))
    return int(counter.get_total_flops()) + elementwise


def forward_gflops(tree: ModuleTree, n_classes: int = 2, window: tuple[int, int, int] | None = None) -> float:
    """GFLOPs of one forward pass over one window (default: the tree's own), counted without allocating
    the network: it is built on PyTorch's ``meta`` device (a training step costs about 3 x batch x this)."""
    window = (*(window or tree.window),)  # a tuple even when given a list
    check_window(tree, window)
    try:
        with torch.device("meta"):
            flops = count_flops(build_network(tree, n_classes), window)
    except (NotImplementedError, RuntimeError):  # a layer that cannot run on meta tensors: count for real
        flops = count_flops(build_network(tree, n_classes), window)
    return flops / 1e9


def network_summary(tree: ModuleTree, n_classes: int = 2, window: tuple[int, int, int] | None = None) -> dict:
    """Parameters and FLOPs per voxel of the tree's network for ``window`` (default: its own)."""
    window = (*(window or tree.window),)  # a tuple even when given a list
    check_window(tree, window)
    model = build_network(tree, n_classes)
    flops = count_flops(model, window)
    return {"params": count_parameters(model), "flops": flops, "flops_per_voxel": flops / math.prod(window),
            "window": list(window)}
