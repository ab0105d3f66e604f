"""Block-wise prediction into Zarr: equal to in-memory prediction, ensembles, uncertainty, formats, memory."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

zarr = pytest.importorskip("zarr")

from arborseg.errors import DataError
from arborseg.inference import (
    PredictOptions,
    ZarrMerger,
    activation_bytes,
    choose_block,
    estimate_memory,
    fuse,
    predict_to_store,
    predict_volume,
)

WINDOW = (4, 16, 16)


def tiny_net(n_classes: int = 3, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, n_classes, 3, padding=1)
    )


class Constant(torch.nn.Module):
    """Logits = log(p) for fixed class probabilities p, whatever the input."""

    def __init__(self, p):
        super().__init__()
        self.register_buffer("logp", torch.log(torch.tensor(p, dtype=torch.float32)))

    def forward(self, x):
        shape = (x.shape[0], len(self.logp), *x.shape[2:])
        return self.logp.view(1, -1, 1, 1, 1).expand(shape).clone()


@pytest.fixture(scope="module")
def vol() -> np.ndarray:
    return np.random.default_rng(0).random((11, 70, 53), dtype=np.float32)


def assert_labels_match(labels, ref_probs, margin=1e-5):
    """Labels equal the reference argmax wherever the top two classes differ by more than float rounding."""
    top2 = np.sort(ref_probs, axis=0)[-2:]
    clear = top2[1] - top2[0] > margin
    np.testing.assert_array_equal(labels[clear], ref_probs.argmax(0)[clear])
    assert clear.mean() > 0.99


def store(tmp_path, models, volume, name="out.zarr", **kwargs):
    kwargs.setdefault("progress", False)
    options = PredictOptions(window=kwargs.pop("window", WINDOW), n_classes=kwargs.pop("n_classes", 3), **kwargs)
    result = predict_to_store(models, volume, tmp_path / name, options)
    return result, zarr.open_group(result["path"], mode="r")


@pytest.mark.parametrize(
    "block, overlap, blending",
    [((4, 24, 20), 0.25, "gaussian"), ((3, 17, 50), (0.5, 0.25, 0.3), "average"), ((11, 70, 53), 0.25, "gaussian")],
)
def test_equals_in_memory_prediction(tmp_path, vol, block, overlap, blending):
    net = tiny_net()
    ref = predict_volume(net, vol, WINDOW, 3, overlap=overlap, blending=blending)
    result, g = store(tmp_path, net, vol, block=block, overlap=overlap, blending=blending, write_probs=True,
                      probs_dtype="float32", batch_size=3)
    probs = g["probs"][...]
    assert probs.shape == ref.shape and probs.dtype == np.float32
    np.testing.assert_allclose(probs, ref, atol=2e-6)
    assert_labels_match(g["labels"][...], ref)
    if block != vol.shape:
        assert result["stats"]["blocks"] > 1


def test_hand_on_through_disk_and_small_volume(tmp_path, vol):
    net = tiny_net()
    ref = predict_volume(net, vol, WINDOW, 3)
    # a tiny budget with a fixed block: the partial sums handed between blocks go to .npy files
    result, g = store(tmp_path, net, vol, block=(4, 24, 20), memory_budget_mb=0.05, write_probs=True,
                      probs_dtype="float32")
    assert result["stats"]["pending_on_disk_mb"] > 0
    assert not list(tmp_path.glob(".arborseg-pending-*"))  # cleaned up
    np.testing.assert_allclose(g["probs"][...], ref, atol=2e-6)
    small = vol[:3, :10, :40]  # smaller than the window along z and y: tiles are padded and cropped
    ref = predict_volume(net, small, WINDOW, 3)
    _, g = store(tmp_path, net, small, name="small.zarr", block=(2, 8, 16), write_probs=True, probs_dtype="float32")
    np.testing.assert_allclose(g["probs"][...], ref, atol=2e-6)


def test_outputs_dtypes_shapes_and_chunks(tmp_path, vol):
    result, g = store(tmp_path, tiny_net(), vol, block=(8, 32, 32), write_probs=True, uncertainty="entropy")
    assert g["labels"].shape == vol.shape and g["labels"].dtype == np.uint8
    assert g["probs"].shape == (3, *vol.shape) and g["probs"].dtype == np.float16
    assert g["uncertainty"].shape == vol.shape and g["uncertainty"].dtype == np.float16
    assert g["labels"].chunks == (8, 32, 32) and g["probs"].chunks == (1, 8, 32, 32)
    assert g.attrs["complete"] is True and g.attrs["n_classes"] == 3 and g.attrs["probs_dtype"] == "float16"
    assert result["labels"].endswith("out.zarr:labels") and result["block"] == (8, 32, 32)
    np.testing.assert_allclose(g["probs"][...].astype(np.float32).sum(0), 1, atol=3e-3)
    from arborseg.data.volumes import open_volume

    assert open_volume(result["labels"]).shape == vol.shape

    _, q = store(tmp_path, tiny_net(), vol, name="q.zarr", block=(8, 32, 32), write_probs=True, probs_dtype="uint8")
    ref = predict_volume(tiny_net(), vol, WINDOW, 3)
    assert q["probs"].dtype == np.uint8 and q.attrs["probs_scale"] == pytest.approx(1 / 255)
    np.testing.assert_allclose(q["probs"][...] / 255, ref, atol=0.5 / 255 + 1e-6)
    # labels only by default; one sigmoid channel gives 0/1 labels
    _, one = store(tmp_path, tiny_net(1), vol, name="one.zarr", n_classes=1, block=(8, 32, 32))
    assert sorted(one.keys()) == ["labels"]
    ref1 = predict_volume(tiny_net(1), vol, WINDOW, 1)
    np.testing.assert_array_equal(one["labels"][...], (ref1[0] >= 0.5).astype(np.uint8))


def test_ensemble_of_identical_members_equals_one_model(tmp_path, vol):
    net = tiny_net()
    _, one = store(tmp_path, net, vol, name="one.zarr", block=(4, 32, 32), write_probs=True, probs_dtype="float32",
                   uncertainty="entropy")
    for fusion in ("mean", "max", "vote"):
        _, two = store(tmp_path, [net, tiny_net()], vol, name=f"{fusion}.zarr", block=(4, 32, 32),
                       write_probs=True, probs_dtype="float32", fusion=fusion, uncertainty="disagreement")
        np.testing.assert_array_equal(two["labels"][...], one["labels"][...])
        assert float(two["uncertainty"][...].max()) == 0.0  # identical members never disagree
        if fusion != "vote":
            np.testing.assert_allclose(two["probs"][...], one["probs"][...], atol=2e-6)
    _, mean2 = store(tmp_path, [net, net], vol, name="mean2.zarr", block=(4, 32, 32), write_probs=True,
                     probs_dtype="float32", uncertainty="entropy")
    np.testing.assert_allclose(mean2["uncertainty"][...], one["uncertainty"][...], atol=1e-3)


def test_ensemble_equals_fusing_whole_volume_predictions(tmp_path, vol):
    nets = [tiny_net(seed=s) for s in range(3)]
    member = np.stack([predict_volume(n, vol, WINDOW, 3) for n in nets])
    for fusion in ("mean", "max", "vote"):
        probs, labels, unc = fuse(member, fusion, "disagreement")
        _, g = store(tmp_path, nets, vol, name=f"{fusion}.zarr", block=(5, 30, 25), fusion=fusion,
                     write_probs=True, probs_dtype="float32", uncertainty="disagreement")
        np.testing.assert_allclose(g["probs"][...], probs, atol=2e-6)
        assert (g["labels"][...] == labels).mean() > 0.9999
        assert (np.abs(g["uncertainty"][...].astype(np.float32) - unc) < 1e-3).mean() > 0.9999


def test_fusion_rules_on_constructed_cases():
    # three members, three classes, one voxel each column: member argmaxes (0, 0, 1) / (0, 1, 2) / (2, 2, 1)
    p = np.array([
        [[0.5, 0.3, 0.2], [0.6, 0.3, 0.1], [0.2, 0.3, 0.5]],
        [[0.5, 0.4, 0.1], [0.1, 0.8, 0.1], [0.1, 0.2, 0.7]],
        [[0.1, 0.8, 0.1], [0.2, 0.1, 0.7], [0.1, 0.6, 0.3]],
    ], np.float32).transpose(0, 2, 1)  # (members, classes, voxels)
    probs, labels, unc = fuse(p, "vote", "disagreement")
    np.testing.assert_array_equal(labels, [0, 1, 2])  # majority; the three-way tie at voxel 1 -> mean 0.4
    np.testing.assert_allclose(probs[:, 0], [2 / 3, 1 / 3, 0])
    np.testing.assert_allclose(probs[:, 1], [1 / 3, 1 / 3, 1 / 3])
    np.testing.assert_allclose(unc, [1 / 3, 2 / 3, 1 / 3])
    probs, labels, _ = fuse(p, "max")
    raw = p.max(0)
    np.testing.assert_allclose(probs, raw / raw.sum(0), rtol=1e-6)
    np.testing.assert_allclose(probs.sum(0), 1, rtol=1e-6)
    np.testing.assert_array_equal(labels, raw.argmax(0))
    probs, labels, _ = fuse(p, "mean")
    np.testing.assert_allclose(probs, p.mean(0), rtol=1e-6)
    # one sigmoid channel: max is not renormalised; vote counts p >= 0.5, a tie goes to the mean
    s = np.array([[[0.9, 0.2, 0.6]], [[0.4, 0.3, 0.45]]], np.float32)
    probs, labels, _ = fuse(s, "max")
    np.testing.assert_allclose(probs[0], [0.9, 0.3, 0.6])
    probs, labels, unc = fuse(s, "vote", "disagreement")
    np.testing.assert_allclose(probs[0], [0.5, 0, 0.5])
    np.testing.assert_array_equal(labels, [1, 0, 1])  # ties: mean 0.65 and 0.525 are >= 0.5
    np.testing.assert_allclose(unc, [0.5, 0, 0.5])
    with pytest.raises(DataError, match="fusion"):
        fuse(p, "median")


def test_vote_and_max_end_to_end(tmp_path):
    vol = np.zeros((5, 20, 20), np.float32)
    members = [Constant([0.6, 0.3, 0.1]), Constant([0.2, 0.7, 0.1]), Constant([0.5, 0.1, 0.4])]
    _, g = store(tmp_path, members, vol, fusion="vote", block=(3, 8, 8), write_probs=True, probs_dtype="float32",
                 uncertainty="disagreement")
    assert (g["labels"][...] == 0).all()  # two of three vote class 0
    np.testing.assert_allclose(g["probs"][...][:, 0, 0, 0], [2 / 3, 1 / 3, 0], rtol=1e-6)
    np.testing.assert_allclose(g["uncertainty"][...], 1 / 3, atol=1e-3)
    _, g = store(tmp_path, members, vol, name="max.zarr", fusion="max", block=(3, 8, 8), write_probs=True,
                 probs_dtype="float32")
    expected = np.array([0.6, 0.7, 0.4]) / 1.7
    np.testing.assert_allclose(g["probs"][...][:, 2, 10, 10], expected, rtol=1e-5)
    assert (g["labels"][...] == 1).all()


def test_entropy_bounds(tmp_path, vol):
    _, g = store(tmp_path, [tiny_net(4, 0), tiny_net(4, 1)], vol, n_classes=4, block=(4, 32, 32),
                 uncertainty="entropy")
    h = g["uncertainty"][...].astype(np.float32)
    assert h.min() >= 0 and h.max() <= math.log(4) + 1e-3 and h.max() > 0
    _, u = fuse(np.full((1, 4, 2), 0.25, np.float32), "mean", "entropy")[::2]  # uniform: the maximum
    np.testing.assert_allclose(u, math.log(4), rtol=1e-6)
    _, _, u = fuse(np.array([[[1.0, 0.0], [0.0, 1.0]]], np.float32), "mean", "entropy")  # certain: 0
    np.testing.assert_allclose(u, 0)
    _, _, u = fuse(np.array([[[0.5, 0.0, 1.0]]], np.float32), "mean", "entropy")  # one sigmoid channel
    np.testing.assert_allclose(u, [math.log(2), 0, 0], atol=1e-7)


@pytest.mark.parametrize("fmt", ["tif", "h5", "zarr", "zarr_group"])
def test_inputs_from_files(tmp_path, vol, fmt):
    from arborseg.data.volumes import write_volume

    raw = (vol * 255).astype(np.uint8)
    spec = {"tif": tmp_path / "raw.tif", "h5": f"{tmp_path / 'raw.h5'}:volumes/raw",
            "zarr": tmp_path / "raw.zarr", "zarr_group": f"{tmp_path / 'in.zarr'}:raw"}[fmt]
    spec = write_volume(spec, raw, chunks=(4, 32, 32))
    net = tiny_net()

    def normalizer(a):
        return a / np.float32(255)

    ref = predict_volume(net, raw.astype(np.float32) / np.float32(255), WINDOW, 3)
    _, g = store(tmp_path, net, spec, block=(4, 32, 32), normalizer=normalizer, write_probs=True,
                 probs_dtype="float32")
    np.testing.assert_allclose(g["probs"][...], ref, atol=2e-6)


def test_normalizer_with_xy_context_matches_whole_volume(tmp_path, vol):
    from arborseg.data.preprocess import Normalizer

    norm = Normalizer(mode="zscore", stats={"mean": 0.5, "std": 0.25}, preprocessing={"unsharp": {"radius": 1.5}})
    assert norm.halo > 0
    net = tiny_net()
    ref = predict_volume(net, norm(vol), WINDOW, 3)
    _, g = store(tmp_path, net, vol, block=(4, 24, 24), normalizer=norm, write_probs=True, probs_dtype="float32")
    np.testing.assert_allclose(g["probs"][...], ref, atol=1e-5)


def test_reads_only_blocks_and_restores_model(tmp_path, vol):
    class Lazy:
        def __init__(self, a):
            self.a, self.shape, self.dtype, self.reads = a, a.shape, a.dtype, []

        def __getitem__(self, sl):
            self.reads.append(sl)
            return self.a[sl]

        def __array__(self, *args, **kwargs):
            raise AssertionError("the whole volume was read")

    lazy = Lazy(vol)
    net = tiny_net().train()
    store(tmp_path, net, lazy, block=(4, 24, 20))
    assert len(lazy.reads) <= 3 * 3 * 3
    assert all(sl[1].stop - sl[1].start <= 24 + WINDOW[1] - 1 for sl in lazy.reads)
    assert net.training and all(p.is_contiguous() for p in net.parameters())


def test_model_still_trains_after_prediction(tmp_path, vol):
    net = tiny_net()
    with torch.inference_mode():  # callers may predict inside inference mode (validation during training)
        predict_volume(net, vol[:4, :20, :20], WINDOW, 3)
    store(tmp_path, net, vol[:4, :20, :20])
    assert not any(p.is_inference() for p in net.parameters())
    net(torch.rand(1, 1, *WINDOW)).sum().backward()  # autograd works on the parameters
    assert all(p.grad is not None for p in net.parameters())

    class Hybrid(torch.nn.Module):  # 2D and 3D weights in one network
        def __init__(self):
            super().__init__()
            self.c2, self.c3 = torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.Conv3d(2, 3, 1)

        def forward(self, x):
            n, _, z, y, xx = x.shape
            h = self.c2(x.permute(0, 2, 1, 3, 4).reshape(n * z, 1, y, xx))
            return self.c3(h.reshape(n, z, 2, y, xx).permute(0, 2, 1, 3, 4))

    hybrid = Hybrid()
    weights = [p for p in hybrid.parameters()]
    probs = predict_volume(hybrid, vol[:6, :20, :20], WINDOW, 3)
    np.testing.assert_allclose(probs, predict_volume(hybrid, vol[:6, :20, :20], WINDOW, 3, channels_last=False,
                                                     reuse_slices=False), atol=1e-6)
    assert [p for p in hybrid.parameters()] == weights and all(p.is_contiguous() for p in weights)


def test_memory_budget_chooses_the_block(tmp_path, vol):
    shape, kw = (64, 2048, 2048), dict(n_classes=2, batch_size=4, activation_bytes_per_window=2_000_000)
    big = choose_block(shape, (5, 64, 64), 400 * 2**20, (8, 256, 256), **kw)
    small = choose_block(shape, (5, 64, 64), 150 * 2**20, (8, 256, 256), **kw)
    for block, budget in ((big, 400), (small, 150)):
        assert all(b % c == 0 or b == s for b, c, s in zip(block, (8, 256, 256), shape))
        assert 1.25 * estimate_memory(shape, block, (5, 64, 64), chunks=(8, 256, 256), **kw)["total"] <= budget * 2**20
    assert np.prod(small) < np.prod(big)
    with pytest.raises(DataError, match="too small"):
        choose_block(shape, (5, 64, 64), 2**20, (8, 256, 256), **kw)
    assert activation_bytes(tiny_net(), WINDOW) > 0
    net = tiny_net()
    ref = predict_volume(net, vol, WINDOW, 3)
    kw = dict(n_classes=3, batch_size=4, activation_bytes_per_window=activation_bytes(net, WINDOW),
              input_itemsize=4, write_probs=True, chunks=(4, 16, 16))
    whole = estimate_memory(vol.shape, vol.shape, WINDOW, **kw)["total"]
    one_chunk = estimate_memory(vol.shape, (4, 16, 16), WINDOW, **kw)["total"]
    budget_mb = 1.25 * (whole + one_chunk) / 2 / 0.8 / 2**20  # between one chunk and the whole volume
    result, g = store(tmp_path, net, vol, memory_budget_mb=budget_mb, chunks=(4, 16, 16), write_probs=True,
                      probs_dtype="float32")
    assert result["stats"]["blocks"] > 1
    np.testing.assert_allclose(g["probs"][...], ref, atol=2e-6)


def test_bad_arguments(tmp_path, vol):
    net = tiny_net()
    with pytest.raises(DataError, match="fusion"):
        store(tmp_path, net, vol, fusion="median")
    with pytest.raises(DataError, match="uncertainty"):
        store(tmp_path, net, vol, uncertainty="variance")
    with pytest.raises(DataError, match=".zarr"):
        predict_to_store(net, vol, tmp_path / "out.h5", PredictOptions(WINDOW, 3, progress=False))
    store(tmp_path, net, vol[:4, :20, :20])
    with pytest.raises(DataError, match="already exists"):
        store(tmp_path, net, vol[:4, :20, :20])
    store(tmp_path, net, vol[:4, :20, :20], overwrite=True)
    with pytest.raises(DataError, match="n_classes=2"):
        store(tmp_path, net, vol[:4, :20, :20], name="x.zarr", n_classes=2)


def test_zarr_merger_equals_array_merger(tmp_path, vol):
    net = tiny_net()
    small = vol[:6, :40, :30]
    ref = predict_volume(net, small, WINDOW, 3)
    merger = ZarrMerger(tmp_path / "m.zarr", 3, small.shape, chunks=(4, 16, 16))
    probs = predict_volume(net, small, WINDOW, 3, merger=merger)
    np.testing.assert_allclose(probs[...], ref, atol=1e-6)


# ------------------------------------------------------------- slice reuse for z-separable networks
def slice_net(n_classes: int = 3, norm: torch.nn.Module | None = None) -> torch.nn.Module:
    torch.manual_seed(0)
    layers = [torch.nn.Conv3d(1, 4, (1, 3, 3), padding=(0, 1, 1)), torch.nn.ReLU()]
    layers += [norm] if norm is not None else []
    return torch.nn.Sequential(*layers, torch.nn.Conv3d(4, n_classes, (1, 3, 3), padding=(0, 1, 1)))


def test_z_separability_is_detected_by_behaviour():
    from arborseg.inference import is_z_separable

    cpu = torch.device("cpu")
    assert is_z_separable([slice_net().eval()], WINDOW, cpu, False, [False])
    assert is_z_separable([slice_net(norm=torch.nn.BatchNorm3d(4)).eval()], WINDOW, cpu, False, [True])
    assert not is_z_separable([tiny_net().eval()], WINDOW, cpu, False, [False])  # 3x3x3 kernels
    assert not is_z_separable([slice_net(norm=torch.nn.InstanceNorm3d(4)).eval()], WINDOW, cpu, False, [False])
    assert not is_z_separable([slice_net(norm=torch.nn.GroupNorm(2, 4)).eval()], WINDOW, cpu, False, [False])

    class ZPosition(torch.nn.Module):  # per-slice, but not the same function at every z
        def forward(self, x):
            z = torch.arange(x.shape[2], dtype=x.dtype).view(1, 1, -1, 1, 1)
            return torch.cat([x, x * z], dim=1)

    assert not is_z_separable([ZPosition()], WINDOW, cpu, False, [False])
    assert not is_z_separable([slice_net(), tiny_net()], WINDOW, cpu, False, [False, False])  # every member
    assert not is_z_separable([slice_net()], (1, 16, 16), cpu, False, [False])  # nothing to reuse


def test_slice_reuse_equals_per_tile_prediction(tmp_path, vol):
    net = slice_net()
    ref = predict_volume(net, vol, WINDOW, 3, reuse_slices=False)
    np.testing.assert_allclose(predict_volume(net, vol, WINDOW, 3), ref, atol=1e-6)
    np.testing.assert_allclose(predict_volume(net, vol, WINDOW, 3, overlap=0.5, batch_size=3),
                               predict_volume(net, vol, WINDOW, 3, overlap=0.5, reuse_slices=False), atol=1e-6)
    result, g = store(tmp_path, [net, net], vol, block=(4, 24, 20), fusion="max", write_probs=True,
                      probs_dtype="float32")
    assert result["stats"]["reuse_slices"] is True
    np.testing.assert_allclose(g["probs"][...], ref, atol=2e-6)
    result, _ = store(tmp_path, tiny_net(), vol, name="mix.zarr", block=(4, 24, 20))
    assert result["stats"]["reuse_slices"] is False


# ------------------------------------------------------------------ members with different windows, weights
MIXED_WINDOWS = [(1, 16, 16), (4, 16, 16), (3, 12, 20), (4, 16, 16)]


@pytest.mark.parametrize("fusion, weights", [("mean", None), ("weighted", [1.0, 2.0, 0.5, 1.5]),
                                             ("max", None), ("vote", [1.0, 2.0, 0.5, 1.5])])
def test_members_with_different_windows_equal_fusing_their_own_predictions(tmp_path, vol, fusion, weights):
    nets = [tiny_net(seed=s) for s in range(4)]
    member = np.stack([predict_volume(n, vol, w, 3) for n, w in zip(nets, MIXED_WINDOWS)])
    probs, labels, unc = fuse(member, fusion, "disagreement", weights)
    result, g = store(tmp_path, nets, vol, window=MIXED_WINDOWS, block=(5, 30, 25), fusion=fusion, weights=weights,
                      write_probs=True, probs_dtype="float32", uncertainty="disagreement")
    assert result["stats"]["groups"] == 3 and result["stats"]["blocks"] > 1
    assert g.attrs["windows"] == [list(w) for w in MIXED_WINDOWS] and g.attrs["window"] is None
    np.testing.assert_allclose(g["probs"][...], probs, atol=2e-6)
    assert (g["labels"][...] == labels).mean() > 0.9999
    assert (np.abs(g["uncertainty"][...].astype(np.float32) - unc) < 1e-3).mean() > 0.9999


def test_weighted_mean_without_member_maps_and_memory_estimate_per_group(tmp_path, vol):
    nets = [tiny_net(seed=s) for s in range(2)]
    windows = [(1, 16, 16), (4, 16, 16)]
    member = np.stack([predict_volume(n, vol, w, 3) for n, w in zip(nets, windows)])
    probs, _, unc = fuse(member, "weighted", "entropy", [3.0, 1.0])
    np.testing.assert_allclose(probs, 0.75 * member[0] + 0.25 * member[1], atol=1e-6)
    _, g = store(tmp_path, nets, vol, window=windows, weights=[3.0, 1.0], fusion="weighted", block=(4, 24, 20),
                 write_probs=True, probs_dtype="float32", uncertainty="entropy")
    np.testing.assert_allclose(g["probs"][...], probs, atol=2e-6)
    # equal weights are the unweighted mean
    _, eq = store(tmp_path, nets, vol, name="eq.zarr", window=windows, weights=[2.0, 2.0], block=(4, 24, 20),
                  write_probs=True, probs_dtype="float32")
    np.testing.assert_allclose(eq["probs"][...], member.mean(0), atol=2e-6)
    one = estimate_memory(vol.shape, (4, 24, 20), (4, 16, 16), 3, 2, groups=[((4, 16, 16), 2)])
    two = estimate_memory(vol.shape, (4, 24, 20), (4, 16, 16), 3, 2, groups=[((1, 16, 16), 1), ((4, 16, 16), 1)])
    assert two["accumulator"] > one["accumulator"]  # a second accumulator (only its own halo)
    assert two["accumulator"] < 2 * one["accumulator"]


def test_bad_windows_and_weights_are_clear_errors(tmp_path, vol):
    from arborseg.errors import WindowError

    nets = [tiny_net(seed=s) for s in range(2)]
    with pytest.raises(WindowError, match="one window per member"):
        store(tmp_path, nets, vol, window=[(1, 16, 16)])
    with pytest.raises(DataError, match="weights must be 2 positive numbers"):
        store(tmp_path, nets, vol, name="w.zarr", weights=[1.0, 0.0])
