"""CLI of growing labels: `arborseg bootstrap init|next|ingest|status` (see docs/bootstrap.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from arborseg.cli.options import require_positive
from arborseg.errors import ArborsegError

# kept in sync with arborseg.bootstrap.strategies.STRATEGIES (a test checks it); listed here so that
# building the parser imports no torch
STRATEGY_HELP = {
    "random": "uniform at random (baseline)",
    "adjacent": "nearest to the labeled region, growing it outward (the seed work's bootstrapping; baseline)",
    "entropy": "highest mean predictive entropy",
    "least_confidence": "highest mean 1 - max class probability",
    "bald_mc": "highest BALD mutual information over MC-dropout samples (needs --dropout > 0 at init)",
    "bald_ensemble": "highest BALD over an ensemble of seeds: their disagreement (needs --members >= 2)",
    "kmeans": "k-means on bottleneck embeddings, the unit nearest each centre (representative)",
    "coreset": "greedy k-centre on bottleneck embeddings: farthest from what is labeled (diverse)",
}


def _init(args: argparse.Namespace) -> int:
    require_positive(args, "tile", "per_iteration", "steps", "batch_size", "members", "threads")
    import numpy as np

    from arborseg.bootstrap import BootstrapProject, ProjectSettings
    from arborseg.tree import ModuleTree

    if bool(args.data) == bool(args.raw):
        raise ArborsegError("give either --data YAML (with --label-slices) or --raw VOLUME (with --labels)")
    source: dict = {}
    if args.data:
        from arborseg.data import load_data_config

        cfg = load_data_config(args.data)
        raw = np.asarray(cfg.open_raw()[:])
        full = cfg.map_labels(np.asarray(cfg.open_labels()[:]))
        classes, background = list(cfg.classes), cfg.background_class
        normalization = dict(cfg.normalization)
        labels = np.full(raw.shape, args.ignore_value, np.uint8)
        for z in args.label_slices or []:
            if not 0 <= z < raw.shape[0]:
                raise ArborsegError(f"--label-slices {z} is outside the volume (0..{raw.shape[0] - 1})")
            labels[z] = full[z]
        pool = args.pool or list(cfg.region("train").z)
        source = {"data": str(Path(args.data).resolve()), "label_slices": list(args.label_slices or [])}
    else:
        from arborseg.data import open_volume

        if not args.classes:
            raise ArborsegError("--raw needs --classes NAME NAME ... (index = label value)")
        raw = np.asarray(open_volume(args.raw)[:])
        if args.labels:
            labels = np.asarray(open_volume(args.labels)[:])
        else:
            labels = np.full(raw.shape, args.ignore_value, np.uint8)
        classes, background, pool = list(args.classes), args.background_class, args.pool
        normalization = {"mode": "percentile", "low": 1.0, "high": 99.0}
        source = {"raw": str(Path(args.raw).resolve()), "labels": str(Path(args.labels).resolve()) if args.labels
                  else None}
    settings = ProjectSettings(
        classes=classes, ignore_value=args.ignore_value, background_class=background, unit=args.unit,
        tile=args.tile, pool=pool, normalization=normalization, steps=args.steps, batch_size=args.batch_size,
        members=args.members,
        dropout=args.dropout, error_mode=args.error_mode, error_weight=args.error_weight,
        pseudo_lambda=args.pseudo_lambda, strategy=args.strategy, per_iteration=args.per_iteration,
        seed=args.seed, device=args.device, threads=args.threads, source=source)
    pseudo_tree = ModuleTree.load(args.pseudo_tree) if args.pseudo_tree else None
    if args.pseudo_lambda is not None and pseudo_tree is None:
        raise ArborsegError("--pseudo-lambda needs --pseudo-tree (a 2D tree, window z = 1)")
    from arborseg.space.encoder_init import load_tree

    tree = load_tree(args.tree, args.init)
    project = BootstrapProject.create(args.folder, raw, labels, tree, settings, pseudo_tree)
    print(project.status(plot=False))
    print(f"next: arborseg bootstrap next {args.folder}")
    return 0


def _campaign_models(run_dir: str, top: int) -> list[Path]:
    from arborseg.runs import MODEL_FILE, TrialFolder
    from arborseg.table import run_table, sort_table

    table = sort_table(run_table([run_dir]))
    table = table[table["state"] == "COMPLETE"]
    models = [TrialFolder(Path(str(d))).model_path for d in table["artifact_dir"] if d]
    paths = [p for p in models if p.is_file()]
    if not paths:
        raise ArborsegError(f"{run_dir}: no completed trial with a {MODEL_FILE}; run the campaign first")
    return paths[:top]


def _next(args: argparse.Namespace) -> int:
    require_positive(args, "k", "steps", "members", "top")
    from arborseg.bootstrap import BootstrapProject

    project = BootstrapProject(args.folder)
    models = list(args.model or [])
    if args.campaign:
        models += _campaign_models(args.campaign, args.top)
    record = project.next(args.strategy, args.k, args.steps, args.members, models, args.replace,
                          progress=not args.quiet)
    out = project.folder / "iterations" / f"{record['iteration']:03d}"
    print(f"iteration {record['iteration']}: {record['models']} ({record['train_seconds']:.1f}s)")
    print(f"{record['strategy']} chose {len(record['units'])} of {record['candidates']} unlabeled {record['unit']}s: "
          + ", ".join(f"z{u[0]}:y{u[1]}:x{u[2]}" for u in record["units"]))
    print(f"correct {out / 'presegmentation.tif'} (raw: {out / 'raw.tif'}; preview: {out / 'preview.png'}),")
    print(f"then: arborseg bootstrap ingest {args.folder} {out / 'presegmentation.tif'}")
    return 0


def _ingest(args: argparse.Namespace) -> int:
    from arborseg.bootstrap import BootstrapProject

    rec = BootstrapProject(args.folder).ingest(args.corrected)
    print(f"iteration {rec['iteration']}: {rec['labeled']} voxels labeled in {rec['units']} units; now "
          f"{rec['labeled_voxels']} voxels ({rec['labeled_fraction']:.2%} of the volume)")
    added = sum(v for k, v in rec.items() if k.startswith("added/"))
    print(f"correction changed {rec['changed']} voxels ({rec['changed_fraction']:.2%}): added/removed per class "
          + ", ".join(f"{k[6:]} +{rec[k]}/-{rec['removed/' + k[6:]]}" for k in rec if k.startswith("added/"))
          + f" (total {added})")
    if "fn_401" in rec:
        print("pre-segmentation vs correction: " + "  ".join(
            f"{k}={rec[k]:.3f}" for k in ("fg_iou", "fn_0", "fn_65", "fn_401", "fp_0", "fp_65", "fp_401")))
    print(f"error map kept: {rec['errors_fn']} false-negative and {rec['errors_fp']} other error voxels")
    return 0


def _status(args: argparse.Namespace) -> int:
    from arborseg.bootstrap import BootstrapProject

    print(BootstrapProject(args.folder).status())
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add `arborseg bootstrap ...` to the parser."""
    boot = sub.add_parser("bootstrap", help="grow a label set: propose what to label, pre-segment it, take "
                                            "corrections back",
                          description="Bootstrapping with active learning: train on what is labeled, propose "
                                      "the next slices or tiles, correct their pre-segmentation, repeat.")
    bsub = boot.add_subparsers(dest="bootstrap_command", metavar="ACTION", required=True)

    p = bsub.add_parser("init", help="start a project folder: the volume, initial labels, the network",
                        description="Start a project from a data YAML (labels of --label-slices taken from it, "
                                    "e.g. one hand-labeled slice) or from a raw volume and a partial label volume "
                                    "(unlabeled = --ignore-value).")
    p.add_argument("folder")
    p.add_argument("--data", help="a data YAML (examples/): its raw volume, classes and the labels of --label-slices")
    p.add_argument("--label-slices", type=int, nargs="+", metavar="Z", help="slices labeled at the start (--data)")
    p.add_argument("--raw", help="a raw volume (TIFF, HDF5 file.h5:key, Zarr, .npy) instead of --data")
    p.add_argument("--labels", help="with --raw: the labels so far (unlabeled voxels = --ignore-value)")
    p.add_argument("--classes", nargs="+", metavar="NAME", help="with --raw: class names, index = label value")
    p.add_argument("--background-class", type=int, default=0, help="with --raw: left out of FN-n (default 0)")
    p.add_argument("--ignore-value", type=int, default=255, help="label value of unlabeled voxels (default 255)")
    p.add_argument("--tree", required=True, help="the network to train: a tree YAML (`arborseg space sample`)")
    p.add_argument("--init", metavar="ENCODER",
                   help="start the tree's encoder (every iteration) from a pre-trained one: an `arborseg pretrain` "
                        "run folder, its encoder.pt or a CEM500K MoCo v2 file (the encoder's structure is taken "
                        "from it)")
    p.add_argument("--unit", choices=("slice", "tile"), default="slice", help="what a person labels at once")
    p.add_argument("--tile", type=int, default=256, help="tile size in pixels (--unit tile; default 256)")
    p.add_argument("--pool", type=int, nargs=2, metavar=("Z0", "Z1"),
                   help="propose only slices [Z0, Z1) (default: the data's train region, else all)")
    p.add_argument("--strategy", choices=tuple(STRATEGY_HELP), default="adjacent", help="default strategy")
    p.add_argument("--per-iteration", type=int, default=1, help="units proposed per iteration (default 1)")
    p.add_argument("--steps", type=int, default=300, help="training steps per iteration (default 300)")
    p.add_argument("--batch-size", type=int, help="override the tree's batch size")
    p.add_argument("--members", type=int, default=1, help="networks (seeds) per iteration (default 1)")
    p.add_argument("--dropout", type=float, default=0.0, help="dropout put in the tree (bald_mc needs > 0)")
    p.add_argument("--error-mode", choices=("all", "fn", "none"), default="all",
                   help="upweight the voxels the corrections changed: all errors, false negatives only, or none")
    p.add_argument("--error-weight", type=float, default=5.0, help="weight of those voxels (default 5)")
    p.add_argument("--pseudo-lambda", type=float, help="slices: train on pseudo-labels of unlabeled slices with "
                                                       "this loss weight (needs --pseudo-tree)")
    p.add_argument("--pseudo-tree", help="a 2D tree (window z = 1) that makes the pseudo-labels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--threads", type=int, help="CPU threads for torch (1 is fastest on a busy shared machine)")
    p.set_defaults(handler=_init)

    strategies = "\n".join(f"  {k:17s} {v}" for k, v in STRATEGY_HELP.items())
    p = bsub.add_parser("next", help="train on the labels, propose what to label next, write its pre-segmentation",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="Train (or load --model / --campaign networks) on what is labeled, rank the\n"
                                    "unlabeled slices or tiles with a strategy, and write the chosen ones'\n"
                                    "pre-segmentation as a palette TIFF stack to paint (GIMP, napari).\n\n"
                                    f"strategies:\n{strategies}")
    p.add_argument("folder")
    p.add_argument("--strategy", choices=tuple(STRATEGY_HELP), help="default: the project's")
    p.add_argument("--k", type=int, help="units to propose (default: the project's per_iteration)")
    p.add_argument("--steps", type=int, help="training steps (default: the project's)")
    p.add_argument("--members", type=int, help="networks (seeds) to train (default: the project's)")
    p.add_argument("--model", action="append", metavar="MODEL_PT", help="use this trained model.pt instead of "
                                                                         "training (repeat for an ensemble)")
    p.add_argument("--campaign", metavar="RUN_DIR", help="use the best completed trials of this campaign")
    p.add_argument("--top", type=int, default=3, help="with --campaign: how many trials (default 3)")
    p.add_argument("--replace", action="store_true", help="propose again for an iteration not yet ingested")
    p.set_defaults(handler=_next)

    p = bsub.add_parser("ingest", help="take corrected labels back; record what the correction changed",
                        description="CORRECTED: the painted stack (same shape as presegmentation.tif) or a whole "
                                    "label volume from which the proposed units are read.")
    p.add_argument("folder")
    p.add_argument("corrected")
    p.set_defaults(handler=_ingest)

    p = bsub.add_parser("status", help="iterations so far: labels, correction effort, FN-n (table + progress.png)")
    p.add_argument("folder")
    p.set_defaults(handler=_status)
