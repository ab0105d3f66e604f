"""How much accelerator memory training one tree needs: the estimate behind ``jobs_per_gpu: auto``."""

from __future__ import annotations

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
    from arborseg.inference.forward import leaf_output_bytes
    from arborseg.nn import build_network

    batch = int(batch_size if batch_size is not None else tree.training_values().get("batch_size", 4))
    net = build_network(tree, n_classes)
    saved = sum(leaf_output_bytes(net, tree.window))  # eval mode: the same output sizes, no batch-1 norms
    params = sum(p.numel() * p.element_size() for p in net.parameters())
    return batch * saved + OPTIMIZER_COPIES * params


def largest_training_bytes(trees: list[ModuleTree], n_classes: int) -> int:
    """The largest :func:`training_bytes` of ``trees`` (0 for none)."""
    return max((training_bytes(t, n_classes) for t in trees), default=0)
