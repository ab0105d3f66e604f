"""``arborseg export``: an ensemble folder -> a self-contained bundle folder (and a zip of it).

Layout of ``BUNDLE/``::

    manifest.json            classes, windows (z context), normaliser, fusion, weights, voxel size, scores,
                             provenance, package versions, ONNX outcome per member, bioimage.io validation,
                             sha256 of every file
    members/<key>/network.ts TorchScript, traced at the member's window (checked against the eager network)
    members/<key>/network.onnx  where the ONNX exporter handles the network (else the reason is recorded)
    members/<key>/tree.yaml  the module tree (architecture, training values)
    ensemble.ts (+ .onnx)    all members fused on one tile: the network of the bioimage.io description
    rdf.yaml, README.md, test_input.npy, test_output.npy   the bioimage.io model description (spec 0.5)

Loading it (:func:`arborseg.bundle.load_bundle`) needs torch, numpy and arborseg's normaliser only.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
import re
import shutil
import sys
import warnings
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from arborseg.errors import BundleError
from arborseg.log import get_logger

log = get_logger(__name__)

BUNDLE_FORMAT = "arborseg-bundle/1"
PACKAGES = ("arborseg", "torch", "numpy", "onnx", "onnxscript", "onnxruntime", "bioimageio.spec", "zarr", "h5py",
            "tifffile")

__all__ = ["export_bundle", "BUNDLE_FORMAT", "sha256"]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _safe(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", key) or "member"


def export_bundle(ensemble_dir: str | Path, out: str | Path, *, onnx: bool = True, bioimageio: bool = True,
                  make_zip: bool = True, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Export the ensemble folder ``ensemble_dir`` to the bundle folder ``out`` (and ``out.zip``).

    ``onnx``: also try ONNX per member (and for the fused ensemble); ``bioimageio``: write and validate
    ``rdf.yaml`` (the export fails when bioimageio.spec finds it invalid). Returns the manifest.
    """
    from arborseg.bundle.source import load_member_network, read_ensemble_dir

    src = read_ensemble_dir(ensemble_dir)
    out = Path(out).expanduser()
    if out.suffix.lower() == ".zip":
        out = out.with_suffix("")
    if out.exists() and not overwrite:
        raise BundleError(f"{out}: already exists; choose another --out or pass --overwrite")
    if out.resolve() == src.path.resolve() or src.path.resolve() in out.resolve().parents:
        raise BundleError(f"{out}: the bundle cannot be written inside the ensemble folder {src.path}")
    members = [m for m in src.members if m.weight > 0]
    for m in src.members:
        if m.weight <= 0:
            log.warning("member %s has weight 0: left out of the bundle", m.key)
    if not members:
        raise BundleError(f"{src.path}: every member has weight 0; nothing to export")
    work = out.parent / f".{out.name}.partial"
    shutil.rmtree(work, ignore_errors=True)
    (work / "members").mkdir(parents=True)
    try:
        manifest = _export_into(work, out, src, members, load_member_network, onnx, bioimageio, progress)
        if out.exists():
            shutil.rmtree(out)
        work.rename(out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if make_zip:
        archive = out.with_name(out.name + ".zip")
        archive.unlink(missing_ok=True)
        shutil.make_archive(str(out), "zip", root_dir=out)
        manifest["zip"] = str(archive)
        log.info("wrote %s and %s", out, archive)
    return manifest


def _export_into(work: Path, final: Path, src, members, load_net, onnx: bool, bioimageio: bool,
                 progress: bool) -> dict[str, Any]:
    import torch

    from arborseg.bundle.convert import to_onnx, to_torchscript
    from arborseg.inference.blockwise import activation_bytes

    n_classes = src.n_classes
    nets = []
    entries = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(members), desc="export", unit="member")
    try:
        for i, m in enumerate(members):
            net = load_net(m, n_classes)
            nets.append(net)
            folder = work / "members" / _safe(m.key)
            if folder.exists():  # two keys that differ only in characters a file name cannot hold
                folder = folder.with_name(f"{folder.name}-{i}")
            folder.mkdir()
            shutil.copyfile(m.tree_path, folder / "tree.yaml")
            ts = to_torchscript(net, m.window, folder / "network.ts", name=f"member {m.key}")
            ox = to_onnx(net, m.window, folder / "network.onnx", name=f"member {m.key}") if onnx else \
                {"ok": False, "path": None, "reason": "not requested (--no-onnx)", "checked": None}
            entries.append({
                "key": m.key, "tree_id": m.tree_id or net.tree.id, "tree_name": m.tree_name or net.tree.name,
                "family": m.family or net.tree.family, "seed": m.seed, "weight": m.weight,
                "window": list(m.window), "z_context": int(m.window[0]),
                "params": int(sum(p.numel() for p in net.parameters())),
                "activation_bytes": activation_bytes(net, m.window),
                "torchscript": _rel(ts["path"], work), "trace_max_rel_diff": ts["max_rel_diff"],
                "tree": _rel(folder / "tree.yaml", work),
                "onnx": _rel(ox["path"], work) if ox["ok"] else None,
                "onnx_error": ox["reason"], "onnx_checked": ox.get("checked"),
                "onnx_exporter": ox.get("exporter"), "onnx_max_rel_diff": ox.get("max_rel_diff"),
            })
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()

    data = src.data
    windows = [tuple(e["window"]) for e in entries]
    weights = [e["weight"] for e in entries]
    manifest: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "name": src.name,
        "classes": src.classes,
        "n_classes": n_classes,
        "ignore_value": data.get("ignore_value"),
        "voxel_size": data.get("voxel_size"),
        "window": list(windows[0]) if len(set(windows)) == 1 else None,
        "z_context": max(w[0] for w in windows),
        "normalizer": src.normalizer,
        "fusion": src.fusion,
        "output": "softmax over classes (sigmoid for one class) of each member, blended over its own tiles "
                  "(Gaussian weights), then fused",
        "members": entries,
        "scores": data.get("scores", {}),
        "provenance": {
            "ensemble_dir": str(src.path.resolve()), "ensemble_name": src.name,
            "campaign": data.get("campaign"), "objective": data.get("objective"),
            "direction": data.get("direction"),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "host": platform.node(), "command": " ".join(sys.argv)[:500],
        },
        "packages": package_versions(),
    }

    # ---- the fused ensemble on one tile (bioimage.io's single network)
    manifest["bioimageio"] = _fused_and_rdf(work, final, src, nets, windows, weights, onnx, bioimageio, torch)
    manifest["files"] = {_rel(p, work): sha256(p) for p in sorted(work.rglob("*")) if p.is_file()}
    (work / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str))
    return manifest


def _rel(path: str | Path | None, root: Path) -> str | None:
    return None if path is None else Path(path).relative_to(root).as_posix()


def _test_input(normalizer: dict[str, Any], window: Sequence[int]) -> np.ndarray:
    rng = np.random.default_rng(0)
    stats = normalizer.get("stats") or {}
    mode = normalizer.get("mode", "percentile")
    if mode == "percentile" and "lo" in stats:
        lo, hi = float(stats["lo"]), float(stats["hi"])
        x = rng.uniform(lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo), (1, 1, *window))
    elif mode == "zscore" and "mean" in stats:
        x = rng.normal(float(stats["mean"]), float(stats["std"]) or 1.0, (1, 1, *window))
    else:
        x = rng.random((1, 1, *window))
    return x.astype(np.float32)


def _fused_and_rdf(work: Path, final: Path, src, nets, windows, weights, onnx: bool, bioimageio: bool,
                   torch) -> dict[str, Any]:
    from arborseg.bundle.bioimageio import validate_rdf, write_rdf
    from arborseg.bundle.convert import FusedEnsemble, to_onnx, to_torchscript
    from arborseg.data.preprocess import Normalizer

    big = tuple(max(w[a] for w in windows) for a in range(3))
    fused = FusedEnsemble(nets, src.fusion, weights, src.n_classes).eval()
    try:
        to_torchscript(fused, big, work / "ensemble.ts", name="fused ensemble")
    except Exception as exc:  # a member that cannot run at the largest window
        reason = f"the members cannot run together on one {big} tile ({str(exc).splitlines()[0][:200]})"
        log.warning("no fused ensemble module and no bioimage.io description: %s", reason)
        return {"status": "skipped", "reason": reason}
    result: dict[str, Any] = {"window": list(big), "torchscript": "ensemble.ts", "onnx": None}
    if onnx:
        ox = to_onnx(fused, big, work / "ensemble.onnx", name="fused ensemble", output_name="probabilities")
        result.update(onnx="ensemble.onnx" if ox["ok"] else None, onnx_error=ox["reason"])
    if not bioimageio:
        result.update(status="skipped", reason="not requested (--no-bioimageio)")
        return result
    normalizer = Normalizer.from_dict(src.normalizer)
    raw = _test_input(src.normalizer, big)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        loaded = torch.jit.load(str(work / "ensemble.ts"))
        expected = loaded(torch.from_numpy(normalizer.normalize(raw))).numpy()
    np.save(work / "test_input.npy", raw)
    np.save(work / "test_output.npy", expected.astype(np.float32))
    _write_readme(work, src, windows, big)
    families = sorted({getattr(n.tree, "family", "") for n in nets} - {""})
    rdf = write_rdf(
        work, name=f"arborseg ensemble {src.name}"[:128],
        description=(f"An ensemble of {len(nets)} networks found by arborseg architecture search "
                     f"({', '.join(families)}), {src.fusion} fusion, classes {', '.join(src.classes)}."),
        classes=src.classes, window=big, normalizer=src.normalizer, voxel_size=src.data.get("voxel_size"),
        torchscript="ensemble.ts", onnx=result["onnx"], test_input="test_input.npy", test_output="test_output.npy",
        documentation="README.md", tags=["segmentation", "electron-microscopy", "3d", "ensemble", "arborseg"],
        version="0.1.0")
    result.update(validate_rdf(rdf))
    result["summary"] = result["summary"].replace(str(work.resolve()), str(final.resolve()))
    result["rdf"] = "rdf.yaml"
    (work / "bioimageio_validation.md").write_text(result["summary"])
    return result


def _write_readme(work: Path, src, windows, big) -> None:
    lines = [
        f"# arborseg ensemble {src.name}", "",
        f"{len(windows)} members, fusion `{src.fusion}`, classes {', '.join(src.classes)}; member windows "
        f"(z, y, x): {', '.join(str(tuple(w)) for w in windows)}.", "",
        "Segment a volume with `arborseg predict BUNDLE VOLUME --out OUT` (each member blended over its own tiles "
        "and fused: the reference result). The bioimage.io description runs all members on one "
        f"{tuple(big)} tile and fuses them there.", "",
        "## Validation", "",
        "Exported by `arborseg export`, which traces each member, checks the TorchScript module against the "
        "eager network, and validates this description with bioimageio.spec (see bioimageio_validation.md). "
        "Scores of the ensemble on its evaluation regions are in manifest.json.", "",
    ]
    (work / "README.md").write_text("\n".join(lines))
