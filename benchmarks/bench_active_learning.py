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

    python benchmarks/bench_active_learning.py --init runs/bench_pretraining/pretrain_genesis --steps 400 \
        --seeds 3 --strategies random entropy bald_mc kmeans coreset --no-pseudo      # the pre-trained start

Writes benchmarks/results/active_learning.{csv,md,png}, active_learning_pseudo.png, active_learning_rows.json and the
section "## Active learning" of benchmarks/README.md (other sections are left alone); with ``--init`` the stem is
``active_learning_pretrained`` and the section "## Active learning (pre-trained start)", so both stay side by side.
Every finished curve is also kept in ``benchmarks/results/<stem>_runs/`` (committed): a rerun, in this session or a
clean clone, reuses the curves whose settings match and trains only the rest; ``--report-only`` writes the tables
from the kept curves alone.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _readme import update_readme

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
STRATEGIES = ("random", "adjacent", "entropy", "least_confidence", "bald_mc", "bald_ensemble", "kmeans", "coreset")
DATASETS = {  # name: (data YAML, stride, crop)
    "vnc": ("examples/vnc_5class.yaml", 2, 256),
    "isbi": ("examples/isbi2012_membrane.yaml", 1, 256),
}
PSEUDO_LAMBDA = 0.5
UNCERTAINTY = ("entropy", "least_confidence", "bald_mc", "bald_ensemble")


def stem(args: argparse.Namespace) -> str:
    """The results' file stem: from scratch and from a pre-trained encoder are kept apart."""
    return "active_learning_pretrained" if args.init else "active_learning"


def section(args: argparse.Namespace) -> str:
    return "Active learning (pre-trained start)" if args.init else "Active learning"


def init_identity(init: str | None) -> str | None:
    """What names a pre-trained start across sessions: the run folder's name and its pre-training steps and
    method (the folder itself lives in runs/, which is not kept)."""
    if not init:
        return None
    summary = Path(init) / "summary.json"
    if summary.exists():
        s = json.loads(summary.read_text())
        return f"{Path(init).name}:{s.get('method')}:{s.get('steps')}"
    return Path(init).name


def task_key(task: dict, init: str | None = None) -> tuple[str, str]:
    """(file name, identity hash) of a curve: a kept curve is reused only where every setting matches
    (``init``: the pre-trained start's identity, default :func:`init_identity` of the task's)."""
    ident = {k: task[k] for k in ("dataset", "seed", "kind", "strategy", "method", "crop_scale", "settings")}
    ident["init"] = init or init_identity(task.get("init"))
    digest = hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]
    slug = "".join(c if c.isalnum() else "_" for c in task["method"]).strip("_")
    return f"{task['dataset']}_{task['kind']}_{slug}_s{task['seed']}.json", digest


def kept_rows(task: dict, folder: Path) -> list[dict] | None:
    """The rows of a kept curve with the same settings, else None."""
    name, digest = task_key(task)
    path = folder / name
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    if record.get("identity") == digest:
        return record["rows"]
    init, kept_init = task.get("init"), str(record.get("init"))
    if init and not (Path(init) / "summary.json").exists() and kept_init.split(":")[0] == Path(init).name \
            and task_key(task, kept_init)[1] == record.get("identity"):
        return record["rows"]  # the pre-training run is gone (runs/ is not kept): the curve's record names it
    return None


def keep_rows(task: dict, rows: list[dict], folder: Path) -> None:
    name, digest = task_key(task)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps({"identity": digest, "init": init_identity(task.get("init")),
                                           "rows": rows}, indent=1))


def budgets(full: bool) -> dict:
    if full:
        return {"seeds": 3, "crop_scale": 2, "tiles": dict(tile=64, initial=2, per_round=4, rounds=6, steps=300),
                "slices": dict(unit="slice", initial=1, per_round=1, rounds=5, steps=300)}
    return {"seeds": 2, "crop_scale": 1, "tiles": dict(tile=64, initial=2, per_round=3, rounds=4, steps=120),
            "slices": dict(unit="slice", initial=1, per_round=1, rounds=3, steps=120)}


def _trees(init: str | None = None):
    """(2D tree of the tiles, thin-3D tree of the pseudo-label arm). From scratch: quickstart's seed-1 2D U-Net
    (11 k parameters). With ``init``: the label-efficiency benchmark's tree (baseline B scaled to 16-32-64-128,
    SGD + poly, CE + Dice, deep supervision; benchmarks/bench_pretraining.py), whose pre-trained start was
    measured there, starting from ``init``."""
    from arborseg.space import load_space

    space = load_space(ROOT / "search_spaces" / "quickstart.yaml")
    tree2d, tree3d = space.sample(1), space.sample(3)  # u2d-d3w7z1 (2D U-Net), t3d-d2w7z3 (thin 3D U-Net)
    if init:
        from bench_pretraining import bench_tree

        from arborseg.space.encoder_init import start_from
        from arborseg.tree import ModuleTree

        tree2d = start_from(ModuleTree.from_dict(bench_tree()), init)
    return tree2d, tree3d


#: batch of the tiles' training with a pre-trained start: the label-efficiency benchmark's
PRETRAINED_BATCH = 4


def run_task(task: dict) -> list[dict]:
    """One learning curve in a worker process (one torch thread)."""
    import torch

    torch.set_num_threads(1)
    os.chdir(ROOT)
    from arborseg.bootstrap.simulation import SimulationSettings, load_sim_volumes, simulate

    path, stride, crop = DATASETS[task["dataset"]]
    pool, evals = load_sim_volumes(path, xy=crop * task["crop_scale"], stride=stride)
    tree2d, tree3d = _trees(task.get("init"))
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
                tiles = {**b["tiles"], "unit": "tile", **({"steps": args.steps} if args.steps else {}),
                         **({"batch_size": PRETRAINED_BATCH} if args.init else {})}
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
                cells.append("" if not v else f"{v[0]:.3f}" if len(v) == 1 else f"{np.mean(v):.3f} ± {np.std(v):.3f}")
            body.append(cells)
    return head, body


def _per_seed(sub: list[dict], ds: str, method: str, metric: str, last: int | None) -> list[float]:
    """One value per seed: the metric at the budget ``last`` or (None) its mean over rounds 1..end."""
    out = []
    for seed in sorted({r["seed"] for r in sub if r["dataset"] == ds and r["method"] == method}):
        v = [r[metric] for r in sub if r["dataset"] == ds and r["method"] == method and r["seed"] == seed
             and r["round"] > 0 and (last is None or r["labeled_units"] == last)]
        if v:
            out.append(float(np.mean(v)))
    return out


def _beats(values: list[float], base: list[float]) -> str:
    """'yes' when the mean is above random's by more than the larger seed std, 'no' otherwise, '-' with
    fewer than 2 seeds on either side."""
    if len(values) < 2 or len(base) < 2:
        return "-"
    return "yes" if np.mean(values) - np.mean(base) > max(np.std(values), np.std(base)) else "no"


def gains(rows: list[dict]) -> list[list[str]]:
    """Per dataset and strategy: fg IoU at the last budget and the mean over the curve (area), relative to
    random and whether above it by more than the larger seed std; FN-401 likewise (relative only)."""
    out = []
    sub = [r for r in rows if r["kind"] == "tiles"]
    for ds in sorted({r["dataset"] for r in sub}):
        last = max(r["labeled_units"] for r in sub if r["dataset"] == ds)
        base = {(m, n): _per_seed(sub, ds, "random", m, n) for m in ("fg_iou", "fn_401") for n in (last, None)}
        for method in sorted({r["method"] for r in sub if r["dataset"] == ds}):
            iou_last, iou_auc = (_per_seed(sub, ds, method, "fg_iou", n) for n in (last, None))
            fn_last = _per_seed(sub, ds, method, "fn_401", last)
            out.append([ds, method, f"{np.mean(iou_last):.3f}",
                        f"{100 * (np.mean(iou_last) / np.mean(base['fg_iou', last]) - 1):+.1f}%",
                        "" if method == "random" else _beats(iou_last, base["fg_iou", last]), f"{np.mean(iou_auc):.3f}",
                        f"{100 * (np.mean(iou_auc) / np.mean(base['fg_iou', None]) - 1):+.1f}%",
                        "" if method == "random" else _beats(iou_auc, base["fg_iou", None]), f"{np.mean(fn_last):.3f}",
                        f"{np.mean(fn_last) - np.mean(base['fn_401', last]):+.3f}"])
    return out


GAINS_HEAD = ["data", "strategy", "fg IoU last", "vs random", "> seed std", "fg IoU mean", "vs random", "> seed std",
              "FN-401 last", "vs random"]


def rises(rows: list[dict]) -> list[str]:
    """Per dataset: does random selection's curve rise with labels (last budget above the first by more than
    the largest seed std anywhere on its curve)? Without that no strategy can be told apart from noise."""
    out = []
    sub = [r for r in rows if r["kind"] == "tiles" and r["method"] == "random"]
    for ds in sorted({r["dataset"] for r in sub}):
        points = sorted({r["labeled_units"] for r in sub if r["dataset"] == ds})
        first, last = ([r["fg_iou"] for r in sub if r["dataset"] == ds and r["labeled_units"] == p]
                       for p in (points[0], points[-1]))
        gap = float(np.mean(last) - np.mean(first))
        spread = max(float(np.std([r["fg_iou"] for r in sub if r["dataset"] == ds and r["labeled_units"] == p]))
                     for p in points)
        verdict = "rises" if gap > spread and len(first) > 1 else "does not rise"
        out.append(f"- {ds}: random selection {verdict} with labels: fg IoU {np.mean(first):.3f} at {points[0]} "
                   f"units, {np.mean(last):.3f} at {points[-1]} ({gap:+.3f}; largest seed std on the curve "
                   f"{spread:.3f}).")
    return out


def findings(rows: list[dict]) -> str:
    """Plain sentences computed from the rows: how each strategy compares with random, pseudo vs none."""
    lines = rises(rows)
    g = gains(rows)

    def pct(text: str) -> float:
        return float(text.rstrip("%"))

    for ds in sorted({r[0] for r in g}):
        sub = [r for r in g if r[0] == ds and r[1] != "random"]
        if not sub:
            continue
        best = max(sub, key=lambda r: float(r[5]))
        worst = min(sub, key=lambda r: float(r[5]))
        text = (f"- {ds}: over the curve the best strategy is {best[1]} (mean fg IoU {best[5]}, {best[6]} vs random), "
                f"the worst {worst[1]} ({worst[5]}, {worst[6]})")
        above = [r[1] for r in sub if r[4] == "yes" or r[7] == "yes"]
        text += ("; above random by more than the seed std: " + (", ".join(above) if above else "none")
                 + (" (2+ seeds needed to tell)" if all(r[4] == "-" for r in sub) else ""))
        unc = [r for r in sub if r[1] in UNCERTAINTY]
        if unc:
            mean_gain = [pct(r[6]) for r in unc]
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


def report(rows: list[dict], args: argparse.Namespace, seconds: float) -> str:
    from arborseg.bootstrap.report import plot_learning_curves

    RESULTS.mkdir(parents=True, exist_ok=True)
    tiles = [r for r in rows if r["kind"] == "tiles"]
    slices = [r for r in rows if r["kind"] == "slices"]
    plots = []
    if tiles:
        plots.append(plot_learning_curves(tiles, RESULTS / f"{stem(args)}.png"))
    if slices:
        plots.append(plot_learning_curves(slices, RESULTS / f"{stem(args)}_pseudo.png"))
    b = budgets(args.full)
    parts = []
    if tiles:
        t = {**b["tiles"], **({"steps": args.steps} if args.steps else {})}
        start = f"from the encoder in {args.init}" if args.init else "from scratch"
        parts.append(f"**Tiles** ({t['tile']}x{t['tile']}; {t['initial']} at the start, {t['per_round']} per round, "
                     f"{t['rounds']} rounds; {t['steps']} training steps per round, {start}). Foreground IoU "
                     "(mean ± std over seeds; a value without ± is one seed) against labeled tiles:\n\n"
                     + markdown(*curve_table(rows, "tiles", "fg_iou"))
                     + "\n\nFN-401 (% of eval voxels; lower is better):\n\n"
                     + markdown(*curve_table(rows, "tiles", "fn_401"))
                     + "\n\nAgainst random at the last budget and over the curve (mean of rounds 1..end):\n\n"
                     + markdown(GAINS_HEAD, gains(rows))
                     + "\n\n*> seed std*: above random by more than the larger of the two seed stds (per-seed values: "
                       "the last budget, or the mean over rounds 1..end); - : fewer than 2 seeds.")
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
    (RESULTS / f"{stem(args)}.md").write_text(table + "\n")
    import csv

    keys = sorted({k for r in rows for k in r})
    with open(RESULTS / f"{stem(args)}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, keys)
        w.writeheader()
        w.writerows(rows)
    print(table)
    print("plots: " + ", ".join(str(p) for p in plots))
    return table


def run_tasks(tasks: list[dict], args: argparse.Namespace) -> tuple[list[dict], float]:
    """Rows of every task: kept curves are reused, the others trained (``--jobs`` processes) and kept."""
    from tqdm import tqdm

    folder = RESULTS / f"{stem(args)}_runs"
    rows: list[dict] = []
    todo = []
    for task in tasks:
        kept = kept_rows(task, folder)
        if kept is None:
            todo.append(task)
        else:
            rows.extend(kept)
    if args.report_only:
        print(f"{len(tasks) - len(todo)} of {len(tasks)} curves kept in {folder.relative_to(ROOT)}; "
              f"{len(todo)} not run yet")
        return rows, 0.0
    print(f"{len(tasks) - len(todo)} of {len(tasks)} curves kept in {folder.relative_to(ROOT)}; training {len(todo)}")
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(run_task, t): t for t in todo}
        for fut in tqdm(as_completed(futures), total=len(futures), desc="curves", unit="curve"):
            new = fut.result()
            keep_rows(futures[fut], new, folder)
            rows.extend(new)
    return rows, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--full", action="store_true", help="3 seeds, 300 steps, more rounds, 2x bigger crops")
    p.add_argument("--seeds", type=int, help="seeds per curve (default 2, --full 3)")
    p.add_argument("--datasets", nargs="+", choices=tuple(DATASETS), default=list(DATASETS))
    p.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    p.add_argument("--no-pseudo", action="store_true", help="skip the pseudo-label comparison")
    p.add_argument("--init", metavar="ENCODER",
                   help="train the tiles on the label-efficiency benchmark's 2D U-Net (batch 4) started from this "
                        "pre-trained encoder (an `arborseg pretrain` run folder or checkpoint); results under the "
                        "stem active_learning_pretrained")
    p.add_argument("--steps", type=int, help="training steps per round of the tiles curves (default: the budget's)")
    p.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--no-readme", action="store_true", help="do not touch benchmarks/README.md")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: tables, plots and README from the curves kept in "
                        "benchmarks/results/<stem>_runs/ (or, where none are kept, <stem>_rows.json)")
    args = p.parse_args(argv)
    raw_rows = RESULTS / f"{stem(args)}_rows.json"
    rows, seconds = run_tasks(make_tasks(args), args)
    if args.report_only and not rows and raw_rows.exists():  # results from before curves were kept one by one
        saved = json.loads(raw_rows.read_text())
        rows, seconds = saved["rows"], saved["seconds"]
    if not rows:
        raise SystemExit(f"no curves to report for {stem(args)}: run without --report-only first")
    if not args.report_only:
        RESULTS.mkdir(parents=True, exist_ok=True)
        raw_rows.write_text(json.dumps({"rows": rows, "seconds": seconds}))
    table = report(rows, args, seconds)
    if not args.no_readme:
        update_readme(section(args), readme_section(table, args, seconds))
    return 0


def readme_section(table: str, args: argparse.Namespace, seconds: float) -> str:
    cmd = "python benchmarks/bench_active_learning.py" + (" --full" if args.full else "") \
        + (f" --init {args.init}" if args.init else "") + (f" --steps {args.steps}" if args.steps else "") \
        + (f" --seeds {args.seeds}" if args.seeds else "") \
        + (" --strategies " + " ".join(args.strategies) if list(args.strategies) != list(STRATEGIES) else "") \
        + (" --datasets " + " ".join(args.datasets) if list(args.datasets) != list(DATASETS) else "") \
        + (" --no-pseudo" if args.no_pseudo else "")
    start = (f"from the pre-trained encoder {args.init} (its encoder structure taken from it)" if args.init
             else "from scratch")
    net = ("The label-efficiency benchmark's 2D U-Net (baseline B scaled to 16-32-64-128 filters, its recipe: SGD + "
           "poly, CE + Dice, deep supervision; batch 4)" if args.init else
           "A 2D U-Net (quickstart seed 1, 11 k parameters)")
    took = (f"{seconds / 60:.0f} min of training this invocation" if seconds else "tables from the kept curves")
    s = stem(args)
    pseudo = "" if args.no_pseudo else f" and `{s}_pseudo.png` (pseudo-labels)"
    return f"""`{cmd}` ({took}; {machine()}, {args.jobs} worker processes of one torch thread each).
Simulated bootstrapping with the ground truth as the oracle (`arborseg.bootstrap.simulation`): train on
what is labeled (error-weighted by the previous corrections, weight 5 on all errors), score eval_near +
eval_far, let the strategy choose the next units, label them from the ground truth, repeat. VNC: 5 classes,
every 2nd pixel, central 256 x 256; ISBI 2012: membranes, central 256 x 256; the pool is the train region
(VNC 8 slices = 128 tiles, ISBI 12 slices = 192 tiles). {net} (dropout 0.1 in every
strategy so that the networks are the same) is trained {start} each round.
The pseudo-label arm trains a thin-3D U-Net (quickstart seed 3, 6 k parameters).
Plots: `benchmarks/results/{s}.png` (tiles){pseudo}; every row in `benchmarks/results/{s}.csv`;
every curve kept in `benchmarks/results/{s}_runs/`.

![learning curves](results/{s}.png)

{table}
""" + ("" if args.no_pseudo else f"\n![pseudo-labels](results/{s}_pseudo.png)\n")


if __name__ == "__main__":
    sys.exit(main())
