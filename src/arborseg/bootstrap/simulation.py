"""Simulated bootstrapping with the ground truth as the oracle (the annotator who corrects perfectly).

Each round: train on what is labeled (error-weighted by the previous corrections), score on held-out
regions, let a strategy pick the next units, 'correct' their pre-segmentation with the ground truth.
The rows (one per round) give learning curves of IoU and FN-401 against labeled units.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from arborseg.bootstrap.models import ArrayData, train_models, with_dropout
from arborseg.bootstrap.propose import build_context, mean_probs, z_span
from arborseg.bootstrap.pseudo import train_with_pseudo_labels
from arborseg.bootstrap.stats import correction_stats, error_codes, error_weights
from arborseg.bootstrap.strategies import get_strategy
from arborseg.bootstrap.units import make_units, scatter_units, stack_units
from arborseg.errors import ArborsegError
from arborseg.log import get_logger
from arborseg.metrics import score_segmentation
from arborseg.train.settings import TrainSettings
from arborseg.tree import ModuleTree

log = get_logger(__name__)
IGNORE = 255


@dataclass
class SimVolume:
    """Normalised raw (float32) and ground-truth classes of one block, plus what they mean."""

    raw: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    background: int | None = 0


@dataclass
class SimulationSettings:
    """One learning curve: ``initial`` units, then ``rounds`` rounds of ``per_round`` units each."""

    unit: str = "tile"
    tile: int = 64
    initial: int = 1
    per_round: int = 2
    rounds: int = 4
    steps: int = 150
    batch_size: int | None = None
    members: int = 1                  # bald_ensemble always trains at least 3
    dropout: float = 0.1              # in every net, so that all strategies train the same network
    mc_samples: int = 6
    error_mode: str = "all"           # all | fn | none
    error_weight: float = 5.0
    pseudo_lambda: float | None = None
    device: str = "cpu"
    progress: bool = False


def load_sim_volumes(data_yaml: str | Path, xy: int | None = None, stride: int = 1,
                     eval_regions: Sequence[str] = ("eval_near", "eval_far")) -> tuple[SimVolume, list[SimVolume]]:
    """(pool = the train region, held-out volumes) of a data YAML; every block cropped to its central
    ``xy`` x ``xy`` after taking every ``stride``-th pixel in y and x."""
    from arborseg.data import load_data_config

    cfg = load_data_config(data_yaml)

    def block(name: str) -> SimVolume:
        raw, labels = cfg.load_region(name)
        raw, labels = raw[:, ::stride, ::stride], labels[:, ::stride, ::stride]
        if xy:
            if min(raw.shape[1:]) < xy:
                raise ArborsegError(f"{data_yaml}: regions.{name} is {raw.shape[1:]} after stride {stride}, "
                                    f"smaller than the crop {xy}")
            y0, x0 = (raw.shape[1] - xy) // 2, (raw.shape[2] - xy) // 2
            raw, labels = raw[:, y0:y0 + xy, x0:x0 + xy], labels[:, y0:y0 + xy, x0:x0 + xy]
        return SimVolume(np.ascontiguousarray(raw, np.float32), np.ascontiguousarray(labels, np.uint8),
                         tuple(cfg.classes), cfg.background_class)

    return block("train"), [block(n) for n in eval_regions if n in cfg.regions]


def _score(models, evals: Sequence[SimVolume], window, device: str) -> dict[str, float]:
    keys = ("fg_iou", "miou", "fn_401", "fp_401", "fn_65", "fp_65")
    acc: dict[str, list[float]] = {k: [] for k in keys}
    for vol in evals:
        probs = mean_probs(models, vol.raw, window, len(vol.classes), device)
        scores = score_segmentation(probs.argmax(0), vol.labels, list(vol.classes), mode="2d",
                                    background=vol.background)
        for k in keys:
            acc[k].append(scores[k])
    return {k: float(np.nanmean(v)) for k, v in acc.items()}


def simulate(pool: SimVolume, evals: Sequence[SimVolume], tree: ModuleTree, strategy: str,
             settings: SimulationSettings, seed: int, out_dir: str | Path,
             tree2d: ModuleTree | None = None) -> list[dict[str, Any]]:
    """Run one learning curve; returns one row per round (labeled units, held-out scores, correction stats).

    The initial units depend only on ``seed``, so every strategy starts from the same labels."""
    s = settings
    get_strategy(strategy)
    if s.pseudo_lambda is not None and tree2d is None:
        raise ArborsegError("pseudo-labels need a 2D tree (tree2d)")
    units = make_units(pool.labels.shape, s.unit, s.tile)
    rng_start = np.random.default_rng([seed, 7])
    start = [units[i] for i in rng_start.choice(len(units), size=min(s.initial, len(units)), replace=False)]
    rng = np.random.default_rng([seed, 11, sum(map(ord, strategy))])
    labels = np.full(pool.labels.shape, IGNORE, np.uint8)
    errors = np.zeros(pool.labels.shape, np.uint8)
    scatter_units(labels, start, stack_units(pool.labels, start))
    labeled = list(start)
    members = max(3, s.members) if strategy == "bald_ensemble" else s.members
    net = with_dropout(tree, s.dropout)
    n_classes = len(pool.classes)
    overrides = {"batch_size": s.batch_size} if s.batch_size else {}
    rows: list[dict[str, Any]] = []
    for round_ in range(s.rounds + 1):
        started = time.perf_counter()
        data = ArrayData(pool.raw, labels, pool.classes, IGNORE, pool.background)
        settings_t = TrainSettings(steps=s.steps, eval_every=s.steps, checkpoint_every=s.steps,
                                   seed=seed * 1000 + round_, device=s.device, overrides=overrides, overlays=False)
        weights = error_weights(errors, s.error_mode, s.error_weight) if s.error_mode != "none" and errors.any() \
            else None
        out = Path(out_dir) / f"round_{round_:02d}"
        if s.pseudo_lambda is not None:
            assert tree2d is not None  # checked above
            models, _ = train_with_pseudo_labels(net, tree2d, data, settings_t, out, s.pseudo_lambda,
                                                 members=members, voxel_weights=weights, progress=s.progress)
        else:
            models = train_models(net, data, settings_t, out, members, weights, progress=s.progress)
        train_s = time.perf_counter() - started
        row: dict[str, Any] = {"strategy": strategy, "seed": seed, "round": round_, "labeled_units": len(labeled),
                               "labeled_voxels": int((labels != IGNORE).sum()), "train_seconds": round(train_s, 2),
                               **_score(models, evals, net.window, s.device)}
        rows.append(row)
        log.info("%s seed %d round %d: %d units, fg_iou %.3f, FN-401 %.3f", strategy, seed, round_, len(labeled),
                 row["fg_iou"], row["fn_401"])
        if round_ == s.rounds:
            break
        candidates = [u for u in units if u not in set(labeled)]
        if not candidates:
            break
        ctx = build_context(strategy, models, pool.raw, net.window, n_classes, candidates, labeled, rng,
                            s.mc_samples, s.device)
        chosen = get_strategy(strategy).select(ctx, s.per_round)
        probs = ctx.probs if ctx.probs is not None else mean_probs(models, pool.raw, net.window, n_classes,
                                                                    s.device, z_span(chosen))
        pre = stack_units(probs, chosen).argmax(0).astype(np.uint8)
        truth = stack_units(pool.labels, chosen)
        stats = correction_stats(pre, truth, pool.classes, IGNORE, pool.background)
        row.update({f"next_{k}": stats[k] for k in ("changed_fraction", "fn_401", "fp_401")})
        scatter_units(labels, chosen, truth)
        scatter_units(errors, chosen, error_codes(pre, truth, pool.background, IGNORE))
        labeled.extend(chosen)
        row["select_seconds"] = round(time.perf_counter() - started - train_s, 2)
    return rows

