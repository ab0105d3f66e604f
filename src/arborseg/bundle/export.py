"""``arborseg export``: an ensemble folder -> a self-contained bundle folder (and a zip of it).

Layout of ``BUNDLE/``::

    manifest.json            classes, windows (z context), normaliser, fusion, weights, voxel size, scores,
                             provenance, package versions, the formats produced and those left out (and why),
                             bioimage.io validation, sha256 of every file
    members/<key>/network.ts TorchScript, traced at the member's window (checked against the eager network)
    members/<key>/network.onnx  ONNX (run with onnxruntime and checked against the eager network)
    members/<key>/tree.yaml  the module tree (architecture, training values)
    ensemble.ts (+ .onnx)    all members fused on one tile: the network of the bioimage.io description
    rdf.yaml, README.md, test_input.npy, test_output.npy   the bioimage.io model description (spec 0.5)

Every format is produced and verified in its own guard (:class:`Formats`): one that cannot be made or does not
reproduce the eager network is left out with one log line and an entry in ``manifest["formats"]``; the export
goes on. Only a broken ensemble folder (missing or unreadable weights, an unknown fusion) is an error.
Loading a bundle (:func:`arborseg.bundle.load_bundle`) needs torch, numpy and arborseg's normaliser only.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
import re
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from arborseg.errors import ArborsegError, BundleError
from arborseg.log import get_logger

log = get_logger(__name__)

BUNDLE_FORMAT = "arborseg-bundle/1"
PACKAGES = ("arborseg", "torch", "numpy", "onnx", "onnxscript", "onnxruntime", "bioimageio.spec", "bioimageio.core",
            "pydantic", "zarr", "h5py", "tifffile")
#: the files of the bioimage.io description (left out together)
BIOIMAGEIO_FILES = ("rdf.yaml", "README.md", "test_input.npy", "test_output.npy", "bioimageio_validation.md")

T = TypeVar("T")

__all__ = ["export_bundle", "BUNDLE_FORMAT", "Formats", "sha256"]


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


@dataclass
class Formats:
    """The files of a bundle in the making: each format is produced and verified by :meth:`attempt`, which
    leaves a failed one out (its files removed, one log line, the reason kept) instead of failing the export.
    ``manifest["formats"]`` is :meth:`to_dict`."""

    root: Path
    produced: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def attempt(self, file: str, make: Callable[[], T], also: Sequence[str] = ()) -> T | None:
        """``make()`` writes and checks ``root/file`` (and the files ``also``): its result, or None when it
        raised (the files are removed and the reason recorded)."""
        try:
            result = make()
        except Exception as exc:  # any failure of one format leaves that format out, never the export
            for name in (file, *also):
                (self.root / name).unlink(missing_ok=True)
            self.skip(file, _reason(exc))
            return None
        self.produced.append(file)
        return result

    def skip(self, file: str, reason: str, warn: bool = True) -> None:
        """Record ``file`` as left out; ``warn``: say so in one log line (not for what the user turned off)."""
        self.skipped[file] = reason
        if warn:
            log.warning("left out %s: %s", file, reason)

    def to_dict(self) -> dict[str, Any]:
        return {"produced": list(self.produced), "skipped": dict(self.skipped)}


def _reason(exc: BaseException) -> str:
    """One line: the message of an :class:`ArborsegError` (it names the file), else ``Type: first line``."""
    from arborseg.bundle.convert import first_line

    text = str(exc).strip()
    return text.splitlines()[0][:500] if isinstance(exc, ArborsegError) and text else first_line(exc)


def export_bundle(ensemble_dir: str | Path, out: str | Path, *, onnx: bool = True, bioimageio: bool = True,
                  make_zip: bool = True, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Export the ensemble folder ``ensemble_dir`` to the bundle folder ``out`` (and ``out.zip``).

    ``onnx``: also ONNX per member and for the fused ensemble; ``bioimageio``: write and validate ``rdf.yaml``.
    A format that cannot be produced or verified is left out (``manifest["formats"]["skipped"]`` says why);
    a broken ensemble folder raises :class:`BundleError`. Returns the manifest.
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
    nets = [load_member_network(m, src.n_classes) for m in members]  # a broken member fails before any file
    work = out.parent / f".{out.name}.partial"
    shutil.rmtree(work, ignore_errors=True)
    (work / "members").mkdir(parents=True)
    try:
        manifest = _export_into(work, out, src, members, nets, onnx, bioimageio, progress)
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


def _export_into(work: Path, final: Path, src, members, nets, onnx: bool, bioimageio: bool,
                 progress: bool) -> dict[str, Any]:
    from arborseg.inference import activation_bytes

    formats = Formats(work)
    entries = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(members), desc="export", unit="member")
    try:
        for i, (m, net) in enumerate(zip(members, nets)):
            folder = work / "members" / _safe(m.key)
            if folder.exists():  # two keys that differ only in characters a file name cannot hold
                folder = folder.with_name(f"{folder.name}-{i}")
            folder.mkdir()
            shutil.copyfile(m.tree_path, folder / "tree.yaml")
            entry = {
                "key": m.key, "tree_id": m.tree_id or net.tree.id, "tree_name": m.tree_name or net.tree.name,
                "family": m.family or net.tree.family, "seed": m.seed, "weight": m.weight,
                "window": list(m.window), "z_context": int(m.window[0]),
                "params": int(sum(p.numel() for p in net.parameters())),
                "activation_bytes": activation_bytes(net, m.window),
                "tree": _rel(folder / "tree.yaml", work),
            }
            entry.update(_member_formats(formats, net, m, folder, onnx))
            entries.append(entry)
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
        "n_classes": src.n_classes,
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
    manifest["bioimageio"] = _fused_and_rdf(formats, final, src, nets, windows, weights, onnx, bioimageio)
    manifest["formats"] = formats.to_dict()
    manifest["files"] = {_rel(p, work): sha256(p) for p in sorted(work.rglob("*")) if p.is_file()}
    (work / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str))
    return manifest


def _member_formats(formats: Formats, net, m, folder: Path, onnx: bool) -> dict[str, Any]:
    """TorchScript and ONNX of one member, each in its own guard: the member's manifest fields."""
    from arborseg.bundle.convert import to_onnx, to_torchscript

    name = f"member {m.key}"
    ts_file = (folder / "network.ts").relative_to(formats.root).as_posix()
    onnx_file = (folder / "network.onnx").relative_to(formats.root).as_posix()
    ts = formats.attempt(ts_file, lambda: to_torchscript(net, m.window, folder / "network.ts", name=name))
    ox = None
    if onnx:
        ox = formats.attempt(onnx_file, lambda: to_onnx(net, m.window, folder / "network.onnx", name=name))
    else:
        formats.skip(onnx_file, "not requested (--no-onnx)", warn=False)
    return {
        "torchscript": ts_file if ts else None, "torchscript_error": formats.skipped.get(ts_file),
        "trace_max_rel_diff": ts["max_rel_diff"] if ts else None,
        "onnx": onnx_file if ox else None, "onnx_error": formats.skipped.get(onnx_file),
        "onnx_checked": ox["checked"] if ox else None, "onnx_exporter": ox["exporter"] if ox else None,
        "onnx_max_rel_diff": ox["max_rel_diff"] if ox else None,
    }


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


def _fused_and_rdf(formats: Formats, final: Path, src, nets, windows, weights, onnx: bool,
                   bioimageio: bool) -> dict[str, Any]:
    """The fused ensemble on one tile (TorchScript, ONNX) and the bioimage.io description of it, each in its own
    guard; returns ``manifest["bioimageio"]``."""
    from arborseg.bundle.convert import FusedEnsemble, to_onnx, to_torchscript

    work = formats.root
    big = tuple(max(w[a] for w in windows) for a in range(3))
    fused = FusedEnsemble(nets, src.fusion, weights, src.n_classes).eval()
    name = f"fused ensemble on one {big} tile"
    ts = formats.attempt("ensemble.ts", lambda: to_torchscript(fused, big, work / "ensemble.ts", name=name))
    ox = None
    if onnx:
        ox = formats.attempt("ensemble.onnx", lambda: to_onnx(fused, big, work / "ensemble.onnx", name=name,
                                                              output_name="probabilities"))
    else:
        formats.skip("ensemble.onnx", "not requested (--no-onnx)", warn=False)
    result: dict[str, Any] = {"window": list(big), "torchscript": "ensemble.ts" if ts else None,
                              "onnx": "ensemble.onnx" if ox else None,
                              "onnx_error": formats.skipped.get("ensemble.onnx")}
    if not bioimageio:
        formats.skip("rdf.yaml", "not requested (--no-bioimageio)", warn=False)
    elif not (ts or ox):
        formats.skip("rdf.yaml", "no fused ensemble network to describe (ensemble.ts and ensemble.onnx were left out)")
    else:
        described = formats.attempt("rdf.yaml", lambda: _describe(work, final, src, fused, windows, big, result),
                                    also=BIOIMAGEIO_FILES)
        if described is not None:
            return {**result, **described}
    return {**result, "status": "skipped", "reason": formats.skipped["rdf.yaml"]}


def _describe(work: Path, final: Path, src, fused, windows, big, result: dict[str, Any]) -> dict[str, Any]:
    """Write and validate the bioimage.io description of the fused ensemble (test tensors from the eager network)."""
    import torch

    from arborseg.bundle.bioimageio import validate_rdf, write_rdf
    from arborseg.data.preprocess import Normalizer

    normalizer = Normalizer.from_dict(src.normalizer)
    raw = _test_input(src.normalizer, big)
    with torch.no_grad():
        expected = fused(torch.from_numpy(normalizer.normalize(raw))).numpy()
    np.save(work / "test_input.npy", raw)
    np.save(work / "test_output.npy", expected.astype(np.float32))
    _write_readme(work, src, windows, big)
    families = sorted({getattr(n.tree, "family", "") for n in fused.members} - {""})
    rdf = write_rdf(
        work, name=f"arborseg ensemble {src.name}"[:128],
        description=(f"An ensemble of {len(fused.members)} networks found by arborseg architecture search "
                     f"({', '.join(families)}), {src.fusion} fusion, classes {', '.join(src.classes)}."),
        classes=src.classes, window=big, normalizer=src.normalizer, voxel_size=src.data.get("voxel_size"),
        torchscript=result["torchscript"], onnx=result["onnx"], test_input="test_input.npy",
        test_output="test_output.npy", documentation="README.md",
        tags=["segmentation", "electron-microscopy", "3d", "ensemble", "arborseg"], version="0.1.0",
        discrete=fused.discrete_output)
    validation = validate_rdf(rdf)
    validation["summary"] = validation["summary"].replace(str(work.resolve()), str(final.resolve()))
    (work / "bioimageio_validation.md").write_text(validation["summary"])
    return {**validation, "rdf": "rdf.yaml"}


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
