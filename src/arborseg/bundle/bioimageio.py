"""The bioimage.io model description (``rdf.yaml``, model spec 0.5) of a bundle, and its validation.

bioimage.io describes one network applied to one tile. For an ensemble that network is the members run
side by side on the same tile and fused (:class:`~arborseg.bundle.convert.FusedEnsemble`, traced at the
largest member window); ``arborseg predict`` instead blends every member over its own tile grid (the
reference result). Preprocessing: the normaliser's fixed statistics are expressed as ``scale_linear``
(+ ``clip``) for ``percentile`` and ``fixed_zero_mean_unit_variance`` for ``zscore``; filters
(``unsharp``, ``median``) have no bioimage.io counterpart: they are named in the description and the
test input is given after them.

Tested with bioimageio.spec 0.5.12.0 (what bioimageio.core 0.11.0 pins; it needs pydantic < 2.14) and 0.5.14.3.
Any failure is a :class:`BundleError` whose message says what to install or what is wrong; the export leaves
the description out then.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from arborseg.errors import BundleError
from arborseg.log import get_logger

log = get_logger(__name__)

#: the release of bioimageio.spec whose serializer breaks under pydantic >= 2.14 (every model fails to validate)
PYDANTIC_214_BROKEN_SPEC = "0.5.12."
#: how many elements of a discrete output (vote fractions) may differ from the test output, per million
DISCRETE_MISMATCH_PER_MILLION = 1000
INSTALL_SPEC = "pip install 'bioimageio.spec>=0.5.12,<0.6'"

__all__ = ["preprocessing_steps", "write_rdf", "validate_rdf"]


def _spec():
    """The bioimageio.spec module, or a one-line :class:`BundleError` saying what to install."""
    try:
        import bioimageio.spec as spec
    except ImportError:
        raise BundleError(f"bioimageio.spec is not installed ({INSTALL_SPEC})") from None
    return spec


def preprocessing_steps(normalizer: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
    """bioimage.io preprocessing equal to the normaliser's normalisation, and a note on what is left out
    (its filters) or None."""
    steps: list[dict[str, Any]] = [{"id": "ensure_dtype", "kwargs": {"dtype": "float32"}}]
    mode = normalizer.get("mode", "percentile")
    stats = normalizer.get("stats") or {}
    if mode == "percentile":
        lo, hi = float(stats["lo"]), float(stats["hi"])
        span = hi - lo if hi > lo else 1.0
        steps += [{"id": "scale_linear", "kwargs": {"gain": 1.0 / span, "offset": -lo / span}},
                  {"id": "clip", "kwargs": {"min": 0.0, "max": 1.0}}]
    elif mode == "zscore":
        std = float(stats["std"]) if float(stats["std"]) > 0 else 1.0
        steps.append({"id": "fixed_zero_mean_unit_variance", "kwargs": {"mean": float(stats["mean"]), "std": std}})
    elif mode != "none":
        raise BundleError(f"normalizer mode {mode!r} has no bioimage.io preprocessing")
    filters = normalizer.get("preprocessing") or {}
    note = None
    if filters:
        note = (f"apply the filters {filters} (arborseg.data.preprocess) to the raw data first: bioimage.io has no "
                "such preprocessing; the test input is given after them")
    return steps, note


def _axes(window: Sequence[int], channel: dict[str, Any], ref: str | None = None) -> list[dict[str, Any]]:
    axes: list[dict[str, Any]] = [{"type": "batch"}, {"type": "channel", **channel}]
    for name, size in zip("zyx", window):
        axes.append({"type": "space", "id": name, "unit": "nanometer",
                     "size": {"tensor_id": ref, "axis_id": name} if ref else int(size)})
    return axes


def write_rdf(folder: Path, *, name: str, description: str, classes: Sequence[str], window: Sequence[int],
              normalizer: dict[str, Any], voxel_size: Sequence[float] | None, torchscript: str | None,
              onnx: str | None, test_input: str, test_output: str, documentation: str, tags: Sequence[str],
              version: str, discrete: bool = False) -> Path:
    """Write ``folder/rdf.yaml`` for the fused ensemble module (TorchScript and/or ONNX weights); file names
    are relative to ``folder``. ``discrete``: the output is vote fractions, where a near tie of two classes
    may flip between runtimes (up to ``DISCRETE_MISMATCH_PER_MILLION`` elements are tolerated)."""
    import torch
    import yaml

    _spec()
    from bioimageio.spec.model.v0_5 import ModelDescr

    if not (torchscript or onnx):
        raise BundleError("a bioimage.io description needs TorchScript or ONNX weights")
    steps, note = preprocessing_steps(normalizer)
    inputs_axes = _axes(window, {"channel_names": ["raw"]})
    outputs_axes = _axes(window, {"channel_names": [str(c) for c in classes]}, ref="raw")
    if voxel_size is not None:
        for axes in (inputs_axes, outputs_axes):
            for ax, scale in zip(axes[2:], voxel_size):
                ax["scale"] = float(scale)
    weights: dict[str, Any] = {}
    if torchscript:
        weights["torchscript"] = {"source": torchscript, "pytorch_version": torch.__version__.split("+")[0]}
    if onnx:
        from arborseg.bundle.convert import ONNX_OPSET

        weights["onnx"] = {"source": onnx, "opset_version": ONNX_OPSET,
                           **({"parent": "torchscript"} if torchscript else {})}
    rdf = {
        "format_version": str(ModelDescr.implemented_format_version),
        "type": "model",
        "name": name,
        "description": description + (f" Note: {note}." if note else ""),
        "authors": [{"name": "arborseg"}],
        "cite": [{"text": "arborseg: architecture search and ensembles for volume-EM segmentation",
                  "url": "https://github.com/arborseg/arborseg"}],
        "license": "MIT",
        "documentation": {"source": documentation},
        "tags": list(tags),
        "version": version,
        "inputs": [{"id": "raw", "description": "raw EM intensities (z, y, x)", "axes": inputs_axes,
                    "test_tensor": {"source": test_input}, "data": {"type": "float32"},
                    "preprocessing": steps}],
        "outputs": [{"id": "probabilities", "description": "fused class probabilities of the ensemble",
                     "axes": outputs_axes, "test_tensor": {"source": test_output},
                     "data": {"type": "float32", "range": [0.0, 1.0]}}],
        "weights": weights,
    }
    if discrete:
        rdf["config"] = {"bioimageio": {"reproducibility_tolerance": [
            {"mismatched_elements_per_million": DISCRETE_MISMATCH_PER_MILLION}]}}
    path = folder / "rdf.yaml"
    path.write_text(yaml.safe_dump(rdf, sort_keys=False))
    return path


def validate_rdf(path: Path) -> dict[str, Any]:
    """Validate ``rdf.yaml`` with bioimageio.spec (format and files, hashes); raise :class:`BundleError` when
    invalid. Returns ``{"status", "format_version", "bioimageio_spec", "warnings", "summary"}``."""
    spec = _spec()
    descr = spec.load_description(path.resolve(), perform_io_checks=True)
    summary = descr.validation_summary
    text = summary.format() if hasattr(summary, "format") else str(summary)
    if summary.status not in ("valid-format", "passed"):
        errors = [f"{'.'.join(map(str, e.loc))}: {e.msg}" for d in summary.details for e in d.errors]
        broken = _known_incompatibility(spec.__version__, errors)
        if broken:
            raise BundleError(broken)
        detail = "; ".join(" ".join(e.split()) for e in errors[:5])[:400]
        raise BundleError(f"the bioimage.io description is invalid for bioimageio.spec {spec.__version__} "
                          f"({summary.status}): {detail}")
    warns = [f"{'.'.join(map(str, w.loc))}: {w.msg}" for d in summary.details for w in d.warnings]
    return {"status": summary.status, "format_version": str(getattr(descr, "format_version", "")),
            "bioimageio_spec": spec.__version__, "warnings": warns, "summary": text}


def _known_incompatibility(spec_version: str, errors: Sequence[str]) -> str | None:
    """What to install when bioimageio.spec itself fails (not the description), else None."""
    from importlib import metadata

    pydantic = metadata.version("pydantic")
    if spec_version.startswith(PYDANTIC_214_BROKEN_SPEC) and any("index_key" in e for e in errors):
        return (f"bioimageio.spec {spec_version} cannot validate any model with pydantic {pydantic} (its serializer "
                "fails); pip install 'pydantic<2.14' (what bioimageio.core 0.11 needs too) or "
                "'bioimageio.spec>=0.5.14'")
    return None
