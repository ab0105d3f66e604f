"""Tiled prediction: coverage, blending weights, equivalence with a plain forward pass, input checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from arborseg.errors import ArborsegError, DataError, WindowError
from arborseg.inference import ArrayMerger, importance_map, predict_labels, predict_volume, tile_slices


def tiny_net(n_classes: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, n_classes, 3, padding=1)
    )


class TileMean(torch.nn.Module):
    """Outputs, for each tile, the constant probabilities (p, 1 - p) with p the tile's mean input."""

    def forward(self, x):
        p = x.mean(dim=(1, 2, 3, 4), keepdim=True).expand_as(x)
        return torch.cat([torch.log(p), torch.log1p(-p)], dim=1)


def test_one_window_equals_plain_forward():
    net = tiny_net()
    vol = np.random.default_rng(0).random((4, 16, 12), dtype=np.float32)
    probs = predict_volume(net, vol, (4, 16, 12), 3, blending="gaussian")
    with torch.no_grad():
        ref = torch.softmax(net(torch.from_numpy(vol)[None, None]), 1)[0].numpy()
    assert probs.shape == (3, 4, 16, 12) and probs.dtype == np.float32
    np.testing.assert_allclose(probs, ref, atol=1e-6)
    assert net.training  # mode restored


def test_volume_smaller_than_window_is_reflect_padded_and_cropped():
    net = tiny_net()
    vol = np.random.default_rng(1).random((3, 10, 7), dtype=np.float32)
    probs = predict_volume(net, vol, (3, 16, 12), 3)
    padded = np.pad(vol, ((0, 0), (3, 3), (2, 3)), mode="reflect")
    with torch.no_grad():
        ref = torch.softmax(net(torch.from_numpy(padded)[None, None]), 1)[0, :, :, 3:13, 2:9].numpy()
    np.testing.assert_allclose(probs, ref, atol=1e-6)
    one = predict_volume(net, vol[:1], (3, 8, 8), 3)  # z of size 1 cannot reflect: edge padding
    assert one.shape == (3, 1, 10, 7)


def test_tiles_cover_every_voxel():
    rng = np.random.default_rng(0)
    for _ in range(200):
        shape = tuple(int(v) for v in rng.integers(1, 40, 3))
        window = tuple(int(v) for v in rng.integers(1, 20, 3))
        overlap = float(rng.choice([0.0, 0.25, 0.5, 0.9]))
        tiles = tile_slices(shape, window, overlap)
        assert tiles == tile_slices(shape, window, overlap)  # deterministic
        count = np.zeros(shape, int)
        for t in tiles:
            for sl, size, w in zip(t, shape, window):
                assert 0 <= sl.start < sl.stop <= size and sl.stop - sl.start == min(size, w)
            count[t] += 1
        assert count.min() >= 1
        merger = ArrayMerger(1, shape)
        wmap = importance_map(window, "gaussian")
        for t in tiles:
            crop = tuple(slice(0, s.stop - s.start) for s in t)
            merger.add(t, np.ones((1, *wmap[crop].shape), np.float32), wmap[crop])
        assert merger.weights.min() > 0


def test_tile_positions():
    xs = [t[2] for t in tile_slices((1, 1, 10), (1, 1, 4), 0.5)]
    assert xs == [slice(0, 4), slice(2, 6), slice(4, 8), slice(6, 10)]
    assert [t[2] for t in tile_slices((1, 1, 9), (1, 1, 4), 0.0)] == [slice(0, 4), slice(4, 8), slice(5, 9)]
    assert len(tile_slices((5, 5, 5), (2, 2, 2), 0.99)) == 4**3  # step at least 1


def test_importance_map():
    np.testing.assert_array_equal(importance_map((1, 2, 3), "average"), np.ones((1, 2, 3)))
    g = importance_map((1, 1, 4), "gaussian")
    # sigma = 4 * 0.125 = 0.5, offsets from the centre 1.5, 0.5 -> relative weight exp(-4) at the ends
    np.testing.assert_allclose(g[0, 0], [math.exp(-4), 1, 1, math.exp(-4)], rtol=1e-6)
    big = importance_map((16, 16, 16), "gaussian")
    assert big.dtype == np.float32 and big.max() == 1 and big.min() == pytest.approx(1e-3)


@pytest.mark.parametrize("blending", ["average", "gaussian"])
def test_overlap_weights_by_hand(blending):
    # two tiles along x: [0:4] with mean 0.1 and [2:6] with mean (0.1 + 0.1 + 0.9 + 0.9) / 4 = 0.5
    vol = np.array([[[0.1, 0.1, 0.1, 0.1, 0.9, 0.9]]], np.float32)
    probs = predict_volume(TileMean(), vol, (1, 1, 4), 2, overlap=0.5, blending=blending, batch_size=1)
    p0, p1 = 0.1, 0.5
    e = 1.0 if blending == "average" else math.exp(-4)  # weight of a tile's end voxels
    # voxel 2 is tile 0's index 2 (weight 1) and tile 1's index 0 (weight e); voxel 3 mirrors it
    expected = [p0, p0, (p0 + e * p1) / (1 + e), (e * p0 + p1) / (1 + e), p1, p1]
    np.testing.assert_allclose(probs[0, 0, 0], expected, rtol=1e-5)
    np.testing.assert_allclose(probs.sum(0), 1, rtol=1e-6)


@pytest.mark.parametrize("blending", ["average", "gaussian"])
def test_probabilities_sum_to_one(blending):
    vol = np.random.default_rng(2).random((7, 23, 19), dtype=np.float32)
    probs = predict_volume(tiny_net(4), vol, (4, 8, 8), 4, overlap=(0.5, 0.25, 0.3), blending=blending, batch_size=3)
    assert probs.shape == (4, 7, 23, 19)
    np.testing.assert_allclose(probs.sum(0), 1, rtol=1e-5)
    labels = predict_labels(tiny_net(4), vol, (4, 8, 8), 4, blending=blending)
    assert labels.dtype == np.uint8 and labels.shape == vol.shape and labels.max() < 4


def test_reads_only_tiles():
    class Lazy:
        """h5py/zarr stand-in: records every read and refuses to be read whole."""

        def __init__(self, a):
            self.a, self.shape, self.ndim, self.reads = a, a.shape, a.ndim, []

        def __getitem__(self, sl):
            self.reads.append(sl)
            return self.a[sl]

        def __array__(self, *args, **kwargs):
            raise AssertionError("the whole volume was read")

    lazy = Lazy(np.random.default_rng(3).random((4, 20, 20), dtype=np.float32))
    probs = predict_volume(tiny_net(2), lazy, (4, 8, 8), 2)
    assert probs.shape == (2, 4, 20, 20)
    assert len(lazy.reads) == len(tile_slices(lazy.shape, (4, 8, 8)))
    assert all(sl[1].stop - sl[1].start == 8 for sl in lazy.reads)


def test_bad_inputs():
    net, vol = tiny_net(2), np.zeros((4, 8, 8), np.float32)
    with pytest.raises(DataError, match="3D"):
        predict_volume(net, np.zeros((8, 8), np.float32), (1, 8, 8), 2)
    for window in [(4, 8), (0, 8, 8), (4, -1, 8), (4, 8, 2.5), "abc"]:
        with pytest.raises(WindowError, match="window"):
            predict_volume(net, vol, window, 2)
    with pytest.raises(DataError, match="n_classes"):
        predict_volume(net, vol, (4, 8, 8), 0)
    with pytest.raises(DataError, match="n_classes=3"):  # the net returns 2 channels
        predict_volume(net, vol, (4, 8, 8), 3)
    with pytest.raises(WindowError, match="overlap"):
        predict_volume(net, vol, (4, 8, 8), 2, overlap=1.0)
    with pytest.raises(WindowError, match="blending"):
        predict_volume(net, vol, (4, 8, 8), 2, blending="max")
    valid_conv = torch.nn.Conv3d(1, 2, 3)  # shrinks the window
    with pytest.raises(ArborsegError, match="keeps the window size"):
        predict_volume(valid_conv, vol, (4, 8, 8), 2)
