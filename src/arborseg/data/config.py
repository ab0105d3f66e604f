"""The data YAML: which volumes, which classes, which regions; validated into a :class:`DataConfig`.

::

    raw: ../shared/data/drosophila_vnc_sstem/raw.tif   # or file.h5:key, store.zarr:key, .npy
    labels: ../shared/data/drosophila_vnc_sstem/labels_mitochondria.tif
    # instead of raw/labels:  synthetic: {seed: 0, shape: [12, 256, 256], anisotropy: 8}
    classes: [background, mitochondria]      # names; index = label value
    label_map: {3: 1}                        # optional: stored value -> class; others -> map_rest
    map_rest: 0                              # optional (default 0; 'keep' leaves unmapped values)
    ignore_value: 255                        # optional: unlabelled voxels (sparse annotation)
    voxel_size: [45, 4.6, 4.6]               # nm, z y x
    normalization: {mode: percentile, low: 1, high: 99}   # or {mode: zscore} or {mode: none}
    preprocessing: {unsharp: {radius: 2, amount: 1.0}, median: 3}   # optional, applied in this order
    background_class: 0                      # class left out of the headline FN-n (null: none)
    membrane_class: null                     # set for membrane tasks (adapted Rand)
    regions:                                 # [start, stop) per axis; an omitted axis = the whole axis
      train: {z: [0, 8]}
      validation: {z: [8, 10]}
      eval_near: {z: [10, 13]}
      eval_far: {z: [15, 20]}

Relative paths are looked up in the working directory, then in the YAML file's folder and each of its
parents (the first that exists wins). Every problem is a :class:`~arborseg.errors.DataError` naming the
file and key path, e.g. ``vnc_mito.yaml: regions.train.z: [30, 40] is outside the volume (0..20)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from arborseg.data.labels import KEEP, apply_label_map, map_value, scan_values
from arborseg.data.paths import resolve_spec
from arborseg.data.preprocess import FILTERS, MODES, Normalizer
from arborseg.data.regions import AXES, REGION_NAMES, Region
from arborseg.data.volumes import Volume, open_volume
from arborseg.errors import DataError, did_you_mean
from arborseg.log import get_logger
from arborseg.yamlfile import read_yaml_file

log = get_logger(__name__)

TOP_KEYS = ("name", "description", "raw", "labels", "synthetic", "classes", "label_map", "map_rest",
            "ignore_value", "voxel_size", "normalization", "preprocessing", "background_class",
            "membrane_class", "regions")
SYNTHETIC_KEYS = ("seed", "shape", "anisotropy")
SYNTHETIC_DEFAULTS = {"seed": 0, "shape": [12, 256, 256], "anisotropy": 8}
NORMALIZATION_KEYS = ("mode", "low", "high")
UNSHARP_KEYS = ("radius", "amount")
DEFAULT_NORMALIZATION = {"mode": "percentile", "low": 1.0, "high": 99.0}
# pairs that must not share voxels: anything with train, and validation with the eval regions
# (choosing an ensemble on voxels it is then scored on would leak); eval_near/eval_far only warn
OVERLAP_ERRORS = {("train", "validation"), ("train", "eval_near"), ("train", "eval_far"),
                  ("validation", "eval_near"), ("validation", "eval_far")}


@lru_cache(maxsize=4)
def _synthetic_arrays(seed: int, shape: tuple[int, int, int], anisotropy: float) -> tuple[np.ndarray, np.ndarray]:
    from arborseg.data.synthetic import make_em_volume

    raw, labels = make_em_volume(shape, seed, anisotropy)
    raw.flags.writeable = False
    labels.flags.writeable = False
    return raw, labels


@dataclass(frozen=True)
class DataConfig:
    """A validated data description: volumes (or a synthetic volume), classes, label handling, regions."""

    source: str
    classes: tuple[str, ...]
    shape: tuple[int, int, int]
    regions: dict[str, Region]
    raw: str | None = None                    # resolved volume specs (None for synthetic data)
    labels: str | None = None
    synthetic: dict[str, Any] | None = None
    label_map: dict[int, int] | None = None
    map_rest: int | str = 0
    ignore_value: int | None = None
    voxel_size: tuple[float, float, float] | None = None
    normalization: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_NORMALIZATION))
    preprocessing: dict[str, Any] = field(default_factory=dict)
    background_class: int | None = 0
    membrane_class: int | None = None
    name: str = ""
    description: str = ""

    # ------------------------------------------------------------------------------------- loading
    @classmethod
    def from_dict(cls, d: Any, source: str = "<data>", base_dir: str | Path | None = None, *,
                  check_labels: bool = True, key_prefix: str = "") -> DataConfig:
        """Validate a parsed data mapping. ``base_dir``: the YAML's folder (for relative paths);
        ``key_prefix``: where the mapping sits in a larger file (e.g. ``"data"`` in a campaign)."""
        return _Parser(source, base_dir, key_prefix).config(d, check_labels)

    # ------------------------------------------------------------------------------------- volumes
    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def eval_regions(self) -> tuple[str, ...]:
        return tuple(name for name in self.regions if name.startswith("eval"))

    def open_raw(self) -> Volume:
        """The raw volume, lazily sliceable (opened once per config)."""
        return self._raw_volume

    def open_labels(self) -> Volume:
        """The stored label volume (before ``label_map``), lazily sliceable (opened once per config)."""
        return self._labels_volume

    @cached_property
    def _raw_volume(self) -> Volume:
        if self.synthetic is not None:
            return Volume(self._synthetic()[0], f"synthetic{self.synthetic}:raw")
        assert self.raw is not None
        return open_volume(self.raw)

    @cached_property
    def _labels_volume(self) -> Volume:
        if self.synthetic is not None:
            return Volume(self._synthetic()[1], f"synthetic{self.synthetic}:labels")
        assert self.labels is not None
        return open_volume(self.labels)

    def _synthetic(self) -> tuple[np.ndarray, np.ndarray]:
        s = self.synthetic or {}
        return _synthetic_arrays(int(s["seed"]), tuple(s["shape"]), float(s["anisotropy"]))

    def region(self, name: str) -> Region:
        """A region by name (DataError listing the defined ones)."""
        if name not in self.regions:
            raise DataError(f"{self.source}: regions.{name}: not defined; defined regions: "
                            f"{', '.join(self.regions)}")
        return self.regions[name]

    def map_labels(self, labels: np.ndarray) -> np.ndarray:
        """Stored label values -> class indices (int64); ignore_value voxels stay ignore_value."""
        return apply_label_map(labels, self.label_map, self.map_rest, self.ignore_value)

    def read_raw(self, name: str) -> np.ndarray:
        """The raw voxels of a region, as stored (no normalisation)."""
        return self._read_finite(self.region(name))

    def read_labels(self, name: str) -> np.ndarray:
        """The class indices of a region (int64, label_map applied)."""
        return self.map_labels(self.region(name).read(self.open_labels()))

    def prepare_raw(self, region: Region | str) -> np.ndarray:
        """Raw voxels of a region, filtered (with xy context from the volume) and normalised, float32."""
        region = self.region(region) if isinstance(region, str) else region
        filtered = self._preprocessed(region)
        if "_normalizer" not in self.__dict__ and region == self.regions["train"]:
            self.__dict__["_normalizer"] = self._fit(filtered)  # filter the training region only once
        return self.normalizer().normalize(filtered)

    def load_region(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(raw float32 preprocessed + normalised with the training statistics, labels int64)."""
        return self.prepare_raw(name), self.read_labels(name)

    def _preprocessed(self, region: Region) -> np.ndarray:
        volume = self.open_raw()
        if not self.preprocessing:
            return self._read_finite(region).astype(np.float32)
        norm = Normalizer(preprocessing=dict(self.preprocessing))
        halo = norm.halo
        return region.crop_halo(norm.preprocess(self._read_finite(region, halo)), volume.shape, halo)

    def _read_finite(self, region: Region, halo_yx: int = 0) -> np.ndarray:
        """Raw voxels of ``region`` (with ``halo_yx`` of xy context); DataError if a floating-point volume
        holds NaN or inf there (they would only surface later as a NaN loss)."""
        volume = self.open_raw()
        raw = region.read(volume, halo_yx)
        if np.issubdtype(raw.dtype, np.floating) and not np.isfinite(raw).all():
            bad = ~np.isfinite(raw)
            start = [s.start for s in region.expanded(volume.shape, halo_yx)]
            first = ", ".join(f"{a}={int(i) + s}" for a, i, s in zip(AXES, np.argwhere(bad)[0], start))
            raise DataError(f"{self.source}: raw {self.raw or 'volume'}: {int(bad.sum())} NaN/inf voxels in region "
                            f"{region.name} (first at {first}); replace them, e.g. with np.nan_to_num, or choose "
                            f"regions without them")
        return raw

    def normalizer(self) -> Normalizer:
        """Preprocessing + normalisation fitted on the training region (cached); reuse it on new volumes
        with ``Normalizer.from_dict(cfg.normalizer().to_dict()).apply(raw)``."""
        return self._normalizer

    @cached_property
    def _normalizer(self) -> Normalizer:
        return self._fit(self._preprocessed(self.region("train")))

    def _fit(self, filtered_train: np.ndarray) -> Normalizer:
        n = self.normalization
        fitted = Normalizer.fit(filtered_train, n["mode"], n.get("low", 1.0), n.get("high", 99.0),
                                self.preprocessing, preprocessed=True)
        log.debug("%s: normalizer fitted on the train region: %s", self.source, fitted.stats)
        return fitted

    # -------------------------------------------------------------------------------------- checks
    def check_label_values(self, key: str = "labels") -> None:
        """Raise DataError if a region holds a label value (after label_map) that is not a class.

        Reads one z-slice of a region at a time, so large volumes are fine.
        """
        labels = self.open_labels()
        for region in self.regions.values():
            slabs = ((z, labels[z, region.slices[1], region.slices[2]]) for z in range(*region.z))
            for value, z in sorted(scan_values(slabs).items()):
                mapped = map_value(value, self.label_map, self.map_rest, self.ignore_value)
                if mapped == self.ignore_value or 0 <= mapped < self.n_classes:
                    continue
                via = f" (label_map sends {value} to {mapped})" if mapped != value else ""
                raise DataError(
                    f"{self.source}: {key}: value {value}{via} occurs in regions.{region.name} (e.g. z={z}) "
                    f"but classes has {self.n_classes} entries (values 0..{self.n_classes - 1}); add a class, "
                    f"map it with label_map, or declare it ignore_value")

    # ----------------------------------------------------------------------------------- serialise
    def to_dict(self) -> dict[str, Any]:
        """A plain mapping (absolute paths) that ``from_dict`` reads back; for manifests and run folders."""
        d: dict[str, Any] = {}
        if self.name:
            d["name"] = self.name
        if self.description:
            d["description"] = self.description
        if self.synthetic is not None:
            d["synthetic"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.synthetic.items()}
        else:
            d["raw"], d["labels"] = self.raw, self.labels
        d["classes"] = list(self.classes)
        if self.label_map:
            d["label_map"] = dict(self.label_map)
            d["map_rest"] = self.map_rest
        if self.ignore_value is not None:
            d["ignore_value"] = self.ignore_value
        if self.voxel_size is not None:
            d["voxel_size"] = list(self.voxel_size)
        d["normalization"] = dict(self.normalization)
        if self.preprocessing:
            d["preprocessing"] = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in self.preprocessing.items()}
        d["background_class"] = self.background_class
        d["membrane_class"] = self.membrane_class
        d["regions"] = {name: r.to_dict() for name, r in self.regions.items()}
        return d

    def summary(self) -> str:
        what = f"synthetic seed {self.synthetic['seed']}" if self.synthetic else Path(str(self.raw)).name
        regions = ", ".join(str(r) for r in self.regions.values())
        return f"{what} {self.shape}, classes {list(self.classes)}; regions: {regions}"


def load_data_config(path: str | Path, *, check_labels: bool = True) -> DataConfig:
    """Read and validate a data YAML file (see the module doc for the keys)."""
    path = Path(path)
    data = read_yaml_file(path, DataError, "no such data YAML file (examples are in examples/*.yaml)")
    return DataConfig.from_dict(data, source=path.name, base_dir=path.parent, check_labels=check_labels)


# ---------------------------------------------------------------------------------------------- parser
def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


class _Parser:
    def __init__(self, source: str, base_dir: str | Path | None, key_prefix: str) -> None:
        self.source = source
        self.base_dir = base_dir
        self.prefix = f"{key_prefix}." if key_prefix else ""

    def error(self, key: str, message: str) -> DataError:
        where = f"{self.prefix}{key}" if key else self.prefix.rstrip(".")
        return DataError(f"{self.source}: {where}: {message}" if where else f"{self.source}: {message}")

    def keys(self, d: Any, valid: tuple[str, ...], key: str) -> Mapping[str, Any]:
        if not isinstance(d, Mapping):
            raise self.error(key, f"must be a mapping of {', '.join(valid)}, got {type(d).__name__} {d!r}")
        for k in d:
            if k not in valid:
                path = f"{key}.{k}" if key else str(k)
                raise self.error(path, f"unknown key{did_you_mean(k, valid, 'keys')}")
        return d

    # -------------------------------------------------------------------------------------- top
    def config(self, d: Any, check_labels: bool) -> DataConfig:
        if d is None:
            raise self.error("", "the data file is empty; it needs raw, labels (or synthetic), classes, regions")
        d = self.keys(d, TOP_KEYS, "")
        synthetic = self.synthetic(d["synthetic"]) if d.get("synthetic") is not None else None
        if synthetic is not None:
            for key in ("raw", "labels"):
                if d.get(key) is not None:
                    raise self.error(key, "give either synthetic or raw + labels, not both")
            if "classes" not in d:
                from arborseg.data.synthetic import CLASSES
                d = {**d, "classes": list(CLASSES)}
        else:
            for key in ("raw", "labels"):
                if d.get(key) is None:
                    raise self.error(key, "missing required key (a volume path such as raw.tif, file.h5:key, "
                                          "store.zarr:key or raw.npy; or use synthetic: {seed: 0} instead)")
        if "classes" not in d:
            raise self.error("classes", "missing required key: the class names, index = label value, e.g. "
                                        "[background, mitochondria]")
        classes = self.classes(d["classes"])
        n = len(classes)
        ignore_value = self.optional_int(d, "ignore_value")
        if ignore_value is not None and 0 <= ignore_value < n:
            raise self.error("ignore_value", f"{ignore_value} is also a class index (0..{n - 1}); use a value "
                                             "outside the classes, e.g. 255")
        label_map, map_rest = self.label_map(d, n, ignore_value)
        background = self.class_index(d, "background_class", n, default=0)
        membrane = self.class_index(d, "membrane_class", n, default=None)
        voxel_size = self.voxel_size(d.get("voxel_size"))
        normalization = self.normalization(d.get("normalization"))
        preprocessing = self.preprocessing(d.get("preprocessing"))

        if synthetic is not None:
            raw_spec = labels_spec = None
            shape = tuple(synthetic["shape"])
        else:
            raw_spec, raw_vol = self.volume(d["raw"], "raw")
            labels_spec, labels_vol = self.volume(d["labels"], "labels")
            if raw_vol.dtype.kind not in "uif":
                raise self.error("raw", f"{Path(raw_spec).name} has dtype {raw_vol.dtype}; raw intensities must "
                                        "be integer or float (e.g. uint8, uint16, float32)")
            if labels_vol.dtype.kind not in "uib":
                raise self.error("labels", f"{Path(labels_spec).name} has dtype {labels_vol.dtype}; labels must "
                                           "be integer class ids (convert it, e.g. np.rint(a).astype(np.uint8))")
            if raw_vol.shape != labels_vol.shape:
                raise self.error("labels", f"shape {labels_vol.shape} differs from raw shape {raw_vol.shape}; "
                                           "raw and labels must cover the same voxels")
            shape = raw_vol.shape
        if "regions" not in d or d["regions"] is None:
            raise self.error("regions", "missing required key: at least regions.train, e.g. "
                                        "{train: {z: [0, 8]}, validation: {z: [8, 10]}}")
        regions = self.regions(d["regions"], shape)
        cfg = DataConfig(
            source=self.source, classes=classes, shape=shape, regions=regions, raw=raw_spec, labels=labels_spec,
            synthetic=synthetic, label_map=label_map, map_rest=map_rest, ignore_value=ignore_value,
            voxel_size=voxel_size, normalization=normalization, preprocessing=preprocessing,
            background_class=background, membrane_class=membrane, name=str(d.get("name") or ""),
            description=str(d.get("description") or ""))
        if check_labels:
            cfg.check_label_values(key=f"{self.prefix}labels")
        log.debug("%s: %s", self.source, cfg.summary())
        return cfg

    # ---------------------------------------------------------------------------------- pieces
    def synthetic(self, value: Any) -> dict[str, Any]:
        value = self.keys(value, SYNTHETIC_KEYS, "synthetic")
        out = {**SYNTHETIC_DEFAULTS, **value}
        if not _is_int(out["seed"]):
            raise self.error("synthetic.seed", f"{out['seed']!r} must be an integer")
        shape = out["shape"]
        if not (isinstance(shape, (list, tuple)) and len(shape) == 3 and all(_is_int(s) and s > 0 for s in shape)):
            raise self.error("synthetic.shape", f"{shape!r} must be three positive sizes [z, y, x], "
                                                "e.g. [12, 256, 256]")
        if shape[1] < 16 or shape[2] < 16:
            raise self.error("synthetic.shape", f"{list(shape)} is too small in y/x (at least 16 pixels)")
        if not _is_number(out["anisotropy"]) or out["anisotropy"] <= 0:
            raise self.error("synthetic.anisotropy", f"{out['anisotropy']!r} must be a positive number")
        return {"seed": int(out["seed"]), "shape": tuple(int(s) for s in shape), "anisotropy": float(out["anisotropy"])}

    def classes(self, value: Any) -> tuple[str, ...]:
        if not isinstance(value, (list, tuple)) or len(value) < 2:
            raise self.error("classes", f"{value!r} must be a list of at least 2 class names, index = label value")
        names = tuple(str(v) for v in value)
        dup = sorted({c for c in names if names.count(c) > 1})
        if dup:
            raise self.error("classes", f"duplicate class names {dup}")
        return names

    def optional_int(self, d: Mapping[str, Any], key: str) -> int | None:
        value = d.get(key)
        if value is not None and not _is_int(value):
            raise self.error(key, f"{value!r} must be an integer or null")
        return None if value is None else int(value)

    def class_index(self, d: Mapping[str, Any], key: str, n: int, default: int | None) -> int | None:
        value = self.optional_int(d, key) if key in d else default
        if value is not None and not 0 <= value < n:
            raise self.error(key, f"{value} is not a class index (0..{n - 1}); or null for none")
        return value

    def label_map(self, d: Mapping[str, Any], n: int, ignore: int | None) -> tuple[dict[int, int] | None, int | str]:
        rest = d.get("map_rest", 0)
        if rest != KEEP and not (_is_int(rest) and (0 <= rest < n or rest == ignore)):
            raise self.error("map_rest", f"{rest!r} must be a class index (0..{n - 1}), the ignore_value or "
                                         f"'{KEEP}'")
        value = d.get("label_map")
        if value is None:
            return None, rest if rest == KEEP else int(rest)
        if not isinstance(value, Mapping) or not value:
            raise self.error("label_map", f"{value!r} must be a mapping stored value -> class index, e.g. {{3: 1}}")
        out: dict[int, int] = {}
        for k, v in value.items():
            if not _is_int(k):
                raise self.error(f"label_map.{k}", "keys must be integer label values as stored in the file")
            if not _is_int(v) or not (0 <= v < n or v == ignore):
                raise self.error(f"label_map.{k}", f"{v!r} must be a class index (0..{n - 1})"
                                                   + (f" or the ignore_value {ignore}" if ignore is not None else ""))
            out[int(k)] = int(v)
        return out, rest if rest == KEEP else int(rest)

    def voxel_size(self, value: Any) -> tuple[float, float, float] | None:
        if value is None:
            return None
        if not (isinstance(value, (list, tuple)) and len(value) == 3 and all(_is_number(v) and v > 0 for v in value)):
            raise self.error("voxel_size", f"{value!r} must be three positive numbers [z, y, x] in nm")
        return tuple(float(v) for v in value)  # type: ignore[return-value]

    def normalization(self, value: Any) -> dict[str, Any]:
        if value is None:
            return dict(DEFAULT_NORMALIZATION)
        if isinstance(value, str):
            value = {"mode": value}
        value = self.keys(value, NORMALIZATION_KEYS, "normalization")
        mode = value.get("mode", "percentile")
        if mode not in MODES:
            raise self.error("normalization.mode", f"{mode!r} is not one of {list(MODES)}{did_you_mean(mode, MODES, 'keys')}")
        out: dict[str, Any] = {"mode": mode}
        if mode == "percentile":
            low, high = value.get("low", 1.0), value.get("high", 99.0)
            for key, v in (("low", low), ("high", high)):
                if not _is_number(v) or not 0 <= v <= 100:
                    raise self.error(f"normalization.{key}", f"{v!r} must be a percentile between 0 and 100")
            if low >= high:
                raise self.error("normalization.low", f"{low} must be below high ({high})")
            out.update(low=float(low), high=float(high))
        elif set(value) - {"mode"}:
            extra = sorted(set(value) - {"mode"})
            raise self.error(f"normalization.{extra[0]}", f"only used with mode: percentile (mode is {mode})")
        return out

    def preprocessing(self, value: Any) -> dict[str, Any]:
        if value is None:
            return {}
        value = self.keys(value, FILTERS, "preprocessing")
        out: dict[str, Any] = {}
        for name, params in value.items():
            if name == "unsharp":
                params = self.keys(params if params is not None else {}, UNSHARP_KEYS, "preprocessing.unsharp")
                radius, amount = params.get("radius", 2.0), params.get("amount", 1.0)
                if not _is_number(radius) or radius <= 0:
                    raise self.error("preprocessing.unsharp.radius", f"{radius!r} must be a positive number")
                if not _is_number(amount):
                    raise self.error("preprocessing.unsharp.amount", f"{amount!r} must be a number")
                out[name] = {"radius": float(radius), "amount": float(amount)}
            else:
                if not _is_int(params) or params < 1 or params % 2 == 0:
                    raise self.error("preprocessing.median", f"{params!r} must be an odd filter size such as 3")
                out[name] = int(params)
        return out

    def volume(self, spec: Any, key: str) -> tuple[str, Volume]:
        if not isinstance(spec, (str, Path)):
            raise self.error(key, f"{spec!r} must be a path such as raw.tif, file.h5:key or store.zarr:key")
        resolved, tried = resolve_spec(str(spec), self.base_dir)
        if resolved is None:
            places = "; ".join(str(p) for p in tried)
            raise self.error(key, f"{spec}: file not found; looked in: {places} (fix the path or make it absolute)")
        try:
            return resolved, open_volume(resolved)
        except DataError as exc:
            raise self.error(key, str(exc)) from None

    def regions(self, value: Any, shape: tuple[int, int, int]) -> dict[str, Region]:
        value = self.keys(value, REGION_NAMES, "regions")
        if "train" not in value or value["train"] is None:
            raise self.error("regions.train", "missing required key: the training region, e.g. {z: [0, 8]}")
        regions: dict[str, Region] = {}
        for name in REGION_NAMES:  # fixed order: train, validation, eval_near, eval_far
            if value.get(name) is None:
                continue
            ranges = self.keys(value[name], AXES, f"regions.{name}")
            parsed = [self.axis_range(ranges.get(axis), f"regions.{name}.{axis}", n)
                      for axis, n in zip(AXES, shape)]
            regions[name] = Region(name, *parsed)
        names = list(regions)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                ra, rb = regions[a], regions[b]
                if not ra.overlaps(rb):
                    continue
                message = f"overlaps regions.{a} ({ra} / {rb})"
                if (a, b) in OVERLAP_ERRORS:
                    raise self.error(f"regions.{b}", f"{message}; training, validation and evaluation regions "
                                                     "must not share voxels (move its z/y/x ranges apart)")
                log.warning("%s: regions.%s: %s", self.source, b, message)
        return regions

    def axis_range(self, value: Any, key: str, n: int) -> tuple[int, int]:
        if value is None:
            return (0, n)
        if not (isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_int(v) for v in value)):
            raise self.error(key, f"{value!r} must be a [start, stop) pair of integers like [0, 8] "
                                  "(omit the axis for the whole axis)")
        start, stop = int(value[0]), int(value[1])
        if start >= stop:
            raise self.error(key, f"[{start}, {stop}] is empty: start must be below stop (ranges are [start, stop))")
        if start < 0 or stop > n:
            raise self.error(key, f"[{start}, {stop}] is outside the volume (0..{n})")
        return (start, stop)
