"""arborseg.data.sampling: window shapes, padding, foreground bias, class frequencies."""

from __future__ import annotations

import numpy as np
import pytest

from arborseg.data import Augmenter, PatchSampler, class_frequencies, make_em_volume, open_volume, write_volume
from arborseg.errors import DataError


@pytest.fixture(scope="module")
def region():
    raw, labels = make_em_volume((8, 96, 96), seed=1)
    return raw.astype(np.float32) / 255, labels.astype(np.int64)


def test_batch_shapes_and_dtypes(region) -> None:
    raw, labels = region
    sampler = PatchSampler(raw, labels, (3, 32, 48), rng=0)
    x, y, w = sampler.sample_batch(5)
    assert x.shape == (5, 1, 3, 32, 48) and x.dtype == np.float32
    assert y.shape == (5, 3, 32, 48) and y.dtype == np.int64
    assert w is None
    weights = np.ones(raw.shape, np.float32)
    aug = Augmenter.from_dict({"flip": True, "rot90": True, "elastic": {"p": 0.5}, "intensity": {"p": 0.5}})
    x, y, w = PatchSampler(raw, labels, (3, 32, 32), rng=0, augmenter=aug, weights=weights).sample_batch(4)
    assert x.shape == (4, 1, 3, 32, 32) and w.shape == y.shape and w.dtype == np.float32


def test_windows_come_from_the_region(region) -> None:
    raw, labels = region
    sampler = PatchSampler(raw, labels, (2, 16, 16), rng=3)
    x, y, _ = sampler.sample()
    # find the window in the region: raw and labels must be cut at the same place
    hits = [(z, i, j) for z in range(7) for i in range(81) for j in range(81)
            if np.array_equal(raw[z:z + 2, i:i + 16, j:j + 16], x[0])]
    assert len(hits) == 1
    z, i, j = hits[0]
    np.testing.assert_array_equal(labels[z:z + 2, i:i + 16, j:j + 16], y)


def test_deterministic_for_a_seed(region) -> None:
    raw, labels = region
    a = PatchSampler(raw, labels, (2, 24, 24), rng=7, foreground_bias=0.5).sample_batch(3)
    b = PatchSampler(raw, labels, (2, 24, 24), rng=np.random.default_rng(7), foreground_bias=0.5).sample_batch(3)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_padding_when_the_region_is_smaller_than_the_window(region) -> None:
    raw, labels = region
    small_raw, small_lab = raw[:2, :20, :30], labels[:2, :20, :30]
    sampler = PatchSampler(small_raw, small_lab, (5, 32, 32), rng=0, ignore_value=255,
                           weights=np.ones(small_raw.shape, np.float32))
    x, y, w = sampler.sample_batch(2)
    assert x.shape == (2, 1, 5, 32, 32)
    assert sampler.padding == ((1, 2), (6, 6), (1, 1))
    # the padded labels are ignored (weight 0); the original voxels sit in the middle untouched
    np.testing.assert_array_equal(y[0, 1:3, 6:26, 1:31], small_lab)
    np.testing.assert_array_equal(x[0, 0, 1:3, 6:26, 1:31], small_raw)
    assert (y[0, 0] == 255).all() and (y[0, :, :6] == 255).all()
    assert (w[0, 0] == 0).all() and (w[0, 1:3, 6:26, 1:31] == 1).all()
    # reflect padding: the raw halo mirrors the region
    np.testing.assert_array_equal(x[0, 0, 1:3, 5, 1:31], small_raw[:, 1])
    no_ignore = PatchSampler(small_raw, small_lab, (5, 32, 32), rng=0).sample()[1]
    assert (no_ignore[0] == 0).all()


def test_foreground_bias_raises_the_foreground_fraction(region) -> None:
    raw, labels = region
    mito = (labels == 2).astype(np.int64)

    def fraction(bias: float) -> float:
        sampler = PatchSampler(raw, mito, (1, 16, 16), rng=0, foreground_bias=bias)
        return float(np.mean([sampler.sample()[1].mean() for _ in range(200)]))

    base, biased = fraction(0.0), fraction(1.0)
    assert biased > 2 * base
    # foreground_classes picks which classes count
    sampler = PatchSampler(raw, labels, (1, 8, 8), rng=0, foreground_bias=1.0, foreground_classes=[2])
    assert all((sampler.sample()[1] == 2).any() for _ in range(50))


def test_bad_sampler_arguments(region) -> None:
    raw, labels = region
    with pytest.raises(DataError, match="same 3D shape"):
        PatchSampler(raw, labels[:2], (1, 8, 8))
    with pytest.raises(DataError, match="window"):
        PatchSampler(raw, labels, (8, 8))
    with pytest.raises(DataError, match="foreground_bias"):
        PatchSampler(raw, labels, (1, 8, 8), foreground_bias=1.5)


def test_class_frequencies(region, tmp_path) -> None:
    _, labels = region
    freq = class_frequencies(labels, 3)
    np.testing.assert_allclose(freq, np.bincount(labels.ravel(), minlength=3) / labels.size)
    assert freq.sum() == pytest.approx(1.0)
    sparse = labels.copy()
    sparse[:4] = 255
    np.testing.assert_allclose(class_frequencies(sparse, 3, ignore_value=255),
                               np.bincount(labels[4:].ravel(), minlength=3) / labels[4:].size)
    volume = open_volume(write_volume(tmp_path / "l.tif", labels.astype(np.uint8)))  # lazily, slice by slice
    np.testing.assert_allclose(class_frequencies(volume, 3), freq)
    with pytest.raises(DataError, match="outside the classes"):
        class_frequencies(labels, 2)
