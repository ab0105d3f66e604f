"""``arborseg ensemble --train``: from a campaign folder to ``RUN_DIR/ensembles/<name>/ensemble.json``.

The default, post-hoc mode (members among the trials already trained) is :mod:`.posthoc`; it shares the
choice on validation and the scores of this module. Steps here: the K best distinct trees (:mod:`.select`)
-> K x M members trained as jobs (:mod:`.members`)
-> member probabilities of validation / eval_near / eval_far -> for each fusion rule, members chosen on
validation (:mod:`.greedy`) -> the fusion with the best validation objective (``auto``) -> scores of the
ensemble and of every member on every region -> the gain over the best single member with bootstrap
intervals over eval slices (:mod:`.bootstrap`) -> ``ensemble.json`` (:mod:`.manifest`). Rerunning the
same command trains nothing that is finished and recomputes the choice.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from arborseg import runs
from arborseg.ensemble.bootstrap import gain_metrics, region_gain
from arborseg.ensemble.greedy import Selection, choose_members
from arborseg.ensemble.manifest import FORMAT, write_manifest
from arborseg.ensemble.members import PROB_REGIONS, MemberSpec, load_probs, predict_member, run_members
from arborseg.ensemble.objective import Scoring, better, objective_score
from arborseg.ensemble.select import TreeChoice, open_campaign, top_trees
from arborseg.errors import ArborsegError, CampaignError
from arborseg.inference.fusion import FUSIONS, fuse, labels_of
from arborseg.log import get_logger
from arborseg.runs import TrialFolder
from arborseg.train.result import ResultState

log = get_logger(__name__)

SELECTIONS = ("greedy", "all")
FUSION_CHOICES = FUSIONS + ("auto",)


@dataclass
class EnsembleSettings:
    """What ``arborseg ensemble`` was asked: see ``arborseg ensemble --help``."""

    top: int = 3
    seeds: int = 2
    fusion: str = "auto"
    selection: str = "greedy"
    name: str | None = None
    executor: str | None = None
    steps: int | None = None
    bootstrap: int = 1000
    rounds: int | None = None
    reuse: bool = True
    progress: bool = True
    candidates: int | None = None  # post hoc: the best N complete trials (None: all of them)
    init: int | None = None  # greedy selection starts from the best `init` (default 2 post hoc, 1 with --train)

    def check(self) -> None:
        if self.candidates is not None and self.candidates < 1:
            raise ArborsegError(f"--candidates {self.candidates}: give at least 1 trial")
        if self.init is not None and self.init < 1:
            raise ArborsegError(f"--init {self.init}: give at least 1 member to start from")
        if self.top < 1 or self.seeds < 1:
            raise ArborsegError(f"--top {self.top} --seeds {self.seeds}: both must be at least 1")
        if self.fusion not in FUSION_CHOICES:
            raise ArborsegError(f"--fusion {self.fusion!r}: use one of {', '.join(FUSION_CHOICES)}")
        if self.selection not in SELECTIONS:
            raise ArborsegError(f"--selection {self.selection!r}: use greedy or all")
        if self.steps is not None and self.steps < 1:
            raise ArborsegError(f"--steps {self.steps}: give at least 1 training step")
        if self.bootstrap < 1:
            raise ArborsegError(f"--bootstrap {self.bootstrap}: give at least 1 resample (1000 is usual)")
        if self.name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name):
            raise ArborsegError(f"--name {self.name!r}: use letters, digits, '.', '_' and '-' (it names a folder)")

    @property
    def ensemble_name(self) -> str:
        return self.name or f"top{self.top}x{self.seeds}"


@dataclass
class EnsembleResult:
    """The ensemble folder and its manifest (the content of ``ensemble.json``)."""

    dir: Path
    manifest: dict[str, Any]
    selections: dict[str, Selection] = field(default_factory=dict)


def plan_members(trees: list[TreeChoice], seeds: list[int], ensemble_dir: Path, steps: int,
                 reuse: bool) -> list[MemberSpec]:
    """One member per tree and seed, best tree first; a member equal to a campaign trial may be copied."""
    specs = []
    for tree in trees:
        for seed in seeds:
            out = TrialFolder(runs.member_dir(ensemble_dir, tree.tree_id, seed))
            out.path.mkdir(parents=True, exist_ok=True)
            if not out.tree_path.is_file():
                shutil.copyfile(tree.tree_file, out.tree_path)
            same = reuse and tree.seed == seed and tree.steps == steps and TrialFolder(tree.artifact_dir).is_finished()
            specs.append(MemberSpec(tree.tree_id, tree.tree_name, tree.family, seed, out.tree_path, out.path,
                                    tree.trial_id, tree.artifact_dir if same else None))
    return specs


def pick_fusion(values: dict[str, float], direction: str) -> str:
    """The fusion with the best validation value (the first listed on ties)."""
    names = list(values)
    best = names[0]
    for name in names[1:]:
        if better(values[name], values[best], direction):
            best = name
    return best


def build_ensemble(run_dir: str | Path, settings: EnsembleSettings | None = None) -> EnsembleResult:
    """Build (or resume) the ensemble ``settings.ensemble_name`` of the campaign in ``run_dir``."""
    settings = settings or EnsembleSettings()
    settings.check()
    ctx = open_campaign(run_dir)
    data = ctx.data
    if "validation" not in data.regions:
        raise CampaignError(f"{ctx.run_dir}: the data has no validation region to choose the ensemble on; "
                            "add regions.validation to the data YAML")
    ensemble_dir = runs.ensemble_dir(ctx.run_dir, settings.ensemble_name)
    trees = top_trees(ctx, settings.top)
    train = ctx.config.train_settings
    steps = settings.steps or int(ctx.config.budget["steps"])
    train_dict = asdict(train) | {"steps": steps, "eval_every": max(1, min(train.eval_every, steps))}
    seeds = [int(train.seed) + j for j in range(settings.seeds)]
    specs = plan_members(trees, seeds, ensemble_dir, steps, settings.reuse)
    log.info("ensemble %s: %d trees x %d seeds = %d members in %s", settings.ensemble_name, len(trees),
             len(seeds), len(specs), ensemble_dir)

    kind = settings.executor or ctx.config.executor["kind"]
    options = {k: v for k, v in ctx.config.executor.items() if k != "kind"}
    states = run_members(specs, ctx.data_arg, train_dict, kind, options, ensemble_dir / runs.JOBS_DIR,
                         settings.progress)
    done = [s for s in specs if states.get(s.key, {}).get("state") == ResultState.COMPLETE]
    if not done:
        reasons = "; ".join(f"{s.key}: {states.get(s.key, {}).get('reason', '?')}" for s in specs[:3])
        raise ArborsegError(f"no member of ensemble {settings.ensemble_name} trained ({reasons}); fix the cause and "
                            "run the same command again")

    regions = [r for r in PROB_REGIONS if r in data.regions]
    _ensure_probs(done, data, regions, train, settings.progress)
    scoring = Scoring.from_data(data, train.fn_mode)
    objective, direction = ctx.objective, ctx.direction

    done, selections = choose_on_validation(done, data, scoring, objective, direction, settings)
    chosen = selections[pick_fusion({f: sel.value for f, sel in selections.items()}, direction)]
    ens_scores, member_scores, gains = score_regions(done, chosen, data, scoring, regions, objective,
                                                     settings.bootstrap)

    manifest = _manifest(ctx, settings, specs, states, done, chosen, selections, ens_scores, member_scores, gains,
                         ensemble_dir, steps, train_dict)
    write_manifest(ensemble_dir, manifest)
    log.info("ensemble %s: %s fusion of %d member(s), %s=%.4f on validation; written to %s", settings.ensemble_name,
             chosen.fusion, len(chosen.chosen), objective, chosen.value, ensemble_dir / runs.ENSEMBLE_FILE)
    return EnsembleResult(ensemble_dir, manifest, selections)


def choose_on_validation(done: list[MemberSpec], data, scoring: Scoring, objective: str, direction: str,
                         settings: EnsembleSettings) -> tuple[list[MemberSpec], dict[str, Selection]]:
    """Order the members best first by their own validation objective; choose members for each fusion rule."""
    labels = data.read_labels("validation")
    probs = _stack_probs(done, "validation")
    single = [objective_score(labels_of(p), labels, objective, scoring) for p in probs]
    order = sorted(range(len(done)), key=lambda i: _rank(single[i], direction))
    done, probs = [done[i] for i in order], probs[order]

    def score(pred: np.ndarray) -> float:
        return objective_score(pred, labels, objective, scoring)

    selections: dict[str, Selection] = {}
    for fusion in (list(FUSIONS) if settings.fusion == "auto" else [settings.fusion]):
        selections[fusion] = choose_members(probs, labels, score, direction, fusion, settings.selection,
                                            data.ignore_value, settings.rounds, settings.init or 1)
        log.info("fusion %-8s: %s=%.4f on validation with %d member(s)", fusion, objective,
                 selections[fusion].value, len(selections[fusion].chosen))
    return done, selections


def score_regions(done: list[MemberSpec], chosen: Selection, data, scoring: Scoring, regions: list[str],
                  objective: str, n_boot: int) -> tuple[dict, list[dict], dict]:
    """(ensemble scores per region, each member's scores per region, gains over ``done[0]`` per region).

    ``done[0]`` is the best single member on validation (see :func:`choose_on_validation`). The gain on
    validation is optimistic (the members were chosen there); the eval regions' gains are not."""
    metrics = gain_metrics(objective)
    ens_scores: dict[str, dict[str, float]] = {}
    member_scores: list[dict[str, dict[str, float]]] = [{} for _ in done]
    gains: dict[str, dict[str, dict[str, float]]] = {}
    for region in regions:
        labels = data.read_labels(region)
        probs = _stack_probs(done, region)
        ens_pred = fuse(probs, chosen.fusion, weights=chosen.weights).labels
        ens_scores[region] = scoring.score(ens_pred, labels)
        preds = [labels_of(p) for p in probs]
        del probs
        for i, pred in enumerate(preds):
            member_scores[i][region] = scoring.score(pred, labels)
        gains[region] = region_gain(ens_pred, preds[0], labels, metrics, scoring, n_boot)
    return ens_scores, member_scores, gains


def _rank(value: float, direction: str) -> float:
    if value is None or math.isnan(value):
        return math.inf
    return -value if direction == "maximize" else value


def _ensure_probs(done: list[MemberSpec], data, regions: list[str], train, progress: bool) -> None:
    """Predict here the regions a member has no probabilities of (copied trials, older members)."""
    from tqdm.auto import tqdm

    missing = [s for s in done if any(not TrialFolder(s.out_dir).has_probs(r) for r in regions)]
    for spec in tqdm(missing, desc="predict", unit="member", disable=not progress or not missing):
        todo = [r for r in regions if not TrialFolder(spec.out_dir).has_probs(r)]
        predict_member(TrialFolder(spec.out_dir).model_path, data, todo, train, spec.out_dir)


def _stack_probs(done: list[MemberSpec], region: str) -> np.ndarray:
    """The (M, C, ...) probabilities of ``region`` of the members (written by :func:`_ensure_probs`)."""
    arrays = []
    for spec in done:
        probs = load_probs(spec.out_dir, region)
        if probs is None:
            raise ArborsegError(f"{spec.out_dir}: member {spec.key} has no probabilities of region {region}")
        arrays.append(probs)
    return np.stack(arrays)


def _member_entry(spec: MemberSpec, ensemble_dir: Path, weight: float, scores: dict | None,
                  state: dict[str, Any]) -> dict[str, Any]:
    folder = TrialFolder(spec.out_dir)
    tree = folder.load_tree()
    params = None
    if folder.metrics_path.is_file():
        params = json.loads(folder.metrics_path.read_text()).get("params")
    entry = {"key": spec.key, "tree_id": spec.tree_id, "tree_name": spec.tree_name, "family": spec.family,
             "seed": spec.seed, "tree": _relative(folder.tree_path, ensemble_dir),
             "model": _relative(folder.model_path, ensemble_dir) if folder.model_path.is_file() else None,
             "window": list(tree.window), "weight": float(weight), "scores": scores or {}, "params": params,
             "trial_id": spec.trial_id}
    if state.get("state") != ResultState.COMPLETE or "reused_from" in state:
        entry.update({k: v for k, v in state.items() if k in ("reason", "reused_from")})
    return entry


def _relative(path: Path, ensemble_dir: Path) -> str:
    """``path`` relative to the ensemble folder (``../../trials/0003/model.pt`` for a post-hoc member)."""
    return Path(os.path.relpath(path, ensemble_dir)).as_posix()


def inference_cost(members: list[dict[str, Any]], ensemble_dir: Path, n_classes: int) -> dict[str, Any]:
    """Forward GFLOPs of the members (each at its own window) and their sum, added to each member entry.

    Each distinct member with weight > 0 runs once per window whatever its greedy multiplicity (a member
    picked twice weighs twice as much, it is not run twice)."""
    from arborseg.nn import forward_gflops

    for entry in members:
        tree = runs.load_tree(ensemble_dir / entry["tree"])
        entry["gflops"] = round(forward_gflops(tree, n_classes, tuple(entry["window"])), 6)
    return {"gflops": round(sum(e["gflops"] for e in members), 6), "members": len(members),
            "counting": "the sum over the distinct members with weight > 0 of one forward pass at the member's "
                        "own window (a member picked several times runs once)"}


def _manifest(ctx, settings, specs, states, done, chosen, selections, ens_scores, member_scores, gains,
              ensemble_dir, steps, train_dict) -> dict[str, Any]:
    index = {s.key: i for i, s in enumerate(done)}
    candidates, members = [], []
    for spec in specs:
        state = states.get(spec.key, {"state": ResultState.FAIL, "reason": "not run"})
        i = index.get(spec.key)
        weight = float(chosen.weights[i]) if i is not None else 0.0
        entry = _member_entry(spec, ensemble_dir, weight, member_scores[i] if i is not None else None, state)
        candidates.append({**entry, "state": ResultState.COMPLETE if i is not None
                           else state.get("state", ResultState.FAIL)})
        if weight > 0:
            members.append(entry)
    members.sort(key=lambda e: -e["weight"])
    return manifest_body(
        ctx, "train", settings.ensemble_name, chosen, members, candidates, ens_scores, selections, settings, gains,
        baseline=(done[0].key, "best single member on validation"), ensemble_dir=ensemble_dir,
        settings_block={"top": settings.top, "seeds": settings.seeds, "fusion": settings.fusion,
                        "selection": settings.selection, "steps": steps, "bootstrap": settings.bootstrap,
                        "rounds": settings.rounds, "train": train_dict})


def manifest_body(ctx: Any, mode: str, name: str, chosen: Any, members: list[dict], candidates: list[dict],
                  ens_scores: dict, selections: dict[str, Any], settings: Any, gains: dict,
                  baseline: tuple[str, str], ensemble_dir: Path, settings_block: dict[str, Any]) -> dict[str, Any]:
    """The content of ``ensemble.json`` that both modes share (``mode``: "train" or "posthoc")."""
    from arborseg import __version__

    data = ctx.data
    return {
        "format": FORMAT, "mode": mode, "name": name, "campaign": str(ctx.run_dir), "objective": ctx.objective,
        "direction": ctx.direction, "classes": list(data.classes), "ignore_value": data.ignore_value,
        "voxel_size": list(data.voxel_size) if data.voxel_size else None,
        "normalizer": data.normalizer().to_dict(), "fusion": chosen.fusion, "members": members,
        "candidates": candidates, "scores": ens_scores,
        "inference": inference_cost(members, ensemble_dir, len(data.classes)),
        "gain": {"baseline": baseline[0], "baseline_rule": baseline[1],
                 "n_boot": settings.bootstrap, "confidence": 0.95, "regions": gains},
        "selection": settings.selection,
        "validation": {f: s.value for f, s in selections.items()},
        "greedy_history": chosen.history,
        "settings": settings_block,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "arborseg_version": __version__,
    }
