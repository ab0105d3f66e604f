"""Device selection and mixed precision, in one place."""

from __future__ import annotations

import contextlib
import functools

import torch

from arborseg.log import get_logger

log = get_logger(__name__)


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when present, else CPU; 'cuda:1', 'cpu', ... are taken as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        from arborseg.errors import ArborsegError

        raise ArborsegError(f"device {name!r} asked for, but CUDA is not available here; use --device cpu or auto")
    return device


@functools.cache  # the hardware does not change; asked for every batch of tiles
def native_bf16_cpu() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 / AMX, as oneDNN sees it); without it, bf16 on
    CPU is emulated and many times slower than float32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device) -> tuple[str, torch.dtype | None]:
    """(name, autocast dtype or None for float32) of a ``precision`` setting on ``device``.

    ``auto``: bf16 on CUDA GPUs that support it, else fp16; on CPU bf16 where it is native, else fp32.
    ``bf16`` on a CPU without native support is allowed (with a warning: it is slow); ``fp16`` needs CUDA.
    """
    from arborseg.errors import ArborsegError

    cuda = device.type == "cuda"
    if precision == "fp32":
        return "fp32", None
    if precision == "auto":
        if cuda:
            return ("bf16", torch.bfloat16) if torch.cuda.is_bf16_supported() else ("fp16", torch.float16)
        return ("bf16", torch.bfloat16) if native_bf16_cpu() else ("fp32", None)
    if precision == "bf16":
        if cuda and not torch.cuda.is_bf16_supported():
            raise ArborsegError("precision bf16: this GPU does not support bfloat16; use fp16 or auto")
        if not cuda and not native_bf16_cpu():
            log.warning("precision bf16 on a CPU without native bfloat16: emulated, much slower than fp32 "
                        "(precision auto picks fp32 here)")
        return "bf16", torch.bfloat16
    if precision == "fp16":
        if not cuda:
            raise ArborsegError("precision fp16 needs a CUDA GPU; on CPU use bf16 (where native), fp32 or auto")
        return "fp16", torch.float16
    raise ArborsegError(f"precision {precision!r} is not one of auto, fp32, bf16, fp16")


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Autocast to ``dtype`` on ``device`` (from :func:`resolve_precision`); a no-op for None (float32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())
