"""How much accelerator memory training one tree needs: the estimate behind ``jobs_per_gpu: auto``."""

from __future__ import annotations

from typing import Any

import torch

from arborseg.tree import ModuleTree

#: float32 weights, their gradients and AdamW's two moments
OPTIMIZER_COPIES = 4


def training_bytes(tree: ModuleTree, n_classes: int, batch_size: int | None = None) -> int:
    """Rough peak memory of one training step of ``tree`` at its window and ``batch_size`` (default: its own).

    Autograd keeps (about) every leaf module's output for the backward pass, so the estimate is the sum of those
    outputs for one window (float32, measured by one forward pass with hooks on the CPU) times the batch, plus the
    parameters four times over (weights, gradients, AdamW's moments). Mixed precision needs less; the estimate is
    meant to be on the safe side of the truth, not exact.
    """
    from arborseg.nn import build_network

    batch = int(batch_size if batch_size is not None else tree.training_values().get("batch_size", 4))
    net = build_network(tree, n_classes).eval()  # the same output sizes as in training, without batch-1 norms
    saved = 0

    def hook(_module: Any, _inputs: Any, output: Any) -> None:
        nonlocal saved
        for t in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(t, torch.Tensor):
                saved += t.numel() * t.element_size()

    handles = [m.register_forward_hook(hook) for m in net.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            net(torch.zeros((1, 1, *tree.window)))
    finally:
        for h in handles:
            h.remove()
    params = sum(p.numel() * p.element_size() for p in net.parameters())
    return batch * saved + OPTIMIZER_COPIES * params


def largest_training_bytes(trees: list[ModuleTree], n_classes: int) -> int:
    """The largest :func:`training_bytes` of ``trees`` (0 for none)."""
    return max((training_bytes(t, n_classes) for t in trees), default=0)
