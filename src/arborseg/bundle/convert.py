"""Network -> TorchScript (traced at a fixed window, checked against the eager network) and ONNX.

Tracing records one window shape: the traced module is only used with inputs of that shape (the
prediction pads smaller tiles to it), any batch size. Both converters write a file only once it is checked:
:func:`to_torchscript` compares the traced module with the eager one on fresh random inputs of two batch
sizes, :func:`to_onnx` runs the ONNX model on a batch of 2; either raises :class:`BundleError` with the
reason (one line) when the file cannot be produced or differs from the network.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from arborseg.errors import BundleError

# traced vs eager and ONNX vs eager: max abs difference of the outputs
# relative to their largest magnitude
TRACE_RTOL = 1e-5
ONNX_RTOL = 1e-4
#: largest window (voxels) onnx's pure-numpy reference evaluator may check (~1 GB at 3 x 64 x 64 and width 32)
REFERENCE_MAX_VOXELS = 3 * 64 * 64
ONNX_OPSET = 18
# tried in order: the TorchScript-based exporter (fast: well under a second for these networks, and it
# exports the same traced graph the bundle ships), then torch.export's (seconds per network)
EXPORTERS = ("torchscript", "dynamo")
#: a discrete output (``FusedEnsemble`` with vote fusion: ``discrete_output``) flips where the members' top two
#: classes tie within float rounding; at most this fraction of its elements may differ
DISCRETE_MISMATCH = 1e-3

__all__ = ["to_torchscript", "to_onnx", "FusedEnsemble", "max_rel_diff", "check_output", "first_line"]


def max_rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max(1, max |b|)."""
    return float((a - b).abs().max() / max(1.0, float(b.abs().max())))


def check_output(out: torch.Tensor, ref: torch.Tensor, rtol: float, discrete: bool, what: str) -> float:
    """``max_rel_diff(out, ref)``; raises :class:`BundleError` when it exceeds ``rtol`` (for a ``discrete``
    output: when more than ``DISCRETE_MISMATCH`` of the elements differ by more than ``rtol``)."""
    diff = max_rel_diff(out, ref)
    if diff <= rtol:
        return diff
    if discrete:
        mismatched = float(((out - ref).abs() > rtol * max(1.0, float(ref.abs().max()))).float().mean())
        if mismatched <= DISCRETE_MISMATCH:
            return diff
        raise BundleError(f"{what} differs from the network in {mismatched:.2%} of its elements")
    raise BundleError(f"{what} differs from the network by {diff:.2e} (relative)")


def _inputs(window: Sequence[int], batches: Sequence[int], seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.rand((n, 1, *window), generator=gen) for n in batches]


def to_torchscript(net: nn.Module, window: Sequence[int], path: str | Path, name: str = "network") -> dict[str, Any]:
    """Trace ``net`` at ``window`` (batch 2), check it against the eager network at batch 1 and 3, save it.

    Returns ``{"path", "max_rel_diff"}``; raises :class:`BundleError` when the traced module differs.
    """
    net = net.eval()
    (example,) = _inputs(window, [2], 0)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings of the shape checks, the deprecation notice
        traced = torch.jit.trace(net, example, check_trace=False)
        pairs = [(traced(x), net(x)) for x in _inputs(window, [1, 3], 1)]
    what = f"{name}: the traced TorchScript module at window {tuple(window)}"
    try:
        diff = max(check_output(out, ref, TRACE_RTOL, _discrete(net), what) for out, ref in pairs)
    except BundleError as exc:
        raise BundleError(f"{exc}; the network has input-dependent control flow that tracing cannot record") \
            from None
    traced.save(str(path))
    return {"path": str(path), "max_rel_diff": diff}


def to_onnx(net: nn.Module, window: Sequence[int], path: str | Path, name: str = "network",
            output_name: str = "logits") -> dict[str, Any]:
    """Export ``net`` to ONNX (input ``raw`` (N, 1, *window), output ``output_name``, batch dynamic).

    Each exporter of ``EXPORTERS`` is tried in turn; its model is checked with ``onnx.checker``, then run on
    a fresh batch of 2 (onnxruntime where installed, else onnx's reference evaluator) and compared with the
    eager network (``max_rel_diff``), so an export that baked a value in as a constant is caught. Returns
    ``{"path", "checked", "exporter", "max_rel_diff"}``; raises :class:`BundleError` naming every
    exporter's reason when none gives a verified file (no file is left behind).
    """
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise BundleError(f"{name}: onnx is not installed (pip install onnx onnxscript onnxruntime)") from None
    net = net.eval()
    reasons = []
    for exporter in EXPORTERS:
        try:
            return _try_export(net, window, Path(path), exporter, output_name)
        except Exception as exc:  # any exporter or runtime failure becomes a recorded reason
            Path(path).unlink(missing_ok=True)
            reasons.append(f"{exporter} exporter: {first_line(exc)}")
    raise BundleError(f"{name}: no verified ONNX export ({'; '.join(reasons)})")


def first_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message``, at most ``limit`` characters."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:limit]


def _try_export(net: nn.Module, window: Sequence[int], path: Path, exporter: str, output_name: str) -> dict[str, Any]:
    """One exporter, then the checks; raises on any failure (the caller records why)."""
    import onnx

    (example,) = _inputs(window, [1], 2)
    _export(net, example, path, exporter, output_name)
    onnx.checker.check_model(str(path))
    x = _inputs(window, [2], 3)[0]  # batch 2: the export used batch 1, so the dynamic batch is checked too
    try:
        import onnxruntime
    except ImportError:  # onnx's pure-numpy reference evaluator: slower, same verdict, but memory-hungry
        from onnx.reference import ReferenceEvaluator

        if math.prod(window) > REFERENCE_MAX_VOXELS:  # its im2col convolutions need GBs for larger windows
            raise BundleError(f"not verified: window {tuple(window)} is too large for onnx's reference evaluator "
                              "(pip install onnxruntime to check and keep ONNX files)") from None
        session: Any = ReferenceEvaluator(str(path))
        checked = "onnx.checker + onnx.reference"
    else:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        checked = "onnx.checker + onnxruntime"
    out = session.run(None, {"raw": x.numpy()})[0]
    with torch.no_grad():
        ref = net(x)
    diff = check_output(torch.from_numpy(np.asarray(out)), ref, ONNX_RTOL, _discrete(net), "its output")
    return {"path": str(path), "checked": checked, "exporter": exporter, "max_rel_diff": diff}


def _discrete(net: nn.Module) -> bool:
    return bool(getattr(net, "discrete_output", False))


def _export(net: nn.Module, example: torch.Tensor, path: str | Path, exporter: str, output_name: str) -> None:
    """One ONNX export with a dynamic batch axis; the exporters' console chatter is swallowed."""
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), torch.no_grad():
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            torch.onnx.export(net, (example,), str(path), input_names=["raw"], output_names=[output_name],
                              dynamic_axes={"raw": {0: "batch"}, output_name: {0: "batch"}},
                              opset_version=ONNX_OPSET, dynamo=False)
        else:
            batch = torch.export.Dim("batch", min=1)
            torch.onnx.export(net, (example,), str(path), input_names=["raw"], output_names=[output_name],
                              dynamic_shapes=({0: batch},), opset_version=ONNX_OPSET, verbose=False,
                              external_data=False)


class FusedEnsemble(nn.Module):
    """All members on the same (N, 1, z, y, x) input -> fused probabilities (N, C, z, y, x).

    The same rules as :func:`arborseg.inference.fusion.fuse` for one tile: ``mean``/``weighted`` (weighted mean
    of the softmax, sigmoid for one class), ``max`` (class-wise max, renormalised) and ``vote`` (weighted
    fractions of the members' argmax votes). Used for the bioimage.io description, which describes one
    network; ``arborseg predict`` blends each member over its own tile grid instead.
    """

    weights: torch.Tensor  # a buffer: the members' weights, summing to 1

    def __init__(self, members: Sequence[nn.Module], fusion: str, weights: Sequence[float], n_classes: int) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.fusion = "mean" if fusion == "weighted" else fusion
        self.discrete_output = self.fusion == "vote"  # vote fractions: a near tie may flip between runtimes
        self.n_classes = int(n_classes)
        w = torch.tensor([float(v) for v in weights], dtype=torch.float32)
        self.register_buffer("weights", w / w.sum())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = []
        for m in self.members:
            logits = m(x)
            probs.append(torch.sigmoid(logits) if self.n_classes == 1 else torch.softmax(logits, dim=1))
        p = torch.stack(probs)  # (M, N, C, z, y, x)
        w = self.weights.view(-1, 1, 1, 1, 1, 1)
        if self.fusion == "max":
            out = p.max(dim=0).values
            return out / out.sum(dim=1, keepdim=True) if self.n_classes > 1 else out
        if self.fusion == "vote":
            if self.n_classes == 1:
                return ((p >= 0.5).float() * w).sum(dim=0)
            # one-hot of the argmax by comparison with the class indices: no axis moves, so the ONNX graph
            # has no Transpose with a negative axis (onnxruntime rejects one)
            classes = torch.arange(self.n_classes, device=p.device).view(1, 1, -1, 1, 1, 1)
            one_hot = (p.argmax(dim=2, keepdim=True) == classes).to(p.dtype)
            return (one_hot * w).sum(dim=0)
        return (p * w).sum(dim=0)
