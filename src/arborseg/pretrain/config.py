"""The pre-training YAML (no torch): which unlabeled volumes, which encoder, which method, how long.

.. code-block:: yaml

    name: em_unet2d                    # the run folder: runs/pretrain/<name> (or --out)
    volumes:                           # unlabeled raw volumes: TIFF, HDF5 (file.h5:key), Zarr, .npy
      - ../shared/data/unlabeled/drosophila_vnc_stack2/raw.tif
      - {path: ../shared/data/unlabeled/isbi2012_test/raw.tif, z: [0, 20]}   # optionally a z range
    normalization: {mode: percentile, low: 1, high: 99}                      # as in a data YAML
    encoder: {tree: ../search_spaces/portfolio/unet2d_nnunet.yaml}   # its first encoder_decoder; or resnet50
    method: mocov2                     # or genesis (restoration; encoder and decoder)
    steps: 1000
    batch_size: 32
    patch: 64                          # xy size of the views; z: the encoder's window z (2D: 1)
    lr: 0.0075                         # mocov2: SGD, momentum 0.9, cosine, default 0.03 x batch / 128;
                                       # genesis: AdamW, cosine, default 1e-3
    moco: {dim: 128, queue: 4096, momentum: 0.99, temperature: 0.2}     # mocov2 only
    genesis: {nonlinear: 0.9, invert: 0.0, local_shuffle: 0.5, paint: 0.9, outpaint: 0.8}   # genesis only
    checkpoint_every: 100
    seed: 0

Relative paths are relative to the YAML file's folder. Errors name the file and the key, in one line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from arborseg.errors import PretrainError, did_you_mean
from arborseg.yamlfile import read_yaml_file

#: mocov2: contrastive, the encoder only (CEM500K's method); genesis: restoration, encoder and decoder (Models Genesis)
METHODS = ("mocov2", "genesis")
TOP_KEYS = ("name", "volumes", "normalization", "encoder", "method", "steps", "batch_size", "patch", "z", "lr",
            "weight_decay", "moco", "genesis", "checkpoint_every", "seed", "neighbours")
MOCO_KEYS = {"dim": 128, "queue": 4096, "momentum": 0.99, "temperature": 0.2}
#: Models Genesis' distortion probabilities (arborseg.pretrain.genesis.Distortions)
GENESIS_KEYS = {"nonlinear": 0.9, "invert": 0.0, "local_shuffle": 0.5, "paint": 0.9, "outpaint": 0.8}


@dataclass(frozen=True)
class VolumeSpec:
    path: str
    z: tuple[int, int] | None = None  # a z range [start, stop) of the volume, or all of it


@dataclass
class PretrainConfig:
    """A validated pre-training config (see the module docstring); ``encoder`` is ``"resnet50"`` or the values of
    an ``encoder_decoder`` node (``{"tree": path}`` is read into those values when the config is loaded)."""

    name: str
    volumes: list[VolumeSpec]
    encoder: str | dict[str, Any]
    method: str = "mocov2"
    steps: int = 1000
    batch_size: int = 32
    patch: int = 64
    z: int = 1
    lr: float | None = None
    weight_decay: float = 1e-4
    moco: dict[str, Any] = field(default_factory=lambda: dict(MOCO_KEYS))
    genesis: dict[str, float] = field(default_factory=lambda: dict(GENESIS_KEYS))
    normalization: dict[str, Any] = field(default_factory=lambda: {"mode": "percentile", "low": 1.0, "high": 99.0})
    checkpoint_every: int = 100
    seed: int = 0
    neighbours: bool = True  # draw the method's picture at the end (neighbours.png; genesis: restorations.png)

    @property
    def module(self) -> str:
        """The module type whose encoder this pre-trains (what a tree's ``init`` may point it at)."""
        return "resnet_unet" if self.encoder == "resnet50" else "encoder_decoder"

    @property
    def learning_rate(self) -> float:
        """MoCo v2: SGD at 0.03 x batch / 128 (its linear scaling rule); Models Genesis: AdamW at 1e-3."""
        if self.lr is not None:
            return float(self.lr)
        return 1e-3 if self.method == "genesis" else 0.03 * self.batch_size / 128

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["volumes"] = [{"path": v.path, "z": list(v.z) if v.z else None} for v in self.volumes]
        out["encoder"] = self.encoder if isinstance(self.encoder, str) else {"encoder_decoder": dict(self.encoder)}
        out.pop("genesis" if self.method == "mocov2" else "moco")  # the other method's values
        return out

    @classmethod
    def from_dict(cls, data: Any, source: str = "<pretrain>", base_dir: str | Path | None = None) -> PretrainConfig:
        return _Parser(source, Path(base_dir) if base_dir else Path.cwd()).config(data)


def load_pretrain_config(path: str | Path) -> PretrainConfig:
    path = Path(path)
    data = read_yaml_file(path, PretrainError, "no such pre-training config; see docs/pretraining.md for an example")
    return PretrainConfig.from_dict(data, str(path), path.parent)


class _Parser:
    def __init__(self, source: str, base_dir: Path) -> None:
        self.source, self.base_dir = source, base_dir

    def fail(self, key: str, message: str) -> PretrainError:
        return PretrainError(f"{self.source}: {key}: {message}")

    def path(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(key, f"expected a path, got {value!r}")
        from arborseg.data.volumes import split_spec

        file, inner = split_spec(value)
        full = Path(file).expanduser()
        if not full.is_absolute():
            full = self.base_dir / full
        if not full.exists():
            raise self.fail(key, f"{full} does not exist")
        return str(full.resolve()) + (f":{inner}" if inner else "")

    def positive(self, data: dict, key: str, default: int) -> int:
        value = data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise self.fail(key, f"expected a positive integer, got {value!r}")
        return value

    def config(self, data: Any) -> PretrainConfig:
        if not isinstance(data, dict):
            raise PretrainError(f"{self.source}: expected a mapping with keys {', '.join(TOP_KEYS)}")
        for key in data:
            if key not in TOP_KEYS:
                raise self.fail(str(key), f"unknown key{did_you_mean(key, TOP_KEYS, '')} (valid: {', '.join(TOP_KEYS)})")
        for key in ("name", "volumes", "encoder"):
            if key not in data:
                raise self.fail(key, "missing required key")
        if not isinstance(data["name"], str) or not data["name"] or "/" in data["name"]:
            raise self.fail("name", f"expected a folder name, got {data['name']!r}")
        method = data.get("method", "mocov2")
        if method not in METHODS:
            raise self.fail("method", f"{method!r} is not one of {list(METHODS)}")
        encoder, window_z = self.encoder(data["encoder"])
        if method == "genesis" and encoder == "resnet50":
            raise self.fail("encoder", "genesis restores patches with a whole encoder_decoder; resnet50 (an encoder "
                            "without arborseg's decoder) is pre-trained with method: mocov2")
        for other, owner in (("moco", "mocov2"), ("genesis", "genesis")):
            if data.get(other) is not None and method != owner:
                raise self.fail(other, f"only for method: {owner} (this config's method is {method})")
        z = self.positive(data, "z", window_z)
        if z != 1 and (isinstance(encoder, str) or encoder.get("dims", "2d") == "2d"):
            raise self.fail("z", f"a 2D encoder sees one slice at a time; z must be 1, got {z}")
        lr = data.get("lr")
        if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr <= 0):
            raise self.fail("lr", f"expected a positive number, got {lr!r}")
        decay = data.get("weight_decay", 1e-4)
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or decay < 0:
            raise self.fail("weight_decay", f"expected a number >= 0, got {decay!r}")
        moco = self.numbers("moco", data.get("moco"), MOCO_KEYS, lambda v: v > 0, "a positive number")
        if not 0 < moco["momentum"] < 1:
            raise self.fail("moco.momentum", f"must lie between 0 and 1, got {moco['momentum']}")
        batch = self.positive(data, "batch_size", 32)
        if batch < 2 and method == "mocov2":
            raise self.fail("batch_size", "contrastive pre-training needs at least 2 views per batch")
        moco["dim"], moco["queue"] = int(moco["dim"]), int(moco["queue"])
        if method == "mocov2" and moco["queue"] % batch:
            raise self.fail("moco.queue", f"{moco['queue']} must be a multiple of batch_size {batch}")
        patch = self.positive(data, "patch", 64)
        multiple = 32 if isinstance(encoder, str) else 2 ** (int(encoder.get("depth", 4)) - 1)
        if patch % multiple or patch < 2 * multiple:
            raise self.fail("patch", f"{patch} must be a multiple of {multiple} and at least {2 * multiple} for this "
                            "encoder (its poolings)")
        normalization = data.get("normalization") or {"mode": "percentile", "low": 1.0, "high": 99.0}
        if not isinstance(normalization, dict) or normalization.get("mode", "percentile") not in (
                "percentile", "zscore", "none"):
            raise self.fail("normalization", "expected {mode: percentile|zscore|none, low: .., high: ..}")
        return PretrainConfig(
            name=data["name"], volumes=self.volumes(data["volumes"]), encoder=encoder, method=method,
            steps=self.positive(data, "steps", 1000), batch_size=batch, patch=patch, z=z,
            lr=None if lr is None else float(lr), weight_decay=float(decay), moco=moco,
            genesis={k: float(v) for k, v in self.numbers("genesis", data.get("genesis"), GENESIS_KEYS,
                                                          lambda p: 0 <= p <= 1, "a probability between 0 and 1"
                                                          ).items()},
            normalization=normalization,
            checkpoint_every=self.positive(data, "checkpoint_every", 100),
            seed=int(data.get("seed", 0)), neighbours=bool(data.get("neighbours", True)))

    def numbers(self, key: str, value: Any, defaults: dict[str, Any], ok: Callable[[float], bool],
                expected: str) -> dict[str, Any]:
        """A mapping of numbers (``moco``, ``genesis``): ``defaults`` updated by ``value``, each checked by ``ok``."""
        out = dict(defaults)
        if value is None:
            return out
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a mapping with keys {', '.join(defaults)}")
        for name, number in value.items():
            if name not in defaults:
                raise self.fail(f"{key}.{name}", f"unknown key{did_you_mean(name, defaults, '')} "
                                f"(valid: {', '.join(defaults)})")
            if isinstance(number, bool) or not isinstance(number, (int, float)) or not ok(number):
                raise self.fail(f"{key}.{name}", f"expected {expected}, got {number!r}")
            out[name] = number
        return out

    def volumes(self, value: Any) -> list[VolumeSpec]:
        if isinstance(value, (str, dict)):
            value = [value]
        if not isinstance(value, list) or not value:
            raise self.fail("volumes", "expected a list of volume paths (or {path: .., z: [start, stop]})")
        out = []
        for i, entry in enumerate(value):
            key = f"volumes[{i}]"
            if isinstance(entry, str):
                out.append(VolumeSpec(self.path(entry, key)))
                continue
            if not isinstance(entry, dict) or "path" not in entry or set(entry) - {"path", "z"}:
                raise self.fail(key, "expected a path or {path: .., z: [start, stop]}")
            z = entry.get("z")
            if z is not None and (not isinstance(z, list) or len(z) != 2 or not all(isinstance(v, int) for v in z)
                                  or not 0 <= z[0] < z[1]):
                raise self.fail(f"{key}.z", f"expected [start, stop] with 0 <= start < stop, got {z!r}")
            out.append(VolumeSpec(self.path(entry["path"], f"{key}.path"), tuple(z) if z else None))
        return out

    def encoder(self, value: Any) -> tuple[str | dict[str, Any], int]:
        """(``"resnet50"`` or the encoder_decoder values, the z size of the views)."""
        from arborseg.space.catalog import MODULE_SPECS

        if value == "resnet50":
            return "resnet50", 1
        if not isinstance(value, dict) or len(value) != 1 or next(iter(value)) not in ("tree", "encoder_decoder"):
            raise self.fail("encoder", f"expected resnet50, {{tree: path}} or {{encoder_decoder: {{...}}}}, got {value!r}")
        kind, inner = next(iter(value.items()))
        if kind == "tree":
            from arborseg.errors import TreeError
            from arborseg.tree import ModuleTree

            path = self.path(inner, "encoder.tree")
            try:
                tree = ModuleTree.load(path)
            except TreeError as e:
                raise self.fail("encoder.tree", str(e)) from None
            node = next((n for n in tree.root.walk() if n.type == "encoder_decoder"), None)
            if node is None:
                raise self.fail("encoder.tree", f"{path} has no encoder_decoder to pre-train")
            values, window_z = node.p, int(tree.window[0])
        else:
            if not isinstance(inner, dict):
                raise self.fail("encoder.encoder_decoder", "expected a mapping of encoder_decoder values")
            spec = MODULE_SPECS["encoder_decoder"]
            for key, v in inner.items():
                if key not in spec.param_index:
                    raise self.fail(f"encoder.encoder_decoder.{key}", f"unknown value{did_you_mean(key, spec.param_index, '')}")
                problem = spec.param_index[key].check(v)
                if problem:
                    raise self.fail(f"encoder.encoder_decoder.{key}", problem)
            values = {p: spec.param_index[p].default for p in spec.param_index}
            values.update(inner)
            window_z = 1 if values.get("dims", "2d") == "2d" else 3
        values = {k: v for k, v in values.items() if k != "init"}
        if values.get("dims", "2d") == "3d":
            raise self.fail("encoder", "full-3D encoders are not pre-trained (EM's z spacing is too coarse for "
                            "3D crops); use a 2d or thin3d encoder_decoder")
        return values, window_z
