"""Pseudo-labels for sparse slice annotation.

A 2D network trained on the labeled slices labels the unlabeled ones; a 3D (thin-3D, hybrid) network is
then trained on both, each pseudo-labeled voxel weighted ``lam`` in the loss (labeled voxels weigh 1, and
voxels whose 2D prediction is less confident than ``confidence`` stay unlabeled).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from arborseg.bootstrap.models import ArrayData, predict_probs, train_models
from arborseg.errors import ArborsegError
from arborseg.log import get_logger
from arborseg.train.settings import TrainSettings
from arborseg.tree import ModuleTree

log = get_logger(__name__)


def make_pseudo_labels(tree2d: ModuleTree, data: ArrayData, settings: TrainSettings, out_dir: str | Path,
                       confidence: float = 0.0, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(labels with every unlabeled slice filled by the 2D network, mask of the pseudo-labeled voxels).

    Only whole unlabeled slices get pseudo-labels; voxels below ``confidence`` stay ``ignore_value``."""
    if tree2d.window[0] != 1:
        raise ArborsegError(f"the pseudo-label network {tree2d.name} has a z window of {tree2d.window[0]}; "
                            "pseudo-labels come from a 2D network (window z = 1)")
    model = train_models(tree2d, data, settings, out_dir, members=1, progress=progress)[0]
    labels = data.labels.copy()
    unlabeled = np.flatnonzero((data.labels == data.ignore_value).all(axis=(1, 2)))
    pseudo = np.zeros(labels.shape, bool)
    n_classes = len(data.classes)
    for z in unlabeled:
        probs = predict_probs(model, data.raw, tree2d.window, n_classes, settings.device, (int(z), int(z) + 1))[:, z]
        keep = probs.max(0) >= confidence
        labels[z][keep] = probs.argmax(0)[keep]
        pseudo[z] = keep
    log.info("pseudo-labeled %d slices (%d voxels) with %s", len(unlabeled), int(pseudo.sum()), tree2d.name)
    return labels, pseudo


def pseudo_weights(pseudo: np.ndarray, lam: float, base: np.ndarray | None = None) -> np.ndarray:
    """Voxel weights: ``lam`` on pseudo-labeled voxels, ``base`` (or 1) elsewhere."""
    if lam < 0:
        raise ArborsegError(f"pseudo-label weight lambda {lam} must be >= 0")
    out = np.ones(pseudo.shape, np.float32) if base is None else base.astype(np.float32, copy=True)
    out[pseudo] = float(lam)
    return out


def train_with_pseudo_labels(tree: ModuleTree, tree2d: ModuleTree, data: ArrayData, settings: TrainSettings,
                             out_dir: str | Path, lam: float = 0.5, confidence: float = 0.0, members: int = 1,
                             voxel_weights: np.ndarray | None = None,
                             progress: bool = True) -> tuple[list[torch.nn.Module], np.ndarray]:
    """Train ``tree`` on the labeled slices plus pseudo-labels from ``tree2d``; returns (models, pseudo mask)."""
    out_dir = Path(out_dir)
    labels, pseudo = make_pseudo_labels(tree2d, data, settings, out_dir / "pseudo2d", confidence, progress)
    weights = pseudo_weights(pseudo, lam, voxel_weights)
    models = train_models(tree, replace(data, labels=labels), settings, out_dir / "net3d", members, weights,
                          progress)
    return models, pseudo
