"""Prediction: the one place that runs networks over volumes and fuses ensemble members.

The modules, from the bottom up (numpy only unless marked torch):

* :mod:`.tiles`: where the tiles of a volume are, their blending weights;
* :mod:`.fusion`: :func:`fuse` (mean, max, vote, weighted; one tie rule), :func:`labels_of`, fitted weights;
* :mod:`.store`: the Zarr output (labels, probabilities, uncertainty);
* :mod:`.mergers`: the :class:`Merger` protocol, :class:`ArrayMerger` (memory), :class:`ZarrMerger`;
* :mod:`.options`: :class:`PredictOptions`, the settings of block-wise prediction;
* :mod:`.planner`: the pure block planner (blocks, halos, order, memory estimate);
* :mod:`.forward` (torch): networks on batches of tiles, channels-last layout, slice reuse, activations;
* :mod:`.predict` (torch): :func:`predict_volume`, :func:`predict_labels` in memory;
* :mod:`.block_step` (torch): one block of block-wise prediction;
* :mod:`.blockwise` (torch): :func:`predict_to_store`, a volume larger than memory into Zarr.

Names are imported on first use, so the numpy-only modules (the planner, fusion) do not import torch.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "predict_volume": "predict", "predict_labels": "predict",
    "predict_to_store": "blockwise", "PredictOptions": "options",
    "fuse": "fusion", "Fused": "fusion", "labels_of": "fusion", "fit_weights": "fusion", "FUSIONS": "fusion",
    "UNCERTAINTIES": "fusion",
    "tile_slices": "tiles", "importance_map": "tiles",
    "Merger": "mergers", "ArrayMerger": "mergers", "ZarrMerger": "mergers",
    "estimate_memory": "planner", "choose_block": "planner", "plan_blocks": "planner",
    "activation_bytes": "forward", "tile_probabilities": "forward", "is_z_separable": "forward",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"arborseg.inference.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'arborseg.inference' has no attribute {name!r}")
