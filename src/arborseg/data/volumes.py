"""Open and write 3D (z, y, x) volumes: TIFF stacks, HDF5, Zarr and NumPy ``.npy``.

A *volume spec* is a path, optionally with an internal key after a colon::

    raw.tif                     # TIFF stack (memory-mapped if possible, else read page by page)
    data.h5:volumes/raw         # HDF5 dataset (lazy)
    data.zarr:raw  or  raw.zarr # Zarr array (lazy); a plain store may hold a single array
    raw.npy                     # NumPy array (memory-mapped)

:func:`open_volume` returns a :class:`Volume`: ``.shape``, ``.dtype`` and numpy-style slicing that reads
only what is asked for and returns an ``np.ndarray``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from arborseg.errors import DataError
from arborseg.log import get_logger

log = get_logger(__name__)

TIFF_SUFFIXES = (".tif", ".tiff")
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")
ZARR_SUFFIXES = (".zarr",)
NPY_SUFFIXES = (".npy",)
ALL_SUFFIXES = TIFF_SUFFIXES + HDF5_SUFFIXES + ZARR_SUFFIXES + NPY_SUFFIXES
IO_HINT = "install the optional I/O dependencies: pip install arborseg[io]"

_SPEC = re.compile(r"^(?P<path>.*?(?:\.h5|\.hdf5|\.hdf|\.zarr))(?::(?P<key>.*))?$", re.IGNORECASE)


def split_spec(spec: str | Path) -> tuple[str, str | None]:
    """Split ``file.h5:key`` / ``store.zarr:key`` into (path, key); other specs have no key."""
    text = str(spec)
    match = _SPEC.match(text)
    if match and match.group("key") is not None:
        key = match.group("key").strip("/")
        return match.group("path"), key or None
    return text, None


def volume_format(path: str | Path) -> str:
    """'tiff', 'hdf5', 'zarr' or 'npy' from the file suffix (DataError otherwise)."""
    suffix = Path(str(path).rstrip("/")).suffix.lower()
    for name, suffixes in (("tiff", TIFF_SUFFIXES), ("hdf5", HDF5_SUFFIXES), ("zarr", ZARR_SUFFIXES),
                           ("npy", NPY_SUFFIXES)):
        if suffix in suffixes:
            return name
    raise DataError(f"{path}: unknown volume format {suffix or '(no suffix)'!r}; "
                    f"use one of {', '.join(ALL_SUFFIXES)} (HDF5/Zarr as file.h5:key, store.zarr:key)")


class Volume:
    """A lazily read 3D (z, y, x) array; slicing reads only the requested part.

    ``array`` is anything with ``shape``, ``dtype`` and basic slicing (``np.memmap``, ``h5py.Dataset``,
    ``zarr.Array``, a numpy array or a page-wise TIFF reader). ``opener`` re-creates it after pickling,
    so volumes can be sent to worker processes.
    """

    def __init__(self, array: Any, spec: str, opener: Callable[[], Any] | None = None) -> None:
        self._array = array
        self._opener = opener
        self.spec = spec
        self.shape: tuple[int, int, int] = tuple(int(n) for n in array.shape)  # type: ignore[assignment]
        self.dtype = np.dtype(array.dtype)
        if len(self.shape) != 3:
            raise DataError(f"{spec}: the array is {len(self.shape)}D with shape {self.shape}; arborseg needs a "
                            "3D (z, y, x) volume (a single 2D image: save it as shape (1, y, x); channels: "
                            "save one volume per channel)")

    @property
    def ndim(self) -> int:
        return 3

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"Volume({self.spec!r}, shape={self.shape}, dtype={self.dtype})"

    @property
    def array(self) -> Any:
        if self._array is None:
            assert self._opener is not None
            self._array = self._opener()
        return self._array

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        if self._opener is not None:
            state["_array"] = None
        return state

    def __getitem__(self, key: Any) -> np.ndarray:
        read_key, post = _plan(key, self.shape)
        out = np.asarray(self.array[read_key])
        return _apply_post(out, post) if post else out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[...]
        return out.astype(dtype, copy=False) if dtype is not None else out

    def read(self) -> np.ndarray:
        """The whole volume as an in-memory array."""
        return self[...]

    def iter_slices(self):
        """Yield (z, 2D slice) one z-section at a time (bounded memory)."""
        for z in range(self.shape[0]):
            yield z, self[z]

    def close(self) -> None:
        """Close an underlying file handle (HDF5, TIFF); the volume reopens on next access."""
        closer = getattr(self._array, "close", None) or getattr(getattr(self._array, "file", None), "close", None)
        if self._opener is not None and closer is not None:
            try:
                closer()
            except Exception:  # pragma: no cover - best effort
                pass
            self._array = None

    def __enter__(self) -> Volume:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _plan(key: Any, shape: tuple[int, ...]) -> tuple[tuple, list | None]:
    """Turn a numpy-style key into a read of positive-step slices plus a numpy post-index.

    HDF5 and Zarr only support plain slices; integers, negative steps and index arrays are applied to the
    (smallest covering) block after reading.
    """
    if not isinstance(key, tuple):
        key = (key,)
    n_ellipsis = sum(k is Ellipsis for k in key)
    if n_ellipsis > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    if n_ellipsis:
        i = next(i for i, k in enumerate(key) if k is Ellipsis)
        key = key[:i] + (slice(None),) * (len(shape) - len(key) + 1) + key[i + 1:]
    if len(key) > len(shape):
        raise IndexError(f"too many indices for a {len(shape)}D volume")
    key = key + (slice(None),) * (len(shape) - len(key))
    read: list[slice] = []
    post: list[Any] = []
    needs_post = False
    for k, n in zip(key, shape):
        if isinstance(k, (int, np.integer)):
            i = int(k) + n if k < 0 else int(k)
            if not 0 <= i < n:
                raise IndexError(f"index {int(k)} is out of bounds for an axis of size {n}")
            read.append(slice(i, i + 1))
            post.append(0)
            needs_post = True
        elif isinstance(k, slice):
            start, stop, step = k.indices(n)
            if step > 0:
                read.append(slice(start, max(start, stop), step))
                post.append(slice(None))
            else:
                count = len(range(start, stop, step))
                if count == 0:
                    read.append(slice(0, 0))
                    post.append(slice(None))
                else:
                    low = start + (count - 1) * step
                    read.append(slice(low, start + 1, -step))
                    post.append(slice(None, None, -1))
                    needs_post = True
        else:
            idx = np.asarray(k)
            if idx.dtype == bool:
                idx = np.flatnonzero(idx)
            idx = np.where(idx < 0, idx + n, idx).astype(np.int64)
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise IndexError(f"index out of bounds for an axis of size {n}")
            low = int(idx.min()) if idx.size else 0
            high = int(idx.max()) + 1 if idx.size else 0
            read.append(slice(low, high))
            post.append(idx - low)
            needs_post = True
    return tuple(read), (post if needs_post else None)


def _apply_post(out: np.ndarray, post: list) -> np.ndarray:
    """Apply per-axis post-indices one axis at a time (index arrays never broadcast together)."""
    squeeze = []
    for axis, p in enumerate(post):
        if isinstance(p, slice):
            if p != slice(None):
                out = out[(slice(None),) * axis + (p,)]
        elif isinstance(p, int):
            squeeze.append(axis)
        else:
            out = np.take(out, p, axis=axis)
    return out.squeeze(axis=tuple(squeeze)) if squeeze else out


# ----------------------------------------------------------------------------------------------- open
def open_volume(spec: str | Path | Volume | np.ndarray, base_dir: str | Path | None = None) -> Volume:
    """Open a volume spec lazily (see module doc); relative paths are taken against ``base_dir``.

    A :class:`Volume` is returned as is and an in-memory ndarray is wrapped, so callers accept all three.
    """
    if isinstance(spec, Volume):
        return spec
    if isinstance(spec, np.ndarray):
        return Volume(spec, f"<array {spec.shape}>")
    path_text, key = split_spec(spec)
    path = Path(path_text).expanduser()
    if base_dir is not None and not path.is_absolute():
        path = Path(base_dir) / path
    fmt = volume_format(path)
    shown = f"{path}:{key}" if key else str(path)
    if not path.exists():
        where = "" if Path(path_text).expanduser().is_absolute() else (
            f"; relative paths are taken from {Path(base_dir) if base_dir is not None else Path.cwd()}")
        raise DataError(f"{path}: no such file or folder (check the path{where})")
    if fmt == "tiff":
        return _open_tiff(path)
    if fmt == "npy":
        if key:
            raise DataError(f"{shown}: a .npy file holds one array; drop the ':{key}' part")
        try:
            return Volume(np.load(path, mmap_mode="r"), str(path), partial(np.load, path, mmap_mode="r"))
        except ValueError as exc:
            raise DataError(f"{path}: not a readable .npy array ({exc})") from None
    if fmt == "hdf5":
        key = key or _only_key(path, _hdf5_keys(path), "file.h5:key")
        return Volume(_hdf5_dataset(path, key), f"{path}:{key}", partial(_hdf5_dataset, path, key))
    return Volume(_zarr_array(path, key), shown, partial(_zarr_array, path, key))


def _only_key(path: Path, keys: list[str], example: str) -> str:
    if len(keys) == 1:
        log.info("%s: using its only array %r", path, keys[0])
        return keys[0]
    listed = ", ".join(keys) if keys else "none"
    raise DataError(f"{path}: holds {len(keys)} arrays; name one as {example} (available: {listed})")


# TIFF ------------------------------------------------------------------------------------------------
class _TiffPages:
    """Reads the z-pages of a compressed TIFF stack one at a time (lazy along z)."""

    def __init__(self, path: Path) -> None:
        import tifffile

        self.path = path
        self._tif = tifffile.TiffFile(path)
        series = self._tif.series[0]
        self.shape = tuple(series.shape)
        self.dtype = np.dtype(series.dtype)
        self._pages = series.pages

    def close(self) -> None:
        self._tif.close()

    def __getitem__(self, key: tuple[slice, slice, slice]) -> np.ndarray:
        zs = range(*key[0].indices(self.shape[0]))
        out = np.empty((len(zs),) + self.shape[1:], self.dtype)
        for i, z in enumerate(zs):
            page = self._pages[z]
            if page is None:
                raise DataError(f"{self.path}: page {z} of the TIFF stack cannot be read")
            out[i] = page.asarray()
        return out[(slice(None),) + tuple(key[1:])]


def _open_tiff(path: Path) -> Volume:
    import tifffile

    try:
        return Volume(tifffile.memmap(path, mode="r"), str(path), partial(tifffile.memmap, path, mode="r"))
    except (ValueError, OSError, TypeError):
        pass
    except Exception as exc:  # tifffile raises its own TiffFileError for broken files
        raise DataError(f"{path}: not a readable TIFF file ({exc})") from None
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            pages = series.pages
            page_wise = (len(series.shape) == 3 and len(pages) == series.shape[0]
                         and all(p is not None and tuple(p.shape) == tuple(series.shape[1:]) for p in pages))
    except Exception as exc:
        raise DataError(f"{path}: not a readable TIFF file ({exc})") from None
    if page_wise:
        return Volume(_TiffPages(path), str(path), partial(_TiffPages, path))
    log.debug("%s: not page-wise readable, loading into memory", path)
    return Volume(tifffile.imread(path), str(path))


# HDF5 ------------------------------------------------------------------------------------------------
def _h5py():
    try:
        import h5py
    except ImportError:
        raise DataError(f"reading HDF5 needs h5py: {IO_HINT}") from None
    return h5py


def _hdf5_keys(path: Path) -> list[str]:
    h5py = _h5py()
    keys: list[str] = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: keys.append(name) if isinstance(obj, h5py.Dataset) else None)
    return keys


def _hdf5_dataset(path: Path, key: str):
    h5py = _h5py()
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path}: not a readable HDF5 file ({exc})") from None
    obj = f.get(key)
    if not isinstance(obj, h5py.Dataset):
        f.close()
        keys = _hdf5_keys(path)
        what = "is a group, not a dataset" if obj is not None else "does not exist"
        raise DataError(f"{path}: key {key!r} {what}; available datasets: {', '.join(keys) or 'none'}")
    return obj


# Zarr ------------------------------------------------------------------------------------------------
def _zarr():
    try:
        import zarr
    except ImportError:
        raise DataError(f"reading Zarr needs zarr: {IO_HINT}") from None
    return zarr


def _zarr_keys(group: Any, prefix: str = "") -> list[str]:
    zarr = _zarr()
    keys: list[str] = []
    for name in sorted(group.keys()):
        member = group[name]
        if isinstance(member, zarr.Group):
            keys.extend(_zarr_keys(member, f"{prefix}{name}/"))
        else:
            keys.append(prefix + name)
    return keys


def _zarr_array(path: Path, key: str | None):
    zarr = _zarr()
    try:
        root = zarr.open(str(path), mode="r")
    except Exception as exc:
        raise DataError(f"{path}: not a readable Zarr store ({exc})") from None
    if key is None:
        if not isinstance(root, zarr.Group):
            return root
        key = _only_key(path, _zarr_keys(root), "store.zarr:key")
    if not isinstance(root, zarr.Group):
        raise DataError(f"{path}: is a single Zarr array, not a group; drop the ':{key}' part")
    try:
        obj = root[key]
    except (KeyError, Exception):
        obj = None
    if obj is None or isinstance(obj, zarr.Group):
        what = "is a group, not an array" if obj is not None else "does not exist"
        raise DataError(f"{path}: key {key!r} {what}; available arrays: "
                        f"{', '.join(_zarr_keys(root)) or 'none'}")
    return obj


# ---------------------------------------------------------------------------------------------- write
def default_chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Chunks that suit window reads of anisotropic data: a few z-slices, 256 x 256 in xy."""
    z, y, x = shape
    return (min(z, 4), min(y, 256), min(x, 256))


def write_volume(path: str | Path, array: np.ndarray, chunks: tuple[int, int, int] | None = None) -> str:
    """Write a 3D array as TIFF, HDF5 (``file.h5:key``), Zarr (``store.zarr[:key]``) or ``.npy``.

    An HDF5 file without a key gets the dataset ``data``; existing datasets/arrays of that name are
    replaced. Returns the spec to open it again.
    """
    array = np.asarray(array)
    if array.ndim != 3:
        raise DataError(f"{path}: can only write 3D (z, y, x) arrays, got shape {array.shape}")
    path_text, key = split_spec(path)
    target = Path(path_text).expanduser()
    fmt = volume_format(target)
    chunk_shape = tuple(chunks) if chunks is not None else default_chunks(array.shape)
    target.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "tiff":
        import tifffile

        tifffile.imwrite(target, array, photometric="minisblack")  # uncompressed: memory-mappable
        return str(target)
    if fmt == "npy":
        np.save(target, array)
        return str(target)
    if fmt == "hdf5":
        h5py = _h5py()
        key = key or "data"
        with h5py.File(target, "a") as f:
            if key in f:
                del f[key]
            f.create_dataset(key, data=array, chunks=chunk_shape)
        return f"{target}:{key}"
    zarr = _zarr()
    if key is None:
        z = zarr.open_array(str(target), mode="w", shape=array.shape, dtype=array.dtype, chunks=chunk_shape)
        z[...] = array
        return str(target)
    group = zarr.open_group(str(target), mode="a")
    if hasattr(group, "create_array"):  # zarr 3
        z = group.create_array(key, shape=array.shape, dtype=array.dtype, chunks=chunk_shape, overwrite=True)
    else:  # zarr 2
        z = group.create_dataset(key, shape=array.shape, dtype=array.dtype, chunks=chunk_shape, overwrite=True)
    z[...] = array
    return f"{target}:{key}"
