"""``ENSEMBLE_DIR/ensemble.json``: writing it, reading it back, and its rows in the run table.

The format (``"format": "arborseg-ensemble/1"``) is shared with ``arborseg export`` / ``arborseg predict``;
field names do not change within a format version. Paths inside are relative to ENSEMBLE_DIR::

    {"format": "arborseg-ensemble/1", "mode": "posthoc" | "train" (absent: train), "name",
     "campaign": absolute run folder, "objective",
     "direction": "maximize" | "minimize", "classes": [...], "ignore_value": int | null,
     "voxel_size": [z, y, x] | null, "normalizer": DataConfig.normalizer().to_dict(),
     "fusion": "mean" | "max" | "vote" | "weighted",
     "members": [{"key", "tree_id", "tree_name", "family", "seed", "tree": "members/<key>/tree.yaml",
                  "model": "members/<key>/model.pt", "window": [z, y, x], "weight": float,
                  "scores": {region: metrics}, "params", "trial_id", "gflops"}],  # selected only, weight > 0
         post hoc: "key" t<trial id>, "tree"/"model" "../../trials/<id>/...", "trial_dir", "count" (picks)
     "candidates": [the same for every member planned, with "state" (COMPLETE | FAIL) and "reason"],
     "scores": {region: metrics of the fused ensemble},
     "inference": {"gflops": sum of the members' forward GFLOPs at their windows, "members", "counting"},
     "gain": {"baseline": key of the best single member on validation, "n_boot", "confidence",
              "regions": {region: {metric: {"ensemble", "member", "gain", "lo", "hi", "slices",
                                            "direction", "improved"}}}},  # validation too (optimistic)
     "selection": "greedy" | "all", "validation": {fusion tried: its validation objective},
     "settings": {...}, "created", "arborseg_version"}

Fusion of the members' probabilities p_i with weights w_i (they sum to 1): ``mean`` and ``weighted``:
sum_i w_i p_i; ``max``: class-wise max over the members, renormalised; ``vote``: weighted argmax votes
(see :mod:`arborseg.inference.fusion`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from arborseg.errors import ArborsegError
from arborseg.runs import ENSEMBLE_FILE as FILE
from arborseg.runs import ensemble_dirs

FORMAT = "arborseg-ensemble/1"
__all__ = ["FILE", "FORMAT", "ensemble_dirs", "ensemble_rows", "read_manifest", "write_manifest"]


def write_manifest(ensemble_dir: Path, manifest: dict[str, Any]) -> Path:
    """Write ``ensemble.json`` atomically."""
    path = Path(ensemble_dir) / FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=1, default=_default))
    tmp.replace(path)
    return path


def read_manifest(ensemble_dir: str | Path) -> dict[str, Any]:
    """Read ``ENSEMBLE_DIR/ensemble.json`` (an :class:`ArborsegError` if missing or of another format)."""
    path = Path(ensemble_dir) / FILE
    if not path.is_file():
        raise ArborsegError(f"{ensemble_dir}: not an ensemble folder (no {FILE}); make one with `arborseg ensemble`")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ArborsegError(f"{path}: not valid JSON ({exc})") from None
    if manifest.get("format") != FORMAT:
        raise ArborsegError(f"{path}: format {manifest.get('format')!r} is not {FORMAT!r}; rebuild it with this "
                            "version of arborseg")
    return manifest


def ensemble_rows(run_dir: str | Path, campaign: str) -> list[dict[str, Any]]:
    """Run-table rows of a campaign's ensembles: state ``ENSEMBLE``, phase ``ensemble``, task
    ``ensemble:<name>``, tree_name = the ensemble's name, family ``ensemble/<fusion>``, value = the
    objective on validation, params = the members' total, every ``<region>.<metric>``, and ``members``
    (the member keys, ``*n`` for a multiplicity n > 1), ``val_gain`` and ``val_gain_ci`` (the objective's
    gain on validation over the best single member, 95 % bootstrap interval) and ``inference_gflops``."""
    rows = []
    for folder in ensemble_dirs(run_dir):
        try:
            m = read_manifest(folder)
        except ArborsegError:
            continue
        scores = m.get("scores") or {}
        members = m.get("members") or []
        row: dict[str, Any] = {
            "campaign": campaign, "phase": "ensemble", "trial_id": None, "task": f"ensemble:{m['name']}",
            "state": "ENSEMBLE", "tree_id": None, "base_tree_id": None,
            "value": (scores.get("validation") or {}).get(m.get("objective"), math.nan),
            "tree_name": m["name"], "family": f"ensemble/{m.get('fusion')}",
            "params": sum(int(x.get("params") or 0) for x in members) or None,
            "steps": (m.get("settings") or {}).get("steps"),
            "artifact_dir": str(folder), "run_dir": str(run_dir),
            "members": " ".join(x["key"] + (f"*{x['count']}" if int(x.get("count") or 1) > 1 else "")
                                for x in members),
            "inference_gflops": (m.get("inference") or {}).get("gflops", math.nan),
        }
        gain = (((m.get("gain") or {}).get("regions") or {}).get("validation") or {}).get(m.get("objective"))
        if gain:
            row["val_gain"] = gain["gain"]
            row["val_gain_ci"] = f"[{gain['lo']:+.4f}, {gain['hi']:+.4f}]"
        for region, metrics in scores.items():
            if isinstance(metrics, dict):
                row.update({f"{region}.{k}": v for k, v in metrics.items()})
        rows.append(row)
    return rows


def _default(value: Any) -> Any:
    import numpy as np

    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
