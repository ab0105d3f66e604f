"""Training in bf16 vs float32 on this CPU: seconds per train step of the baseline trees and sampled hybrid trees.

For baseline A (the paper's thin 3D U-Net), baseline B (nnU-Net's 2D U-Net) and 3 trees sampled from
``search_spaces/hybrid_2d3d.yaml``, at 1 and 2 torch threads: the median seconds of a training step (batch 2,
random data of the tree's window) in float32 and under ``torch.autocast("cpu", dtype=torch.bfloat16)``, side by
side, and the speed-up. bf16 is only measured where the CPU computes it natively (oneDNN's check, what
``precision: auto`` uses): emulated bf16 is many times slower than float32 and ``auto`` never picks it; ``--force``
measures it anyway (one probe step per tree: slow).

    python benchmarks/bench_precision.py                # writes the README section "Training precision on CPU"
    python benchmarks/bench_precision.py --steps 2 --no-readme
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

sys.path.insert(0, str(Path(__file__).parent))
from _readme import cpu_model, update_readme

from arborseg.device import autocast, native_bf16_cpu
from arborseg.nn import build_network
from arborseg.space import load_space
from arborseg.tree import ModuleTree

ROOT = Path(__file__).resolve().parents[1]
PORTFOLIO = ROOT / "search_spaces" / "portfolio"


def trees(n_sampled: int) -> list[tuple[str, ModuleTree]]:
    """(label, tree): A, B and ``n_sampled`` hybrid trees (seeds 0..n-1 of the built-in space)."""
    out = [("A " + (t := ModuleTree.load(PORTFOLIO / "thin3d_paper.yaml")).name, t),
           ("B " + (t := ModuleTree.load(PORTFOLIO / "unet2d_nnunet.yaml")).name, t)]
    space = load_space(ROOT / "search_spaces" / "hybrid_2d3d.yaml")
    out += [(f"hybrid {(t := space.sample(seed)).name}", t) for seed in range(n_sampled)]
    return out


def step_seconds(tree: ModuleTree, dtype: torch.dtype | None, steps: int, threads: int) -> float:
    """Median seconds of a training step (forward, loss in float32, backward, SGD) at batch 2."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = build_network(tree, 2)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.rand(2, 1, *tree.window), torch.randint(0, 2, (2, *tree.window))
    device = torch.device("cpu")
    times = []
    for i in range(steps + 1):  # the first step builds oneDNN's kernels: not counted
        started = time.perf_counter()
        with autocast(device, dtype):
            logits = net(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i:
            times.append(time.perf_counter() - started)
    return statistics.median(times) if times else float("nan")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per tree and precision (median)")
    ap.add_argument("--sampled", type=int, default=3, help="hybrid trees sampled (default 3)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--force", action="store_true", help="measure bf16 even where it is emulated (1 probe step)")
    ap.add_argument("--trees", nargs="+", choices=["A", "B", "hybrid"], default=["A", "B", "hybrid"],
                    help="which trees (emulated bf16 on baseline A's 3D convolutions takes many minutes a step)")
    ap.add_argument("--no-readme", action="store_true")
    args = ap.parse_args(argv)
    native = native_bf16_cpu()
    bf16_steps = args.steps if native else 1
    rows = []
    for label, tree in trees(args.sampled):
        if label.split()[0] not in args.trees:
            continue
        for threads in args.threads:
            fp32 = step_seconds(tree, None, args.steps, threads)
            bf16 = step_seconds(tree, torch.bfloat16, bf16_steps, threads) if native or args.force else float("nan")
            rows.append((label, list(tree.window), threads, fp32, bf16))
            print(f"{label} window {list(tree.window)} threads {threads}: fp32 {fp32:.3f} s, bf16 {bf16:.3f} s",
                  flush=True)
    lines = [
        f"Command: `python benchmarks/bench_precision.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
        "",
        f"Machine: {cpu_model()}, {os.cpu_count()} CPUs ({platform.machine()}), torch {torch.__version__}, "
        f"oneDNN native bf16: **{'yes' if native else 'no'}** (so `precision: auto` trains in "
        f"{'bf16' if native else 'fp32'} here); load average {os.getloadavg()[0]:.1f} at the end.",
        "",
        "Median seconds per training step at batch 2 (random data, SGD), float32 vs bf16 autocast"
        + ("" if native else " (bf16 emulated: one probe step, after a warm-up step)") + ".",
        "",
        "| tree | window | threads | fp32 s/step | bf16 s/step | bf16 speed-up |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for label, window, threads, fp32, bf16 in rows:
        speedup = "-" if bf16 != bf16 else f"{fp32 / bf16:.2f}x"
        bf16_text = "not measured (emulated)" if bf16 != bf16 else f"{bf16:.3f}"
        lines.append(f"| {label} | {window} | {threads} | {fp32:.3f} | {bf16_text} | {speedup} |")
    print("\n".join(lines))
    if not args.no_readme:
        update_readme("Training precision on CPU", "\n".join(lines))


if __name__ == "__main__":
    main()
