"""Active learning: which slices or tiles to label next, and pseudo-labels for sparse slices.

A simulation with the ground truth as the oracle (arborseg.bootstrap.simulation): start from a few labeled
units, train on what is labeled (error-weighted by the previous corrections, as in the seed work), score the
held-out regions (eval_near + eval_far of the data YAML), let a strategy choose the next units, 'correct' them
with the ground truth, repeat. Learning curves of foreground IoU and FN-401 against labeled units, for

* tiles: random, adjacent (the seed's growth), entropy, least confidence, BALD (MC dropout), BALD (ensemble
  of 3 seeds), k-means and core-set on bottleneck embeddings; one 2D U-Net from search_spaces/quickstart.yaml;
* slices: a thin-3D net on labeled slices only vs. on labeled slices + pseudo-labels of the others from a 2D
  net (lambda = 0.5), slices chosen at random.

Data: VNC (examples/vnc_5class.yaml, every 2nd pixel, central 256 x 256) and ISBI 2012
(examples/isbi2012_membrane.yaml, central 256 x 256); 64 x 64 tiles. Every curve is repeated for each seed
(the initial units, the training and the random choices depend on it). One torch thread per worker process
(much faster than sharing threads on a busy machine); ``--jobs`` processes.

    python benchmarks/bench_active_learning.py               # CPU size: about 20 minutes on 2 cores
    python benchmarks/bench_active_learning.py --full        # 3 seeds, more steps and rounds, bigger crops
    python benchmarks/bench_active_learning.py --datasets isbi --strategies random entropy --seeds 1 --no-readme

Writes benchmarks/results/active_learning.{csv,md,png}, active_learning_pseudo.png, active_learning_rows.json and the section "## Active learning" of
benchmarks/README.md (other sections are left alone).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
STRATEGIES = ("random", "adjacent", "entropy", "least_confidence", "bald_mc", "bald_ensemble", "kmeans", "coreset")
DATASETS = {  # name: (data YAML, stride, crop)
    "vnc": ("examples/vnc_5class.yaml", 2, 256),
    "isbi": ("examples/isbi2012_membrane.yaml", 1, 256),
}
PSEUDO_LAMBDA = 0.5


def budgets(full: bool) -> dict:
    if full:
        return {"seeds": 3, "crop_scale": 2, "tiles": dict(tile=64, initial=2, per_round=4, rounds=6, steps=300),
                "slices": dict(unit="slice", initial=1, per_round=1, rounds=5, steps=300)}
    return {"seeds": 2, "crop_scale": 1, "tiles": dict(tile=64, initial=2, per_round=3, rounds=4, steps=120),
            "slices": dict(unit="slice", initial=1, per_round=1, rounds=3, steps=120)}


def _trees():
    from arborseg.space import load_space

    space = load_space(ROOT / "search_spaces" / "quickstart.yaml")
    return space.sample(1), space.sample(3)  # u2d-d3w7z1 (2D U-Net), t3d-d2w7z3 (thin 3D U-Net)


def run_task(task: dict) -> list[dict]:
    """One learning curve in a worker process (one torch thread)."""
    import torch

    torch.set_num_threads(1)
    os.chdir(ROOT)
    from arborseg.bootstrap.simulation import SimulationSettings, load_sim_volumes, simulate

    path, stride, crop = DATASETS[task["dataset"]]
    pool, evals = load_sim_volumes(path, xy=crop * task["crop_scale"], stride=stride)
    tree2d, tree3d = _trees()
    if task.get("init"):  # the 2D U-Net's encoder starts pre-trained (its structure taken from the checkpoint)
        from arborseg.space.encoder_init import start_from

        tree2d = start_from(tree2d, task["init"])
    settings = SimulationSettings(**task["settings"])
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if task["kind"] == "tiles":
            rows = simulate(pool, evals, tree2d, task["strategy"], settings, task["seed"], tmp)
        else:
            rows = simulate(pool, evals, tree3d, task["strategy"], settings, task["seed"], tmp, tree2d=tree2d)
    for r in rows:
        r.update(dataset=task["dataset"], method=task["method"], kind=task["kind"],
                 curve_seconds=round(time.perf_counter() - started, 1))
    return rows


def make_tasks(args: argparse.Namespace) -> list[dict]:
    b = budgets(args.full)
    seeds = range(args.seeds if args.seeds is not None else b["seeds"])
    tasks = []
    for ds in args.datasets:
        for seed in seeds:
            for strategy in args.strategies:
                tiles = {**b["tiles"], "unit": "tile", **({"steps": args.steps} if args.steps else {})}
                tasks.append({"dataset": ds, "seed": seed, "kind": "tiles", "strategy": strategy, "method": strategy,
                              "crop_scale": b["crop_scale"], "settings": tiles, "init": args.init})
            if not args.no_pseudo:
                for lam in (None, PSEUDO_LAMBDA):
                    method = "thin3d, labeled slices only" if lam is None else f"thin3d + pseudo-labels (λ={lam})"
                    tasks.append({"dataset": ds, "seed": seed, "kind": "slices", "strategy": "random",
                                  "method": method, "crop_scale": b["crop_scale"],
                                  "settings": {**b["slices"], "pseudo_lambda": lam}})
    # the slowest first, so that the pool ends together
    return sorted(tasks, key=lambda t: (t["strategy"] != "bald_ensemble", t["kind"] != "slices"))


# ------------------------------------------------------------------------------------------------ reporting
def curve_table(rows: list[dict], kind: str, metric: str) -> tuple[list[str], list[list[str]]]:
    """Rows: dataset x method; columns: labeled units; cells: mean over seeds (and the spread)."""
    sub = [r for r in rows if r["kind"] == kind]
    points = sorted({r["labeled_units"] for r in sub})
    head = ["data", "method"] + [str(p) for p in points]
    body = []
    for ds in sorted({r["dataset"] for r in sub}):
        for method in sorted({r["method"] for r in sub if r["dataset"] == ds},
                             key=lambda m: (m not in ("random", "adjacent"), m)):
            cells = [ds, method]
            for p in points:
                v = [r[metric] for r in sub if r["dataset"] == ds and r["method"] == method and r["labeled_units"] == p]
                cells.append(f"{np.mean(v):.3f} ± {np.std(v):.3f}" if v else "")
            body.append(cells)
    return head, body


def gains(rows: list[dict]) -> list[list[str]]:
    """Per dataset and strategy: fg IoU at the last budget and the mean over the curve (area), relative to
    random; FN-401 likewise."""
    out = []
    sub = [r for r in rows if r["kind"] == "tiles"]
    for ds in sorted({r["dataset"] for r in sub}):
        last = max(r["labeled_units"] for r in sub if r["dataset"] == ds)

        def stat(method: str, metric: str, only_last: bool, ds: str = ds, last: int = last) -> float:
            v = [r[metric] for r in sub if r["dataset"] == ds and r["method"] == method and r["round"] > 0
                 and (r["labeled_units"] == last or not only_last)]
            return float(np.mean(v)) if v else float("nan")

        base = {m: (stat("random", m, True), stat("random", m, False)) for m in ("fg_iou", "fn_401")}
        for method in sorted({r["method"] for r in sub if r["dataset"] == ds}):
            iou_last, iou_auc = stat(method, "fg_iou", True), stat(method, "fg_iou", False)
            fn_last = stat(method, "fn_401", True)
            out.append([ds, method, f"{iou_last:.3f}", f"{100 * (iou_last / base['fg_iou'][0] - 1):+.1f}%",
                        f"{iou_auc:.3f}", f"{100 * (iou_auc / base['fg_iou'][1] - 1):+.1f}%", f"{fn_last:.3f}",
                        f"{fn_last - base['fn_401'][0]:+.3f}"])
    return out


def findings(rows: list[dict]) -> str:
    """Plain sentences computed from the rows: how each strategy compares with random, pseudo vs none."""
    lines = []
    g = gains(rows)

    def pct(text: str) -> float:
        return float(text.rstrip("%"))

    for ds in sorted({r[0] for r in g}):
        sub = [r for r in g if r[0] == ds and r[1] != "random"]
        if not sub:
            continue
        best = max(sub, key=lambda r: float(r[4]))
        worst = min(sub, key=lambda r: float(r[4]))
        text = (f"- {ds}: over the curve the best strategy is {best[1]} (mean fg IoU {best[4]}, {best[5]} vs random), "
                f"the worst {worst[1]} ({worst[4]}, {worst[5]})")
        unc = [r for r in sub if r[1] in ("entropy", "least_confidence", "bald_mc", "bald_ensemble")]
        if unc:
            mean_gain = [pct(r[5]) for r in unc]
            last_gain = [pct(r[3]) for r in unc]
            text += (f"; the uncertainty strategies lie between {min(mean_gain):+.1f}% and {max(mean_gain):+.1f}% "
                     f"(mean over the curve) and between {min(last_gain):+.1f}% and {max(last_gain):+.1f}% (last "
                     "budget) of random's fg IoU")
        lines.append(text + ".")
    sl = [r for r in rows if r["kind"] == "slices" and r["round"] > 0]
    for ds in sorted({r["dataset"] for r in sl}):
        means: dict[str, list[float]] = {}
        fns: dict[str, list[float]] = {}
        for r in sl:
            if r["dataset"] == ds:
                means.setdefault(r["method"], []).append(r["fg_iou"])
                fns.setdefault(r["method"], []).append(r["fn_401"])
        text = ", ".join(f"{m}: fg IoU {np.mean(v):.3f}, FN-401 {np.mean(fns[m]):.3f}" for m, v in sorted(means.items()))
        lines.append(f"- {ds}, pseudo-labels (mean over rounds 1..end): {text}.")
    return "\n".join(lines)


def markdown(head: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(" --- " for _ in head) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])


def machine() -> str:
    import torch

    return (f"{platform.node() or 'host'}: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores "
            f"(shared), Python {platform.python_version()}, torch {torch.__version__}")


def write_readme(section: str) -> None:
    readme = ROOT / "benchmarks" / "README.md"
    text = readme.read_text() if readme.exists() else "# Benchmarks\n"
    start = text.find("\n## Active learning")
    if start >= 0:
        end = text.find("\n## ", start + 5)
        text = text[:start] + text[end:] if end >= 0 else text[:start]
    readme.write_text(text.rstrip("\n") + "\n\n" + section.strip("\n") + "\n")


def report(rows: list[dict], args: argparse.Namespace, seconds: float) -> str:
    from arborseg.bootstrap.report import plot_learning_curves

    RESULTS.mkdir(parents=True, exist_ok=True)
    tiles = [r for r in rows if r["kind"] == "tiles"]
    slices = [r for r in rows if r["kind"] == "slices"]
    plots = []
    if tiles:
        plots.append(plot_learning_curves(tiles, RESULTS / "active_learning.png"))
    if slices:
        plots.append(plot_learning_curves(slices, RESULTS / "active_learning_pseudo.png"))
    b = budgets(args.full)
    parts = []
    if tiles:
        t = {**b["tiles"], **({"steps": args.steps} if args.steps else {})}
        start = f"from the encoder in {args.init}" if args.init else "from scratch"
        parts.append(f"**Tiles** ({t['tile']}x{t['tile']}; {t['initial']} at the start, {t['per_round']} per round, "
                     f"{t['rounds']} rounds; {t['steps']} training steps per round, {start}). Foreground IoU "
                     "(mean ± std over seeds) against labeled tiles:\n\n"
                     + markdown(*curve_table(rows, "tiles", "fg_iou"))
                     + "\n\nFN-401 (% of eval voxels; lower is better):\n\n"
                     + markdown(*curve_table(rows, "tiles", "fn_401"))
                     + "\n\nAgainst random at the last budget and over the curve (mean of rounds 1..end):\n\n"
                     + markdown(["data", "strategy", "fg IoU last", "vs random", "fg IoU mean", "vs random",
                                 "FN-401 last", "vs random"], gains(rows)))
    if slices:
        s = b["slices"]
        parts.append(f"**Pseudo-labels** (slices chosen at random, {s['initial']} at the start, +{s['per_round']} "
                     f"per round; thin-3D U-Net; pseudo-labels from a 2D U-Net trained on the labeled slices, "
                     f"weight λ = {PSEUDO_LAMBDA}). Foreground IoU:\n\n"
                     + markdown(*curve_table(rows, "slices", "fg_iou")) + "\n\nFN-401:\n\n"
                     + markdown(*curve_table(rows, "slices", "fn_401")))
    if tiles or slices:
        parts.append("Computed summary:\n\n" + findings(rows))
    table = "\n\n".join(parts)
    (RESULTS / "active_learning.md").write_text(table + "\n")
    import csv

    keys = sorted({k for r in rows for k in r})
    with open(RESULTS / "active_learning.csv", "w", newline="") as f:
        w = csv.DictWriter(f, keys)
        w.writeheader()
        w.writerows(rows)
    print(table)
    print("plots: " + ", ".join(str(p) for p in plots))
    return table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--full", action="store_true", help="3 seeds, 300 steps, more rounds, 2x bigger crops")
    p.add_argument("--seeds", type=int, help="seeds per curve (default 2, --full 3)")
    p.add_argument("--datasets", nargs="+", choices=tuple(DATASETS), default=list(DATASETS))
    p.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    p.add_argument("--no-pseudo", action="store_true", help="skip the pseudo-label comparison")
    p.add_argument("--init", metavar="ENCODER",
                   help="start the tiles' 2D U-Net from a pre-trained encoder (an `arborseg pretrain` run folder "
                        "or checkpoint; the encoder's structure comes from it)")
    p.add_argument("--steps", type=int, help="training steps per round of the tiles curves (default: the budget's)")
    p.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--no-readme", action="store_true", help="do not touch benchmarks/README.md")
    p.add_argument("--report-only", action="store_true",
                   help="rebuild tables, plots and README from benchmarks/results/active_learning_rows.json")
    args = p.parse_args(argv)
    from tqdm import tqdm

    raw_rows = RESULTS / "active_learning_rows.json"
    if args.report_only:
        saved = json.loads(raw_rows.read_text())
        rows, seconds = saved["rows"], saved["seconds"]
    else:
        tasks = make_tasks(args)
        started = time.perf_counter()
        rows = []
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            futures = [pool.submit(run_task, t) for t in tasks]
            for fut in tqdm(as_completed(futures), total=len(futures), desc="curves", unit="curve"):
                rows.extend(fut.result())
                RESULTS.mkdir(parents=True, exist_ok=True)
                raw_rows.write_text(json.dumps({"rows": rows, "seconds": time.perf_counter() - started}))
        seconds = time.perf_counter() - started
    table = report(rows, args, seconds)
    if not args.no_readme:
        write_readme(readme_section(table, args, seconds))
    return 0


def readme_section(table: str, args: argparse.Namespace, seconds: float) -> str:
    cmd = "python benchmarks/bench_active_learning.py" + (" --full" if args.full else "") \
        + (f" --init {args.init}" if args.init else "") + (f" --steps {args.steps}" if args.steps else "")
    start = (f"from the pre-trained encoder {args.init} (its encoder structure taken from it)" if args.init
             else "from scratch")
    return f"""## Active learning

`{cmd}` ({seconds / 60:.0f} min on {machine()}, {args.jobs} worker processes of one torch thread each).
Simulated bootstrapping with the ground truth as the oracle (`arborseg.bootstrap.simulation`): train on
what is labeled (error-weighted by the previous corrections, weight 5 on all errors), score eval_near +
eval_far, let the strategy choose the next units, label them from the ground truth, repeat. VNC: 5 classes,
every 2nd pixel, central 256 x 256; ISBI 2012: membranes, central 256 x 256; the pool is the train region
(VNC 8 slices = 128 tiles, ISBI 12 slices = 192 tiles). A 2D U-Net (quickstart seed 1, 11 k parameters,
dropout 0.1 in every strategy so that the networks are the same) is trained {start} each round.
The pseudo-label arm trains a thin-3D U-Net (quickstart seed 3, 6 k parameters).
Plots: `benchmarks/results/active_learning.png` (tiles) and `active_learning_pseudo.png` (pseudo-labels);
every row in `benchmarks/results/active_learning.csv`.

![learning curves](results/active_learning.png)

{table}

![pseudo-labels](results/active_learning_pseudo.png)
"""


if __name__ == "__main__":
    sys.exit(main())
