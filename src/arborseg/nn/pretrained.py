"""Pre-trained encoders: read an encoder checkpoint and load it into the encoders of a network.

A checkpoint is either ``arborseg pretrain``'s ``encoder.pt`` or any MoCo v2 checkpoint, CEM500K's included:
a dict whose ``state_dict`` holds the query encoder under ``module.encoder_q.`` (the projection head ``fc.*``
and the key encoder are ignored) and, optionally, ``norms``: the [mean, std] of the 0..1 intensities the encoder
was trained with. A plain state_dict of the encoder (e.g. torchvision's ResNet-50 with a one-channel ``conv1``)
loads too. Which modules take one: ``encoder_decoder`` (its ``encoders.*`` and ``downs.*``) and ``resnet_unet``
(its ResNet-50), each through its tree value ``init``; the trainer calls :func:`initialise_encoders` before the
first step. Every tensor of the network's encoder must be found with its shape, else one line says what differs.
A checkpoint of a whole encoder-decoder (``arborseg pretrain`` with ``method: genesis``) also holds the decoder
(``ups.*``, ``decoders.*``): it loads too where the network's decoder has the same tensors and shapes; otherwise
the decoder starts at random and a warning says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from arborseg.errors import PretrainError
from arborseg.log import get_logger
from arborseg.nn.blocks import EncoderDecoder
from arborseg.nn.resnet import ResNetUNet2d
from arborseg.space.encoder_init import is_random

log = get_logger(__name__)

#: key prefixes of a MoCo (v1/v2) query encoder: DistributedDataParallel's and a plain module's
MOCO_PREFIXES = ("module.encoder_q.", "encoder_q.")
#: the projection head MoCo puts on the encoder (not part of the encoder)
HEAD_PREFIX = "fc."
#: the prefixes of an EncoderDecoder's state_dict that make up its encoder
ENCODER_DECODER_ENCODER = ("encoders.", "downs.")
#: ... and its decoder (in checkpoints of a restoration pre-training, Models Genesis)
ENCODER_DECODER_DECODER = ("ups.", "decoders.")


@dataclass(frozen=True)
class LoadReport:
    """What loading one encoder did: ``matched`` of the network's ``total`` encoder tensors came from ``source``."""

    source: str
    module: str
    matched: int
    total: int
    norms: tuple[float, float] | None = None
    decoder: int = 0  # decoder tensors loaded too (a checkpoint of the whole encoder-decoder)

    def line(self) -> str:
        norms = f"; input normalised with mean {self.norms[0]:.4g}, std {self.norms[1]:.4g}" if self.norms else ""
        decoder = f" and {self.decoder} decoder tensors" if self.decoder else ""
        return (f"{self.module}: {self.matched} of {self.total} encoder tensors{decoder} loaded from "
                f"{self.source}{norms}")


def read_encoder_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], tuple[float, float] | None]:
    """The encoder tensors (prefixes and projection head removed) and the training norms of a checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise PretrainError(f"init: {path} does not exist; run `arborseg pretrain` or point init at a checkpoint")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, zip errors, ... : all mean "not a checkpoint we can read"
        raise PretrainError(f"{path} is not a PyTorch checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:120]});"
                            " init takes an encoder.pt of `arborseg pretrain` or a MoCo v2 .pth.tar") from None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PretrainError(f"{path} holds no state_dict of tensors (found {type(obj).__name__}"
                            f"{' with keys ' + ', '.join(map(str, list(obj)[:6])) if isinstance(obj, dict) else ''}); "
                            "init takes an encoder.pt of `arborseg pretrain` or a MoCo v2 .pth.tar")
    prefixed = any(k.startswith(MOCO_PREFIXES) for k in state)
    tensors: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if prefixed:
            prefix = next((p for p in MOCO_PREFIXES if key.startswith(p)), None)
            if prefix is None:
                continue  # the key encoder, the queue
            key = key[len(prefix):]
        if not key.startswith(HEAD_PREFIX):
            tensors[key] = value
    if not tensors:
        raise PretrainError(f"{path} holds no encoder weights (only a projection head); it is not an encoder checkpoint")
    norms = obj.get("norms") if isinstance(obj, dict) else None
    pair = None
    if isinstance(norms, (list, tuple)) and len(norms) == 2:
        mean, std = (float(torch.as_tensor(v).reshape(-1)[0]) for v in norms)
        pair = (mean, std)
    return tensors, pair


def encoder_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The encoder tensors of an ``encoder_decoder`` or ``resnet_unet`` module, named as in a checkpoint (they share
    storage with the module, so copying into them loads the module)."""
    if isinstance(module, EncoderDecoder):
        return {k: v for k, v in module.state_dict(keep_vars=True).items() if k.startswith(ENCODER_DECODER_ENCODER)}
    if isinstance(module, ResNetUNet2d):
        return dict(module.encoder.state_dict(keep_vars=True))
    raise PretrainError(f"{type(module).__name__} has no encoder that takes pre-trained weights")


def decoder_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The decoder tensors of an ``encoder_decoder`` (none for other modules), sharing storage with it."""
    if isinstance(module, EncoderDecoder):
        return {k: v for k, v in module.state_dict(keep_vars=True).items() if k.startswith(ENCODER_DECODER_DECODER)}
    return {}


def _load_decoder(module: nn.Module, tensors: dict[str, torch.Tensor], path: str | Path) -> int:
    """Copy the checkpoint's decoder into ``module`` where it holds the whole decoder with the same shapes; the
    number of tensors loaded (0: none in the file, or it does not fit, which is logged: the decoder starts at
    random, the encoder still loads)."""
    target = decoder_state(module)
    if not target or not any(k.startswith(ENCODER_DECODER_DECODER) for k in tensors):
        return 0
    missing = [k for k in target if k not in tensors]
    wrong = [k for k in target if k in tensors and tuple(tensors[k].shape) != tuple(target[k].shape)]
    if missing or wrong:
        log.warning("%s: its decoder does not fit this %s (%s); the decoder starts at random", path,
                    type(module).__name__, f"{missing[0]} missing" if missing else
                    f"{wrong[0]} is {tuple(tensors[wrong[0]].shape)}, not {tuple(target[wrong[0]].shape)}")
        return 0
    with torch.no_grad():
        for key, value in target.items():
            value.copy_(tensors[key].to(value.dtype))
    return len(target)


def load_encoder(module: nn.Module, path: str | Path) -> LoadReport:
    """Copy the encoder of the checkpoint ``path`` into ``module`` (and its decoder, where the checkpoint holds
    one that fits); raises one line when the encoder does not fit."""
    tensors, norms = read_encoder_checkpoint(path)
    target = encoder_state(module)
    name = type(module).__name__
    missing = [k for k in target if k not in tensors]
    if missing:
        raise PretrainError(f"{path}: {len(missing)} of the {len(target)} tensors of this {name} encoder are not in "
                            f"the file (first: {missing[0]}); it was pre-trained for another encoder: pre-train this "
                            "one, or use a tree whose encoder matches the checkpoint")
    for key, value in target.items():
        if tuple(tensors[key].shape) != tuple(value.shape):
            raise PretrainError(f"{path}: {key} is {tuple(tensors[key].shape)} in the file but {tuple(value.shape)} in "
                                f"this {name}: the checkpoint was pre-trained for another encoder (width, depth, "
                                "kernel or input channels differ)")
    with torch.no_grad():
        for key, value in target.items():
            value.copy_(tensors[key].to(value.dtype))
    if isinstance(module, ResNetUNet2d) and norms is not None:
        module.set_input_norms(*norms)
    return LoadReport(str(path), name, len(target), len(target), norms if isinstance(module, ResNetUNet2d) else None,
                      _load_decoder(module, tensors, path))


def pretrained_modules(model: nn.Module) -> list[nn.Module]:
    """The encoder-bearing modules of ``model`` whose ``init`` is a checkpoint."""
    return [m for m in model.modules() if isinstance(m, (EncoderDecoder, ResNetUNet2d)) and not is_random(m.init_source)]


def initialise_encoders(model: nn.Module) -> list[LoadReport]:
    """Load every pre-trained encoder the tree asks for (before training starts); logs one line each."""
    reports = []
    for module in pretrained_modules(model):
        report = load_encoder(module, str(module.init_source))
        log.info("%s", report.line())
        reports.append(report)
    return reports


def pretrained_encoder_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of the pre-trained encoders (what ``encoder_lr_scale`` and ``freeze_encoder_steps`` act on)."""
    params: list[nn.Parameter] = []
    for module in pretrained_modules(model):
        params.extend(v for v in encoder_state(module).values() if isinstance(v, nn.Parameter))
    return params
