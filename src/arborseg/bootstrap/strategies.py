"""What to label next: strategies that rank unlabeled units (slices or tiles).

Every strategy gets a :class:`SelectionContext` (candidates, labeled units and whatever network outputs
it declared in ``needs``) and returns ``k`` candidates, best first. Uncertainty strategies score each unit
by the mean over its voxels; batch strategies (k-means, core-set) pick a diverse set at once.

=================  ==============================================================================
random             uniform choice (baseline)
adjacent           nearest to the labeled region, growing it outward (the seed work's bootstrapping)
entropy            highest mean predictive entropy  -sum_c p_c log p_c
least_confidence   highest mean  1 - max_c p_c
bald_mc            highest mean mutual information (BALD) over Monte-Carlo dropout samples
bald_ensemble      BALD over the members of an ensemble of seeds (their disagreement)
kmeans             k-means on bottleneck embeddings, the unit nearest each centre (representative)
coreset            greedy k-centre on bottleneck embeddings: farthest from everything labeled (diverse)
=================  ==============================================================================
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from arborseg.bootstrap.units import Unit, unit_distance
from arborseg.errors import ArborsegError

EPS = 1e-8


@dataclass
class SelectionContext:
    """What a strategy may look at. ``probs`` (C, Z, Y, X): the (mean) prediction; ``mutual_information``
    (Z, Y, X): BALD per voxel over MC-dropout samples or ensemble members (see :func:`bald_from_samples`);
    ``embeddings`` / ``labeled_embeddings``: one row per candidate / labeled unit."""

    candidates: list[Unit]
    labeled: list[Unit] = field(default_factory=list)
    probs: np.ndarray | None = None
    mutual_information: np.ndarray | None = None
    embeddings: np.ndarray | None = None
    labeled_embeddings: np.ndarray | None = None
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))
    z_scale: float = 1.0

    def unit_probs(self, unit: Unit) -> np.ndarray:
        """(C, h, w) probabilities of one unit."""
        return _computed(self.probs, "probs")[(slice(None),) + unit.slices][:, 0]


def _computed(value: np.ndarray | None, name: str) -> np.ndarray:
    """A context field a strategy needs (:meth:`Strategy.select` checks them first)."""
    if value is None:
        raise ArborsegError(f"{name} was not computed")
    return value



# ------------------------------------------------------------------------------------------- voxel scores
def entropy(p: np.ndarray, axis: int = 0) -> np.ndarray:
    """Predictive entropy over the class axis (natural log)."""
    p = np.clip(p, EPS, 1.0)
    return -(p * np.log(p)).sum(axis=axis)


def least_confidence(p: np.ndarray) -> np.ndarray:
    """1 - max_c p_c per voxel (class axis 0)."""
    return 1.0 - p.max(axis=0)


def bald(samples: np.ndarray) -> np.ndarray:
    """Mutual information between prediction and weights per voxel: H(mean_s p_s) - mean_s H(p_s).

    ``samples`` (S, C, ...); 0 where every sample agrees, large where confident samples disagree."""
    return entropy(samples.mean(axis=0), axis=0) - entropy(samples, axis=1).mean(axis=0)


def bald_from_samples(samples: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(mean probabilities (C, ...), BALD per voxel (...)) of probability maps (C, ...) given one at a time,
    so that many samples of a large volume never sit in memory together."""
    total: np.ndarray | None = None
    mean_entropy: np.ndarray | None = None
    n = 0
    for p in samples:
        h = entropy(p, axis=0)
        total = p.astype(np.float64) if total is None else total + p
        mean_entropy = h if mean_entropy is None else mean_entropy + h
        n += 1
    if total is None or mean_entropy is None:  # n == 0
        raise ArborsegError("BALD needs at least one sample")
    mean = (total / n).astype(np.float32)
    return mean, np.maximum(entropy(mean, axis=0) - mean_entropy / n, 0.0).astype(np.float32)


# ------------------------------------------------------------------------------------------- strategies
@dataclass(frozen=True)
class Strategy:
    """A named way to choose units; ``needs`` names the context fields it reads."""

    name: str
    help: str
    needs: tuple[str, ...]
    score: Callable[[SelectionContext], np.ndarray] | None = None          # higher = label first
    pick: Callable[[SelectionContext, int], list[int]] | None = None       # batch strategies

    def select(self, ctx: SelectionContext, k: int) -> list[Unit]:
        """The ``k`` candidates to label next, best first."""
        if not ctx.candidates:
            raise ArborsegError("every unit is labeled already: nothing left to propose")
        k = min(int(k), len(ctx.candidates))
        for need in self.needs:
            if getattr(ctx, need) is None:
                raise ArborsegError(f"strategy {self.name} needs {need}, which was not computed")
        if self.pick is not None:
            return [ctx.candidates[i] for i in self.pick(ctx, k)]
        assert self.score is not None, f"strategy {self.name} has neither score nor pick"
        return [ctx.candidates[i] for i in rank(self.score(ctx), ctx.rng)[:k]]


def rank(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices by descending score, ties in random order."""
    scores = np.asarray(scores, np.float64)
    return np.lexsort((rng.random(scores.size), -scores))


def _random(ctx: SelectionContext) -> np.ndarray:
    return ctx.rng.random(len(ctx.candidates))


def _adjacent(ctx: SelectionContext) -> np.ndarray:
    if not ctx.labeled:
        return np.zeros(len(ctx.candidates))
    return -np.array([min(unit_distance(c, u, ctx.z_scale) for u in ctx.labeled) for c in ctx.candidates])


def _entropy(ctx: SelectionContext) -> np.ndarray:
    return np.array([entropy(ctx.unit_probs(u)).mean() for u in ctx.candidates])


def _least_confidence(ctx: SelectionContext) -> np.ndarray:
    return np.array([least_confidence(ctx.unit_probs(u)).mean() for u in ctx.candidates])


def _bald(ctx: SelectionContext) -> np.ndarray:
    return np.array([_computed(ctx.mutual_information, "mutual_information")[u.slices].mean() for u in ctx.candidates])


def _standardise(emb: np.ndarray, ref: np.ndarray) -> np.ndarray:
    mu, sd = ref.mean(0), ref.std(0) + 1e-6
    return (emb - mu) / sd


def _kmeans(ctx: SelectionContext, k: int) -> list[int]:
    from scipy.cluster.vq import kmeans2

    embeddings = _computed(ctx.embeddings, "embeddings")
    emb = _standardise(embeddings, embeddings).astype(np.float64)
    if k >= len(emb):
        return list(rank(np.zeros(len(emb)), ctx.rng))
    seed = int(ctx.rng.integers(2 ** 31))
    centres, assign = kmeans2(emb, k, minit="++", seed=seed)
    chosen = []
    sizes = np.bincount(assign, minlength=k)
    for c in np.argsort(-sizes, kind="stable"):  # biggest cluster first: the most representative unit
        members = np.flatnonzero(assign == c)
        if members.size == 0:
            continue
        d = ((emb[members] - centres[c]) ** 2).sum(1)
        chosen.append(int(members[np.argmin(d)]))
    rest = [i for i in rank(np.zeros(len(emb)), ctx.rng) if i not in chosen]  # empty clusters: fill at random
    return (chosen + rest)[:k]


def _coreset(ctx: SelectionContext, k: int) -> list[int]:
    emb = _computed(ctx.embeddings, "embeddings").astype(np.float64)
    both = emb if ctx.labeled_embeddings is None or not len(ctx.labeled_embeddings) else \
        np.concatenate([emb, ctx.labeled_embeddings.astype(np.float64)])
    emb = _standardise(emb, both)
    if ctx.labeled_embeddings is not None and len(ctx.labeled_embeddings):
        lab = _standardise(ctx.labeled_embeddings.astype(np.float64), both)
        dist = np.sqrt(((emb[:, None, :] - lab[None]) ** 2).sum(-1)).min(1)
    else:
        dist = np.full(len(emb), np.inf)
    chosen: list[int] = []
    for _ in range(k):
        d = dist.copy()
        d[chosen] = -np.inf
        i = int(rank(np.where(np.isinf(d) & (d > 0), np.finfo(float).max, d), ctx.rng)[0])
        chosen.append(i)
        dist = np.minimum(dist, np.sqrt(((emb - emb[i]) ** 2).sum(-1)))
    return chosen


STRATEGIES: dict[str, Strategy] = {s.name: s for s in (
    Strategy("random", "uniform at random (baseline)", (), score=_random),
    Strategy("adjacent", "nearest to the labeled region, growing it outward (the seed work's baseline)", (),
             score=_adjacent),
    Strategy("entropy", "highest mean predictive entropy", ("probs",), score=_entropy),
    Strategy("least_confidence", "highest mean 1 - max class probability", ("probs",), score=_least_confidence),
    Strategy("bald_mc", "highest BALD mutual information over MC-dropout samples", ("mutual_information",),
             score=_bald),
    Strategy("bald_ensemble", "highest BALD over an ensemble of seeds (member disagreement)",
             ("mutual_information",), score=_bald),
    Strategy("kmeans", "k-means on bottleneck embeddings; the unit nearest each centre", ("embeddings",),
             pick=_kmeans),
    Strategy("coreset", "greedy k-centre on bottleneck embeddings: farthest from the labeled units",
             ("embeddings",), pick=_coreset),
)}


def get_strategy(name: str) -> Strategy:
    """A strategy by name (ArborsegError listing the valid ones)."""
    if name not in STRATEGIES:
        raise ArborsegError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name]


def strategies_help() -> str:
    """One line per strategy, for ``arborseg bootstrap next --help``."""
    return "; ".join(f"{s.name}: {s.help}" for s in STRATEGIES.values())


def needs_of(names: Sequence[str]) -> set[str]:
    return {need for n in names for need in get_strategy(n).needs}
