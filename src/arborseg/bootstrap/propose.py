"""From trained networks to a proposal: the network outputs a strategy needs, then its choice."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from arborseg.bootstrap.models import mc_dropout_samples, predict_probs, unit_embeddings
from arborseg.bootstrap.strategies import SelectionContext, bald_from_samples, get_strategy
from arborseg.bootstrap.units import Unit
from arborseg.errors import ArborsegError


def z_span(units: Sequence[Unit]) -> tuple[int, int]:
    return min(u.z for u in units), max(u.z for u in units) + 1


def build_context(strategy: str, models: Sequence[torch.nn.Module], raw: np.ndarray, window: Sequence[int],
                  n_classes: int, candidates: list[Unit], labeled: list[Unit], rng: np.random.Generator,
                  mc_samples: int = 8, device: str = "cpu", z_scale: float = 1.0,
                  probs: np.ndarray | None = None) -> SelectionContext:
    """Compute what ``strategy`` needs (``probs`` is reused when given: the mean prediction of ``models``)."""
    needs = get_strategy(strategy).needs
    ctx = SelectionContext(list(candidates), list(labeled), rng=rng, z_scale=z_scale)
    span = z_span(candidates)
    if "probs" in needs:
        ctx.probs = probs if probs is not None else mean_probs(models, raw, window, n_classes, device, span)
    if "mutual_information" in needs:
        if strategy == "bald_mc":
            samples = mc_dropout_samples(models[0], raw, window, n_classes, mc_samples, device, span,
                                         seed=int(rng.integers(2 ** 31)))
        else:
            if len(models) < 2:
                raise ArborsegError(f"{strategy} needs an ensemble of at least 2 networks, got {len(models)}")
            samples = (predict_probs(m, raw, window, n_classes, device, span) for m in models)
        mean, ctx.mutual_information = bald_from_samples(samples)
        if strategy == "bald_ensemble":
            ctx.probs = mean  # the ensemble's prediction, reused for the pre-segmentation
    if "embeddings" in needs:
        ctx.embeddings = unit_embeddings(models[0], raw, candidates, window, device)
        ctx.labeled_embeddings = unit_embeddings(models[0], raw, labeled, window, device) if labeled else None
    return ctx


def mean_probs(models: Sequence[torch.nn.Module], raw: np.ndarray, window: Sequence[int], n_classes: int,
               device: str = "cpu", z_range: tuple[int, int] | None = None) -> np.ndarray:
    """The mean class probabilities (C, Z, Y, X) of ``models`` over slices ``z_range``."""
    total: np.ndarray | None = None
    for m in models:
        p = predict_probs(m, raw, window, n_classes, device, z_range)
        total = p if total is None else total + p
    if total is None:
        raise ArborsegError("mean probabilities need at least one model")
    return total / len(models)
