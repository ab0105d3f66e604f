"""The example data YAMLs load and validate (real data from ../shared/data when it is there)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from arborseg.data import DataConfig, PatchSampler, load_data_config

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SHARED = ROOT.parent / "shared" / "data"  # ../shared/data relative to the project root
REAL = {
    "vnc_mito.yaml": (SHARED / "drosophila_vnc_sstem", (20, 1024, 1024), 2),
    "vnc_5class.yaml": (SHARED / "drosophila_vnc_sstem", (20, 1024, 1024), 5),
    "isbi2012_membrane.yaml": (SHARED / "isbi2012_membrane", (30, 512, 512), 2),
}
needs_data = pytest.mark.skipif(not SHARED.is_dir(), reason=f"real EM data not found at {SHARED} "
                                "(../shared/data relative to the project root)")


def _check_regions(cfg: DataConfig) -> None:
    assert set(cfg.regions) == {"train", "validation", "eval_near", "eval_far"}
    names = list(cfg.regions)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not cfg.regions[a].overlaps(cfg.regions[b]), (a, b)
    # bootstrapping layout along z: train < validation < eval_near < eval_far
    assert cfg.regions["train"].z[1] <= cfg.regions["validation"].z[0] <= cfg.regions["eval_near"].z[0]
    assert cfg.regions["eval_near"].z[1] <= cfg.regions["eval_far"].z[0]


@needs_data
@pytest.mark.parametrize("name", list(REAL))
def test_real_example_loads_and_validates(name: str, monkeypatch, tmp_path) -> None:
    folder, shape, n_classes = REAL[name]
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    monkeypatch.chdir(tmp_path)  # paths must resolve from the YAML's parents, not only from the cwd
    cfg = load_data_config(EXAMPLES / name)  # includes the slice-by-slice label value check
    assert cfg.shape == shape and cfg.n_classes == n_classes and cfg.voxel_size is not None
    assert Path(cfg.raw).is_file() and Path(cfg.labels.split(":")[0]).is_file()
    _check_regions(cfg)
    raw, labels = cfg.load_region("validation")
    assert raw.dtype == np.float32 and 0.0 <= raw.min() and raw.max() <= 1.0
    assert labels.shape == raw.shape == cfg.regions["validation"].shape
    for region in cfg.regions:  # every class appears in every region (so every score is defined)
        assert set(np.unique(cfg.read_labels(region))) == set(range(n_classes)), region


@needs_data
def test_vnc_mito_from_the_5class_labels_with_label_map() -> None:
    folder = REAL["vnc_mito.yaml"][0]
    d = load_data_config(EXAMPLES / "vnc_mito.yaml").to_dict()
    d.update(labels=str(folder / "labels.tif"), label_map={3: 1})
    via_map = DataConfig.from_dict(d, source="vnc_mito_map")
    direct = load_data_config(EXAMPLES / "vnc_mito.yaml")
    agree = (via_map.read_labels("eval_near") == direct.read_labels("eval_near")).mean()
    assert agree > 0.999  # meta.json: the two agree on > 99.9% of pixels


@needs_data
def test_isbi_training_patches() -> None:
    cfg = load_data_config(EXAMPLES / "isbi2012_membrane.yaml")
    raw, labels = cfg.load_region("train")
    x, y, _ = PatchSampler(raw, labels, (3, 64, 64), rng=0, foreground_bias=0.5).sample_batch(2)
    assert x.shape == (2, 1, 3, 64, 64) and set(np.unique(y)) <= {0, 1}


def test_quickstart_example_needs_no_download(monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_data_config(EXAMPLES / "quickstart_data.yaml")
    assert cfg.synthetic is not None and cfg.shape == (12, 192, 192)
    assert cfg.classes == ("interior", "membrane", "mitochondria")
    _check_regions(cfg)
    for region in cfg.regions:
        assert set(np.unique(cfg.read_labels(region))) == {0, 1, 2}, region
    raw, _ = cfg.load_region("train")
    assert raw.dtype == np.float32 and raw.shape == (6, 192, 192)


def test_every_example_file_exists() -> None:
    for name in [*REAL, "quickstart_data.yaml"]:
        assert (EXAMPLES / name).is_file(), name
