"""Pictures of a pre-training: the loss curve, and nearest neighbours a person can judge the encoder by.

The neighbours picture embeds a few hundred patches of the unlabeled volumes (no augmentation) with the
pre-trained backbone and with the same backbone at its random start, and shows, for a few query patches, the
five most similar other patches under each (cosine similarity of pooled features, centred over the patches;
patches overlapping the query are left out). A useful encoder finds the same kind of structure (membrane, mitochondrion, vesicle
cloud, cytoplasm) where a random one mostly matches brightness.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from arborseg.viz.figures import save_figure

if TYPE_CHECKING:
    from arborseg.pretrain.run import Pretrainer

CANDIDATES, QUERIES, SHOWN = 400, 4, 5


#: the two panels of the loss curve per method: (history key, title)
CURVES = {"mocov2": (("loss", "InfoNCE loss"), ("accuracy", "top-1 accuracy of the positive")),
          "genesis": (("loss", "restoration MSE"), ("copy_mse", "MSE of the distorted input (copying it)"))}


def loss_curve(history: list[dict[str, Any]], path: Path, title: str, method: str = "mocov2") -> Path:
    """The method's loss and its other number per step (MoCo: top-1 accuracy of finding the positive among
    queue + 1; Genesis: the error of returning the distorted input, which the restoration must beat), with a
    running mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array([h["step"] for h in history])
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, (key, label) in zip(axes, CURVES[method]):
        values = np.array([h.get(key, np.nan) for h in history], dtype=float)
        ax.plot(steps, values, color="0.75", lw=0.8)
        if len(values) >= 10:
            k = max(5, len(values) // 25)
            smooth = np.convolve(values, np.ones(k) / k, mode="valid")
            ax.plot(steps[k - 1:], smooth, color="C0", lw=1.6, label=f"mean of {k}")
            ax.legend(frameon=False)
        ax.set_xlabel("step")
        ax.set_title(label, fontsize=10)
    fig.suptitle(f"pre-training {title}", fontsize=11)
    return save_figure(fig, path, 110)


def _patches(trainer: Pretrainer, rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """CANDIDATES patches (N, Z, P, P) of the volumes, and where each lies (volume, z, y, x)."""
    crops = [trainer.data.crop(rng, trainer.config.patch) for _ in range(CANDIDATES)]
    return np.stack([patch for patch, _ in crops]), [where for _, where in crops]


def _embed(branch: Any, patches: np.ndarray, device: Any) -> np.ndarray:
    import torch

    branch.eval()
    out = []
    with torch.no_grad():
        for chunk in np.array_split(patches, max(1, len(patches) // 32)):
            x = torch.from_numpy(np.ascontiguousarray(chunk)).unsqueeze(1).to(device)
            out.append(branch.features(x).cpu().numpy())
    branch.train()
    features = np.concatenate(out)
    features = features - features.mean(0)  # centred: pooled ReLU features share a large common part
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def _neighbours(emb: np.ndarray, where: list, query: int, patch: int) -> list[int]:
    sims = emb @ emb[query]
    vq, zq, yq, xq = where[query]
    order = [j for j in np.argsort(-sims) if j != query]
    keep = [j for j in order if not (where[j][0] == vq and where[j][1] == zq and abs(where[j][2] - yq) < patch
                                     and abs(where[j][3] - xq) < patch)]
    return keep[:SHOWN]


def neighbours_figure(trainer: Pretrainer, path: Path, seed: int = 12345) -> Path:
    """Query patches and their nearest neighbours under the pre-trained and the random-start backbone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from arborseg.pretrain.moco import Branch, build_backbone

    rng = np.random.default_rng(seed)
    patches, where = _patches(trainer, rng)
    trained = _embed(trainer.model.encoder_q, patches, trainer.device)
    import torch

    torch.manual_seed(trainer.config.seed)  # the very start this run had
    fresh = Branch(build_backbone(trainer.config.encoder, trainer.norms)[0], 8).to(trainer.device)
    random_start = _embed(copy.deepcopy(fresh), patches, trainer.device)
    queries = rng.choice(len(patches), QUERIES, replace=False)
    mid = patches.shape[1] // 2
    fig, axes = plt.subplots(2 * QUERIES, SHOWN + 1, figsize=(1.4 * (SHOWN + 1), 1.5 * 2 * QUERIES))
    for row, q in enumerate(queries):
        for k, (emb, name) in enumerate(((trained, "pre-trained"), (random_start, "random start"))):
            ax_row = axes[2 * row + k]
            ax_row[0].imshow(patches[q, mid], cmap="gray", vmin=0, vmax=1)
            ax_row[0].set_ylabel(name, fontsize=7)
            for col, j in enumerate(_neighbours(emb, where, int(q), trainer.config.patch), start=1):
                ax_row[col].imshow(patches[j, mid], cmap="gray", vmin=0, vmax=1)
                ax_row[col].set_title(f"{float(emb[j] @ emb[q]):.2f}", fontsize=6)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_title("query", fontsize=7)
    fig.suptitle(f"{trainer.config.name}: nearest patches (cosine similarity), step {trainer.state.step}",
                 fontsize=9)
    return save_figure(fig, path, 100)


def restorations_figure(trainer: Pretrainer, path: Path, seed: int = 12345, rows: int = 4) -> Path:
    """A few patches: distorted, restored by the pre-trained encoder-decoder, and the original (Models Genesis),
    each standardised as the network sees them. A useful network restores membranes and organelles where they
    were cut out or scrambled, not just a blur."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from arborseg.pretrain.genesis import Genesis, restoration_pairs, standardise

    model = trainer.model
    assert isinstance(model, Genesis)
    rng = np.random.default_rng(seed)
    patches = [trainer.data.crop(rng, trainer.config.patch)[0] for _ in range(rows)]
    distorted, target = restoration_pairs(patches, rng, trainer.distortions)
    model.eval()
    with torch.no_grad():
        restored = model.restore(distorted.to(trainer.device)).cpu()
    model.train()
    distorted, target = standardise(distorted), standardise(target)  # what the network restores: structure
    mid = target.shape[2] // 2
    fig, axes = plt.subplots(rows, 3, figsize=(5.4, 1.8 * rows))
    for r in range(rows):
        for c, (image, name) in enumerate(((distorted, "distorted input"), (restored, "restored"),
                                           (target, "original"))):
            axes[r, c].imshow(image[r, 0, mid].numpy(), cmap="gray", vmin=-2.5, vmax=2.5)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(name, fontsize=8)
        mse = float(((restored[r] - target[r]) ** 2).mean())
        axes[r, 1].set_xlabel(f"MSE {mse:.4f}", fontsize=7)
    fig.suptitle(f"{trainer.config.name}: restorations at step {trainer.state.step}", fontsize=9)
    return save_figure(fig, path, 100)
