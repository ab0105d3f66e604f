"""Files a person can paint: palette TIFF stacks of class ids (GIMP shows colours and keeps the ids,
napari opens them as a labels layer), the matching raw stack, and a PNG preview."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from arborseg.errors import ArborsegError
from arborseg.viz.figures import save_figure

# distinct colours for class ids 0.. (id 0 dark grey so that painting it stays visible); the ignore value
# (unlabeled) is shown black
PALETTE = [(64, 64, 64), (255, 255, 0), (0, 160, 255), (255, 0, 255), (0, 255, 0), (255, 128, 0), (160, 0, 255),
           (0, 255, 255), (255, 0, 0), (128, 255, 128)]


def colormap(ignore_value: int = 255) -> np.ndarray:
    """(3, 256) uint16 TIFF colormap: class colours, black for the ignore value, grey ramp elsewhere."""
    cmap = np.stack([np.arange(256)] * 3).astype(np.uint16) * 257
    for i, rgb in enumerate(PALETTE):
        cmap[:, i] = np.array(rgb, np.uint16) * 257
    cmap[:, ignore_value] = 0
    return cmap


def write_label_stack(path: str | Path, labels: np.ndarray, ignore_value: int = 255) -> Path:
    """Write a (k, h, w) class-id stack as an indexed-colour (palette) TIFF."""
    import tifffile

    labels = np.asarray(labels)
    if labels.ndim != 3 or labels.max(initial=0) > 255:
        raise ArborsegError(f"{path}: a label stack must be (k, h, w) with ids 0..255, got {labels.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, labels.astype(np.uint8), photometric="palette", colormap=colormap(ignore_value))
    return path


def read_label_stack(path: str | Path) -> np.ndarray:
    """Read a painted label stack back: (k, h, w) uint8 class ids (a single 2D page becomes (1, h, w)).

    An RGB file (painted in RGB mode) is an error: class ids must stay palette indices or grey values."""
    import tifffile

    path = Path(path)
    if not path.is_file():
        raise ArborsegError(f"{path}: no such file (the corrected labels)")
    array = np.asarray(tifffile.imread(path))
    if array.ndim == 2:
        array = array[None]
    if array.ndim == 4 and array.shape[-1] in (3, 4):
        raise ArborsegError(f"{path}: the image is RGB; keep it indexed (GIMP: Image > Mode > Indexed, "
                            "palette of the file) so that pixel values stay class ids")
    if array.ndim != 3 or array.dtype.kind not in "ui":
        raise ArborsegError(f"{path}: expected a (k, h, w) stack of integer class ids, got {array.shape} "
                            f"{array.dtype}")
    return array


def preview(path: str | Path, raw: np.ndarray, labels: np.ndarray, ignore_value: int = 255,
            title: str = "", background: int | None = 0) -> Path:
    """PNG: each unit's raw above its labels blended over it (up to 6 units; background left clear)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = min(len(raw), 6)
    cmap = colormap(ignore_value)[:, :].T / 65535.0
    fig, axes = plt.subplots(2, k, figsize=(2.6 * k, 5.4), squeeze=False)
    for i in range(k):
        axes[0, i].imshow(raw[i], cmap="gray")
        rgb = cmap[labels[i].astype(np.intp)]
        axes[1, i].imshow(raw[i], cmap="gray")
        clear = (labels[i] == ignore_value) | (labels[i] == (background if background is not None else -1))
        axes[1, i].imshow(rgb, alpha=np.where(clear, 0.0, 0.45))
        for ax in axes[:, i]:
            ax.set_axis_off()
        axes[0, i].set_title(f"unit {i}", fontsize=8)
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path, 80)
