"""Choosing the members: greedy forward selection with replacement (Caruana et al., 2004), or all of them.

Greedy selection starts from the best single member on validation, then, round after round, adds
the member (any member, again and again if it helps: *with replacement*) whose addition gives the best
validation objective of the fused ensemble. After ``rounds`` rounds it keeps the prefix of additions
with the best value (the shortest one on ties). A member's weight is its multiplicity over the number of
picks. Ties between candidates go to the one listed first (the callers list the members best first).
``init`` > 1 starts instead from the ``init`` best members (Caruana's sorted initialisation: the callers list
them best first), kept whatever follows; the default 1 is the plain rule above.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from arborseg.ensemble.objective import better
from arborseg.inference.fusion import fit_weights, fuse, labels_of

Score = Callable[[np.ndarray], float]  # class map of the validation region -> objective value


@dataclass
class Selection:
    """Chosen members as per-candidate weights (0 = not chosen), the validation value and its history."""

    fusion: str
    weights: np.ndarray
    value: float
    history: list[float] = field(default_factory=list)  # value after each greedy pick
    counts: np.ndarray | None = None  # greedy multiplicities

    @property
    def chosen(self) -> list[int]:
        return [int(i) for i in np.flatnonzero(self.weights > 0)]


def greedy_select(member_probs: np.ndarray, score: Score, direction: str, fusion: str = "mean",
                  rounds: int | None = None, init: int = 1) -> Selection:
    """Greedy forward selection with replacement on (M, C, ...) validation probabilities.

    ``score`` maps the fused class map to the objective; ``rounds``: picks after the first (default 2 M);
    ``init``: the first ``init`` members (listed best first) are picked before the greedy rounds.
    """
    m = member_probs.shape[0]
    rounds = 2 * m if rounds is None else int(rounds)
    init = max(1, min(int(init), m))
    counts = np.zeros(m, np.int64)
    running = np.zeros(member_probs.shape[1:], np.float64) if fusion in ("mean", "weighted") else None

    def value_with(i: int) -> float:
        if running is not None:  # weighted mean = running sum / picks, no need to fuse from scratch
            return score(labels_of((running + member_probs[i]) / (counts.sum() + 1)))
        trial = counts.copy()
        trial[i] += 1
        return score(fuse(member_probs, fusion, weights=trial).labels)

    history: list[float] = []
    picks: list[int] = []
    for step in range(max(rounds + 1, init)):
        best_i: int | None = None
        best_v: float | None = None
        for i in ([step] if step < init and init > 1 else range(m)):
            v = value_with(i)
            if best_i is None or better(v, best_v, direction):
                best_i, best_v = i, v
        assert best_i is not None and best_v is not None, "greedy selection needs at least one member"
        counts[best_i] += 1
        if running is not None:
            running += member_probs[best_i]
        picks.append(best_i)
        history.append(float(best_v))
    best_len = init
    for n in range(init + 1, len(history) + 1):
        if better(history[n - 1], history[best_len - 1], direction):
            best_len = n
    final = np.bincount(picks[:best_len], minlength=m)
    return Selection(fusion, final / final.sum(), history[best_len - 1], history, final)


def select_all(member_probs: np.ndarray, score: Score, fusion: str = "mean") -> Selection:
    """Every member with equal weight."""
    m = member_probs.shape[0]
    weights = np.ones(m) / m
    value = score(fuse(member_probs, fusion, weights=weights).labels)
    return Selection(fusion, weights, float(value), [float(value)], np.ones(m, np.int64))


def choose_members(member_probs: np.ndarray, labels: np.ndarray, score: Score, direction: str, fusion: str,
                   selection: str = "greedy", ignore_value: int | None = None,
                   rounds: int | None = None, init: int = 1) -> Selection:
    """Members and weights for one fusion rule on validation.

    ``mean``/``max``/``vote``: greedy selection (or all members). ``weighted``: the members the selection
    picks (greedy with mean fusion, or all), then weights refitted on them by
    :func:`arborseg.inference.fusion.fit_weights` starting from the selection's weights.
    """
    base = "mean" if fusion == "weighted" else fusion
    sel = greedy_select(member_probs, score, direction, base, rounds, init) if selection == "greedy" \
        else select_all(member_probs, score, base)
    if fusion != "weighted":
        return sel
    pool = sel.chosen
    fitted = np.zeros(member_probs.shape[0])
    fitted[pool] = fit_weights(member_probs[pool], labels, ignore_value, init=sel.weights[pool])
    value = score(fuse(member_probs, "weighted", weights=fitted).labels)
    return Selection("weighted", fitted, float(value), sel.history, sel.counts)
