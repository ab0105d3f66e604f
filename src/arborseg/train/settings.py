"""How a trial is trained, apart from the tree's own values: a torch-free settings record.

Campaign configs, the CLI and job specs import this without loading torch; the trainer
(:mod:`arborseg.train.trainer`) reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from arborseg.errors import ArborsegError

#: the regions a trial is scored on, in order
EVAL_REGIONS = ("validation", "eval_near", "eval_far")
#: arithmetic of training: auto (bf16 where native: CUDA, CPUs with AVX512-BF16/AMX; fp16 on older GPUs; else fp32)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

@dataclass
class TrainSettings:
    """How to train, apart from the tree's own training values (lr, batch size, ...)."""

    steps: int = 500
    #: the horizon of the learning-rate schedule (cosine, onecycle, poly); None: ``steps``. A trial that may be
    #: continued later plans its schedule for the longest training it can get, so that stopping at ``steps``
    #: and continuing (``steps`` raised, same horizon) follows the very same learning rates.
    schedule_steps: int | None = None
    eval_every: int = 100
    checkpoint_every: int = 50
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # one of PRECISIONS (arborseg.device.resolve_precision)
    objective: str = "fg_iou"
    fn_mode: Literal["2d", "3d"] = "2d"  # FN-n / FP-n components per slice or per volume
    overlap: float = 0.25
    eval_batch_size: int = 4
    num_threads: int | None = None
    augment: dict = field(default_factory=lambda: {"flip": True, "rot90": True, "elastic": {"p": 0.2, "alpha": 34, "sigma": 4},
                                                   "intensity": {"p": 0.5}})
    error_weighting: dict | None = None  # {"prediction": path, "mode": "all"|"fn", "weight": 5.0}
    overrides: dict = field(default_factory=dict)  # training values to use instead of the tree's
    overlays: bool = True

    @classmethod
    def from_dict(cls, data: dict | None) -> TrainSettings:
        data = dict(data or {})
        if "amp" in data:  # before precision existed: amp true = reduced precision where supported
            amp = data.pop("amp")
            data.setdefault("precision", "auto" if amp else "fp32")
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ArborsegError(f"unknown training settings {sorted(unknown)}; valid: {sorted(known)}")
        if data.get("precision", "auto") not in PRECISIONS:
            raise ArborsegError(f"training setting precision {data['precision']!r} must be one of {list(PRECISIONS)}")
        if data.get("fn_mode", "2d") not in ("2d", "3d"):
            raise ArborsegError(f"training setting fn_mode {data['fn_mode']!r} must be 2d (FN-n components per slice) "
                                "or 3d (per volume)")
        return cls(**data)
