"""arborseg.data.augment: labels and weights follow the image; intensity never touches labels."""

from __future__ import annotations

import numpy as np
import pytest

from arborseg.data.augment import Augmenter, Elastic, Flip, Intensity, Rot90
from arborseg.errors import DataError


def sample(shape=(4, 32, 32), seed=0):
    rng = np.random.default_rng(seed)
    from scipy import ndimage

    image = ndimage.gaussian_filter(rng.random(shape), (0, 2, 2)).astype(np.float32)
    image = (image - image.min()) / (image.max() - image.min())
    labels = (image > 0.5).astype(np.int64)
    weights = rng.random(shape).astype(np.float32)
    return image[None], labels, weights


GEOMETRIC = {
    "flip": Augmenter(flip=Flip(p=1.0), rot90=None),
    "rot90": Augmenter(flip=None, rot90=Rot90(p=1.0)),
    "elastic_thin3d": Augmenter(flip=None, rot90=None, elastic=Elastic(p=1.0, alpha=300, sigma=4, order=0)),
    "elastic_slice": Augmenter(flip=None, rot90=None, elastic=Elastic(p=1.0, alpha=300, sigma=4, order=0, mode="slice")),
    "all": Augmenter.from_dict({"flip": True, "rot90": True, "elastic": {"p": 1.0, "alpha": 300, "order": 0}}),
}


@pytest.mark.parametrize("name", list(GEOMETRIC))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_labels_follow_the_image(name: str, seed: int) -> None:
    image, labels, weights = sample(seed=seed)
    out_img, out_lab, out_w = GEOMETRIC[name](image, labels, weights, rng=np.random.default_rng(seed))
    assert out_img.shape == image.shape and out_lab.shape == labels.shape and out_w.shape == weights.shape
    assert out_lab.dtype == labels.dtype
    np.testing.assert_array_equal(out_lab, (out_img[0] > 0.5).astype(np.int64))
    assert out_img.flags.c_contiguous and out_lab.flags.c_contiguous and out_w.flags.c_contiguous


def test_elastic_really_deforms_and_keeps_label_values() -> None:
    image, labels, weights = sample()
    labels = labels * 3  # labels keep their values (order 0), never interpolated in between
    aug = Augmenter(flip=None, rot90=None, elastic=Elastic(p=1.0, alpha=300, sigma=4))
    out_img, out_lab, out_w = aug(image, labels, weights, rng=np.random.default_rng(0))
    assert not np.array_equal(out_lab, labels)
    assert set(np.unique(out_lab)) <= {0, 3}
    # thin3d: the same xy field for every slice -> a volume constant along z stays constant along z
    flat = np.repeat(image[:, :1], 4, axis=1)
    out, _, _ = aug(flat, np.repeat(labels[:1], 4, axis=0), None, rng=np.random.default_rng(1))
    np.testing.assert_allclose(out[0, 1:], np.repeat(out[0, :1], 3, axis=0))


def test_weights_follow_the_image() -> None:
    image, labels, _ = sample()
    # weights are interpolated linearly, like the image with its default order 1
    aug = Augmenter.from_dict({"flip": True, "rot90": True, "elastic": {"p": 1.0, "alpha": 300}})
    out_img, _, out_w = aug(image, labels, image[0].copy(), rng=np.random.default_rng(3))
    np.testing.assert_allclose(out_w, out_img[0], atol=1e-6)


def test_intensity_jitter_leaves_labels_and_weights_untouched() -> None:
    image, labels, weights = sample()
    aug = Augmenter(flip=None, rot90=None, intensity=Intensity(p=1.0, noise=0.05))
    out_img, out_lab, out_w = aug(image, labels, weights, rng=np.random.default_rng(0))
    assert not np.allclose(out_img, image)
    np.testing.assert_array_equal(out_lab, labels)
    np.testing.assert_array_equal(out_w, weights)


def test_rot90_with_non_square_windows_keeps_the_shape() -> None:
    image, labels, weights = sample((3, 16, 24))
    for seed in range(8):
        out_img, out_lab, _ = Augmenter(flip=None, rot90=Rot90(1.0))(image, labels, rng=np.random.default_rng(seed))
        assert out_img.shape == image.shape
        np.testing.assert_array_equal(out_lab, (out_img[0] > 0.5).astype(np.int64))


def test_deterministic_for_a_seed() -> None:
    image, labels, weights = sample()
    aug = Augmenter.from_dict({"flip": True, "rot90": True, "elastic": {"p": 0.5}, "intensity": {"p": 0.5}})
    runs = [aug(image, labels, weights, rng=np.random.default_rng(42)) for _ in range(2)]
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)
    other = aug(image, labels, weights, rng=np.random.default_rng(43))
    assert any(not np.array_equal(a, b) for a, b in zip(runs[0], other))


def test_accepts_3d_images() -> None:
    image, labels, _ = sample()
    out_img, out_lab, out_w = GEOMETRIC["all"](image[0], labels, rng=np.random.default_rng(0))
    assert out_img.shape == image.shape[1:] and out_w is None


def test_from_dict_and_errors() -> None:
    aug = Augmenter.from_dict({"flip": {"axes": ["y", "x"]}, "rot90": False, "elastic": {"p": 0.3, "alpha": 8, "sigma": 4},
                               "intensity": True})
    assert aug.flip == Flip(axes=("y", "x")) and aug.rot90 is None and aug.elastic.alpha == 8
    assert Augmenter.from_dict(aug.to_dict()) == aug
    assert Augmenter.from_dict(None) == Augmenter(flip=None, rot90=None)
    with pytest.raises(DataError, match=r"augmentation.elastc: unknown key; did you mean 'elastic'\?"):
        Augmenter.from_dict({"elastc": True})
    with pytest.raises(DataError, match=r"augmentation.elastic.sgima: unknown key; did you mean 'sigma'\?"):
        Augmenter.from_dict({"elastic": {"sgima": 3}})
    with pytest.raises(DataError, match=r"augmentation.intensity.p: 2 is a probability"):
        Augmenter.from_dict({"intensity": {"p": 2}})
    with pytest.raises(DataError, match=r"augmentation.flip.axes"):
        Augmenter.from_dict({"flip": {"axes": ["t"]}})
