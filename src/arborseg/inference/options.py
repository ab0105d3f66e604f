"""How to predict a large volume block by block: :class:`PredictOptions` (no torch)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from arborseg.errors import DataError
from arborseg.inference.fusion import FUSIONS, UNCERTAINTIES, Fusion, Uncertainty
from arborseg.inference.store import PROBS_DTYPES
from arborseg.inference.tiles import Blending, check_overlap

__all__ = ["PredictOptions"]


@dataclass(frozen=True)
class PredictOptions:
    """Settings of :func:`~arborseg.inference.predict_to_store` (checked when made).

    ``window``: the window (z, y, x) all members share, or one window per member (members with equal windows
    run on the same tiles; each member's probabilities are blended over its own tile grid, exactly as
    ``predict_volume`` with its window, before they are fused). ``n_classes``: the classes the networks
    output. ``weights``: one positive weight per member for the fusion (see
    :func:`~arborseg.inference.fuse`; ``fusion="weighted"`` without weights is ``mean``).
    ``normalizer``: applied to each input block (float32) before prediction; an object with an integer
    ``halo`` attribute (:class:`~arborseg.data.preprocess.Normalizer`) gets that many extra xy voxels of
    context so filters match the whole-volume result. ``block``: the processing block (z, y, x);
    ``memory_budget_mb`` chooses it instead (the block given wins, with a warning when its estimate exceeds
    the budget); neither: ``(32, 512, 512)``. ``chunks``: the output chunks (default: the block when
    ``block`` is given, else ``(8, 256, 256)``, and the block is made a multiple of them). ``write_probs``,
    ``probs_dtype`` ("float16", "uint8" or "float32") and ``uncertainty`` ("entropy", "disagreement"): what
    is written besides the labels. ``device``: "cpu", "cuda", "cuda:1", "auto" or a torch device.
    ``activation_estimates``: bytes of activations per window of each member (``activation_bytes`` of the
    eager network), for members it cannot measure (TorchScript). ``overwrite``: replace an existing output.
    ``overlap``, ``blending``, ``batch_size``, ``amp``, ``channels_last`` and ``reuse_slices`` (each z-slice
    computed once for z-separable networks) as in :func:`~arborseg.inference.predict_volume`.
    """

    window: Sequence[int] | Sequence[Sequence[int]]
    n_classes: int
    overlap: float | Sequence[float] = 0.25
    blending: Blending = "gaussian"
    batch_size: int = 4
    device: Any = "cpu"
    fusion: Fusion = "mean"
    weights: Sequence[float] | None = None
    normalizer: Callable[[np.ndarray], np.ndarray] | None = None
    write_probs: bool = False
    uncertainty: Uncertainty | None = None
    block: Sequence[int] | None = None
    memory_budget_mb: float | None = None
    chunks: Sequence[int] | None = None
    probs_dtype: str = "float16"
    progress: bool = True
    amp: bool = False
    channels_last: bool = True
    reuse_slices: bool | None = None
    overwrite: bool = False
    activation_estimates: Sequence[int | None] | None = None

    def __post_init__(self) -> None:
        check_overlap(self.overlap)
        if int(self.n_classes) < 1:
            raise DataError(f"n_classes must be >= 1, got {self.n_classes}")
        if int(self.batch_size) < 1:
            raise DataError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.fusion not in FUSIONS:
            raise DataError(f"fusion must be one of {list(FUSIONS)}, got {self.fusion!r}")
        if self.uncertainty is not None and self.uncertainty not in UNCERTAINTIES:
            raise DataError(f"uncertainty must be one of {list(UNCERTAINTIES)} or None, got {self.uncertainty!r}")
        if self.probs_dtype not in PROBS_DTYPES:
            raise DataError(f"probs_dtype must be one of {list(PROBS_DTYPES)}, got {self.probs_dtype!r}")
        if self.block is not None:
            blk = tuple(int(b) for b in self.block)
            if len(blk) != 3 or min(blk) < 1:
                raise DataError(f"block must be three positive sizes (z, y, x), got {tuple(self.block)}")

    @property
    def halo(self) -> int:
        """Extra xy voxels of input context the normaliser needs (its ``halo`` attribute)."""
        return int(getattr(self.normalizer, "halo", 0) or 0) if self.normalizer is not None else 0
