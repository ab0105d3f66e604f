"""Bundles: export (TorchScript, ONNX, manifest, bioimage.io), loading, and prediction equal to the in-memory
ensemble; bad bundles and ensemble folders as one-line errors; the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

zarr = pytest.importorskip("zarr")

from arborseg.bundle import BUNDLE_FORMAT, export_bundle, load_bundle, predict_bundle
from arborseg.bundle.convert import to_onnx, to_torchscript
from arborseg.bundle.source import load_member_network, read_ensemble_dir
from arborseg.cli import main
from arborseg.data import DataConfig
from arborseg.data.preprocess import Normalizer
from arborseg.errors import BundleError
from arborseg.inference import fuse, predict_volume
from arborseg.space import load_space
from arborseg.train.settings import TrainSettings
from arborseg.train.trainer import train_and_score

ROOT = Path(__file__).parents[1]
# quickstart trees: a 2D U-Net (window z=1), a thin 3D U-Net and a hybrid (z=3)
TREE_SEEDS = (1, 3, 2)
WEIGHTS = (1.0, 2.0, 1.5)


def write_ensemble_dir(root: Path, fusion: str = "weighted") -> Path:
    """Train three tiny trees for two steps and write ensemble.json as `arborseg ensemble` does."""
    data = DataConfig.from_dict({
        "synthetic": {"seed": 1, "shape": [8, 64, 64]}, "classes": ["interior", "membrane", "mito"],
        "membrane_class": 1, "voxel_size": [32, 4, 4],
        "regions": {"train": {"z": [0, 4]}, "validation": {"z": [4, 5]}, "eval_near": {"z": [5, 6]},
                    "eval_far": {"z": [7, 8]}}}, source="test")
    space = load_space(ROOT / "search_spaces" / "quickstart.yaml")
    members = []
    for i, seed in enumerate(TREE_SEEDS):
        tree = space.sample(seed)
        settings = TrainSettings(steps=2, eval_every=2, overlays=False, precision="fp32", device="cpu", seed=i)
        train_and_score(tree, data, settings, root / "trials" / str(i), progress=False)
        members.append({"key": f"{tree.name}-s{i}", "tree_id": tree.id, "tree_name": tree.name,
                        "family": tree.family, "seed": i, "tree": f"trials/{i}/tree.yaml",
                        "model": f"trials/{i}/model.pt", "window": list(tree.window), "weight": WEIGHTS[i]})
    spec = {"format": "arborseg-ensemble/1", "name": "tiny", "campaign": "test", "objective": "fg_iou",
            "direction": "maximize", "classes": list(data.classes), "ignore_value": data.ignore_value,
            "voxel_size": [32, 4, 4], "normalizer": data.normalizer().to_dict(), "fusion": fusion,
            "members": members, "scores": {"eval_far": {"fg_iou": 0.5, "fn_401": 1.0}}}
    (root / "ensemble.json").write_text(json.dumps(spec, indent=1))
    return root


@pytest.fixture(scope="session")
def ensemble_dir(tmp_path_factory) -> Path:
    return write_ensemble_dir(tmp_path_factory.mktemp("ensemble"))


@pytest.fixture(scope="session")
def bundle_dir(ensemble_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    export_bundle(ensemble_dir, out, progress=False)
    return out


@pytest.fixture(scope="module")
def raw() -> np.ndarray:
    # 7 x 90 x 75: not a multiple of any window along any axis
    return (np.random.default_rng(3).random((7, 90, 75)) * 220 + 30).astype(np.uint8)


def in_memory_ensemble(ensemble_dir: Path, raw: np.ndarray, uncertainty: str | None = None):
    """The reference: every member's eager network over the whole volume with its own window, then fused."""
    src = read_ensemble_dir(ensemble_dir)
    x = Normalizer.from_dict(src.normalizer)(raw)
    member = np.stack([predict_volume(load_member_network(m, src.n_classes), x, m.window, src.n_classes)
                       for m in src.members])
    return fuse(member, src.fusion, uncertainty, [m.weight for m in src.members])


def assert_labels_match(labels, ref_probs, ref_labels, margin=1e-5):
    """Labels equal the reference wherever its top two classes differ by more than float rounding (the
    members are barely trained: their classes are close)."""
    top2 = np.sort(ref_probs, axis=0)[-2:]
    clear = top2[1] - top2[0] > margin
    np.testing.assert_array_equal(labels[clear], ref_labels[clear])
    assert clear.mean() > 0.97


# ------------------------------------------------------------------------------------- prediction
def test_bundle_output_equals_in_memory_ensemble(bundle_dir, ensemble_dir, raw, tmp_path):
    bundle = load_bundle(bundle_dir)
    assert bundle.windows == [(1, 64, 64), (3, 64, 64), (3, 64, 64)]  # different member windows
    assert bundle.fusion == "weighted" and bundle.weights == list(WEIGHTS)
    probs, labels, unc = in_memory_ensemble(ensemble_dir, raw, "disagreement")
    result = predict_bundle(bundle, raw, tmp_path / "out.zarr", probs=True, uncertainty="disagreement",
                            device="cpu", block=(4, 48, 48), probs_dtype="float32", progress=False)
    assert result["stats"]["blocks"] > 1 and result["stats"]["groups"] == 2
    g = zarr.open_group(result["path"], mode="r")
    np.testing.assert_allclose(g["probs"][...], probs, atol=1e-5)
    assert_labels_match(g["labels"][...], probs, labels)
    assert (np.abs(g["uncertainty"][...].astype(np.float32) - unc) < 1e-3).mean() > 0.999


def test_memory_budget_tiff_and_hdf5_outputs(bundle_dir, ensemble_dir, raw, tmp_path):
    import h5py
    import tifffile

    probs, labels, _ = in_memory_ensemble(ensemble_dir, raw)
    src = tmp_path / "raw.tif"
    tifffile.imwrite(src, raw)
    assert main(["-q", "predict", str(bundle_dir), str(src), "--out", str(tmp_path / "seg.tif"), "--probs",
                 "--uncertainty", "entropy", "--memory-mb", "100", "--device", "cpu"]) == 0
    seg = tifffile.imread(tmp_path / "seg.tif")
    p = tifffile.imread(tmp_path / "seg_probs.tif")
    h = tifffile.imread(tmp_path / "seg_uncertainty.tif")
    assert seg.shape == raw.shape and seg.dtype == np.uint8 and p.shape == (3, *raw.shape) and h.shape == raw.shape
    assert_labels_match(seg, probs, labels)
    np.testing.assert_allclose(p, probs, atol=1e-3)  # float16 in the intermediate store
    assert np.all((h >= 0) & (h <= np.log(3) + 1e-3))
    assert not list(tmp_path.glob(".seg.tif.*"))  # the temporary store is gone

    out = tmp_path / "seg.h5"
    assert main(["-q", "predict", str(bundle_dir) + ".zip", f"{tmp_path / 'raw.tif'}", "--out", str(out),
                 "--block", "4,48,48", "--batch-size", "2", "--device", "cpu"]) == 0
    with h5py.File(out, "r") as f:
        assert sorted(f) == ["labels"]
        np.testing.assert_array_equal(f["labels"][...], seg)


# ------------------------------------------------------------------------------------- the bundle
def test_manifest_records_everything(bundle_dir, ensemble_dir):
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert manifest["format"] == BUNDLE_FORMAT and manifest["classes"] == ["interior", "membrane", "mito"]
    assert manifest["fusion"] == "weighted" and manifest["voxel_size"] == [32, 4, 4]
    assert manifest["window"] is None and manifest["z_context"] == 3
    assert manifest["normalizer"] == json.loads((ensemble_dir / "ensemble.json").read_text())["normalizer"]
    assert manifest["scores"]["eval_far"]["fn_401"] == 1.0
    assert manifest["provenance"]["campaign"] == "test" and manifest["packages"]["torch"] == torch.__version__
    for m in manifest["members"]:
        assert (bundle_dir / m["torchscript"]).is_file() and (bundle_dir / m["tree"]).is_file()
        assert m["trace_max_rel_diff"] <= 1e-5 and m["z_context"] == m["window"][0]
        assert (bundle_dir / m["onnx"]).is_file() and m["onnx_error"] is None
    assert manifest["formats"]["skipped"] == {}  # every format of the quickstart families, checked
    member_files = {m[f] for m in manifest["members"] for f in ("torchscript", "onnx")}
    assert set(manifest["formats"]["produced"]) == member_files | {"ensemble.ts", "ensemble.onnx", "rdf.yaml"}
    listed = set(manifest["files"])
    on_disk = {p.relative_to(bundle_dir).as_posix() for p in bundle_dir.rglob("*") if p.is_file()}
    assert on_disk - listed == {"manifest.json"}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.load: TorchScript is deprecated, not gone
def test_bioimageio_description_is_valid_and_consistent(bundle_dir):
    bio = pytest.importorskip("bioimageio.spec")
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert manifest["bioimageio"]["status"] in ("valid-format", "passed")
    descr = bio.load_description((bundle_dir / "rdf.yaml").resolve(), perform_io_checks=True)
    assert descr.validation_summary.status in ("valid-format", "passed")
    # the described preprocessing equals the normaliser; the weights reproduce the test output
    x = np.load(bundle_dir / "test_input.npy")
    steps = {s.id: s.kwargs for s in descr.inputs[0].preprocessing}
    pre = np.clip(x * steps["scale_linear"].gain + steps["scale_linear"].offset, 0, 1)
    normed = Normalizer.from_dict(manifest["normalizer"]).normalize(x)
    np.testing.assert_allclose(pre, normed, atol=1e-5)
    module = torch.jit.load(str(bundle_dir / "ensemble.ts"))
    with torch.no_grad():
        out = module(torch.from_numpy(pre.astype(np.float32))).numpy()
    np.testing.assert_allclose(out, np.load(bundle_dir / "test_output.npy"), atol=1e-4)
    assert [a.id for a in descr.outputs[0].axes][2:] == ["z", "y", "x"]


def test_zip_loads_without_the_campaign(bundle_dir, ensemble_dir, tmp_path, raw):
    moved = tmp_path / "elsewhere.zip"
    shutil.copyfile(str(bundle_dir) + ".zip", moved)
    hidden = tmp_path / "hidden"
    shutil.move(str(ensemble_dir), hidden)  # the campaign's files are gone while the zip is used
    try:
        bundle = load_bundle(moved)
        assert len(bundle.members) == 3 and bundle.classes == ["interior", "membrane", "mito"]
        assert all(isinstance(m.module, torch.jit.ScriptModule) for m in bundle.members)
        small = raw[:3, :40, :70]
        a = predict_bundle(bundle, small, tmp_path / "zip.zarr", probs=True, device="cpu", progress=False)
        b = predict_bundle(bundle_dir, small, tmp_path / "dir.zarr", probs=True, device="cpu", progress=False)
        np.testing.assert_array_equal(zarr.open_group(a["path"])["probs"][...],
                                      zarr.open_group(b["path"])["probs"][...])
    finally:
        shutil.move(str(hidden), ensemble_dir)


# ------------------------------------------------------------------------------------- errors
def test_bad_bundles_are_one_line_errors(bundle_dir, tmp_path, capsys):
    with pytest.raises(BundleError, match="not found"):
        load_bundle(tmp_path / "nope")
    junk = tmp_path / "junk.zip"
    junk.write_text("not a zip")
    with pytest.raises(BundleError, match="not a bundle"):
        load_bundle(junk)
    broken = tmp_path / "broken"
    shutil.copytree(bundle_dir, broken)
    member = json.loads((broken / "manifest.json").read_text())["members"][1]["torchscript"]
    data = (broken / member).read_bytes()
    (broken / member).write_bytes(data[:-10] + b"0123456789")
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(broken)
    (broken / member).unlink()
    with pytest.raises(BundleError, match="missing"):
        load_bundle(broken)
    assert main(["predict", str(broken), "raw.tif", "--out", str(tmp_path / "x.zarr")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("arborseg: error:") and "missing" in err and len(err.splitlines()) == 1
    assert main(["predict", str(bundle_dir), "raw.tif", "--out", str(tmp_path / "x.png")]) == 2
    assert "must end in" in capsys.readouterr().err


def test_bad_ensemble_dirs_are_one_line_errors(ensemble_dir, tmp_path, capsys):
    with pytest.raises(BundleError, match="ensemble.json: not found"):
        export_bundle(tmp_path, tmp_path / "b")
    bad = tmp_path / "ens"
    shutil.copytree(ensemble_dir, bad)
    spec = json.loads((bad / "ensemble.json").read_text())
    (bad / spec["members"][2]["model"]).unlink()
    with pytest.raises(BundleError, match=r"members\[2\]\.model: file .* not found"):
        export_bundle(bad, tmp_path / "b")
    spec["fusion"] = "median"
    (bad / "ensemble.json").write_text(json.dumps(spec))
    assert main(["export", str(bad), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert "fusion 'median'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob(".b.partial"))


# ------------------------------------------------------------------------------------- conversion
class ShapeDependent(torch.nn.Module):
    """A branch on the batch size: tracing records one branch and the check must catch it."""

    def forward(self, x):
        return x * 2 if x.shape[0] == 2 else x


class NumpyInside(torch.nn.Module):
    """Leaves torch inside forward: no ONNX exporter can follow it."""

    def forward(self, x):
        return torch.from_numpy(np.ascontiguousarray(x.detach().cpu().numpy()[:, :, ::-1])) * 1.0


def test_trace_mismatch_and_onnx_failure_raise_one_line(tmp_path):
    with pytest.raises(BundleError, match="differs from the network"):
        to_torchscript(ShapeDependent(), (1, 8, 8), tmp_path / "x.ts")
    with pytest.raises(BundleError, match="no verified ONNX export .*torchscript exporter: .*dynamo exporter: "):
        to_onnx(NumpyInside(), (1, 8, 8), tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()
    good = torch.nn.Conv3d(1, 2, 3, padding=1)
    result = to_onnx(good, (2, 8, 8), tmp_path / "good.onnx")
    assert result["checked"] == "onnx.checker + onnxruntime" and result["max_rel_diff"] <= 1e-4


def test_weighted_fusion_matches_the_ensemble_modules_rules():
    """The prediction's fusion (the bundle's members and weights) is the one `arborseg ensemble` scored with
    (all its candidates, the unchosen ones with weight 0, as float16 probabilities)."""
    rng = np.random.default_rng(0)
    member = rng.dirichlet([1, 1, 1], size=(4, 600)).transpose(0, 2, 1).astype(np.float16).astype(np.float32)
    weights = [0.4, 0.3, 0.2, 0.1]
    candidates = np.concatenate([member[:2], rng.random((1, 3, 600)).astype(np.float32), member[2:]])
    for rule in ("mean", "weighted", "max", "vote"):
        probs, labels, _ = fuse(member, rule, None, weights)
        ref_probs, ref_labels, _ = fuse(candidates.astype(np.float16), rule, None, [0.4, 0.3, 0.0, 0.2, 0.1])
        np.testing.assert_array_equal(probs, ref_probs)
        np.testing.assert_array_equal(labels, ref_labels)
    weighted, _, _ = fuse(member, "weighted", None, weights)
    plain, _, _ = fuse(member, "mean")
    assert np.abs(weighted - plain).max() > 1e-3  # the weights matter
