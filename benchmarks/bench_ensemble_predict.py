"""An ensemble of K members predicted in one pass vs K single-member predictions of the same volume.

Both arms go through the bundle path a user takes (``arborseg export`` -> ``arborseg predict``:
TorchScript members, block-wise prediction into Zarr): one bundle with K members, and K bundles of one
member each. To end with the same result (fused labels and probabilities) the K single predictions
write their probabilities and a fusion pass reads them back slab by slab and fuses them ("K singles +
fuse"); "K singles" alone (each writing its own labels and probabilities) is the pure prediction cost.
Each run is a fresh subprocess (time and peak resident memory of the call, bundle loading included);
the arms are interleaved run by run and the medians reported.

Members: trees sampled from ``search_spaces/quickstart.yaml`` with random weights (training does not
change the cost), windows as sampled (2D z=1 and thin 3D z=3 mixed), weighted fusion.

    python benchmarks/bench_ensemble_predict.py [--shape 16 384 384] [--trees 1 3 2] [--repeats 3] [--no-readme]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SECTION = "Ensemble vs K single predictions"
WEIGHTS = (1.0, 2.0, 1.5, 1.0, 0.5, 1.0)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> bool:
    """Reset the kernel's peak RSS (VmHWM) so the imports' transient peak is not counted (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def setup(tmp: Path, shape, tree_seeds) -> dict:
    """raw.tif, an ensemble folder of random-weight members, its bundle and one bundle per member."""
    import numpy as np
    import tifffile
    import torch

    from arborseg.bundle import export_bundle
    from arborseg.data import make_em_volume
    from arborseg.nn.builder import build_network
    from arborseg.runs import ENSEMBLE_FILE, MODEL_FILE, TREE_FILE, save_model, save_tree
    from arborseg.space import load_space

    raw, _ = make_em_volume(tuple(shape), seed=0)
    tifffile.imwrite(tmp / "raw.tif", np.asarray(raw))
    normalizer = {"mode": "percentile",
                  "stats": {"lo": float(np.percentile(raw, 1)), "hi": float(np.percentile(raw, 99))}}
    space = load_space(ROOT / "search_spaces" / "quickstart.yaml")
    ens = tmp / "ensemble"
    members = []
    for i, seed in enumerate(tree_seeds):
        tree = space.sample(seed)
        torch.manual_seed(i)
        net = build_network(tree, 3)
        folder = ens / f"m{i}"
        folder.mkdir(parents=True)
        save_tree(tree, folder)
        save_model(folder, net.state_dict(), tree, ["a", "b", "c"], tree.window, normalizer)
        members.append({"key": f"m{i}-{tree.name}", "tree_id": tree.id, "tree_name": tree.name,
                        "family": tree.family, "seed": i, "tree": f"m{i}/{TREE_FILE}", "model": f"m{i}/{MODEL_FILE}",
                        "window": list(tree.window), "weight": WEIGHTS[i % len(WEIGHTS)]})
    spec = {"format": "arborseg-ensemble/1", "name": "bench", "classes": ["a", "b", "c"], "voxel_size": None,
            "normalizer": normalizer,
            "fusion": "weighted", "members": members, "scores": {}}
    bundles = {}
    for name, chosen in [("ensemble", members)] + [(f"single{i}", [m]) for i, m in enumerate(members)]:
        (ens / ENSEMBLE_FILE).write_text(json.dumps({**spec, "members": chosen}))
        export_bundle(ens, tmp / "bundles" / name, onnx=False, bioimageio=False, make_zip=False, progress=False)
        bundles[name] = str(tmp / "bundles" / name)
    return {"bundles": bundles, "members": members}


def worker(mode: str, tmp: Path, k: int, block) -> dict:
    """One timed run in this (fresh) process."""
    import numpy as np
    import tifffile  # noqa: F401  (libraries imported before the baseline: only the call is measured)
    import torch  # noqa: F401
    import zarr  # noqa: F401

    import arborseg.bundle.load
    import arborseg.inference.blockwise  # noqa: F401
    from arborseg.bundle import load_bundle, predict_bundle

    _reset_peak()
    base = _rss()
    t0 = time.perf_counter()
    if mode == "fuse":
        fuse_pass([tmp / f"single{i}.zarr" for i in range(k)], tmp / "fused.zarr", tmp)
    else:
        bundle = load_bundle(tmp / "bundles" / mode)
        predict_bundle(bundle, str(tmp / "raw.tif"), tmp / f"{mode}.zarr", probs=True, device="cpu",
                       block=block, overwrite=True, progress=False)
    seconds = time.perf_counter() - t0
    peak = _peak()
    del np
    return {"seconds": seconds, "peak_mb": (peak - base) / 2**20}


def fuse_pass(stores, out: Path, tmp: Path) -> None:
    """Fuse K single-member probability stores slab by slab (what K single predictions need afterwards)."""
    import numpy as np
    import zarr

    from arborseg.bundle import load_bundle
    from arborseg.inference import fuse
    from arborseg.inference.store import create_array

    weights = load_bundle(tmp / "bundles" / "ensemble").weights
    groups = [zarr.open_group(str(s), mode="r") for s in stores]
    probs = [g["probs"] for g in groups]
    c, *shape = probs[0].shape
    step = int(probs[0].chunks[1])
    shutil.rmtree(out, ignore_errors=True)
    root = zarr.open_group(str(out), mode="w")
    chunks = tuple(probs[0].chunks[1:])
    labels = create_array(root, "labels", shape, np.uint8, chunks)
    fused = create_array(root, "probs", (c, *shape), np.float16, (1, *chunks))
    for z0 in range(0, shape[0], step):
        sl = slice(z0, min(shape[0], z0 + step))
        member = np.stack([np.asarray(p[:, sl], dtype=np.float32) for p in probs])
        p, lab, _ = fuse(member, "weighted", None, weights)
        labels[sl] = lab
        fused[:, sl] = p.astype(np.float16)


def compare(tmp: Path) -> tuple[float, float]:
    import numpy as np
    import zarr

    a = zarr.open_group(str(tmp / "ensemble.zarr"), mode="r")
    b = zarr.open_group(str(tmp / "fused.zarr"), mode="r")
    dp = float(np.abs(a["probs"][...].astype(np.float32) - b["probs"][...].astype(np.float32)).max())
    return dp, float((a["labels"][...] == b["labels"][...]).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", type=int, nargs=3, default=[16, 384, 384])
    ap.add_argument("--trees", type=int, nargs="+", default=[1, 3, 2])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--block", type=int, nargs=3, default=[16, 256, 256])
    ap.add_argument("--no-readme", action="store_true")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    args = ap.parse_args()
    k = len(args.trees)
    if args.worker:
        print(json.dumps(worker(args.worker, Path(args.tmp), k, tuple(args.block))))
        return

    sys.path.insert(0, str(HERE))
    from bench_tiled_prediction import machine, update_readme

    tmp = Path(tempfile.mkdtemp(prefix="bench-ens-"))
    try:
        info = machine()
        meta = setup(tmp, args.shape, args.trees)
        modes = ["ensemble"] + [f"single{i}" for i in range(k)] + ["fuse"]
        runs: dict[str, list[dict]] = {m: [] for m in modes}
        for rep in range(args.repeats):
            for mode in modes:
                cmd = [sys.executable, __file__, "--worker", mode, "--tmp", str(tmp), "--block", *map(str, args.block),
                       "--trees", *map(str, args.trees)]
                res = subprocess.run(cmd, capture_output=True, text=True, check=True)
                runs[mode].append(json.loads(res.stdout.strip().splitlines()[-1]))
                print(f"rep {rep} {mode:9s} {runs[mode][-1]['seconds']:.2f} s", file=sys.stderr)
        dp, agree = compare(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def med(mode, key):
        vals = sorted(r[key] for r in runs[mode])
        return vals[len(vals) // 2]

    # per repeat sums, then medians (the arms of one repeat ran back to back)
    singles = [sum(runs[f"single{i}"][r]["seconds"] for i in range(k)) for r in range(args.repeats)]
    with_fuse = [s + runs["fuse"][r]["seconds"] for r, s in enumerate(singles)]
    ens = med("ensemble", "seconds")
    s_med, f_med = sorted(singles)[len(singles) // 2], sorted(with_fuse)[len(with_fuse) // 2]
    ens_runs = [r["seconds"] for r in runs["ensemble"]]
    per_rep = sorted(e / t for e, t in zip(ens_runs, singles))
    fastest = min(ens_runs) / min(singles)
    mvox = args.shape[0] * args.shape[1] * args.shape[2] / 1e6
    names = ", ".join(f"`{m['tree_name']}` {tuple(m['window'])} w={m['weight']:g}" for m in meta["members"])
    def listed(mode):
        return ", ".join(f"{r['seconds']:.1f}" for r in runs[mode])

    rows = [
        ("ensemble, one pass", ens, ens / s_med, ens / f_med, med("ensemble", "peak_mb"), listed("ensemble")),
        (f"{k} singles", s_med, 1.0, s_med / f_med, max(med(f"single{i}", "peak_mb") for i in range(k)),
         ", ".join(f"{v:.1f}" for v in singles)),
        (f"{k} singles + fuse", f_med, f_med / s_med, 1.0,
         max(max(med(f"single{i}", "peak_mb") for i in range(k)), med("fuse", "peak_mb")),
         ", ".join(f"{v:.1f}" for v in with_fuse)),
    ]
    table = ["| arm | time (s, median) | vs K singles | vs K singles + fuse | peak RSS increase (MB, median; max over runs of an arm) | runs (s) |",
             "| --- | --- | --- | --- | --- | --- |"]
    table += [f"| {a} | {t:.1f} | {r1:.2f}x | {r2:.2f}x | {m:.0f} | {runs_} |" for a, t, r1, r2, m, runs_ in rows]
    for mode, label in [(f"single{i}", f"single {i} alone") for i in range(k)] + [("fuse", "fuse pass alone")]:
        table.append(f"| &nbsp; {label} | {med(mode, 'seconds'):.1f} | | | {med(mode, 'peak_mb'):.0f} | "
                     f"{listed(mode)} |")
    load_note = ("a machine shared with other jobs: absolute times are noisy" if info["load"] > (info["cpu_count"] or 1)
                 else "the machine otherwise about idle")
    body = f"""Command: `python benchmarks/bench_ensemble_predict.py --shape {' '.join(map(str, args.shape))} --trees {' '.join(map(str, args.trees))} --repeats {args.repeats}`

Machine: {info['cpu']}, {info['cpu_count']} CPUs, torch {info['torch']} ({info['torch_threads']} threads), numpy
{info['numpy']}, Python {info['python']}; load average {info['load']:.1f} when it started ({load_note}; the arms
were interleaved run by run).

Setup: volume {tuple(args.shape)} ({mvox:.1f} Mvoxel, `make_em_volume`, uint8 TIFF), {k} members ({names}),
random weights, 3 classes, weighted fusion, block {tuple(args.block)}, overlap 0.25, Gaussian blending, batch 4, CPU.
Each arm goes through `load_bundle` + `predict_bundle` (TorchScript members) into Zarr with labels and
float16 probabilities; each run is a fresh subprocess; time and peak RSS increase (peak `VmHWM`, reset after
the imports, minus the resident memory then) of the call, bundle loading included. "K singles + fuse" ends with the same
result as the ensemble: ensemble vs fused singles max |Δp| = {dp:.1e} (float16 outputs), labels equal on
{agree:.4%} of the voxels.

{chr(10).join(table)}

Runs are listed in repeat order (the K singles and the fuse pass of a repeat ran right after its ensemble
run). Ensemble / K singles per repeat: {', '.join(f'{v:.2f}' for v in per_rep)} (sorted); fastest ensemble run /
fastest K-singles repeat: {fastest:.2f}x (the least disturbed runs of each arm).

How to read it: here the ensemble pass took {ens:.1f} s against {s_med:.1f} s for the {k} singles ({f_med:.1f} s with
the fusion pass). It saves only what is done once per call instead of once per member: reading and
normalising the input, the z-separability check of each window group, the bookkeeping of blocks and tiles,
writing labels and probabilities once instead of K times, and the fusion pass (reading K probability maps
back). The networks' forward passes are the same K x tiles in both arms, so the ratio moves towards 1 where
they dominate (bigger networks or volumes on CPU) and away from it where I/O does (slow disks, GPU runs).
"""
    print(body)
    if not args.no_readme:
        update_readme(SECTION, body)
        print(f"updated {HERE / 'README.md'} (section '{SECTION}')", file=sys.stderr)


if __name__ == "__main__":
    main()
