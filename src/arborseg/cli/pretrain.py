"""`arborseg pretrain`: self-supervised pre-training of an encoder on unlabeled volumes (docs/pretraining.md)."""

from __future__ import annotations

import argparse

from arborseg.cli.options import key_values, require_positive
from arborseg.errors import ArborsegError


def _pretrain(args: argparse.Namespace) -> int:
    require_positive(args, "steps", "threads")
    from pathlib import Path

    from arborseg import runs
    from arborseg.pretrain import load_pretrain_config
    from arborseg.pretrain.run import run_pretraining, what_it_learned

    config = load_pretrain_config(args.config)
    if args.steps:
        config.steps = args.steps
    options = key_values(args.executor_option, "--executor-option", "timeout_min=240")
    if args.threads:
        options.setdefault("threads_per_job", args.threads)
        if args.executor == "debug":
            import torch

            torch.set_num_threads(args.threads)
    out = Path(args.out or Path("runs") / runs.PRETRAIN_DIR / config.name)
    summary = run_pretraining(config, out, args.executor, options)
    if not summary.get("ok"):
        raise ArborsegError(f"pre-training {config.name} failed: {summary.get('reason')}")
    print(f"pre-trained {config.name} ({config.method}): {summary['steps']} steps in {summary['seconds']:.0f} s, "
          f"{what_it_learned(summary, config.method)}; encoder {summary['encoder']} (use it as a tree's init); pictures in {out}/")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add `arborseg pretrain` to the `arborseg` parser."""
    p = sub.add_parser("pretrain", help="pre-train an encoder on unlabeled volumes (MoCo v2 as CEM500K, or Models Genesis)",
                       description="Self-supervised pre-training of an encoder on unlabeled EM volumes. Rerun the "
                                   "same command to continue a stopped or killed run from its checkpoint.")
    p.add_argument("config", help="a pre-training YAML (see docs/pretraining.md)")
    p.add_argument("--out", help="run folder (default runs/pretrain/<name>)")
    p.add_argument("--steps", type=int, help="override the config's steps (raise it to continue a finished run)")
    p.add_argument("--executor", choices=("debug", "local", "slurm"), default="debug",
                   help="debug: in this process (default); local: a background process; slurm: a cluster job")
    p.add_argument("--executor-option", action="append", metavar="KEY=VALUE",
                   help="executor option, e.g. timeout_min=240, partition=gpu, gpus_per_node=1 (repeatable)")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.set_defaults(handler=_pretrain)
