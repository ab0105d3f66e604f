"""What the bootstrapping paper's thin 3D U-Net reaches on VNC mitochondria after a few CPU minutes.

Trains the fixed network of ``bench_thin3d_builder.py`` (depth 4, 32 filters, instance norm, LeakyReLU,
kernels [3, 3, 3], pooling [1, 2, 2], window z 3) on ``examples/vnc_mito.yaml`` (train z 0-8) for a fixed
number of steps and scores it on eval-near (z 10-13) and eval-far (z 15-20): IoU of mitochondria, mean IoU
and FN-401 / FP-401 in percent of the region's voxels (2D: connected components per slice, as in the seed
work). One row per seed.

    python benchmarks/bench_vnc_mito_thin3d.py --steps 300 --seeds 0
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _readme import update_readme
from bench_thin3d_builder import PAPER_TREE

from arborseg.data import load_data_config
from arborseg.errors import DataError
from arborseg.train.settings import TrainSettings
from arborseg.train.trainer import train_and_score
from arborseg.tree import ModuleTree

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT / "examples/vnc_mito.yaml"))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--xy", type=int, default=96, help="window xy (z is 3)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--out", default=str(ROOT / "runs/bench_vnc_mito_thin3d"))
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    ap.add_argument("--no-readme", action="store_true", help="print only; do not update benchmarks/README.md")
    args = ap.parse_args()
    try:
        data = load_data_config(args.data)
    except DataError as exc:
        raise SystemExit(f"skipped: {exc} (the VNC data lives in ../shared/data)") from None
    tree = ModuleTree.from_dict(PAPER_TREE | {"window": [3, args.xy, args.xy],
                                              "training": PAPER_TREE["training"] | {"batch_size": args.batch_size}})
    rows = []
    for seed in args.seeds:
        shutil.rmtree(Path(args.out) / f"seed{seed}", ignore_errors=True)  # a fresh run, never a resumed one
        settings = TrainSettings(steps=args.steps, eval_every=max(1, args.steps // 3), seed=seed, device="cpu",
                                 objective="fg_iou", overlays=False, num_threads=args.threads)
        t = time.perf_counter()
        result = train_and_score(tree, data, settings, Path(args.out) / f"seed{seed}", progress=True)
        wall = time.perf_counter() - t
        reg = result["regions"]
        rows.append((seed, result["train_seconds"], wall, reg))
        print(f"seed {seed}: {wall:.0f} s", {r: {k: round(reg[r][k], 4) for k in ("iou/mitochondria", "fn_401")}
                                             for r in ("eval_near", "eval_far")})
    lines = [
        f"Command: `python benchmarks/bench_vnc_mito_thin3d.py --steps {args.steps} --xy {args.xy} "
        f"--batch-size {args.batch_size} --seeds {' '.join(map(str, args.seeds))}"
        + (f" --threads {args.threads}" if args.threads else "") + "`",
        "",
        f"Machine: {os.cpu_count()} CPUs ({platform.machine()}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; load average {os.getloadavg()[0]:.1f} at the end (shared machine).",
        "",
        f"Network `{tree.name}` (the paper's), window (3, {args.xy}, {args.xy}), batch {args.batch_size}, "
        f"{args.steps} Adam steps with the tree's default schedule, augmentation on.",
        "",
        "| seed | train (s) | total incl. eval (s) | region | IoU mito | mIoU | FN-401 (% of voxels) | FP-401 (% of voxels) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for seed, train_s, wall, reg in rows:
        for region in ("eval_near", "eval_far"):
            m = reg[region]
            lines.append(f"| {seed} | {train_s:.0f} | {wall:.0f} | {region} | {m['iou/mitochondria']:.3f} | "
                         f"{m['miou']:.3f} | {m['fn_401']:.2f} | {m['fp_401']:.2f} |")
    print("\n".join(lines))
    if not args.no_readme:
        update_readme("Thin 3D U-Net on VNC mitochondria after a few CPU minutes", "\n".join(lines))


if __name__ == "__main__":
    main()
