"""Sampling module trees from a :class:`~arborseg.space.loader.SearchSpace`.

Inherited values flow from parents to children: a value set on a node (or in ``defaults``)
applies to all descendants unless one overrides it or adjusts it with ``{times: f}``.
``repeat`` nodes are expanded into a ``sequence`` of independently sampled copies.
:func:`sample_distinct` draws several distinct trees, e.g. a campaign's random trees.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from arborseg.log import get_logger
from arborseg.space.catalog import INHERITED, MODULE_SPECS, TRAINING_PARAMS, WINDOW_PARAMS
from arborseg.space.encoder_init import is_random, pinned_values
from arborseg.space.loader import NodeSpec, OneOfSpec, SearchSpace, load_space
from arborseg.space.values import Draw, RandomDraw, Times, Value
from arborseg.tree import ModuleNode, ModuleTree

log = get_logger(__name__)


def sample_tree(space: SearchSpace, seed_or_draw: Any = 0) -> ModuleTree:
    """Draw one tree. ``seed_or_draw``: an int seed, a numpy Generator or a :class:`Draw`."""
    draw = seed_or_draw if hasattr(seed_or_draw, "choice") and not isinstance(seed_or_draw, np.random.Generator) \
        else RandomDraw(seed_or_draw)
    window_z = _value(space.window["z"], "window.z", draw, WINDOW_PARAMS["z"].structural, None)
    window_xy = _value(space.window["xy"], "window.xy", draw, WINDOW_PARAMS["xy"].structural, None)
    training = {key: TRAINING_PARAMS[key].coerce(_value(v, f"training.{key}", draw, False, None))
                for key, v in space.training.items()}
    context: dict[str, Any] = {}
    for key, value in space.defaults.items():
        context[key] = INHERITED[key].coerce(_value(value, f"defaults.{key}", draw, INHERITED[key].structural,
                                                    INHERITED[key].default))
    root = _sample(space.root, draw, context)
    record = getattr(draw, "record", {})
    structural = sorted(getattr(draw, "structural", set()))
    return ModuleTree(root, (int(window_z), int(window_xy), int(window_xy)), tuple(sorted(training.items())),
                      space.name, tuple(record.items()), tuple(structural))


def sample_distinct(path: str | Path, n: int, seed: int, max_tries: int = 50,
                    accept: Callable[[ModuleTree], bool] | None = None) -> list[ModuleTree]:
    """Sample ``n`` distinct trees from the space file ``path``; draw i uses the i-th child of
    SeedSequence(seed). Draws that repeat a tree or that ``accept`` turns down are skipped."""
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


def _value(value: Value, path: str, draw: Draw, structural: bool, inherited: Any) -> Any:
    if isinstance(value, Times):
        factor = value.sample(path, draw, structural)
        return inherited * factor
    return value.sample(path, draw, structural)


def _sample(node: NodeSpec | OneOfSpec, draw: Draw, context: dict[str, Any]) -> ModuleNode:
    if isinstance(node, OneOfSpec):
        index = draw.choice(f"{node.path}.oneof", tuple(range(len(node.options))), True)
        return _sample(node.options[int(index)], draw, context)
    spec = MODULE_SPECS[node.type]
    context = dict(context)
    own: dict[str, Any] = {}
    for key, value in node.values.items():
        param = spec.param_index.get(key) or INHERITED[key]
        default = context.get(key, param.default)
        sampled = param.coerce(_value(value, f"{node.path}.{key}", draw, param.structural, default))
        if isinstance(value, Times):  # keep the product inside what the parameter allows
            sampled = param.limit(max(1, sampled) if param.kind is int else sampled)
        if key in INHERITED:
            context[key] = sampled
        if key in spec.param_index:
            own[key] = sampled
    params = {p.name: own.get(p.name, p.default) for p in spec.params}
    params.update({name: context.get(name, INHERITED[name].default) for name in spec.inherited})
    if "init" in params:  # a pre-trained encoder fixes the encoder's structure
        params.update({k: v for k, v in pinned_values(node.type, params["init"]).items() if k in params})
        if is_random(params["init"]):  # the default stays out of the tree: trees (and ids) as before init existed
            del params["init"]
    if node.type == "repeat":
        copies = tuple(_sample(_prefixed(node.children[0], f"{node.path}.body[{i}]"), draw, context)
                       for i in range(params["times"]))
        return ModuleNode("sequence", (), copies)
    children = tuple(_sample(child, draw, context) for child in node.children)
    return ModuleNode(node.type, tuple(sorted(params.items())), children)


def _prefixed(node: NodeSpec | OneOfSpec, prefix: str) -> NodeSpec | OneOfSpec:
    """A copy of ``node`` whose paths start with ``prefix`` (each repeat copy gets its own draws)."""
    old = node.path
    def re(path: str) -> str:
        return prefix + path[len(old):]
    def rec(n: NodeSpec | OneOfSpec) -> NodeSpec | OneOfSpec:
        if isinstance(n, OneOfSpec):
            return OneOfSpec(tuple(rec(o) for o in n.options), re(n.path))
        return NodeSpec(n.type, n.values, tuple(rec(c) for c in n.children), re(n.path))
    return rec(node)
