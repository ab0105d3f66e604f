"""Each selection strategy ranks constructed cases as it should."""

from __future__ import annotations

import numpy as np
import pytest

from arborseg.bootstrap.strategies import STRATEGIES, SelectionContext, bald, bald_from_samples, entropy, get_strategy
from arborseg.bootstrap.units import Unit, make_units
from arborseg.errors import ArborsegError


def _slices(n: int, size: int = 4) -> list[Unit]:
    return make_units((n, size, size), "slice")


def _probs_volume(per_slice: list[tuple[float, ...]], size: int = 4) -> np.ndarray:
    """(C, Z, Y, X) with every voxel of slice z holding the distribution per_slice[z]."""
    p = np.asarray(per_slice, np.float32)  # (Z, C)
    return np.broadcast_to(p.T[:, :, None, None], p.T.shape + (size, size)).copy()


def test_entropy_and_least_confidence_disagree_where_they_should():
    # slice 0: (0.5, 0.5, 0) -> entropy ln2 = 0.69, 1 - max = 0.5
    # slice 1: (0.6, 0.2, 0.2) -> entropy 0.95, 1 - max = 0.4;  slice 2: confident
    probs = _probs_volume([(0.5, 0.5, 0.0), (0.6, 0.2, 0.2), (0.98, 0.01, 0.01)])
    ctx = SelectionContext(_slices(3), probs=probs)
    assert [u.z for u in get_strategy("entropy").select(ctx, 3)] == [1, 0, 2]
    assert [u.z for u in get_strategy("least_confidence").select(ctx, 3)] == [0, 1, 2]


def test_bald_prefers_disagreement_over_shared_uncertainty():
    # both slices have a uniform mean prediction (equal entropy), but on slice 1 the samples are confident
    # and disagree (epistemic), on slice 0 every sample is uniform (aleatoric)
    agree = [(0.5, 0.5)] * 4
    disagree = [(0.95, 0.05), (0.05, 0.95)] * 2
    samples = np.stack([_probs_volume([a, d]) for a, d in zip(agree, disagree)])  # (S, C, Z, Y, X)
    mean, mi = bald_from_samples(iter(samples))
    assert np.allclose(mean, samples.mean(0)) and np.allclose(mi, bald(samples), atol=1e-6)
    ctx = SelectionContext(_slices(2), probs=mean, mutual_information=mi)
    ent = [entropy(ctx.unit_probs(u)).mean() for u in ctx.candidates]
    assert ent[0] == pytest.approx(ent[1], abs=1e-6)
    for name in ("bald_mc", "bald_ensemble"):
        assert [u.z for u in get_strategy(name).select(ctx, 2)] == [1, 0]
    assert np.allclose(bald(samples[:, :, :1]), 0.0, atol=1e-6)


def test_adjacent_grows_the_labeled_region_outward():
    units = _slices(8)
    ctx = SelectionContext([u for u in units if u.z != 3], labeled=[units[3]], rng=np.random.default_rng(0))
    chosen = [u.z for u in get_strategy("adjacent").select(ctx, 4)]
    assert sorted(chosen[:2]) == [2, 4] and sorted(chosen[2:]) == [1, 5]


def test_adjacent_tiles_prefer_neighbours_in_the_same_slice_over_the_next_slice():
    units = make_units((2, 24, 24), "tile", tile=8)
    seed = Unit(0, 8, 8, 8, 8)
    ctx = SelectionContext([u for u in units if u != seed], labeled=[seed], z_scale=2.0)
    first4 = get_strategy("adjacent").select(ctx, 4)
    assert all(u.z == 0 and abs(u.y0 - 8) + abs(u.x0 - 8) == 8 for u in first4)


def test_random_is_seeded_and_covers_every_candidate():
    units = _slices(10)
    a = get_strategy("random").select(SelectionContext(units, rng=np.random.default_rng(5)), 10)
    b = get_strategy("random").select(SelectionContext(units, rng=np.random.default_rng(5)), 10)
    c = get_strategy("random").select(SelectionContext(units, rng=np.random.default_rng(6)), 10)
    assert a == b and sorted(a) == units and a != c


def test_kmeans_takes_one_representative_per_cluster_biggest_first():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    sizes = [6, 3, 2]
    emb = np.concatenate([c + rng.normal(0, 0.3, (n, 2)) for c, n in zip(centres, sizes)])
    units = _slices(len(emb))
    ctx = SelectionContext(units, embeddings=emb, rng=np.random.default_rng(1))
    chosen = get_strategy("kmeans").select(ctx, 3)
    cluster = np.repeat([0, 1, 2], sizes)
    picked = [cluster[u.z] for u in chosen]
    assert picked == [0, 1, 2]
    # the representative of the big cluster is its member nearest the cluster mean
    big = emb[:6]
    assert chosen[0].z == int(np.argmin(((big - big.mean(0)) ** 2).sum(1)))


def test_coreset_picks_far_and_diverse_units():
    emb = np.array([[1.0, 0.0], [5.0, 0.0], [10.0, 0.0], [10.2, 0.0], [0.5, 0.0]])
    units = _slices(len(emb))
    ctx = SelectionContext(units, labeled=[Unit(99, 0, 0, 4, 4)], embeddings=emb,
                           labeled_embeddings=np.array([[0.0, 0.0]]))
    chosen = [u.z for u in get_strategy("coreset").select(ctx, 2)]
    assert chosen == [3, 1]  # the farthest, then the one farthest from both it and the labeled unit


def test_strategy_without_what_it_needs_says_so():
    with pytest.raises(ArborsegError, match="entropy needs probs"):
        get_strategy("entropy").select(SelectionContext(_slices(2)), 1)
    with pytest.raises(ArborsegError, match="unknown strategy 'entropie'"):
        get_strategy("entropie")
    with pytest.raises(ArborsegError, match="nothing left"):
        get_strategy("random").select(SelectionContext([]), 1)


def test_cli_lists_every_strategy(capsys):
    from arborseg.cli import main
    from arborseg.cli.bootstrap import STRATEGY_HELP

    assert list(STRATEGY_HELP) == list(STRATEGIES)
    with pytest.raises(SystemExit):
        main(["bootstrap", "next", "--help"])
    out = capsys.readouterr().out
    for name in STRATEGIES:
        assert f"  {name} " in out
