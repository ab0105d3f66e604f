"""What the 3D CRF-as-RNN adds to a hybrid 2D/3D network: no CRF, spatial-only CRF, spatial + appearance CRF.

One hybrid tree of the ``hybrid_2d3d_crf`` family (a 2D U-Net per slice whose features and 2D predictions feed a
thin-3D spatial pyramid and a predictor) is trained three ways, everything else equal (steps, window, batch,
seed, recipe): without a CRF, with a spatial-only ``crf3d`` and with ``crf3d`` using the spatial + appearance
(bilateral) kernels. Datasets: VNC mitochondria and ISBI 2012 membranes (``examples/``), 3 seeds each. Reported:
eval-far mIoU, FN-401 and FP-401 (% of the region's voxels), mean +- std over seeds, the paired difference of each
CRF variant against no CRF and of the appearance kernel against spatial only, and training and prediction seconds
per voxel from a separate timing pass per dataset in which the variants take turns and each keeps its fastest
round (the quality runs' own seconds depend on what else runs; ``--retime`` measures again).

    python benchmarks/bench_crf.py                       # 2 datasets x 3 seeds x 3 variants (resumable)
    python benchmarks/bench_crf.py --steps 20 --seeds 1 --no-readme   # smoke test

Finished runs (``bench_crf.json`` in their folder under ``runs/bench_crf/``) are reused, so an interrupted run
resumes; ``--fresh`` starts over. Results: ``benchmarks/results/crf.json``, ``crf.csv`` and the section
"CRF-as-RNN: spatial vs appearance kernel" of ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _readme import cpu_model, update_readme

from arborseg.data import load_data_config
from arborseg.errors import DataError
from arborseg.nn import count_flops, count_parameters
from arborseg.train.settings import TrainSettings
from arborseg.train.trainer import Trainer
from arborseg.tree import ModuleTree

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DATASETS = {"vnc_mito": ROOT / "examples" / "vnc_mito.yaml", "isbi2012": ROOT / "examples" / "isbi2012_membrane.yaml"}
VARIANTS = ("none", "spatial", "spatial+appearance")
REGION = "eval_far"
#: the timing pass: warm-up steps, then rounds of train steps and of the prediction of a crop of REGION's slices
TIMING_WARMUP, TIMING_ROUNDS, TIMING_STEPS, TIMING_SLICES, TIMING_CROP = 3, 5, 5, 2, 256

_CONV = {"norm": "instance", "activation": "leaky_relu", "separable": False, "dropout": 0.0, "kernel_size": 3}
HYBRID = {
    "arborseg_tree": 1, "space": "bench_crf", "window": [3, 96, 96],
    "training": {"optimizer": "adamw", "lr": 1e-3, "schedule": "cosine", "dice_weight": 0.5, "foreground_bias": 0.3,
                 "batch_size": 2},
    "root": {"type": "sequence", "children": [
        {"type": "encoder_decoder", "dims": "2d", "kernel_z": 3, "depth": 3, "width": 16, "width_growth": 2.0,
         "blocks_per_level": 1, "layers_per_block": 2, "pooling": "max", "upsampling": "transposed",
         "skip_merge": "concat", **_CONV},
        {"type": "parallel", "merge": "concat", "children": [{"type": "identity"}, {"type": "predictor"}]},
        {"type": "spatial_pyramid", "dims": "thin3d", "kernel_z": 3, "width": 16, "branches": 3, "dilation_base": 2,
         "image_pooling": False, "merge": "concat", **_CONV},
        {"type": "predictor"},
    ]},
}
CRF = {"type": "crf3d", "iterations": 5, "spatial_kernel": 5, "spatial_sigma": 1.0, "appearance_kernel": 5,
       "appearance_sigma": 2.0}


def variant_tree(variant: str) -> ModuleTree:
    """The hybrid tree without a CRF, or with a ``crf3d`` of the given kernels."""
    spec = copy.deepcopy(HYBRID)
    if variant != "none":
        spec["root"]["children"].append(CRF | {"kernels": variant})
    return ModuleTree.from_dict(spec, source=f"bench_crf {variant}")


def run_one(dataset: str, variant: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Train one variant for one seed (validation once, at the end) and score eval-far; reuse a finished run."""
    folder = Path(args.out) / dataset / variant / f"seed{seed}"
    done = folder / "bench_crf.json"
    if done.exists() and not args.fresh:
        return json.loads(done.read_text())
    shutil.rmtree(folder, ignore_errors=True)
    data = load_data_config(DATASETS[dataset])
    tree = variant_tree(variant)
    settings = TrainSettings(steps=args.steps, eval_every=args.steps, seed=seed, device="cpu", precision="fp32",
                             objective="miou", overlays=False, num_threads=args.threads, eval_batch_size=1)
    trainer = Trainer(tree, data, settings, folder, progress=False)
    trainer.fit()
    trainer.save_model()
    raw, _ = trainer._region(REGION)
    started = time.perf_counter()
    scores, _ = trainer.score_region(REGION)
    predict_seconds = time.perf_counter() - started  # tiled prediction + scoring; scoring is a small part
    window_voxels = math.prod(tree.window) * int(trainer.values["batch_size"])
    row = {"dataset": dataset, "variant": variant, "seed": seed, "tree": tree.name, "steps": trainer.step,
           "miou": scores["miou"], "fn_401": scores["fn_401"], "fp_401": scores["fp_401"],
           "train_us_per_voxel": 1e6 * trainer.train_seconds / (trainer.step * window_voxels),
           "predict_us_per_voxel": 1e6 * predict_seconds / raw.size,
           "flops_per_voxel": count_flops(trainer.model.cpu(), tree.window) / math.prod(tree.window),
           "params": count_parameters(trainer.model)}
    done.write_text(json.dumps(row, indent=1))
    print(f"{dataset} {variant} seed {seed}: mIoU {row['miou']:.4f}, FN-401 {row['fn_401']:.2f}, "
          f"train {row['train_us_per_voxel']:.2f} us/voxel, predict {row['predict_us_per_voxel']:.2f} us/voxel",
          flush=True)
    return row


def time_dataset(dataset: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Seconds per voxel of training and of tiled prediction for every variant, measured apart from the quality
    runs and robust to a busy machine: the three variants take turns (``TIMING_ROUNDS`` rounds of
    ``TIMING_STEPS`` train steps on one fixed batch and the prediction of the central ``TIMING_CROP`` x
    ``TIMING_CROP`` of the region's first ``TIMING_SLICES`` slices, after ``TIMING_WARMUP`` warm-up steps and one
    prediction), and each keeps its fastest round, the one least disturbed by other work. ``--threads`` threads;
    reused unless ``--retime``."""
    from arborseg.inference import predict_volume

    done = Path(args.out) / "timing" / f"{dataset}.json"
    if done.exists() and not args.retime:
        return list(json.loads(done.read_text()))
    data = load_data_config(DATASETS[dataset])
    base = {"steps": 1, "seed": 0, "device": "cpu", "precision": "fp32", "objective": "miou", "overlays": False,
            "num_threads": args.threads, "eval_batch_size": 1}
    folder = Path(args.out) / "timing" / dataset
    shutil.rmtree(folder, ignore_errors=True)
    trainers = {v: Trainer(variant_tree(v), data, TrainSettings(**base), folder / v, progress=False)
                for v in VARIANTS}
    first = trainers[VARIANTS[0]]
    raw, _ = first._region(REGION)
    y0, x0 = (max(0, (n - TIMING_CROP) // 2) for n in raw.shape[1:])
    crop = np.ascontiguousarray(raw[:TIMING_SLICES, y0:y0 + TIMING_CROP, x0:x0 + TIMING_CROP])
    samplers = {v: t._sampler() for v, t in trainers.items()}  # also sets each trainer's class weights
    batch = samplers[VARIANTS[0]].sample_batch(int(first.values["batch_size"]))  # one batch for every variant

    def train_seconds(trainer: Trainer, steps: int) -> float:
        trainer.model.train()
        started = time.perf_counter()
        for _ in range(steps):
            trainer._train_step(*batch)
        return (time.perf_counter() - started) / steps

    def predict_seconds(trainer: Trainer) -> float:
        trainer.model.eval()
        started = time.perf_counter()
        predict_volume(trainer.model, crop, tuple(trainer.tree.window), len(data.classes),
                       overlap=trainer.settings.overlap, blending="gaussian", batch_size=1, device=trainer.device)
        return time.perf_counter() - started

    for trainer in trainers.values():  # allocations and oneDNN's kernel choices
        train_seconds(trainer, TIMING_WARMUP)
        predict_seconds(trainer)
    best = {v: [math.inf, math.inf] for v in VARIANTS}
    loads = []
    for _ in range(TIMING_ROUNDS):
        for variant, trainer in trainers.items():
            best[variant][0] = min(best[variant][0], train_seconds(trainer, TIMING_STEPS))
            best[variant][1] = min(best[variant][1], predict_seconds(trainer))
        loads.append(os.getloadavg()[0])
    rows = []
    for variant, trainer in trainers.items():
        window_voxels = math.prod(trainer.tree.window) * int(trainer.values["batch_size"])
        rows.append({"dataset": dataset, "variant": variant, "threads": args.threads or torch.get_num_threads(),
                     "train_us_per_voxel": 1e6 * best[variant][0] / window_voxels,
                     "predict_us_per_voxel": 1e6 * best[variant][1] / crop.size, "load_average": float(np.mean(loads)),
                     "rounds": TIMING_ROUNDS})
        print(f"timing {dataset} {variant}: train {rows[-1]['train_us_per_voxel']:.2f} us/voxel, predict "
              f"{rows[-1]['predict_us_per_voxel']:.2f} us/voxel (load {np.mean(loads):.1f})", flush=True)
    done.parent.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(rows, indent=1))
    return rows


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std over seeds per dataset and variant, and the paired difference against no CRF."""
    out = []
    for dataset in DATASETS:
        base = {r["seed"]: r for r in rows if r["dataset"] == dataset and r["variant"] == "none"}
        for variant in VARIANTS:
            mine = [r for r in rows if r["dataset"] == dataset and r["variant"] == variant]
            if not mine:
                continue
            entry: dict[str, Any] = {"dataset": dataset, "variant": variant, "seeds": len(mine)}
            for key in ("miou", "fn_401", "fp_401", "train_us_per_voxel", "predict_us_per_voxel"):
                values = np.array([r[key] for r in mine], dtype=float)
                entry[key] = float(values.mean())
                entry[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
            paired = [r["miou"] - base[r["seed"]]["miou"] for r in mine if r["seed"] in base]
            entry["miou_vs_none"] = float(np.mean(paired)) if paired else float("nan")
            entry["miou_vs_none_std"] = float(np.std(paired, ddof=1)) if len(paired) > 1 else float("nan")
            entry["flops_per_voxel"] = mine[0]["flops_per_voxel"]
            out.append(entry)
    return out


def _pm(mean: float, std: float, digits: int) -> str:
    return f"{mean:.{digits}f}" + ("" if math.isnan(std) else f" ± {std:.{digits}f}")


def appearance_vs_spatial(rows: list[dict[str, Any]]) -> list[str]:
    """One line per dataset: the paired (same seed) difference spatial + appearance minus spatial only."""
    lines = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        by = {(r["variant"], r["seed"]): r for r in rows if r["dataset"] == dataset}
        seeds = [s for v, s in by if v == "spatial" and ("spatial+appearance", s) in by]
        if not seeds:
            continue
        diff = {key: np.array([by["spatial+appearance", s][key] - by["spatial", s][key] for s in seeds])
                for key in ("miou", "fn_401", "fp_401")}
        std = {key: float(v.std(ddof=1)) if len(v) > 1 else math.nan for key, v in diff.items()}
        lines.append(f"- {dataset}: mIoU {_pm(float(diff['miou'].mean()), std['miou'], 3)} (per seed "
                     + ", ".join(f"{d:+.3f}" for d in diff["miou"]) + f"), FN-401 "
                     f"{_pm(float(diff['fn_401'].mean()), std['fn_401'], 2)}, FP-401 "
                     f"{_pm(float(diff['fp_401'].mean()), std['fp_401'], 2)} points")
    return lines


def readme_block(summary: list[dict[str, Any]], args: argparse.Namespace, wall: float,
                 rows: list[dict[str, Any]] | None = None) -> str:
    tree = variant_tree("spatial+appearance")
    lines = [
        f"Command: `python benchmarks/bench_crf.py --steps {args.steps} --seeds {args.seeds}"
        + (f" --threads {args.threads}`" if args.threads else "`"),
        "",
        f"Machine: {cpu_model()}, {os.cpu_count()} CPUs ({platform.machine()}), torch {torch.__version__}; "
        f"load average {os.getloadavg()[0]:.1f} at the end; {wall / 60:.0f} min for what was not already done.",
        "",
        f"One hybrid tree (2D U-Net depth 3 width 16 per slice, its features + 2D predictions into a thin-3D spatial "
        f"pyramid, predictor; window {list(tree.window)}, batch 2, AdamW 1e-3 cosine, {args.steps} steps, float32) "
        f"without a CRF, with a spatial-only `crf3d` and with the spatial + appearance kernels (5 iterations, "
        f"spatial 3 x 5 x 5, appearance 3 x 5 x 5). Scores on {REGION}; FN-/FP-401 in % of the region's voxels; "
        "mean ± std over seeds; *vs none*: paired mIoU difference against the same seed without a CRF. Times "
        f"from a separate timing pass in which the three variants take turns ({TIMING_ROUNDS} rounds of "
        f"{TIMING_STEPS} train steps on one fixed batch and a tiled prediction, overlap 0.25, batch 1, of the "
        f"central {TIMING_CROP} x {TIMING_CROP} of {TIMING_SLICES} slices of {REGION}, after {TIMING_WARMUP} "
        "warm-up steps; each variant's fastest round, the least disturbed by other work; load average in "
        "results/crf.json): train time per voxel seen (window voxels x batch), predict time per voxel. Validation once, at the end of each run (not used for anything).",
        "",
        "| dataset | CRF | mIoU | vs none | FN-401 | FP-401 | train µs/voxel | predict µs/voxel | FLOPs/voxel |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for e in summary:
        lines.append(f"| {e['dataset']} | {e['variant']} | {_pm(e['miou'], e['miou_std'], 3)} | "
                     + ("-" if e["variant"] == "none" else _pm(e["miou_vs_none"], e["miou_vs_none_std"], 3))
                     + f" | {_pm(e['fn_401'], e['fn_401_std'], 2)} | {_pm(e['fp_401'], e['fp_401_std'], 2)} | "
                     f"{e['train_us_per_voxel']:.2f} | {e['predict_us_per_voxel']:.2f} | {e['flops_per_voxel']:,.0f} |")
    contrast = appearance_vs_spatial(rows or [])
    if contrast:
        lines += ["", "Appearance kernel against spatial only, paired over seeds (spatial + appearance minus spatial, "
                  "mean ± std of the per-seed differences):", "", *contrast]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    ap.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench_crf"))
    ap.add_argument("--fresh", action="store_true", help="retrain runs that are already finished")
    ap.add_argument("--retime", action="store_true", help="measure the timing pass again (best on an idle machine)")
    ap.add_argument("--no-readme", action="store_true", help="print only; do not update benchmarks/README.md")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    rows = []
    for dataset in args.datasets:
        try:
            load_data_config(DATASETS[dataset])
        except DataError as exc:
            print(f"skipped {dataset}: {exc} (the EM data lives in ../shared/data)")
            continue
        for seed in range(args.seeds):
            for variant in VARIANTS:
                rows.append(run_one(dataset, variant, seed, args))
    if not rows:
        raise SystemExit("no dataset found: nothing measured")
    timing = {(t["dataset"], t["variant"]): t for t in
              (t for d in dict.fromkeys(r["dataset"] for r in rows) for t in time_dataset(d, args))}
    for row in rows:  # the quality runs' own seconds depend on what else ran; the timing pass is the measurement
        row["train_us_per_voxel_run"] = row["train_us_per_voxel"]
        row["predict_us_per_voxel_run"] = row["predict_us_per_voxel"]
        t = timing[(row["dataset"], row["variant"])]
        row["train_us_per_voxel"], row["predict_us_per_voxel"] = t["train_us_per_voxel"], t["predict_us_per_voxel"]
    summary = summarise(rows)
    block = readme_block(summary, args, time.perf_counter() - started, rows)
    print(block)
    if not args.no_readme:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "crf.json").write_text(json.dumps({"rows": rows, "summary": summary, "steps": args.steps,
                                                      "timing": list(timing.values())}, indent=1))
        import pandas as pd

        pd.DataFrame(rows).to_csv(RESULTS / "crf.csv", index=False)
        update_readme("CRF-as-RNN: spatial vs appearance kernel", block)


if __name__ == "__main__":
    main()
