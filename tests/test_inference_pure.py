"""The torch-free parts of inference: the block planner (blocks, ownership, order, hand-on) and the one fuse()
(weighted vote ties give the labels the ensemble and block-wise fusions gave before they were merged)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from arborseg.errors import ArborsegError, DataError, WindowError
from arborseg.inference.fusion import fuse, labels_of
from arborseg.inference.options import PredictOptions
from arborseg.inference.planner import plan_blocks


def test_planner_fusion_and_options_import_without_torch():
    code = ("import sys, arborseg.inference.planner, arborseg.inference.fusion, arborseg.inference.mergers, "
            "arborseg.inference.options; assert 'torch' not in sys.modules, 'torch was imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def _overlaps(a, b) -> bool:
    return all(x.start < y.stop and y.start < x.stop for x, y in zip(a, b))


@pytest.mark.parametrize("shape, windows, block", [
    ((11, 70, 53), [(4, 16, 16)], (4, 24, 20)),
    ((9, 40, 33), [(1, 16, 16), (3, 12, 20), (1, 16, 16)], (5, 16, 32)),
    ((3, 10, 40), [(4, 16, 16)], (2, 8, 16)),  # smaller than the window along z and y
])
def test_block_plan_owns_every_tile_once_and_visits_owners_first(shape, windows, block):
    options = PredictOptions(window=windows, n_classes=3, block=block, fusion="vote")
    plan = plan_blocks(shape, len(windows), options)
    blocks = list(plan.blocks())
    position = {key: i for i, (key, _) in enumerate(blocks)}
    # the blocks partition the volume
    cover = np.zeros(shape, np.int32)
    for _, own in blocks:
        cover[own] += 1
    assert (cover == 1).all() and len(blocks) == int(np.prod(plan.n_blocks))
    assert plan.keep_members == (len(windows) > 1)
    assert [g.members for g in plan.groups] == [tuple(i for i, w in enumerate(windows) if w == gw)
                                                for gw in dict.fromkeys(windows)]
    for g in plan.groups:
        owned = [t for ts in g.owned.values() for t in ts]
        assert sorted(map(str, owned)) == sorted(map(str, g.tiles))  # each tile owned exactly once
        for key, tiles in g.owned.items():
            own = dict(blocks)[key]
            local = plan.accumulator_region(own, tiles)
            for t in tiles:
                assert all(sl.start in range(o.start, o.stop) for sl, o in zip(t, own))  # first voxel in the owner
                assert all(lo.start <= sl.start and sl.stop <= lo.stop for sl, lo in zip(t, local))
                touched = [k for k, o in blocks if _overlaps(t, o)]
                assert all(position[key] <= position[k] for k in touched)  # the owner comes first
            handed = list(plan.hand_on(local, key))
            assert all(position[other] > position[key] for other, _ in handed)
            covered = np.zeros(shape, np.int32)
            covered[own] += 1
            for other, region in handed:
                assert all(r.start >= o.start and r.stop <= o.stop for r, o in zip(region, dict(blocks)[other]))
                covered[region] += 1
            region_local = np.zeros(shape, bool)
            region_local[local] = True
            assert (covered[region_local] == 1).all() and (covered[~region_local] == 0).all()


def test_block_plan_memory_budget_and_errors():
    options = PredictOptions(window=(5, 64, 64), n_classes=2, memory_budget_mb=150, chunks=(8, 256, 256))
    plan = plan_blocks((64, 2048, 2048), 1, options, activation_bytes=lambda windows: 2_000_000)
    assert plan.estimate["total"] * 1.25 <= 0.8 * 150 * 2**20 and plan.pending_bytes == int(0.2 * 150 * 2**20)
    assert all(b % c == 0 or b == s for b, c, s in zip(plan.block, (8, 256, 256), (64, 2048, 2048)))
    assert plan.block != (64, 2048, 2048)
    with pytest.raises(WindowError, match="one window per member"):
        plan_blocks((8, 32, 32), 2, PredictOptions(window=[(1, 16, 16)], n_classes=2))
    with pytest.raises(DataError, match="weights must be 2 positive numbers"):
        plan_blocks((8, 32, 32), 2, PredictOptions(window=(1, 16, 16), n_classes=2, weights=[1.0, 0.0]))
    for bad in (dict(fusion="median"), dict(uncertainty="variance"), dict(probs_dtype="int8"), dict(batch_size=0),
                dict(block=(4, 0, 4)), dict(n_classes=0)):
        with pytest.raises(DataError):
            PredictOptions(**{"window": (1, 16, 16), "n_classes": 2, **bad})


def test_weighted_vote_ties_give_the_labels_of_before():
    # labels computed by the two fusions before they were merged (ensemble.fusion.fuse_weighted and
    # largepredict.fuse): a tie in weight goes to the highest weighted mean probability
    s = np.array([[[0.9, 0.2, 0.6, 0.4, 0.7]], [[0.1, 0.8, 0.3, 0.55, 0.2]], [[0.2, 0.9, 0.1, 0.6, 0.45]]],
                 np.float32)  # one sigmoid channel: member 0 (weight 1/2) against members 1 and 2 everywhere
    probs, labels, unc = fuse(s, "vote", "disagreement", [2, 1, 1])
    np.testing.assert_array_equal(probs, 0.5)  # every voxel ties
    assert labels.tolist() == [1, 1, 0, 0, 1] and labels.dtype == np.uint8
    np.testing.assert_array_equal(unc, 0.5)
    # a member of weight 0 takes no part (the ensemble passes all candidates, unchosen ones with weight 0)
    assert fuse(np.concatenate([s, 1 - s[:1]]), "vote", weights=[0.5, 0.25, 0.25, 0]).labels.tolist() == [1, 1, 0, 0, 1]

    rng = np.random.default_rng(7)
    p = rng.dirichlet([1, 1, 1], size=(4, 30)).transpose(0, 2, 1).astype(np.float32)  # (members, classes, voxels)
    before = [1, 2, 2, 1, 2, 1, 1, 1, 0, 0, 1, 0, 2, 1, 0, 2, 2, 2, 1, 1, 1, 0, 1, 1, 1, 1, 1, 2, 0, 1]
    for weights in ([0.4, 0.2, 0.2, 0.2], [0.3, 0.1, 0.2, 0.1]):  # 0.4 = 0.2 + 0.2; 0.3 = 0.1 + 0.2 to rounding
        votes, labels, _ = fuse(p, "vote", weights=weights)
        top = np.sort(votes, axis=0)
        assert (top[-1] - top[-2] < 1e-6).sum() >= 5  # ties, exact or within float rounding
        assert labels.tolist() == before
        assert fuse(p.astype(np.float16), "vote", weights=weights).labels.tolist() == \
            fuse(p.astype(np.float16).astype(np.float32), "vote", weights=weights).labels.tolist()
    with pytest.raises(ArborsegError, match="non-negative"):
        fuse(p, "vote", weights=[1, -1, 1, 1])


def test_labels_of_is_argmax_or_threshold():
    p = np.array([[0.2, 0.5, 0.7]], np.float32)
    assert labels_of(p).tolist() == [0, 1, 1]
    three = np.stack([1 - p[0], p[0] / 2, p[0] / 2])
    assert labels_of(three).tolist() == [0, 0, 1]
    assert labels_of(np.zeros((300, 2), np.float32)).dtype == np.uint16
