"""Training on sparse labels and the network outputs the selection strategies need.

* :class:`ArrayData` holds a normalised raw volume and a sparse label volume (unlabeled = ``ignore_value``)
  in memory; :class:`LabelTrainer` is the :class:`arborseg.train.Trainer` fitted on it: windows are
  centred on labeled voxels (an unlabeled window teaches nothing) and per-voxel weights (prediction-error
  weighting, pseudo-label lambda) enter the loss. There is no validation region in a bootstrap: the
  correction of the next region is the check.
* :func:`predict_probs`, :func:`mc_dropout_probs` and :func:`unit_embeddings` give class probabilities,
  Monte-Carlo dropout samples and bottleneck embeddings per unit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from arborseg.bootstrap.units import Unit
from arborseg.data import Augmenter, Normalizer, PatchSampler, class_frequencies
from arborseg.errors import ArborsegError
from arborseg.log import get_logger
from arborseg.train.losses import class_weights
from arborseg.train.settings import TrainSettings
from arborseg.train.trainer import Trainer
from arborseg.tree import ModuleTree

log = get_logger(__name__)


@dataclass
class ArrayData:
    """A data source for :class:`LabelTrainer`: the whole volume is the training region."""

    raw: np.ndarray                 # float32 (Z, Y, X), normalised
    labels: np.ndarray              # int (Z, Y, X); ignore_value = unlabeled
    classes: tuple[str, ...]
    ignore_value: int = 255
    background_class: int | None = 0
    norm: Normalizer | None = None
    membrane_class: int | None = None

    @property
    def regions(self) -> dict[str, None]:
        return {"train": None}

    def load_region(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        if name != "train":
            raise ArborsegError(f"a bootstrap has no {name!r} region; only the labeled voxels train")
        return self.raw, self.labels.astype(np.int64, copy=False)

    def normalizer(self) -> Normalizer:
        return self.norm or Normalizer()


def with_dropout(tree: ModuleTree, p: float) -> ModuleTree:
    """The tree with ``dropout = p`` in every module that has a dropout value (for MC dropout)."""
    if p <= 0:
        return tree
    data = tree.to_dict()
    data.pop("id", None)

    def visit(node: dict) -> None:
        if "dropout" in node:
            node["dropout"] = float(p)
        for child in node.get("children", []):
            visit(child)

    visit(data["root"])
    return ModuleTree.from_dict(data)


class LabelTrainer(Trainer):
    """A :class:`Trainer` on sparse labels: windows centred on labeled voxels, optional voxel weights."""

    def __init__(self, tree: ModuleTree, data: ArrayData, settings: TrainSettings, out_dir: str | Path,
                 voxel_weights: np.ndarray | None = None, progress: bool = True) -> None:
        super().__init__(tree, data, settings, out_dir, progress=progress)
        if voxel_weights is not None and voxel_weights.shape != data.labels.shape:
            raise ArborsegError(f"voxel weights {voxel_weights.shape} differ from the labels {data.labels.shape}")
        self.voxel_weights = voxel_weights

    def _sampler(self) -> PatchSampler:
        raw, labels = self.data.load_region("train")
        freq = class_frequencies(labels, self.n_classes, self.data.ignore_value)
        if not freq.any():
            raise ArborsegError("nothing is labeled yet: label at least one slice or tile before training")
        self.class_weight = torch.as_tensor(class_weights(freq, self.values["class_weighting"]), device=self.device)
        return PatchSampler(raw, labels, self.window, self.rng, foreground_bias=1.0,
                            foreground_classes=range(self.n_classes),
                            augmenter=Augmenter.from_dict(self.settings.augment),
                            weights=self.voxel_weights, ignore_value=self.data.ignore_value)

    def validate(self) -> float:
        return float("nan")


def train_models(tree: ModuleTree, data: ArrayData, settings: TrainSettings, out_dir: str | Path,
                 members: int = 1, voxel_weights: np.ndarray | None = None,
                 progress: bool = True) -> list[torch.nn.Module]:
    """Train ``members`` copies of ``tree`` (seeds ``settings.seed + i``) on the labeled voxels of ``data``.

    Each member writes its ``model.pt`` to ``out_dir/member_<i>``; the models come back in eval mode."""
    models: list[torch.nn.Module] = []
    for i in range(members):
        member_settings = TrainSettings.from_dict({**settings.__dict__, "seed": settings.seed + i, "overlays": False})
        trainer = LabelTrainer(tree, data, member_settings, Path(out_dir) / f"member_{i}", voxel_weights, progress)
        trainer.fit()
        trainer.save_model()
        models.append(trainer.model.eval())
        log.info("trained member %d/%d of %s in %.1fs", i + 1, members, tree.name, trainer.train_seconds)
    return models


def load_models(paths: Sequence[str | Path], device: str = "cpu") -> tuple[list[torch.nn.Module], ModuleTree]:
    """Models saved by :meth:`Trainer.save_model` (``model.pt``), e.g. the best trials of a campaign, in eval
    mode on ``device``; the tree is the last model's."""
    from arborseg.runs import load_model

    models, tree = [], None
    for path in paths:
        model, tree, _ = load_model(path, device=device)
        models.append(model)
    if tree is None:
        raise ArborsegError("no model files given")
    return models, tree


# ---------------------------------------------------------------------------------------------- inference
def predict_probs(model, raw: np.ndarray, window: Sequence[int], n_classes: int, device: str = "cpu",
                  z_range: tuple[int, int] | None = None) -> np.ndarray:
    """Class probabilities (C, Z, Y, X) of ``raw`` (only slices ``z_range``, with z context, when given)."""
    from arborseg.inference import predict_volume

    z0, z1 = z_range or (0, raw.shape[0])
    halo = int(window[0]) // 2
    a, b = max(0, z0 - halo), min(raw.shape[0], z1 + halo)
    probs = predict_volume(model, raw[a:b], tuple(window), n_classes, overlap=0.25, blending="gaussian",
                           batch_size=4, device=device, reuse_slices=False if not isinstance(model, torch.nn.Module)
                           else None)
    out = np.zeros((n_classes,) + raw.shape, np.float32)
    out[:, z0:z1] = probs[:, z0 - a:z1 - a]
    return out


@contextlib.contextmanager
def _dropout_active(model: torch.nn.Module) -> Iterator[int]:
    """Eval mode with every dropout layer in training mode; yields how many there are."""
    was = model.training
    model.eval()
    layers = [m for m in model.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd)]
    for m in layers:
        m.train()
    try:
        yield len(layers)
    finally:
        model.train(was)


def mc_dropout_samples(model: torch.nn.Module, raw: np.ndarray, window: Sequence[int], n_classes: int,
                       samples: int = 8, device: str = "cpu", z_range: tuple[int, int] | None = None,
                       seed: int = 0) -> Iterator[np.ndarray]:
    """``samples`` Monte-Carlo dropout predictions (C, Z, Y, X), one at a time: dropout stays on at inference.

    The network needs dropout layers (train it from :func:`with_dropout`); an ArborsegError says so."""
    torch.manual_seed(seed)
    with _dropout_active(model) as n_layers:
        if n_layers == 0:
            tree = getattr(model, "tree", None)
            raise ArborsegError(f"{tree.name if tree is not None else 'the network'} has no dropout "
                                "layers, so MC dropout gives one answer; train with dropout > 0 (--dropout 0.1) "
                                "or use bald_ensemble")

        def call(x: torch.Tensor) -> torch.Tensor:
            return model(x)

        for _ in range(int(samples)):
            yield predict_probs(call, raw, window, n_classes, device, z_range)


def mc_dropout_probs(model: torch.nn.Module, raw: np.ndarray, window: Sequence[int], n_classes: int,
                     samples: int = 8, device: str = "cpu", z_range: tuple[int, int] | None = None,
                     seed: int = 0) -> np.ndarray:
    """All of :func:`mc_dropout_samples` stacked: (S, C, Z, Y, X)."""
    return np.stack(list(mc_dropout_samples(model, raw, window, n_classes, samples, device, z_range, seed)))


def _crop_input(raw: np.ndarray, unit: Unit, window_z: int) -> np.ndarray:
    half = window_z // 2
    zs = np.clip(np.arange(unit.z - half, unit.z - half + window_z), 0, raw.shape[0] - 1)
    return raw[zs, unit.y0:unit.y0 + unit.h, unit.x0:unit.x0 + unit.w]


def unit_embeddings(model: torch.nn.Module, raw: np.ndarray, units: Sequence[Unit], window: Sequence[int],
                    device: str = "cpu") -> np.ndarray:
    """One vector per unit: the bottleneck features of the network averaged over the unit.

    The bottleneck is the convolution output with the fewest spatial positions (most channels on ties,
    the last one on further ties): the deepest encoder level of a U-Net."""
    convs = {name: m for name, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))}
    seen: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda _m, _i, o, name=name: seen.__setitem__(name, o))
             for name, m in convs.items()]
    chosen: str | None = None
    vectors = []
    model.eval().to(device)
    try:
        with torch.inference_mode():
            for unit in units:
                x = torch.from_numpy(np.ascontiguousarray(_crop_input(raw, unit, int(window[0]))))[None, None]
                seen.clear()
                model(x.to(device))
                if chosen is None:
                    order = sorted(seen.items(), key=lambda kv: (int(np.prod(kv[1].shape[-2:])), -kv[1].shape[1]))
                    smallest = [k for k, v in order if v.shape[-2:] == order[0][1].shape[-2:]
                                and v.shape[1] == order[0][1].shape[1]]
                    chosen = smallest[-1]
                    log.debug("bottleneck for embeddings: %s %s", chosen, tuple(seen[chosen].shape))
                feat = seen[chosen].float()
                dims = [d for d in range(feat.dim()) if d != 1]
                vectors.append(feat.mean(dim=dims).cpu().numpy())
    finally:
        for h in hooks:
            h.remove()
    return np.stack(vectors).astype(np.float32)
