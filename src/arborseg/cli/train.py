"""`arborseg train`: train and score one module tree on a data YAML."""

from __future__ import annotations

import argparse

from arborseg.cli.options import key_values, require_positive
from arborseg.train.settings import PRECISIONS


def _train(args: argparse.Namespace) -> int:
    require_positive(args, "steps", "eval_every", "batch_size")
    from pathlib import Path

    from arborseg.data import load_data_config
    from arborseg.space.encoder_init import load_tree
    from arborseg.train.settings import TrainSettings
    from arborseg.train.trainer import train_and_score

    tree = load_tree(args.tree, args.init)
    data = load_data_config(args.data)
    settings = {"steps": args.steps, "seed": args.seed, "device": args.device, "objective": args.objective,
                "eval_every": args.eval_every or max(1, args.steps // 5), "precision": args.precision}
    overrides = key_values(args.set, "--set", "lr=0.001")
    if args.batch_size:
        overrides["batch_size"] = args.batch_size
    settings["overrides"] = overrides
    if args.error_weights:
        settings["error_weighting"] = {"prediction": args.error_weights, "mode": args.error_mode,
                                       "weight": args.error_weight}
    out = Path(args.out or f"runs/train/{tree.name}")
    result = train_and_score(tree, data, TrainSettings.from_dict(settings), out)
    for region, scores in result["regions"].items():
        keys = [k for k in ("miou", "fg_iou", "fn_401", "fp_401", "rand_error") if k in scores]
        print(f"{region:11s} " + "  ".join(f"{k}={scores[k]:.4f}" for k in keys))
    print(f"trained {result['steps']} steps in {result['train_seconds']:.1f}s ({result['precision']}); "
          f"artifacts in {out}/")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add `arborseg train` to the `arborseg` parser."""
    p = sub.add_parser("train", help="train and score one module tree on a data YAML")
    p.add_argument("tree", help="a tree YAML (from `arborseg space sample`)")
    p.add_argument("--data", required=True, help="a data YAML (see examples/)")
    p.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    p.add_argument("--out", help="output folder (default runs/train/<tree name>)")
    p.add_argument("--init", metavar="ENCODER",
                   help="start the tree's encoder from a pre-trained one: an `arborseg pretrain` run folder, its "
                        "encoder.pt or a CEM500K MoCo v2 file (the encoder's structure is taken from it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="training arithmetic: auto (bf16 on GPUs and on CPUs with native bfloat16, else fp32), "
                        "fp32, bf16, fp16 (CUDA)")
    p.add_argument("--objective", default="fg_iou", help="validation metric reported while training")
    p.add_argument("--eval-every", type=int, help="validate every N steps (default steps/5)")
    p.add_argument("--batch-size", type=int, help="override the tree's batch size")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a training value of the tree, e.g. --set lr=0.001 (repeatable)")
    p.add_argument("--error-weights", metavar="PREDICTION",
                   help="a previous prediction (label volume): upweight the voxels it got wrong")
    p.add_argument("--error-mode", choices=("all", "fn"), default="all",
                   help="upweight all errors or only false negatives (default all)")
    p.add_argument("--error-weight", type=float, default=5.0, help="weight of those voxels (default 5)")
    p.set_defaults(handler=_train)
