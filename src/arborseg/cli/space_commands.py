"""What `arborseg space validate|sample|show` do (kept out of cli.py so it stays a thin shell)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from arborseg.log import get_logger
from arborseg.space.loader import load_space
from arborseg.tree import ModuleTree

log = get_logger(__name__)


def validate(path: str, probe: int = 64) -> str:
    """Check the file, then sample ``probe`` trees and check that each one's window fits its network (a
    window that does not fit only shows for some draws, e.g. depth 5 with xy 48)."""
    from arborseg.errors import SpaceError, WindowError
    from arborseg.nn.builder import check_window

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


def sample_distinct(path: str, n: int, seed: int, max_tries: int = 50,
                    accept: Callable[[ModuleTree], bool] | None = None) -> list[ModuleTree]:
    """Sample ``n`` distinct trees; draw i uses the i-th child of SeedSequence(seed). Draws that repeat a
    tree or that ``accept`` turns down are skipped."""
    space = load_space(path)
    trees: list[ModuleTree] = []
    seen: set[str] = set()
    children = np.random.SeedSequence(seed).spawn(n * max_tries)
    for child in children:
        tree = space.sample(np.random.default_rng(child))
        if tree.id in seen:
            continue
        seen.add(tree.id)
        if accept is not None and not accept(tree):
            continue
        trees.append(tree)
        if len(trees) == n:
            break
    if len(trees) < n and accept is None:  # with a filter, the caller says what was turned down
        log.warning("the space %s has only %d distinct trees within %d draws", space.name, len(trees), len(children))
    return trees


def summary_line(tree: ModuleTree, n_classes: int) -> str:
    from arborseg.nn import network_summary

    s = network_summary(tree, n_classes)
    return (f"{tree.name:28s} id={tree.id[:12]}  family={tree.family:11s} params={s['params']:>10,d}  "
            f"FLOPs/voxel={s['flops_per_voxel']:>12,.0f}  GFLOPs/window={s['flops'] / 1e9:>7.2f}  window={tree.window[0]}x{tree.window[1]}x{tree.window[2]}")


def sample(path: str, n: int, seed: int, out: str, n_classes: int, pictures: bool = True) -> list[str]:
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
    from arborseg.nn import network_summary
    from arborseg.viz.treeplot import draw_tree

    tree = ModuleTree.load(path)
    s = network_summary(tree, n_classes)
    text = tree.describe() + (f"\nparams={s['params']:,d}  FLOPs/window={s['flops']:,d}  "
                              f"FLOPs/voxel={s['flops_per_voxel']:,.0f}  (classes={n_classes})")
    picture = Path(out) if out else Path(path).with_suffix(".png")
    draw_tree(tree, picture)
    return text, picture
