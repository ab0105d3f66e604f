"""Several jobs on one GPU: which card a local job gets, and how many jobs fit on a card.

The nets arborseg searches are small; one trial uses a fraction of a modern GPU. With ``jobs_per_gpu: k`` in an
``executor:``:

* **local**: every job (or warm worker) gets one of ``visible_gpus`` (default: every GPU this machine has) in
  ``CUDA_VISIBLE_DEVICES``, the card with the fewest live jobs of this driver, so that at most ``k`` share one;
  ``workers`` defaults to ``k x cards`` and CPU threads are divided among them as always.
* **slurm** (with ``warm_workers: true``): one SLURM job holds one GPU and runs ``k`` warm workers on it as ``k``
  tasks (``--ntasks-per-node=k``, ``cpus_per_task`` CPUs each); ``workers`` counts workers, not SLURM jobs. Without
  warm workers one SLURM job cannot hand its GPU to another: ask for GPU shards or MPS (``additional_parameters``).

``jobs_per_gpu: auto`` is resolved by the caller that knows the jobs (the campaign driver: the largest training
memory of trees sampled from its space, :func:`arborseg.train.memory.training_bytes`) with
:func:`jobs_per_card`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from arborseg.errors import CampaignError

#: what one more process costs on a card before its tensors: the CUDA context and cuDNN/cuBLAS workspaces
CUDA_PROCESS_BYTES = 600 * 2**20
#: the share of a card's memory that jobs may plan to use (the rest: fragmentation, estimate error)
USABLE_SHARE = 0.85
#: jobs on one card at most, however small they are (beyond this they wait for each other's kernels)
MAX_JOBS_PER_CARD = 8


def jobs_per_card(card_bytes: int, job_bytes: int, cap: int = MAX_JOBS_PER_CARD) -> int:
    """How many jobs of ``job_bytes`` (their largest training memory) share a card of ``card_bytes``: at least 1."""
    if card_bytes <= 0 or job_bytes < 0:
        raise CampaignError(f"jobs_per_gpu auto: card memory {card_bytes} and job memory {job_bytes} must be positive")
    fits = int(USABLE_SHARE * card_bytes // (job_bytes + CUDA_PROCESS_BYTES))
    return max(1, min(cap, fits))


def parse_jobs_per_gpu(value: Any, kind: str) -> int | str | None:
    """The ``jobs_per_gpu`` option: None (not set), a positive integer, or ``"auto"``; anything else is one error."""
    if value is None:
        return None
    if value == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CampaignError(f"executor ({kind}): jobs_per_gpu must be a positive integer or auto, not {value!r}")
    return value


def local_gpus(visible: Sequence[int] | None) -> list[int]:
    """The GPUs local jobs may use: ``visible`` when given, else every CUDA device this machine has."""
    if visible:
        return [int(g) for g in visible]
    try:
        import torch

        return list(range(torch.cuda.device_count()))
    except ImportError:  # pragma: no cover - torch is a dependency
        return []


class GpuSlots:
    """Hands each new local job the card with the fewest live jobs, at most ``per_gpu`` per card.

    ``is_live(job)`` tells whether a job handed out earlier still runs. Only this process's jobs are counted: a
    driver that restarts while its predecessor's jobs run may put up to ``per_gpu`` more on a card for a while.
    """

    def __init__(self, gpus: Sequence[int], per_gpu: int, is_live: Callable[[Any], bool]) -> None:
        if not gpus:
            raise CampaignError("executor (local): jobs_per_gpu needs a GPU: none is visible here (set visible_gpus "
                                "or drop jobs_per_gpu)")
        self.gpus, self.per_gpu, self._is_live = list(gpus), per_gpu, is_live
        self._held: list[tuple[Any, int]] = []

    def load(self) -> dict[int, int]:
        """Live jobs per card."""
        self._held = [(job, gpu) for job, gpu in self._held if self._is_live(job)]
        counts = dict.fromkeys(self.gpus, 0)
        for _, gpu in self._held:
            counts[gpu] += 1
        return counts

    def next_gpu(self) -> int:
        """The card for the next job: the least loaded (the first of them on a tie)."""
        counts = self.load()
        return min(self.gpus, key=lambda g: counts[g])

    def hold(self, job: Any, gpu: int) -> None:
        self._held.append((job, gpu))
