"""Loading a bundle (a folder or its zip) with nothing from the campaign: torch, numpy and arborseg's
normaliser.

Every file the loader uses is checked against the sha256 in ``manifest.json``.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arborseg.errors import BundleError

__all__ = ["Bundle", "BundleMember", "load_bundle"]


@dataclass
class BundleMember:
    """One member: its TorchScript module (traced at ``window``), weight and names."""

    key: str
    module: Any  # torch.jit.ScriptModule
    window: tuple[int, int, int]
    weight: float
    tree_name: str
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Bundle:
    """A loaded bundle: members, fusion, classes, normaliser; :meth:`predict` segments volumes."""

    path: Path
    manifest: dict[str, Any]
    members: list[BundleMember]
    normalizer: Any  # arborseg.data.preprocess.Normalizer

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def n_classes(self) -> int:
        return len(self.manifest["classes"])

    @property
    def fusion(self) -> str:
        return str(self.manifest["fusion"])

    @property
    def windows(self) -> list[tuple[int, int, int]]:
        return [m.window for m in self.members]

    @property
    def weights(self) -> list[float]:
        return [m.weight for m in self.members]

    @property
    def modules(self) -> list[Any]:
        return [m.module for m in self.members]

    @property
    def voxel_size(self) -> list[float] | None:
        return self.manifest.get("voxel_size")

    def predict(self, volume: Any, out: str | Path, **kwargs: Any) -> dict[str, Any]:
        """Segment ``volume`` into ``out``; see :func:`arborseg.bundle.run.predict_bundle`."""
        from arborseg.bundle.run import predict_bundle

        return predict_bundle(self, volume, out, **kwargs)


class _Reader:
    """Files of a bundle folder or zip, checked against the manifest's sha256."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.zip: zipfile.ZipFile | None = None
        if path.is_file():
            try:
                self.zip = zipfile.ZipFile(path)
            except zipfile.BadZipFile:
                raise BundleError(f"{path}: not a bundle (neither a folder nor a zip file); give the folder or "
                                  "zip written by `arborseg export`") from None
        elif not path.is_dir():
            raise BundleError(f"{path}: not found; give the folder or zip written by `arborseg export`")
        self.hashes: dict[str, str] = {}

    def read(self, name: str) -> bytes:
        try:
            if self.zip is not None:
                data = self.zip.read(name)
            else:
                data = (self.path / name).read_bytes()
        except (KeyError, FileNotFoundError):
            raise BundleError(f"{self.path}: {name} is missing; the bundle is incomplete, export it again") from None
        want = self.hashes.get(name)
        if want is not None and hashlib.sha256(data).hexdigest() != want:
            raise BundleError(f"{self.path}: {name} does not match its sha256 in manifest.json; the bundle is "
                              "corrupted, export it again")
        return data


def load_bundle(path: str | Path, device: str = "cpu") -> Bundle:
    """Load a bundle folder or zip (written by ``arborseg export``); modules are mapped to ``device``."""
    import torch

    from arborseg.bundle.export import BUNDLE_FORMAT
    from arborseg.data.preprocess import Normalizer

    path = Path(path).expanduser()
    reader = _Reader(path)
    try:
        manifest = json.loads(reader.read("manifest.json"))
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path}: manifest.json is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise BundleError(f"{path}: manifest format {found!r} is not {BUNDLE_FORMAT!r}; export the bundle again "
                          "with this arborseg version")
    reader.hashes = dict(manifest.get("files") or {})
    members = []
    for i, e in enumerate(manifest.get("members") or []):
        try:
            data = reader.read(e["torchscript"])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated, not gone
                module = torch.jit.load(io.BytesIO(data), map_location=device).eval()
        except BundleError:
            raise
        except Exception as exc:
            raise BundleError(f"{path}: member {e.get('key', i)}: cannot load its TorchScript module ({exc})") \
                from None
        window = tuple(int(v) for v in e["window"])
        if len(window) != 3:
            raise BundleError(f"{path}: member {e.get('key', i)}: window {list(window)} is not three sizes (z, y, x)")
        members.append(BundleMember(str(e["key"]), module, window, float(e["weight"]), str(e.get("tree_name", "")), e))
    if not members:
        raise BundleError(f"{path}: manifest.json lists no members")
    if reader.zip is not None:
        reader.zip.close()
    return Bundle(path, manifest, members, Normalizer.from_dict(manifest.get("normalizer") or {}))
