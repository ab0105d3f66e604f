"""Label efficiency of a pre-trained encoder: the same tree from a random start and from the encoder pre-trained
on ``../shared/data/unlabeled``, trained on 1, 2, 4 and all training slices.

The tree is the portfolio's nnU-Net-style 2D U-Net (``search_spaces/portfolio/unet2d_nnunet.yaml``, baseline B of
the search benchmark, with its own recipe: SGD + poly, CE + Dice, deep supervision) scaled to what 2 cores can
train 48 times in this benchmark's budget: 16 base filters and 4 stages (16-32-64-128) instead of 32 and 5, on
64 x 64 windows. Pre-training (MoCo v2, ``arborseg pretrain``'s code) runs once on both unlabeled volumes (VNC
stack 2 and the ISBI 2012 test volume; neither overlaps a labeled set) for that tree's encoder. Then, for VNC
mitochondria and ISBI 2012 membranes, with the training region cut to its first 1, 2, 4 or all slices, 3 seeds
each: the tree from random weights and with ``init`` = the pre-trained encoder, trained for the same ``steps``
(the pre-trained one also scored half-way, from the same run: the schedule is planned for ``steps`` and
continued). Reported: eval-far mIoU and FN-401 (mean ± std over seeds), the paired difference, whether the
pre-trained start at ``steps / 2`` already reaches the random start's score at ``steps``, and the pre-training
cost (one-off; every trial that names the run reuses it). ``--workers`` trains that many runs side by side (one
process each, ``--threads`` torch threads per process).

    python benchmarks/bench_pretraining.py                 # everything (resumable: finished runs are reused)
    python benchmarks/bench_pretraining.py --steps 20 --pretrain-steps 20 --seeds 1 --labels 1 --no-readme  # smoke

``--method genesis`` pre-trains by Models Genesis' restoration (encoder and decoder) instead of MoCo v2 (the
encoder); each method has its own results and README section.

``--recipe nnssl`` fine-tunes the pre-trained start with the recipe nnssl (the DKFZ self-supervised nnU-Net; Wald et
al. 2024) uses for pre-trained CNNs: a tenth of the from-scratch learning rate and a linear warm-up over the first
5 % of the steps, then the tree's poly decay (``--recipe plain``, the default: the tree's own recipe unchanged). The
random start keeps the tree's recipe either way (its runs are shared); each recipe has its own results and section.

Besides the mid-run score at ``steps / 2`` (the LR schedule planned for ``steps``, not yet decayed), every
pre-trained start is also trained as a run of its own with ``steps / 2`` steps (its schedule planned for them): what
a user spends who trains for half the steps. Both are compared with the random start's final score.

Runs go to ``runs/bench_pretraining/``; results to ``benchmarks/results/pretraining.{json,csv,png}`` (genesis:
``pretraining_genesis.*``) and the section "Pre-trained encoders: label efficiency" (genesis: "... (Models
Genesis)") of ``benchmarks/README.md``. Every finished run's row is also kept in
``benchmarks/results/<stem>_runs/`` (with the pre-training's summary): committed, they let the command go on in
another session or a clean clone where ``runs/`` is gone; ``--collect-only`` writes the tables from them alone.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import copy
import json
import math
import multiprocessing
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from _readme import cpu_model, update_readme

from arborseg.data import DataConfig
from arborseg.errors import DataError
from arborseg.pretrain import PretrainConfig
from arborseg.pretrain.run import pretrain, what_it_learned
from arborseg.space.encoder_init import start_from
from arborseg.train.settings import TrainSettings
from arborseg.train.trainer import Trainer
from arborseg.tree import ModuleTree
from arborseg.viz.figures import save_figure

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
EXAMPLES = ROOT / "examples"
DATASETS = {"vnc_mito": EXAMPLES / "vnc_mito.yaml", "isbi2012": EXAMPLES / "isbi2012_membrane.yaml"}
PORTFOLIO_B = ROOT / "search_spaces" / "portfolio" / "unet2d_nnunet.yaml"
#: baseline B scaled to this benchmark's budget (see the module docstring)
SCALED = {"window": [1, 64, 64], "encoder_decoder": {"width": 16, "depth": 4}}
UNLABELED = ROOT.parent / "shared" / "data" / "unlabeled"
REGION = "eval_far"
INITS = ("random", "pretrained")
#: fine-tuning recipes of the pre-trained start (``--recipe``): what they say, their file-stem and section suffixes
RECIPES = {"plain": {"says": "the tree's own recipe", "stem": "", "section": ""},
           "nnssl": {"says": "nnssl's fine-tuning recipe: lr / 10, linear warm-up over the first 5 % of the steps, "
                             "then poly", "stem": "_nnssl", "section": ", nnssl fine-tuning recipe"}}


def bench_tree() -> dict[str, Any]:
    """Baseline B's tree with :data:`SCALED` applied."""
    tree = copy.deepcopy(yaml.safe_load(PORTFOLIO_B.read_text()))
    tree["window"] = SCALED["window"]
    node = next(c for c in tree["root"]["children"] if c["type"] == "encoder_decoder")
    node.update(SCALED["encoder_decoder"])
    return tree


def encoder_values() -> dict[str, Any]:
    node = next(c for c in bench_tree()["root"]["children"] if c["type"] == "encoder_decoder")
    return {k: v for k, v in node.items() if k != "type"}


#: per method: the pre-training run's name, the picture it draws, its results' file stem and README section
METHODS = {"mocov2": {"name": "bench_unet2d_w16", "picture": "neighbours.png", "stem": "pretraining",
                      "section": "Pre-trained encoders: label efficiency", "label": "MoCo v2"},
           "genesis": {"name": "bench_unet2d_w16_genesis", "picture": "restorations.png",
                       "stem": "pretraining_genesis",
                       "section": "Pre-trained encoders: label efficiency (Models Genesis)",
                       "label": "Models Genesis (restoration; encoder and decoder)"}}


def stem(args: argparse.Namespace) -> str:
    """The file stem of this method's (and recipe's) results."""
    return METHODS[args.method]["stem"] + RECIPES[args.recipe]["stem"]


def finetune_overrides(args: argparse.Namespace, steps: int) -> dict[str, Any]:
    """The training values a pre-trained start of ``steps`` steps takes from ``--recipe``."""
    if args.recipe == "plain":
        return {}
    return {"lr": float(bench_tree()["training"]["lr"]) / 10, "warmup_steps": max(1, round(0.05 * steps))}


def pretrain_config(args: argparse.Namespace) -> PretrainConfig:
    method = {"lr": 0.03, "moco": {"queue": 4096 // args.pretrain_batch * args.pretrain_batch}} \
        if args.method == "mocov2" else {}  # genesis: its defaults (AdamW 1e-3, Models Genesis' probabilities)
    return PretrainConfig.from_dict({
        "name": METHODS[args.method]["name"], "encoder": {"encoder_decoder": encoder_values()},
        "steps": args.pretrain_steps, "method": args.method,
        "volumes": [str(UNLABELED / "drosophila_vnc_stack2" / "raw.tif"), str(UNLABELED / "isbi2012_test" / "raw.tif")],
        "batch_size": args.pretrain_batch, "patch": 64, **method, "checkpoint_every": 50, "seed": 0},
        "bench_pretraining")


def pretrain_dir(args: argparse.Namespace) -> Path:
    return Path(args.out) / ("pretrain" if args.method == "mocov2" else f"pretrain_{args.method}")


def data_with_labels(dataset: str, slices: int | None) -> DataConfig:
    """The dataset's example YAML with the training region cut to its first ``slices`` slices (None: all)."""
    path = DATASETS[dataset]
    mapping = yaml.safe_load(path.read_text())
    train = mapping["regions"]["train"]
    if slices is not None:
        z0, z1 = train["z"]
        train["z"] = [z0, min(z1, z0 + slices)]
    return DataConfig.from_dict(mapping, str(path), path.parent)


def tree_with_init(init: str) -> ModuleTree:
    tree = ModuleTree.from_dict(bench_tree(), str(PORTFOLIO_B))
    return tree if init == "random" else start_from(tree, init)


def score(trainer: Trainer) -> dict[str, float]:
    scores, _ = trainer.score_region(REGION)
    return {"miou": float(scores["miou"]), "fn_401": float(scores["fn_401"])}


def start_name(init: str, method: str, recipe: str = "plain") -> str:
    """The folder (and record) name of a start: random, pretrained (MoCo v2) or pretrained_<method>, with
    _<recipe> for a recipe other than plain."""
    if init == "random":
        return init
    return (init if method == "mocov2" else f"{init}_{method}") + ("" if recipe == "plain" else f"_{recipe}")


def run_identity(args: argparse.Namespace, init: str) -> dict[str, Any]:
    """What a finished run must match to be reused: its steps and batch, and for a pre-trained start the
    pre-training's method, steps and batch."""
    same = {"steps": args.steps, "batch": args.batch, "method": "-"}
    if init != "random":
        same.update({"method": args.method, "pretrain_steps": args.pretrain_steps,
                     "pretrain_batch": args.pretrain_batch})
        if args.recipe != "plain":
            same["recipe"] = args.recipe
    return same


def row_record(args: argparse.Namespace, dataset: str, labels: str, start: str, seed: int) -> Path:
    """Where a finished run's row is kept in the repository (``benchmarks/results/<stem>_runs/``), so that a
    later session or a clean clone goes on where this one stopped (the work dir in runs/ is not kept). The random
    start's runs are the same for every recipe: they are kept with the method's plain ones."""
    folder = METHODS[args.method]["stem"] if start == "random" else stem(args)
    return RESULTS / f"{folder}_runs" / f"{dataset}_labels{labels}_{start}_s{seed}.json"


def kept_row(args: argparse.Namespace, dataset: str, labels: int | None, init: str, seed: int
             ) -> dict[str, Any] | None:
    """The row of a finished run kept in benchmarks/results/, or None."""
    record = row_record(args, dataset, f"{labels or 'all'}", start_name(init, args.method, args.recipe), seed)
    if not record.exists():
        return None
    row = json.loads(record.read_text())
    return row if all(row.get(k) == v for k, v in run_identity(args, init).items()) else None


def keep_row(args: argparse.Namespace, record: Path, row: dict[str, Any]) -> None:
    """Keep ``row`` in the repository, unless that record holds it already."""
    if not args.no_readme and not (record.exists() and json.loads(record.read_text()) == row):
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(row, indent=1))


def run_one(dataset: str, labels: int | None, init: str, seed: int, encoder: Path, args: argparse.Namespace
            ) -> dict[str, Any]:
    """Train one (dataset, labels, init, seed); the pre-trained start is also scored at steps / 2 and trained for
    steps / 2 on a schedule of its own (added to a kept row that lacks it)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    name = f"{labels or 'all'}"
    start = start_name(init, args.method, args.recipe)
    folder = Path(args.out) / dataset / f"labels_{name}" / start / f"seed{seed}"
    done = folder / "bench_pretraining.json"
    record = row_record(args, dataset, name, start, seed)
    for path in (done, record):  # the work dir's, or the one kept in the repository by an earlier session
        if path.exists():
            finished = json.loads(path.read_text())
            if all(finished.get(k) == v for k, v in run_identity(args, init).items()):
                if init == "pretrained" and "budget_half_miou" not in finished:
                    finished.update(half_budget(tree_with_init(str(encoder)), data_with_labels(dataset, labels),
                                                seed, args, folder))
                    done.parent.mkdir(parents=True, exist_ok=True)
                    done.write_text(json.dumps(finished, indent=1))
                keep_row(args, record, finished)
                return dict(finished)
    shutil.rmtree(folder, ignore_errors=True)  # unfinished, or trained for another --steps / --batch
    data = data_with_labels(dataset, labels)
    tree = tree_with_init(str(encoder) if init == "pretrained" else "random")
    row: dict[str, Any] = {"dataset": dataset, "labels": name, "train_slices": data.regions["train"].shape[0],
                           "init": init, "seed": seed, **run_identity(args, init)}
    started = time.perf_counter()
    base = settings_base(args, seed, args.steps, init)
    if init == "pretrained":  # half-way: the same run, scored, then continued on the same schedule
        half = Trainer(tree, data, TrainSettings(steps=args.steps // 2, **base), folder, progress=False)
        half.fit()
        row.update({f"half_{k}": v for k, v in score(half).items()})
    trainer = Trainer(tree, data, TrainSettings(steps=args.steps, **base), folder, progress=False)
    trainer.fit()
    row.update(score(trainer))
    row["seconds"] = round(time.perf_counter() - started, 1)
    if init == "pretrained":
        row.update(half_budget(tree, data, seed, args, folder))
    done.write_text(json.dumps(row, indent=1))
    keep_row(args, record, row)
    print(f"{dataset} labels {name} {init} seed {seed}: mIoU {row['miou']:.4f}"
          + (f" (half-way {row['half_miou']:.4f}, trained for half {row['budget_half_miou']:.4f})"
             if "half_miou" in row else "")
          + f", FN-401 {row['fn_401']:.2f}, {row['seconds']:.0f} s", flush=True)
    return row


def settings_base(args: argparse.Namespace, seed: int, steps: int, init: str) -> dict[str, Any]:
    """The training settings (but ``steps``) of a run whose schedule is planned for ``steps``."""
    overrides = {"batch_size": args.batch, **(finetune_overrides(args, steps) if init == "pretrained" else {})}
    return {"schedule_steps": steps, "eval_every": steps, "seed": seed, "device": "cpu", "precision": "fp32",
            "objective": "miou", "overlays": False, "overrides": overrides, "num_threads": args.threads}


def half_budget(tree: ModuleTree, data: DataConfig, seed: int, args: argparse.Namespace, folder: Path
                ) -> dict[str, float]:
    """The pre-trained start ``tree`` trained for ``steps / 2`` on a schedule planned for them: its scores."""
    steps = args.steps // 2
    trainer = Trainer(tree, data, TrainSettings(steps=steps, **settings_base(args, seed, steps, "pretrained")),
                      folder / "half_budget", progress=False)
    trainer.fit()
    return {f"budget_half_{k}": v for k, v in score(trainer).items()}


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for dataset in DATASETS:
        for labels in dict.fromkeys(r["labels"] for r in rows if r["dataset"] == dataset):
            cell = [r for r in rows if r["dataset"] == dataset and r["labels"] == labels]
            entry: dict[str, Any] = {"dataset": dataset, "labels": labels, "train_slices": cell[0]["train_slices"]}
            for init in INITS:
                mine = [r for r in cell if r["init"] == init]
                for key in ("miou", "fn_401", "half_miou", "budget_half_miou"):
                    values = np.array([r[key] for r in mine if key in r], dtype=float)
                    if len(values):
                        entry[f"{init}.{key}"] = float(values.mean())
                        entry[f"{init}.{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
            by_seed = {r["seed"]: r for r in cell if r["init"] == "random"}
            paired = [r["miou"] - by_seed[r["seed"]]["miou"] for r in cell
                      if r["init"] == "pretrained" and r["seed"] in by_seed]
            entry["gain"] = float(np.mean(paired)) if paired else math.nan
            stds = (entry.get("random.miou_std", math.nan), entry.get("pretrained.miou_std", math.nan))
            entry["paired_seeds"] = len(paired)
            # decided only where both starts have a seed std (2 seeds or more): None = not decided yet
            entry["beats_by_more_than_std"] = None if any(math.isnan(v) for v in stds) or len(paired) < 2 \
                else bool(entry["gain"] > max(stds))
            for key in ("half", "budget_half"):
                entry[f"{key}_reaches_random"] = (f"pretrained.{key}_miou" in entry and "random.miou" in entry
                                                  and entry[f"pretrained.{key}_miou"] >= entry["random.miou"])
            out.append(entry)
    return out


def _pm(mean: float | None, std: float | None, digits: int = 3) -> str:
    if mean is None or math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f}" + ("" if std is None or math.isnan(std) else f" ± {std:.{digits}f}")


def plot(summary: list[dict[str, Any]], path: Path, method: str = "MoCo v2", recipe: str = "plain") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(DATASETS), figsize=(5 * len(DATASETS), 3.4), squeeze=False)
    for ax, dataset in zip(axes[0], DATASETS):
        cells = [e for e in summary if e["dataset"] == dataset]
        x = [e["train_slices"] for e in cells]
        for init, color in zip(INITS, ("0.4", "C1")):
            y = [e.get(f"{init}.miou", math.nan) for e in cells]
            err = [e.get(f"{init}.miou_std", 0.0) for e in cells]
            ax.errorbar(x, y, yerr=err, marker="o", color=color, capsize=3, label=init)
        half = [e.get("pretrained.half_miou", math.nan) for e in cells]
        ax.plot(x, half, ls=":", marker=".", color="C1", label="pretrained, scored half-way")
        budget = [e.get("pretrained.budget_half_miou", math.nan) for e in cells]
        if not all(math.isnan(v) for v in budget):
            ax.plot(x, budget, ls="--", marker=".", color="C2", label="pretrained, trained for half the steps")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("labeled training slices")
        ax.set_ylabel(f"{REGION} mIoU")
        ax.set_title(dataset, fontsize=10)
        ax.legend(frameon=False, fontsize=8)
    fig.suptitle(f"label efficiency, pre-trained by {method}" + RECIPES[recipe]["section"], fontsize=10)
    save_figure(fig, path, 110)


def goal_line(summary: list[dict[str, Any]]) -> str:
    """Issue 16's goal on the 1- and 2-slice cells of both datasets: beats random by more than the seed std, and
    reaches random's final score in half the steps (half-way and trained for half)."""
    cells = [e for e in summary if e["labels"] in ("1", "2")]
    beats = sum(e["beats_by_more_than_std"] is True for e in cells)
    half = sum(e["half_reaches_random"] for e in cells)
    budget = sum(e["budget_half_reaches_random"] for e in cells)
    either = sum(e["half_reaches_random"] or e["budget_half_reaches_random"] for e in cells)
    met = bool(cells) and beats == len(cells) and either == len(cells)
    return (f"Goal, on the {len(cells)} cells with 1 or 2 slices: beats random by more than the seed std in "
            f"{beats}; reaches random's final score in half the steps in {either} ({half} half-way, {budget} trained "
            f"for half): **{'met' if met else 'not met'}**.")


def readme_block(summary: list[dict[str, Any]], pre: dict[str, Any], args: argparse.Namespace, wall: float,
                 finished: tuple[int, int]) -> str:
    m = METHODS[args.method]
    learned = what_it_learned(pre, args.method)
    lines = [
        f"Command: `python benchmarks/bench_pretraining.py --method {args.method} --steps {args.steps} "
        f"--seeds {args.seeds} "
        f"--pretrain-steps {args.pretrain_steps} --pretrain-batch {args.pretrain_batch} --workers {args.workers} "
        f"--threads {args.threads}" + ("" if args.recipe == "plain" else f" --recipe {args.recipe}") + "`",
        "",
        f"Machine: {cpu_model()}, {os.cpu_count()} CPUs ({platform.machine()}), torch {torch.__version__}; load "
        f"average {os.getloadavg()[0]:.1f} at the end; {wall / 60:.0f} min for what was not already done."
        + ("" if finished[0] == finished[1] else f" **Finished runs: {finished[0]} of {finished[1]}** (the rest "
           "runs when the command is given again; a row without seeds is one seed)."),
        "",
        "Tree: the portfolio's nnU-Net-style 2D U-Net (baseline B) scaled to this budget: 16 base filters, 4 stages, "
        "64 x 64 windows.",
        "",
        f"Pre-training (one-off): {m['label']} on both unlabeled volumes, that tree's "
        f"{'encoder' if args.method == 'mocov2' else 'encoder-decoder'}, {pre['steps']} steps at batch "
        f"{args.pretrain_batch}, 64 x 64 patches: {pre['seconds'] / 60:.1f} min; {learned} "
        f"(`{pretrain_dir(args).relative_to(ROOT) if pretrain_dir(args).is_relative_to(ROOT) else pretrain_dir(args)}/`"
        f", with `{m['picture']}`).",
        "",
        f"Then that tree with its own recipe (SGD + poly, deep supervision), batch {args.batch}, {args.steps} steps, "
        f"from random weights and from the pre-trained {'encoder' if args.method == 'mocov2' else 'encoder-decoder'}"
        + ("" if args.recipe == "plain" else f" (the pre-trained start with {RECIPES[args.recipe]['says']})")
        + ", on the first 1, 2, 4 or all training slices; "
        f"{REGION} mIoU and FN-401 (% of the region's voxels), mean ± std over {args.seeds} seeds. *gain*: paired "
        "mIoU difference (pre-trained - random) over the seeds run from both starts; *> seed std*: the gain is larger than "
        "the larger of the two seed stds (- : fewer than 2 seeds yet); *half-way*: the pre-trained run scored at half "
        "the steps (its LR not yet decayed); *trained for half*: the pre-trained start trained for half the steps "
        "on a schedule planned for them; *reaches*: at least random's final mIoU.",
        "",
        goal_line(summary),
        "",
        "| dataset | slices | paired seeds | random mIoU | pre-trained mIoU | gain | > seed std | pre-trained half-way | "
        "reaches | pre-trained trained for half | reaches | random FN-401 | pre-trained FN-401 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for e in summary:
        lines.append(
            f"| {e['dataset']} | {e['train_slices']} | {e['paired_seeds']} | "
            f"{_pm(e.get('random.miou'), e.get('random.miou_std'))} | "
            f"{_pm(e.get('pretrained.miou'), e.get('pretrained.miou_std'))} | {e['gain']:+.3f} | "
            f"{ {True: 'yes', False: 'no', None: '-'}[e['beats_by_more_than_std']]} | "
            f"{_pm(e.get('pretrained.half_miou'), e.get('pretrained.half_miou_std'))} | "
            f"{'yes' if e['half_reaches_random'] else 'no'} | "
            f"{_pm(e.get('pretrained.budget_half_miou'), e.get('pretrained.budget_half_miou_std'))} | "
            f"{'yes' if e['budget_half_reaches_random'] else ('no' if 'pretrained.budget_half_miou' in e else '-')} | "
            f"{_pm(e.get('random.fn_401'), e.get('random.fn_401_std'), 2)} | "
            f"{_pm(e.get('pretrained.fn_401'), e.get('pretrained.fn_401_std'), 2)} |")
    lines += ["", f"![label efficiency](results/{stem(args)}.png)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=400, help="training steps of every segmentation run")
    ap.add_argument("--batch", type=int, default=4, help="batch size of the segmentation runs")
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    ap.add_argument("--labels", nargs="+", default=["1", "2", "4", "all"], help="training slices (or 'all')")
    ap.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    ap.add_argument("--method", choices=list(METHODS), default="mocov2",
                    help="self-supervision: mocov2 (CEM500K's; the encoder) or genesis (restoration; encoder and "
                         "decoder)")
    ap.add_argument("--recipe", choices=list(RECIPES), default="plain",
                    help="fine-tuning of the pre-trained start: plain (the tree's recipe) or nnssl (lr / 10, 5 %% "
                         "warm-up)")
    ap.add_argument("--pretrain-steps", type=int, default=1500)
    ap.add_argument("--pretrain-batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2, help="segmentation runs trained side by side (processes)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run (pre-training: workers x threads)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench_pretraining"))
    ap.add_argument("--no-readme", action="store_true", help="print only; do not update benchmarks/README.md")
    ap.add_argument("--collect-only", action="store_true",
                    help="train nothing: tables and plot from the runs kept in benchmarks/results/<stem>_runs/")
    args = ap.parse_args(argv)
    if not (UNLABELED / "drosophila_vnc_stack2" / "raw.tif").exists():
        raise SystemExit(f"the unlabeled volumes are not in {UNLABELED}: nothing to pre-train on")
    started = time.perf_counter()
    jobs = []
    for dataset in args.datasets:
        try:
            data_with_labels(dataset, None)
        except DataError as exc:
            print(f"skipped {dataset}: {exc} (the EM data lives in ../shared/data)")
            continue
        for labels in args.labels:
            n = None if labels == "all" else int(labels)
            jobs += [(dataset, n, init, seed) for seed in range(args.seeds) for init in INITS]
    pre_dir = pretrain_dir(args)
    summary_file = pre_dir / "summary.json"
    kept = RESULTS / f"{METHODS[args.method]['stem']}_runs" / "pretrain_summary.json"
    if args.collect_only:
        if not kept.exists():
            raise SystemExit(f"--collect-only: no pre-training kept in {kept}; run without it first")
        pre = json.loads(kept.read_text())
    elif summary_file.exists() and json.loads(summary_file.read_text())["steps"] >= args.pretrain_steps:
        pre = json.loads(summary_file.read_text())
    elif kept.exists() and all("budget_half_miou" in (kept_row(args, *job) or {}) for job in jobs
                               if job[2] != "random"):
        # every pre-trained run is kept whole, for these settings: no encoder needed
        pre = json.loads(kept.read_text())
    else:
        torch.set_num_threads(max(1, args.workers * args.threads))
        pre = pretrain(pretrain_config(args), pre_dir, progress=True)
    if not args.no_readme:
        kept.parent.mkdir(parents=True, exist_ok=True)
        kept.write_text(json.dumps(pre, indent=1))
    encoder = pre_dir / "encoder.pt"
    if args.collect_only:
        rows = [row for row in (kept_row(args, *job) for job in jobs) if row is not None]
    elif args.workers > 1:
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(args.workers, mp_context=context) as pool:
            futures = [pool.submit(run_one, *job, encoder, args) for job in jobs]
            rows = [f.result() for f in futures]
    else:
        rows = [run_one(*job, encoder, args) for job in jobs]
    summary = summarise(rows)
    block = readme_block(summary, pre, args, time.perf_counter() - started, (len(rows), len(jobs)))
    print(block)
    if not args.no_readme:
        RESULTS.mkdir(parents=True, exist_ok=True)
        name = stem(args)
        (RESULTS / f"{name}.json").write_text(json.dumps({"rows": rows, "summary": summary, "pretrain": pre,
                                                              "args": vars(args)}, indent=1, default=str))
        import pandas as pd

        pd.DataFrame(rows).to_csv(RESULTS / f"{name}.csv", index=False)
        plot(summary, RESULTS / f"{name}.png", METHODS[args.method]["label"], args.recipe)
        update_readme(METHODS[args.method]["section"] + RECIPES[args.recipe]["section"], block)


if __name__ == "__main__":
    main()
