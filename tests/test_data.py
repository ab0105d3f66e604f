"""arborseg.data: volumes, the data YAML (validation with key paths), normalisation, synthetic data."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import yaml

from arborseg.data import (
    DataConfig,
    Normalizer,
    Region,
    apply_label_map,
    load_data_config,
    make_em_volume,
    median_filter,
    normalize,
    open_volume,
    unsharp_mask,
    write_volume,
)
from arborseg.errors import DataError

RNG = np.random.default_rng(0)
ARRAY = RNG.integers(0, 255, (6, 20, 24)).astype(np.uint8)
FORMATS = ["v.tif", "v.h5", "v.h5:group/raw", "v.zarr", "v.zarr:raw", "v.npy"]


# ------------------------------------------------------------------------------------------ volumes
@pytest.mark.parametrize("name", FORMATS)
def test_round_trip_every_format(tmp_path: Path, name: str) -> None:
    pytest.importorskip("h5py") if ".h5" in name else None
    pytest.importorskip("zarr") if ".zarr" in name else None
    spec = write_volume(tmp_path / name, ARRAY)
    vol = open_volume(spec)
    assert vol.shape == ARRAY.shape and vol.dtype == ARRAY.dtype
    for key in (np.s_[...], np.s_[2], np.s_[1:4, ::3, -5:], np.s_[::-1, 3, [0, 7, 2]], np.s_[:, -1, ::-2]):
        np.testing.assert_array_equal(vol[key], ARRAY[key])
    np.testing.assert_array_equal(np.asarray(vol), ARRAY)
    again = pickle.loads(pickle.dumps(vol))  # volumes travel to worker processes
    np.testing.assert_array_equal(again[1:3], ARRAY[1:3])


def test_compressed_tiff_is_read_page_by_page(tmp_path: Path) -> None:
    import tifffile

    tifffile.imwrite(tmp_path / "c.tif", ARRAY, compression="zlib")
    vol = open_volume(tmp_path / "c.tif")
    assert type(vol.array).__name__ == "_TiffPages"
    np.testing.assert_array_equal(vol[2:5, 3:9, ::-1], ARRAY[2:5, 3:9, ::-1])


def test_write_float_and_int_volumes(tmp_path: Path) -> None:
    data = RNG.normal(size=(3, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(open_volume(write_volume(tmp_path / "f.tif", data))[...], data)
    with pytest.raises(DataError, match="3D"):
        write_volume(tmp_path / "bad.npy", data[0])


def test_volume_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        open_volume(tmp_path / "missing.tif")
    with pytest.raises(DataError, match="unknown volume format '.png'"):
        open_volume(tmp_path / "image.png")
    np.save(tmp_path / "flat.npy", ARRAY[0])
    with pytest.raises(DataError, match=r"flat.npy: the array is 2D with shape \(20, 24\)"):
        open_volume(tmp_path / "flat.npy")


def test_missing_hdf5_and_zarr_keys_list_the_available_ones(tmp_path: Path) -> None:
    pytest.importorskip("h5py")
    pytest.importorskip("zarr")
    write_volume(tmp_path / "d.h5:raw", ARRAY)
    write_volume(tmp_path / "d.h5:labels", ARRAY)
    with pytest.raises(DataError, match=r"key 'rwa' does not exist; available datasets: labels, raw"):
        open_volume(f"{tmp_path}/d.h5:rwa")
    with pytest.raises(DataError, match=r"holds 2 arrays; name one .* \(available: labels, raw\)"):
        open_volume(tmp_path / "d.h5")
    write_volume(tmp_path / "s.zarr:raw", ARRAY)
    with pytest.raises(DataError, match=r"key 'nope' does not exist; available arrays: raw"):
        open_volume(f"{tmp_path}/s.zarr:nope")


# ------------------------------------------------------------------------------------- data config
@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    raw, labels = make_em_volume((10, 40, 48), seed=3)
    write_volume(tmp_path / "raw.tif", raw)
    write_volume(tmp_path / "labels.tif", labels)
    return tmp_path


def base(**changes) -> dict:
    d = {"raw": "raw.tif", "labels": "labels.tif", "classes": ["interior", "membrane", "mito"],
         "voxel_size": [40, 5, 5], "regions": {"train": {"z": [0, 5]}, "validation": {"z": [5, 7]},
                                               "eval_near": {"z": [7, 8]}, "eval_far": {"z": [8, 10]}}}
    d.update(changes)
    return {k: v for k, v in d.items() if v is not None}


def write_yaml(folder: Path, d: dict, name: str = "data.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(d))
    return path


def load(folder: Path, d: dict) -> DataConfig:
    return load_data_config(write_yaml(folder, d))


def test_load_valid_config(data_dir: Path) -> None:
    cfg = load(data_dir, base())
    assert cfg.shape == (10, 40, 48) and cfg.n_classes == 3
    assert list(cfg.regions) == ["train", "validation", "eval_near", "eval_far"]
    assert cfg.eval_regions == ("eval_near", "eval_far")
    region = cfg.region("train")
    assert isinstance(region, Region) and region.shape == (5, 40, 48)
    assert region.slices == (slice(0, 5), slice(0, 40), slice(0, 48))
    raw, labels = cfg.load_region("validation")
    assert raw.dtype == np.float32 and raw.shape == (2, 40, 48) and 0 <= raw.min() and raw.max() <= 1
    assert labels.dtype == np.int64 and set(np.unique(labels)) <= {0, 1, 2}
    # the stored normaliser reproduces load_region on the raw voxels
    norm = Normalizer.from_dict(yaml.safe_load(yaml.safe_dump(cfg.normalizer().to_dict())))
    np.testing.assert_allclose(norm.apply(cfg.read_raw("validation")), raw)
    # to_dict reads back to the same configuration
    again = DataConfig.from_dict(cfg.to_dict(), source="again")
    assert again.regions == cfg.regions and again.classes == cfg.classes and again.raw == cfg.raw


def test_relative_paths_are_found_from_the_yaml_folder_and_its_parents(data_dir: Path, monkeypatch) -> None:
    sub = data_dir / "configs" / "deep"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)  # neither the cwd nor the YAML folder holds raw.tif; a parent does
    cfg = load_data_config(write_yaml(sub, base()))
    assert Path(cfg.raw).resolve() == (data_dir / "raw.tif").resolve()


def test_normalizer_statistics_come_from_the_training_region(data_dir: Path) -> None:
    cfg = load(data_dir, base(normalization={"mode": "zscore"}))
    train_raw = cfg.read_raw("train").astype(np.float64)
    stats = cfg.normalizer().stats
    assert stats["mean"] == pytest.approx(train_raw.mean()) and stats["std"] == pytest.approx(train_raw.std())
    raw, _ = cfg.load_region("train")
    assert abs(raw.mean()) < 1e-4 and raw.std() == pytest.approx(1, abs=1e-3)


def test_preprocessing_uses_xy_context_of_the_volume(data_dir: Path) -> None:
    steps = {"unsharp": {"radius": 2, "amount": 1.0}, "median": 3}
    d = base(normalization={"mode": "none"}, preprocessing=steps)
    d["regions"]["eval_far"] = {"z": [8, 10], "y": [10, 30], "x": [12, 40]}
    cfg = load(data_dir, d)
    whole = Normalizer(mode="none", preprocessing=cfg.preprocessing).apply(cfg.open_raw()[8:10])
    raw, _ = cfg.load_region("eval_far")
    np.testing.assert_allclose(raw, whole[:, 10:30, 12:40], rtol=1e-5, atol=1e-4)


def test_label_map_and_ignore_value(data_dir: Path) -> None:
    labels = open_volume(data_dir / "labels.tif")[...]
    sparse = labels.copy()
    sparse[:, :5] = 255
    write_volume(data_dir / "sparse.tif", sparse)
    cfg = load(data_dir, base(labels="sparse.tif", classes=["other", "mito"], label_map={2: 1}, ignore_value=255))
    lab = cfg.read_labels("train")
    assert set(np.unique(lab)) == {0, 1, 255}
    np.testing.assert_array_equal(lab[:, 5:] == 1, labels[:5, 5:] == 2)
    kept = apply_label_map(np.array([0, 1, 2, 7]), {2: 1}, "keep")
    np.testing.assert_array_equal(kept, [0, 1, 1, 7])


def test_synthetic_config() -> None:
    cfg = DataConfig.from_dict({"synthetic": {"seed": 1, "shape": [6, 32, 32]}, "regions": {"train": {"z": [0, 4]}}},
                               source="syn.yaml")
    assert cfg.classes == ("interior", "membrane", "mitochondria") and cfg.shape == (6, 32, 32)
    raw, labels = cfg.load_region("train")
    assert raw.shape == labels.shape == (4, 32, 32)


BAD_CASES = [
    # (change to the base mapping, expected message fragment)
    (dict(labels="short.tif"), r"data.yaml: labels: shape \(8, 40, 48\) differs from raw shape \(10, 40, 48\)"),
    (dict(regions={"train": {"z": [30, 40]}}), r"data.yaml: regions.train.z: \[30, 40\] is outside the volume \(0..10\)"),
    (dict(regions={"train": {"z": [0, 5], "x": [0, 99]}}), r"regions.train.x: \[0, 99\] is outside the volume \(0..48\)"),
    (dict(regions={"train": {"z": [5, 5]}}), r"data.yaml: regions.train.z: \[5, 5\] is empty: start must be below stop"),
    (dict(regions={"train": {"z": [0, 6]}, "validation": {"z": [5, 7]}}), r"data.yaml: regions.validation: overlaps regions.train"),
    (dict(regions={"train": {"z": [0, 4]}, "validation": {"z": [4, 6]}, "eval_far": {"z": [5, 10], "y": [0, 8]}}),
     r"data.yaml: regions.eval_far: overlaps regions.validation"),
    (dict(classes=["interior", "membrane"]), r"data.yaml: labels: value 2 occurs in regions.train .* classes has 2 entries"),
    (dict(classes=["a", "b"], label_map={2: 5}), r"data.yaml: label_map.2: 5 must be a class index \(0..1\)"),
    (dict(regoins={}), r"data.yaml: regoins: unknown key; did you mean 'regions'\?"),
    (dict(normalization={"mode": "percentile", "hihg": 99}), r"data.yaml: normalization.hihg: unknown key; did you mean 'high'\?"),
    (dict(regions={"train": {"z": [0, 5]}, "evaluation": {"z": [5, 6]}}), r"regions.evaluation: unknown key; did you mean"),
    (dict(classes=None), r"data.yaml: classes: missing required key"),
    (dict(labels=None), r"data.yaml: labels: missing required key"),
    (dict(regions={"validation": {"z": [5, 7]}}), r"data.yaml: regions.train: missing required key"),
    (dict(raw="nowhere/raw.tif"), r"data.yaml: raw: nowhere/raw.tif: file not found; looked in: "),
    (dict(raw="complex.npy"), r"data.yaml: raw: complex.npy has dtype complex64; raw intensities must be integer or float"),
    (dict(labels="float_labels.npy"), r"data.yaml: labels: float_labels.npy has dtype float32; labels must be integer"),
    (dict(raw="data.h5:rwa"), r"data.yaml: raw: .*data.h5: key 'rwa' does not exist; available datasets: raw"),
    (dict(ignore_value=1), r"data.yaml: ignore_value: 1 is also a class index"),
    (dict(regions={"train": {"z": 3}}), r"regions.train.z: 3 must be a \[start, stop\) pair"),
    (dict(background_class=3), r"data.yaml: background_class: 3 is not a class index \(0..2\)"),
    (dict(voxel_size=[40, 5]), r"data.yaml: voxel_size: \[40, 5\] must be three positive numbers"),
    (dict(preprocessing={"median": 4}), r"data.yaml: preprocessing.median: 4 must be an odd filter size"),
    (dict(synthetic={"seed": 0}), r"data.yaml: raw: give either synthetic or raw \+ labels, not both"),
]


@pytest.mark.parametrize("change,message", BAD_CASES, ids=[m.split(":")[1].strip()[:40] + str(i)
                                                              for i, (_, m) in enumerate(BAD_CASES)])
def test_bad_data_raises_one_clear_error(data_dir: Path, change: dict, message: str) -> None:
    labels = open_volume(data_dir / "labels.tif")[...]
    write_volume(data_dir / "short.tif", labels[:8])
    np.save(data_dir / "complex.npy", np.zeros((10, 40, 48), np.complex64))
    np.save(data_dir / "float_labels.npy", labels.astype(np.float32))
    if "h5" in str(change.get("raw", "")):
        pytest.importorskip("h5py")
        write_volume(data_dir / "data.h5:raw", labels)
    with pytest.raises(DataError, match=message):
        load(data_dir, base(**change))


@pytest.mark.parametrize("name,bad", [("raw.tif", np.nan), ("raw.npy", np.inf), ("raw.npy", -np.inf)])
def test_nan_or_inf_in_raw_is_named_at_load(data_dir: Path, name: str, bad: float) -> None:
    raw = open_volume(data_dir / "raw.tif")[...].astype(np.float32)
    raw[6, 11, 13] = bad  # in the validation region only
    write_volume(data_dir / name, raw)
    cfg = load(data_dir, base(raw=name))
    train, _ = cfg.load_region("train")  # the normaliser is fitted on the clean training region
    assert np.isfinite(train).all()
    message = rf"data.yaml: raw .*{name}: 1 NaN/inf voxels in region validation \(first at z=6, y=11, x=13\); replace"
    with pytest.raises(DataError, match=message):
        cfg.load_region("validation")
    with pytest.raises(DataError, match=message):
        cfg.read_raw("validation")


def test_nan_in_the_xy_context_of_preprocessing_is_found(data_dir: Path) -> None:
    raw = open_volume(data_dir / "raw.tif")[...].astype(np.float32)
    raw[0, 20, 2] = np.nan  # outside eval_far's box, inside the context its median filter reads
    write_volume(data_dir / "raw.npy", raw)
    d = base(raw="raw.npy", preprocessing={"median": 3}, normalization={"mode": "none"})
    d["regions"] = {"train": {"z": [1, 5]}, "eval_far": {"z": [0, 1], "x": [3, 48]}}
    with pytest.raises(DataError, match=r"in region eval_far \(first at z=0, y=20, x=2\)"):
        load(data_dir, d).load_region("eval_far")


def test_missing_yaml_and_broken_yaml(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such data YAML file"):
        load_data_config(tmp_path / "nope.yaml")
    (tmp_path / "broken.yaml").write_text("raw: [unclosed\n")
    with pytest.raises(DataError, match="broken.yaml: not valid YAML at line"):
        load_data_config(tmp_path / "broken.yaml")


def test_key_prefix_for_embedded_data_sections(data_dir: Path) -> None:
    d = base(regions={"train": {"z": [0, 99]}})
    with pytest.raises(DataError, match=r"campaign.yaml: data.regions.train.z: \[0, 99\] is outside"):
        DataConfig.from_dict(d, source="campaign.yaml", base_dir=data_dir, key_prefix="data")


def test_eval_regions_may_only_warn_when_they_overlap_each_other(data_dir: Path, caplog) -> None:
    d = base(regions={"train": {"z": [0, 5]}, "eval_near": {"z": [5, 8]}, "eval_far": {"z": [7, 10]}})
    cfg = load(data_dir, d)
    assert "regions.eval_far: overlaps regions.eval_near" in caplog.text
    assert set(cfg.regions) == {"train", "eval_near", "eval_far"}


def test_region_read_with_halo() -> None:
    volume = np.arange(4 * 10 * 12).reshape(4, 10, 12)
    region = Region("r", (1, 3), (0, 5), (4, 12))
    grown = region.read(volume, halo_yx=2)
    assert grown.shape == (2, 7, 10)  # clamped at the volume border
    np.testing.assert_array_equal(region.crop_halo(grown, volume.shape, 2), region.read(volume))
    assert region.overlaps(Region("o", (2, 4), (4, 6), (0, 5))) and not region.overlaps(Region("o", (3, 4), (0, 5), (4, 12)))


# -------------------------------------------------------------------------------------- preprocess
def test_normalize_modes() -> None:
    x = RNG.normal(100, 20, (4, 32, 32)).astype(np.float32)
    p = normalize(x, "percentile", low=1, high=99)
    assert p.dtype == np.float32 and p.min() == 0 and p.max() == 1
    lo, hi = np.percentile(x, [1, 99])
    inside = (x > lo) & (x < hi)
    np.testing.assert_allclose(p[inside], ((x - lo) / (hi - lo))[inside], rtol=1e-5, atol=1e-6)
    z = normalize(x, "zscore")
    assert abs(z.mean()) < 1e-4 and z.std() == pytest.approx(1, abs=1e-4)
    np.testing.assert_array_equal(normalize(x, "none"), x)
    with pytest.raises(DataError, match="normalization.mode"):
        normalize(x, "minmax")


def test_filters_work_per_slice() -> None:
    x = np.zeros((3, 16, 16), np.float32)
    x[1, 8, 8] = 1.0
    assert not median_filter(x, 3).any()  # an isolated pixel is removed
    sharp = unsharp_mask(x, radius=1, amount=1)
    assert not sharp[0].any() and not sharp[2].any()  # no mixing across z
    assert sharp[1, 8, 8] > 1.0


def test_normalizer_round_trip() -> None:
    x = RNG.integers(0, 255, (3, 16, 16)).astype(np.uint8)
    norm = Normalizer.fit(x, "percentile", 2, 98, {"median": 3})
    again = Normalizer.from_dict(norm.to_dict())
    assert again == norm
    np.testing.assert_array_equal(again.apply(x), norm.apply(x))


# --------------------------------------------------------------------------------------- synthetic
def test_synthetic_volume_has_all_classes_and_is_deterministic() -> None:
    raw, labels = make_em_volume((12, 96, 96), seed=5)
    assert raw.dtype == np.uint8 and labels.dtype == np.uint8 and raw.shape == labels.shape == (12, 96, 96)
    assert set(np.unique(labels)) == {0, 1, 2}
    means = [raw[labels == k].mean() for k in range(3)]
    assert means[1] < means[0] and means[2] < means[0]  # membranes and mitochondria are dark
    raw2, labels2 = make_em_volume((12, 96, 96), seed=5)
    np.testing.assert_array_equal(raw, raw2)
    np.testing.assert_array_equal(labels, labels2)
    assert not np.array_equal(make_em_volume((12, 96, 96), seed=6)[1], labels)


def test_synthetic_cells_change_slowly_along_z() -> None:
    _, labels = make_em_volume((8, 96, 96), seed=0, anisotropy=8)
    membrane = labels == 1
    same = (membrane[1:] == membrane[:-1]).mean()
    assert same > 0.8  # neighbouring slices mostly agree


def test_synthetic_is_fast() -> None:
    import time

    start = time.process_time()  # CPU seconds of this process (about 0.8): not stretched by a busy machine
    make_em_volume((12, 256, 256), seed=0)
    assert time.process_time() - start < 5.0
