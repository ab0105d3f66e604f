"""Reading an ensemble folder (``arborseg ensemble`` writes it): ``ENSEMBLE_DIR/ensemble.json`` and the
members' trees and weights.

The contract (format ``arborseg-ensemble/1``)::

    {"format": "arborseg-ensemble/1", "name", "campaign", "objective", "direction",
     "classes": [names], "ignore_value", "voxel_size": [z, y, x] | null, "normalizer": {...},
     "fusion": "mean" | "max" | "vote" | "weighted",
     "members": [{"key", "tree_id", "tree_name", "family", "seed", "tree": "rel/tree.yaml",
                  "model": "rel/model.pt", "window": [z, y, x], "weight": float}],
     "scores": {region: {metric: value}}, ...}

Paths of members are relative to ENSEMBLE_DIR. Everything wrong is a :class:`BundleError` naming the key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arborseg.ensemble.manifest import FORMAT as ENSEMBLE_FORMAT
from arborseg.errors import ArborsegError, BundleError
from arborseg.runs import ENSEMBLE_FILE, load_model, load_tree

FUSIONS = ("mean", "max", "vote", "weighted")

__all__ = ["MemberSource", "EnsembleSource", "read_ensemble_dir", "load_member_network", "ENSEMBLE_FORMAT"]


@dataclass(frozen=True)
class MemberSource:
    """One ensemble member as the ensemble folder describes it."""

    key: str
    tree_id: str
    tree_name: str
    family: str
    seed: int | None
    tree_path: Path
    model_path: Path
    window: tuple[int, int, int]
    weight: float


@dataclass(frozen=True)
class EnsembleSource:
    """A parsed ``ensemble.json`` with its members' files checked to exist."""

    path: Path
    data: dict[str, Any]
    name: str
    classes: list[str]
    fusion: str
    normalizer: dict[str, Any]
    members: list[MemberSource]

    @property
    def n_classes(self) -> int:
        return len(self.classes)


def _need(data: dict, key: str, where: str) -> Any:
    if key not in data:
        raise BundleError(f"{where}: the key {key!r} is missing; was this folder written by `arborseg ensemble`?")
    return data[key]


def read_ensemble_dir(path: str | Path) -> EnsembleSource:
    """Parse and check ``path/ensemble.json`` (a folder written by ``arborseg ensemble``)."""
    root = Path(path).expanduser()
    spec = root / ENSEMBLE_FILE
    if not root.is_dir():
        raise BundleError(f"{root}: not a folder; give the ensemble folder written by `arborseg ensemble`")
    if not spec.is_file():
        raise BundleError(f"{spec}: not found; give the ensemble folder written by `arborseg ensemble`")
    try:
        data = json.loads(spec.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BundleError(f"{spec}: not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise BundleError(f"{spec}: expected a JSON object")
    fmt = data.get("format")
    if fmt != ENSEMBLE_FORMAT:
        raise BundleError(f"{spec}: format {fmt!r} is not {ENSEMBLE_FORMAT!r}; re-run `arborseg ensemble` with this "
                          "arborseg version")
    classes = _need(data, "classes", str(spec))
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
        raise BundleError(f"{spec}: classes: expected a non-empty list of names, got {classes!r}")
    fusion = _need(data, "fusion", str(spec))
    if fusion not in FUSIONS:
        raise BundleError(f"{spec}: fusion {fusion!r} is not one of {list(FUSIONS)}")
    normalizer = data.get("normalizer") or {}
    if not isinstance(normalizer, dict):
        raise BundleError(f"{spec}: normalizer: expected an object, got {normalizer!r}")
    raw_members = _need(data, "members", str(spec))
    if not isinstance(raw_members, list) or not raw_members:
        raise BundleError(f"{spec}: members: expected a non-empty list")
    members = [_member(m, i, root, spec) for i, m in enumerate(raw_members)]
    keys = [m.key for m in members]
    if len(set(keys)) != len(keys):
        raise BundleError(f"{spec}: member keys must be unique, got {keys}")
    return EnsembleSource(root, data, str(data.get("name") or root.name), list(classes), fusion, normalizer, members)


def _member(m: Any, i: int, root: Path, spec: Path) -> MemberSource:
    where = f"{spec}: members[{i}]"
    if not isinstance(m, dict):
        raise BundleError(f"{where}: expected an object")
    paths = {}
    for key in ("tree", "model"):
        rel = _need(m, key, where)
        p = root / str(rel)
        if not p.is_file():
            raise BundleError(f"{where}.{key}: file {p} not found; the ensemble folder is incomplete")
        paths[key] = p
    window = _need(m, "window", where)
    if not (isinstance(window, list) and len(window) == 3 and all(isinstance(v, int) and v > 0 for v in window)):
        raise BundleError(f"{where}.window: expected [z, y, x] positive integers, got {window!r}")
    weight = m.get("weight", 1.0)
    if not isinstance(weight, (int, float)) or not weight >= 0:
        raise BundleError(f"{where}.weight: expected a number >= 0, got {weight!r}")
    return MemberSource(str(m.get("key") or f"m{i}"), str(m.get("tree_id", "")), str(m.get("tree_name", "")),
                        str(m.get("family", "")), m.get("seed"), paths["tree"], paths["model"], tuple(window),
                        float(weight))


def load_member_network(member: MemberSource, n_classes: int):
    """The member's network (eval mode, CPU) built from its tree file with its trained weights, checked
    against the ensemble."""
    try:
        tree = load_tree(member.tree_path)
        net, _, saved = load_model(member.model_path, tree=tree)
    except ArborsegError as exc:
        raise BundleError(f"member {member.key}: {exc}") from None
    classes = saved.get("classes")
    if classes is not None and len(classes) != n_classes:
        raise BundleError(f"member {member.key}: trained for {len(classes)} classes {classes}, the ensemble has "
                          f"{n_classes}")
    return net
