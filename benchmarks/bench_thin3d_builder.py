"""Training-step time of the built thin 3D U-Net vs a hand-written PyTorch module with the same layers.

The network is the bootstrapping paper's: depth 4, 32 filters doubling per level, two conv units per level
(conv [3, 3, 3] -> instance norm -> LeakyReLU), max pooling [1, 2, 2], transposed-conv upsampling, skip
concatenation, 1x1x1 predictor. Both modules get the same weights (copied parameter by parameter), and the
script first checks that their outputs agree, so the comparison is between the same computation.

Timing: Adam steps on random (N, 1, Z, Y, X) windows with cross-entropy, the two modules interleaved round
by round (so load changes on a shared machine hit both alike); median step time per module and the ratio.

    python benchmarks/bench_thin3d_builder.py --window 3 64 64 --batch 2 --rounds 7 --steps 5
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))

from _readme import update_readme

from arborseg.nn.builder import build_network, count_parameters
from arborseg.tree import ModuleTree

PAPER_TREE = {
    "arborseg_tree": 1,
    "space": "benchmark",
    "window": [3, 64, 64],
    "training": {"lr": 1e-3, "weight_decay": 1e-5, "optimizer": "adam"},
    "root": {"type": "sequence", "children": [
        {"type": "encoder_decoder", "dims": "thin3d", "kernel_z": 3, "kernel_size": 3, "depth": 4, "width": 32,
         "width_growth": 2.0, "blocks_per_level": 1, "layers_per_block": 2, "norm": "instance",
         "activation": "leaky_relu", "dropout": 0.0, "separable": False, "pooling": "max",
         "upsampling": "transposed", "skip_merge": "concat"},
        {"type": "predictor"},
    ]},
}


class HandUNet(nn.Module):
    """The same thin 3D U-Net written by hand, as one would without arborseg."""

    def __init__(self, n_classes: int = 2, width: int = 32, depth: int = 4) -> None:
        super().__init__()
        widths = [width * 2**i for i in range(depth)]

        def double(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv3d(cin, cout, 3, padding=1, bias=False), nn.InstanceNorm3d(cout, affine=True),
                nn.LeakyReLU(0.01, inplace=True),
                nn.Conv3d(cout, cout, 3, padding=1, bias=False), nn.InstanceNorm3d(cout, affine=True),
                nn.LeakyReLU(0.01, inplace=True))

        self.enc = nn.ModuleList()
        c = 1
        for w in widths:
            self.enc.append(double(c, w))
            c = w
        self.pool = nn.MaxPool3d((1, 2, 2))
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for level in range(depth - 2, -1, -1):
            self.up.append(nn.ConvTranspose3d(widths[level + 1], widths[level], (1, 2, 2), stride=(1, 2, 2)))
            self.dec.append(double(2 * widths[level], widths[level]))
        self.head = nn.Conv3d(widths[0], n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, enc in enumerate(self.enc):
            x = enc(self.pool(x) if i else x)
            skips.append(x)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips[:-1])):
            x = dec(torch.cat([up(x), skip], 1))
        return self.head(x)


def copy_weights(src: nn.Module, dst: nn.Module) -> None:
    """Copy parameters in registration order (the two modules register the same shapes in the same order)."""
    ps, pd = list(src.parameters()), list(dst.parameters())
    if [p.shape for p in ps] != [p.shape for p in pd]:
        raise SystemExit("the hand-written module does not have the built module's layers")
    with torch.no_grad():
        for a, b in zip(ps, pd):
            b.copy_(a)


def step_times(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> list[tuple[float, float]]:
    """(wall, process CPU) seconds of each training step. CPU time is the steadier measure on a shared
    machine: waiting for a core does not count."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    times = []
    for _ in range(steps):
        t, c = time.perf_counter(), time.process_time()
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
        times.append((time.perf_counter() - t, time.process_time() - c))
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--window", type=int, nargs=3, default=[3, 64, 64])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=5, help="steps per module per round")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared machine, OpenMP threads waiting for a core make "
                         "multi-threaded timings far noisier)")
    ap.add_argument("--no-readme", action="store_true", help="print only; do not update benchmarks/README.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tree = ModuleTree.from_dict(PAPER_TREE | {"window": list(args.window)})
    built = build_network(tree, 2)
    hand = HandUNet()
    copy_weights(built, hand)
    x = torch.randn(args.batch, 1, *args.window)
    y = torch.randint(0, 2, (args.batch, *args.window))
    with torch.no_grad():
        diff = float((built(x) - hand(x)).abs().max())
    if diff > 1e-4:
        raise SystemExit(f"outputs differ by {diff}: not the same network")
    step_times(built, x, y, 2), step_times(hand, x, y, 2)  # warm-up (oneDNN kernels)
    times: dict[str, list[tuple[float, float]]] = {"built": [], "hand": []}
    for r in range(args.rounds):
        order = [("built", built), ("hand", hand)] if r % 2 == 0 else [("hand", hand), ("built", built)]
        for name, model in order:
            times[name].extend(step_times(model, x, y, args.steps))
    med = {k: statistics.median(t for t, _ in v) for k, v in times.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in times.items()}
    ratio, cpu_ratio = med["built"] / med["hand"], cpu["built"] / cpu["hand"]
    per_round = [statistics.median(t for t, _ in times["built"][i:i + args.steps])
                 / statistics.median(t for t, _ in times["hand"][i:i + args.steps])
                 for i in range(0, len(times["built"]), args.steps)]
    load = os.getloadavg()[0]
    lines = [
        f"Command: `python benchmarks/bench_thin3d_builder.py --window {' '.join(map(str, args.window))} "
        f"--batch {args.batch} --rounds {args.rounds} --steps {args.steps} --threads {args.threads}`",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); load average {load:.1f} at the end.",
        "",
        f"Network: {tree.name}, {count_parameters(built):,} parameters, window {tuple(args.window)}, batch {args.batch};"
        f" outputs of the two modules agree to {diff:.1e}.",
        "",
        "| module | median step, wall (s) | median step, process CPU (s) | steps timed |",
        "| --- | --- | --- | --- |",
        f"| arborseg-built | {med['built']:.4f} | {cpu['built']:.4f} | {len(times['built'])} |",
        f"| hand-written | {med['hand']:.4f} | {cpu['hand']:.4f} | {len(times['hand'])} |",
        "",
        f"**Ratio built / hand-written: {ratio:.3f} wall, {cpu_ratio:.3f} CPU** (goal <= 1.03); per-round wall "
        f"ratios {', '.join(f'{r:.3f}' for r in per_round)}.",
    ]
    print("\n".join(lines))
    if not args.no_readme:
        update_readme("Built thin 3D U-Net vs hand-written", "\n".join(lines))


if __name__ == "__main__":
    main()
