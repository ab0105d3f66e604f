"""Ensembles of a campaign: post hoc from its trained trials (``arborseg ensemble RUN_DIR``, :mod:`.posthoc`,
no training), or members of its best trees trained anew (``arborseg ensemble RUN_DIR --train --top K --seeds M``).

The modules, in the order the work flows: :mod:`.select` (the K best distinct trees of a campaign),
:mod:`.members` (tree x seed members trained as submitit jobs, resumable), :mod:`arborseg.inference.fusion` (mean, max,
vote, fitted weights), :mod:`.greedy` (greedy forward selection with replacement), :mod:`.objective`
(fast objective, per-slice scores), :mod:`.bootstrap` (gain over the best member with intervals),
:mod:`.manifest` (``ensemble.json``, the format ``arborseg export`` reads) and :mod:`.build` (the whole).

Names are imported on first use, so reading manifests (the run table does) does not import torch.
"""

from __future__ import annotations

from typing import Any

_LAZY = {"EnsembleResult": "build", "EnsembleSettings": "build", "build_ensemble": "build", "FORMAT": "manifest",
         "ensemble_dirs": "manifest", "read_manifest": "manifest", "build_posthoc": "posthoc"}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"arborseg.ensemble.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'arborseg.ensemble' has no attribute {name!r}")
