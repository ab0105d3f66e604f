"""`arborseg space validate|sample|show`: check a search space, sample trees from it, show one tree."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from arborseg.cli.options import require_positive

if TYPE_CHECKING:  # the tree module imports networkx: too slow for `arborseg --help`
    from arborseg.tree import ModuleTree


def validate(path: str, probe: int = 64) -> str:
    """Check the file, then sample ``probe`` trees and check that each one's window fits its network (a
    window that does not fit only shows for some draws, e.g. depth 5 with xy 48)."""
    import numpy as np

    from arborseg.errors import SpaceError, WindowError
    from arborseg.nn.builder import check_window
    from arborseg.space.loader import load_space

    space = load_space(path)
    hps = space.hyperparameters()
    n_struct = sum(1 for _, s in hps if s)
    bad: list[str] = []
    for child in np.random.SeedSequence(0).spawn(probe):
        tree = space.sample(np.random.default_rng(child))
        try:
            check_window(tree, tree.window)
        except WindowError as exc:
            bad.append(str(exc))
    if bad:
        raise SpaceError(f"{Path(path).name}: window: {len(bad)} of {probe} sampled trees get a window that does not "
                         f"fit their network; first: {bad[0]} (restrict window.xy / window.z or the depth)")
    return (f"ok: {Path(path).name}: space {space.name!r}, {len(hps)} hyperparameters "
            f"({n_struct} structural, {len(hps) - n_struct} refinable); {probe} sampled trees fit their windows")


def summary_line(tree: ModuleTree, n_classes: int) -> str:
    """One line per tree: name, id, family, parameters, FLOPs and window."""
    from arborseg.nn import network_summary

    s = network_summary(tree, n_classes)
    return (f"{tree.name:28s} id={tree.id[:12]}  family={tree.family:11s} params={s['params']:>10,d}  "
            f"FLOPs/voxel={s['flops_per_voxel']:>12,.0f}  GFLOPs/window={s['flops'] / 1e9:>7.2f}  "
            f"window={tree.window[0]}x{tree.window[1]}x{tree.window[2]}")


def sample(path: str, n: int, seed: int, out: str, n_classes: int, pictures: bool = True) -> list[str]:
    """Write ``n`` distinct trees of the space ``path`` (YAML, and a PNG picture each) to ``out``; their
    summary lines."""
    from arborseg.space.sampler import sample_distinct
    from arborseg.viz.treeplot import draw_tree

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, tree in enumerate(sample_distinct(path, n, seed)):
        stem = out_dir / f"{i:03d}_{tree.name}"
        tree.save(stem.with_suffix(".yaml"))
        if pictures:
            draw_tree(tree, stem.with_suffix(".png"))
        lines.append(summary_line(tree, n_classes))
    return lines


def show(path: str, out: str | None, n_classes: int) -> tuple[str, Path]:
    """A tree file's text summary with parameters and FLOPs, and its picture (written to ``out``)."""
    from arborseg.nn import network_summary
    from arborseg.tree import ModuleTree
    from arborseg.viz.treeplot import draw_tree

    tree = ModuleTree.load(path)
    s = network_summary(tree, n_classes)
    text = tree.describe() + (f"\nparams={s['params']:,d}  FLOPs/window={s['flops']:,d}  "
                              f"FLOPs/voxel={s['flops_per_voxel']:,.0f}  (classes={n_classes})")
    picture = Path(out) if out else Path(path).with_suffix(".png")
    draw_tree(tree, picture)
    return text, picture


def _validate(args: argparse.Namespace) -> int:
    print(validate(args.file))
    return 0


def _sample(args: argparse.Namespace) -> int:
    require_positive(args, "n", "classes")
    lines = sample(args.file, args.n, args.seed, args.out, args.classes, pictures=not args.no_pictures)
    for line in lines:
        print(line)
    print(f"wrote {len(lines)} trees to {args.out}/" + ("" if len(lines) == args.n else
                                                        f" (the space has no {args.n} distinct trees within the draws)"))
    return 0


def _show(args: argparse.Namespace) -> int:
    require_positive(args, "classes")
    text, picture = show(args.tree, args.out, args.classes)
    print(text)
    print(f"picture: {picture}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add `arborseg space validate|sample|show` to the `arborseg` parser."""
    space = sub.add_parser("space", help="validate search spaces, sample and show module trees")
    actions = space.add_subparsers(dest="space_command", metavar="ACTION", required=True)
    p = actions.add_parser("validate", help="check a search-space YAML file")
    p.add_argument("file")
    p.set_defaults(handler=_validate)
    p = actions.add_parser("sample", help="sample module trees from a space into tree YAML files (+ pictures)")
    p.add_argument("file")
    p.add_argument("--n", type=int, default=5, help="number of distinct trees (default 5)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed writes identical files")
    p.add_argument("--out", default="trees", help="output folder (default trees/)")
    p.add_argument("--classes", type=int, default=2, help="classes for the parameter/FLOP count (default 2)")
    p.add_argument("--no-pictures", action="store_true", help="skip the PNG picture of each tree")
    p.set_defaults(handler=_sample)
    p = actions.add_parser("show", help="text summary and picture of a tree file")
    p.add_argument("tree")
    p.add_argument("--out", help="picture path (.png or .svg; default: next to the tree)")
    p.add_argument("--classes", type=int, default=2)
    p.set_defaults(handler=_show)
