"""GPU readiness in one short run (issue 14, item 9; issue 15): CUDA training with autocast, several trials
sharing one GPU (``jobs_per_gpu`` k = 1, 2, 4, 8: trials per hour and GPU utilisation), tiled prediction, and a
short campaign on the new schedule (successive halving with continued training).

    bash benchmarks/gpu_check.sh            # on a machine with one CUDA GPU; about 5 minutes
    python benchmarks/gpu_check.py --device cpu --quick   # the same code path on CPU, tiny (a dry run)

Writes ``benchmarks/results/gpu_check.json`` (and a copy under ``$OUT`` when that is set) with the device, the
seconds per training step of baseline B in float32 and under autocast, the campaign's plan, wall time and best
trial, and prediction throughput. It exits non-zero (with one line saying what failed) when a check fails.
Uses the synthetic quickstart volume when ``../shared/data`` is absent.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "gpu_check.json"
B_TREE = ROOT / "search_spaces" / "portfolio" / "unet2d_nnunet.yaml"


QUICK = False  # --quick: the small synthetic volume, whatever data is present


def data_file() -> Path:
    real = ROOT / "examples" / "vnc_mito.yaml"
    raw = yaml.safe_load(real.read_text())
    if (ROOT / raw["raw"]).exists() and not QUICK:
        return real
    return ROOT / "examples" / "quickstart_data.yaml"


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def step_times(amp: bool, steps: int, work: Path, device: str) -> dict:
    """Seconds per training step of baseline B on ``device`` (after 5 warm-up steps)."""
    import torch

    from arborseg.data import load_data_config
    from arborseg.train.settings import TrainSettings
    from arborseg.train.trainer import Trainer
    from arborseg.tree import ModuleTree

    data = load_data_config(data_file())
    tree = ModuleTree.load(B_TREE)
    settings = TrainSettings(steps=steps + 5, eval_every=10_000, checkpoint_every=10_000,
                             precision="auto" if amp else "fp32", device=device, overlays=False)
    trainer = Trainer(tree, data, settings, work / f"steps_amp{int(amp)}", progress=False)
    sampler = trainer._sampler()
    batch = int(trainer.values["batch_size"])
    times = []
    for i in range(steps + 5):
        x, y, w = sampler.sample_batch(batch)
        sync(device)
        t0 = time.perf_counter()
        trainer._train_step(x, y, w)
        sync(device)
        if i >= 5:
            times.append(time.perf_counter() - t0)
    times.sort()
    return {"amp": amp, "precision": trainer.precision, "batch": batch, "steps": steps, "median_s": round(times[len(times) // 2], 4),
            "max_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 3) if device.startswith("cuda")
            else None}


def executor(device: str, per_gpu: int) -> dict:
    """Local warm workers, ``per_gpu`` of them on the GPU (on CPU, a dry run: as many workers, no GPU)."""
    base = {"kind": "local", "timeout_min": 20, "warm_workers": True, "worker_idle_s": 30}
    if device.startswith("cuda"):
        return {**base, "jobs_per_gpu": per_gpu, "visible_gpus": [0]}
    return {**base, "workers": per_gpu}


class GpuSampler:
    """Samples the GPU's utilisation and memory with nvidia-smi every 0.5 s while it is open."""

    def __enter__(self) -> GpuSampler:
        import subprocess

        self.proc = None
        if shutil.which("nvidia-smi"):
            self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                                          "--format=csv,noheader,nounits", "-lms", "500"],
                                         stdout=subprocess.PIPE, text=True)
        return self

    def __exit__(self, *exc) -> None:
        self.samples: list[tuple[float, float]] = []
        if self.proc is None:
            return
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=10)
        for line in out.splitlines():
            try:
                util, mem = (float(v) for v in line.split(","))
            except ValueError:
                continue
            self.samples.append((util, mem))

    def summary(self) -> dict:
        if not self.samples:
            return {"gpu_util_mean": None, "gpu_mem_max_mb": None}
        return {"gpu_util_mean": round(sum(u for u, _ in self.samples) / len(self.samples), 1),
                "gpu_mem_max_mb": max(m for _, m in self.samples)}


def packing(work: Path, device: str, ks: list[int], trials: int, steps: int) -> list[dict]:
    """Trials per hour with k trials sharing the GPU: the same one-rung campaign of quickstart trees per k."""
    from arborseg.campaign.config import load_campaign
    from arborseg.campaign.driver import Campaign

    out = []
    for k in ks:
        cfg = {"name": f"pack{k}", "data": str(ROOT / "examples" / "quickstart_data.yaml"),
               "space": str(ROOT / "search_spaces" / "quickstart.yaml"),
               "budget": {"random_trees": trials, "refine_top": 0, "steps": steps, "eval_every": steps},
               "objective": {"metric": "fg_iou"}, "executor": executor(device, k), "storage": "sqlite",
               "train": {"seed": 0, "overlays": False, "device": device}}
        path = work / f"pack{k}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        run = Campaign(load_campaign(path), work / "pack_runs", progress=False)
        with GpuSampler() as gpu:
            started = time.perf_counter()
            run.run()
            wall = time.perf_counter() - started
        row = {"k": k, "trials": trials, "steps": steps, "wall_s": round(wall, 1),
               "trials_per_hour": round(3600 * trials / wall), **gpu.summary()}
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


def campaign(work: Path, device: str, quick: bool) -> dict:
    """A short campaign in rungs on ``device``: 4 local workers share one GPU (several trials per GPU)."""
    from arborseg.campaign.config import load_campaign
    from arborseg.campaign.driver import Campaign
    from arborseg.table import rank_correlations, run_table

    cfg = {"name": "gpu_check", "data": str(data_file()), "space": str(ROOT / "search_spaces" / ("quickstart.yaml" if quick else "unet2d.yaml")),
           "budget": {"total_steps": 60, "first_rung": 2, "eta": 2, "rungs": 2, "random_trees": 2,
                      "refine_top": 0} if quick else {"total_steps": 6000, "first_rung": 100, "eta": 3, "rungs": 3,
                                                      "refine_top": 1, "refine_trials": 3},
           "objective": {"metric": "fg_iou"}, "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": 2},
           "executor": executor(device, 2 if quick else 4), "storage": "sqlite",
           "train": {"seed": 0, "overlays": False, "device": device, "amp": True}}
    path = work / "gpu_check.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = Campaign(load_campaign(path), work / "runs", progress=False)
    started = time.perf_counter()
    run_dir = run.run()
    wall = time.perf_counter() - started
    table = run_table([run_dir])
    done = table[table["state"] == "COMPLETE"]
    if done.empty:
        raise RuntimeError("the campaign ended without a top-rung trial")
    best = done.sort_values("value", ascending=False).iloc[0]
    return {"plan": run.plan.describe(), "wall_s": round(wall, 1), "trials": int(len(table)),
            "states": table["state"].value_counts().to_dict(), "best_tree": str(best["tree_name"]),
            "best_fg_iou": round(float(best["value"]), 4), "best_steps": int(best["steps"]),
            "best_model": str(Path(str(best["artifact_dir"])) / "model.pt"),
            "rank_correlations": rank_correlations(table).to_dict(orient="records")}


def prediction(model_file: str, device: str) -> dict:
    """Tiled prediction of the eval_far region with the campaign's best model, float32 vs autocast."""
    import torch

    from arborseg.data import load_data_config
    from arborseg.inference import predict_volume
    from arborseg.runs import load_model

    data = load_data_config(data_file())
    raw, _ = data.load_region("eval_far")
    model, tree, _ = load_model(model_file, device=device)
    out: dict = {}
    for amp in (False, True):
        sync(device)
        t0 = time.perf_counter()
        probs = predict_volume(model, raw, tuple(tree.window), len(data.classes), device=torch.device(device),
                               amp=amp, batch_size=16)
        sync(device)
        seconds = time.perf_counter() - t0
        out[f"amp{int(amp)}"] = {"seconds": round(seconds, 3), "mvoxels_per_s": round(raw.size / seconds / 1e6, 2)}
        out[f"labels_amp{int(amp)}"] = probs.argmax(0)
    agree = float((out.pop("labels_amp0") == out.pop("labels_amp1")).mean())
    return {**out, "labels_equal_fraction": round(agree, 5), "voxels": int(raw.size)}


def main() -> int:
    import argparse

    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu for a dry run of the same code")
    parser.add_argument("--quick", action="store_true", help="a tiny campaign and few steps (dry runs)")
    parser.add_argument("--jobs-per-gpu", type=int, nargs="*", default=[1, 2, 4, 8],
                        help="k values of the packing check (none: skip it)")
    parser.add_argument("--packing-trials", type=int, default=16, help="trials of each packing campaign")
    parser.add_argument("--packing-steps", type=int, default=60, help="train steps of each packing trial")
    args = parser.parse_args()
    global QUICK
    QUICK = args.quick
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run it on a GPU machine (or --device cpu --quick)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="arborseg_gpu_check_"))
    result: dict = {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "torch": torch.__version__,
                    "bf16": torch.cuda.is_bf16_supported() if cuda else None, "data": str(data_file())}
    steps = 3 if args.quick else 30
    try:
        result["train_step_fp32"] = step_times(False, steps, work, args.device)
        result["train_step_autocast"] = step_times(True, steps, work, args.device)
        result["speedup_autocast"] = round(result["train_step_fp32"]["median_s"]
                                           / result["train_step_autocast"]["median_s"], 2)
        print(json.dumps({k: result[k] for k in ("device", "train_step_fp32", "train_step_autocast")}), flush=True)
        if args.jobs_per_gpu:
            result["packing"] = packing(work, args.device, args.jobs_per_gpu, 4 if args.quick else args.packing_trials,
                                        2 if args.quick else args.packing_steps)
        result["campaign"] = campaign(work, args.device, args.quick)
        print(json.dumps(result["campaign"]["plan"]), flush=True)
        result["prediction"] = prediction(result["campaign"]["best_model"], args.device)
    except Exception as exc:  # one line, and what was measured so far is kept
        result["error"] = f"{type(exc).__name__}: {exc}"
    target = RESULTS if cuda else RESULTS.with_name("gpu_check_dryrun_cpu.json")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(result, indent=1, default=str))
    if os.environ.get("OUT"):
        shutil.copy(target, Path(os.environ["OUT"]) / target.name)
    print(json.dumps(result, indent=1, default=str))
    shutil.rmtree(work, ignore_errors=True)
    if "error" in result:
        print(f"gpu_check: {result['error']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
