"""`arborseg export` over every pair of built-in families (2D U-Net, thin 3D U-Net, hybrid, hybrid + CRF, dilated):
tiny trees sampled from the built-in spaces, random weights, every fusion rule; each produced format reproduces
the eager network, and what cannot be produced is left out with a reason, never the export. Also: bioimage.io's
own test on an exported bundle, and an export without the optional libraries."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from arborseg import runs
from arborseg.bundle import export_bundle
from arborseg.bundle.convert import FusedEnsemble, check_output
from arborseg.bundle.source import load_member_network, read_ensemble_dir
from arborseg.data.preprocess import Normalizer
from arborseg.ensemble.manifest import FORMAT, write_manifest
from arborseg.nn import build_network
from arborseg.space import parse_space

ROOT = Path(__file__).parents[1]
FAMILIES = ("unet2d", "thin3d_unet", "hybrid_2d3d", "hybrid_2d3d_crf", "dilated_2d")
PAIRS = list(itertools.combinations(FAMILIES, 2))
FUSIONS = ("vote", "mean", "max", "weighted")
CLASSES = ["interior", "membrane", "mito"]
NORMALIZER = {"mode": "percentile", "low": 1.0, "high": 99.0, "stats": {"lo": 20.0, "hi": 230.0},
              "preprocessing": {}}
XY = 32  # a multiple of 2**depth for the smallest depth of every space


def _smallest(value):
    """The low end of an int range / the smallest choice; constants unchanged."""
    if isinstance(value, dict) and "int" in value:
        return value["int"][0]
    if isinstance(value, dict) and "choice" in value and all(isinstance(v, (int, float)) for v in value["choice"]):
        return min(value["choice"])
    return value


def _shrink(node):
    """Every int range at its low end (depth, layers, branches, iterations, ...): the smallest networks."""
    if isinstance(node, dict):
        if "int" in node:
            return _smallest(node)
        return {k: _shrink(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_shrink(v) for v in node]
    return node


def tiny_tree(family: str, seed: int = 0):
    """A tree of the built-in space ``family``: smallest sizes, width 4, window (z, 32, 32); choices drawn."""
    data = yaml.safe_load((ROOT / "search_spaces" / f"{family}.yaml").read_text())
    data = _shrink(data)
    data["window"] = {"z": _smallest(data["window"]["z"]), "xy": XY}
    data["defaults"]["width"] = 4
    data.pop("portfolio", None)  # its trees are files beside the space; only drawn trees are wanted here
    return parse_space(data, source=f"tiny {family}").sample(seed)


def write_random_ensemble(root: Path, families: tuple[str, ...], fusion: str) -> Path:
    """An ensemble folder as `arborseg ensemble` writes it (members/<key>/{tree.yaml, model.pt}, ensemble.json),
    the members with random weights."""
    members = []
    for i, family in enumerate(families):
        tree = tiny_tree(family, seed=i)
        torch.manual_seed(i)
        net = build_network(tree, len(CLASSES))
        key = f"{tree.name}-s{i}"
        folder = root / "members" / key
        runs.save_tree(tree, folder)
        runs.save_model(folder, net.state_dict(), tree, CLASSES, tree.window, NORMALIZER)
        members.append({"key": key, "tree_id": tree.id, "tree_name": tree.name, "family": tree.family, "seed": i,
                        "tree": f"members/{key}/tree.yaml", "model": f"members/{key}/model.pt",
                        "window": list(tree.window), "weight": 1.0 + i})
    write_manifest(root, {"format": FORMAT, "name": "-".join(families), "campaign": "test", "objective": "fg_iou",
                          "direction": "maximize", "classes": CLASSES, "ignore_value": None,
                          "voxel_size": [32, 4, 4], "normalizer": NORMALIZER, "fusion": fusion,
                          "members": members, "scores": {}})
    return root


@pytest.fixture(scope="module")
def all_families(tmp_path_factory) -> tuple[Path, Path]:
    """(ensemble folder, bundle folder) of one ensemble of all five families, vote fusion."""
    root = tmp_path_factory.mktemp("all")
    ens = write_random_ensemble(root / "ensemble", FAMILIES, "vote")
    export_bundle(ens, root / "bundle", make_zip=False, progress=False)
    return ens, root / "bundle"


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[tuple[str, str], tuple[Path, Path]]:
    """(ensemble folder, bundle folder) of every pair, the fusion rules in turn."""
    out = {}
    for i, pair in enumerate(PAIRS):
        root = tmp_path_factory.mktemp("-".join(pair))
        ens = write_random_ensemble(root / "ensemble", pair, FUSIONS[i % len(FUSIONS)])
        export_bundle(ens, root / "bundle", make_zip=False, progress=False)
        out[pair] = (ens, root / "bundle")
    return out


def _run_onnx(path: Path, x: torch.Tensor) -> torch.Tensor:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"raw": x.numpy()})[0])


def _reproduces(bundle: Path, file: str, net, window, discrete: bool = False) -> None:
    """The TorchScript / ONNX file reproduces the eager ``net`` on a fresh batch of 2."""
    x = torch.rand((2, 1, *window), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = net(x)
        out = torch.jit.load(str(bundle / file))(x) if file.endswith(".ts") else _run_onnx(bundle / file, x)
    check_output(out, ref, 1e-4, discrete, file)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.load: TorchScript is deprecated, not gone
def test_all_families_in_one_ensemble(all_families):
    ens, bundle = all_families
    assert_bundle_reproduces(ens, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["formats"]["skipped"] == {}  # with the core libraries, every family gets every format
    assert {m["family"] for m in manifest["members"]} == {"2d", "thin3d", "hybrid", "hybrid+crf"}


@pytest.mark.slow  # ten exports: about 2 minutes on 2 busy cores
@pytest.mark.parametrize("pair", PAIRS, ids=["+".join(p) for p in PAIRS])
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_every_pair_of_families(exported, pair):
    assert_bundle_reproduces(*exported[pair])


def assert_bundle_reproduces(ens: Path, bundle: Path) -> None:
    """Every produced format reproduces the eager network; every other one is listed as skipped with a reason.
    Every built-in family traces (TorchScript per member and fused: what `arborseg predict` needs)."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    formats = manifest["formats"]
    produced, skipped = set(formats["produced"]), formats["skipped"]
    assert not produced & set(skipped) and all(skipped.values())
    assert all((bundle / f).is_file() for f in produced) and not any((bundle / f).exists() for f in skipped)
    src = read_ensemble_dir(ens)
    nets = [load_member_network(m, src.n_classes) for m in src.members]
    for m, net in zip(manifest["members"], nets):
        folder = f"members/{m['key']}"
        assert {f"{folder}/network.ts", f"{folder}/network.onnx"} <= produced | set(skipped)
        assert m["torchscript"] == f"{folder}/network.ts"  # every built-in family traces
        _reproduces(bundle, m["torchscript"], net, m["window"])
        if m["onnx"]:
            _reproduces(bundle, m["onnx"], net, m["window"])
        else:
            assert m["onnx_error"] == skipped[f"{folder}/network.onnx"]

    fused = FusedEnsemble(nets, src.fusion, [m.weight for m in src.members], src.n_classes).eval()
    bio = manifest["bioimageio"]
    assert "ensemble.ts" in produced
    for file in ("ensemble.ts", "ensemble.onnx"):
        if file in produced:
            _reproduces(bundle, file, fused, bio["window"], discrete=src.fusion == "vote")
        else:
            assert skipped[file]
    if "rdf.yaml" in produced:
        assert bio["status"] in ("valid-format", "passed")
        x = np.load(bundle / "test_input.npy")
        with torch.no_grad():
            expected = fused(torch.from_numpy(Normalizer.from_dict(NORMALIZER).normalize(x))).numpy()
        np.testing.assert_allclose(np.load(bundle / "test_output.npy"), expected, atol=1e-5)
    else:
        assert bio["status"] == "skipped" and bio["reason"] == skipped["rdf.yaml"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_bioimageio_core_reproduces_the_test_outputs(all_families):
    """bioimage.io's own test (`bioimageio test rdf.yaml`): format, and the test output reproduced by the ONNX and
    TorchScript weights at batch 1 and 2."""
    core = pytest.importorskip("bioimageio.core", reason="bioimageio.core is not installed (pip install -e '.[test]')")
    _, bundle = all_families
    manifest = json.loads((bundle / "manifest.json").read_text())
    if "rdf.yaml" not in manifest["formats"]["produced"]:
        pytest.fail(f"no bioimage.io description: {manifest['formats']['skipped']['rdf.yaml']}")
    summary = core.test_model(bundle / "rdf.yaml")
    failed = [f"{d.name}: {[e.msg for e in d.errors]}" for d in summary.details if d.status == "failed"]
    assert summary.status == "passed", failed
    tested = {d.name for d in summary.details}
    for weights in ("onnx", "torchscript"):
        assert any(f"Reproduce test outputs from test inputs ({weights})" in name for name in tested), tested


def test_export_without_the_optional_libraries_leaves_their_formats_out(tmp_path, monkeypatch, caplog):
    """Without onnx and bioimageio.spec the bundle has TorchScript only, and each missing format is one line saying
    what to install."""
    for name in ("onnx", "onnxruntime", "bioimageio", "bioimageio.spec"):
        monkeypatch.setitem(sys.modules, name, None)  # `import name` raises ImportError
    ens = write_random_ensemble(tmp_path / "ens", ("unet2d", "thin3d_unet"), "mean")
    with caplog.at_level("WARNING", logger="arborseg"):
        manifest = export_bundle(ens, tmp_path / "bundle", make_zip=False, progress=False)
    skipped = manifest["formats"]["skipped"]
    assert sorted(manifest["formats"]["produced"]) == sorted([m["torchscript"] for m in manifest["members"]]
                                                             + ["ensemble.ts"])
    assert sorted(skipped) == sorted([f"members/{m['key']}/network.onnx" for m in manifest["members"]]
                                     + ["ensemble.onnx", "rdf.yaml"])
    assert all("pip install" in reason for reason in skipped.values())
    lines = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(lines) == len(skipped) and all("\n" not in line for line in lines)
    assert manifest["bioimageio"]["status"] == "skipped" and not (tmp_path / "bundle" / "rdf.yaml").exists()
