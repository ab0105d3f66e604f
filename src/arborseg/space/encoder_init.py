"""Where an encoder starts: the ``init`` value of ``encoder_decoder`` and ``resnet_unet`` nodes (no torch).

``init`` is ``random`` or a pre-trained encoder: a checkpoint file (``arborseg pretrain``'s ``encoder.pt``, or a
MoCo v2 checkpoint such as CEM500K's ``cem500k_mocov2_resnet50_200ep.pth.tar``) or a pre-training run folder
(which holds ``encoder.pt``). Beside an ``encoder.pt`` written by arborseg lies ``encoder.json``: which module
the encoder belongs to and the values that fix its shape. A search space that offers such an encoder for an
``encoder_decoder`` node gets those values for the node (the encoder's structure is the checkpoint's, whatever
was drawn for it), so that every sampled tree can load it; where the checkpoint holds a decoder too (a restoration
pre-training), the decoder's values are taken as well, so that it loads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from arborseg.errors import SpaceError
from arborseg.tree import ModuleNode, ModuleTree

RANDOM = "random"
#: the files of a pre-training run that a tree's ``init`` points at
ENCODER_FILE = "encoder.pt"
ENCODER_SPEC_FILE = "encoder.json"
#: values of an ``encoder_decoder`` node that decide the shapes (or the features) of its encoder's weights
ENCODER_VALUES = ("dims", "kernel_z", "depth", "width", "width_growth", "blocks_per_level", "layers_per_block",
                  "kernel_size", "norm", "activation", "separable", "pooling")
#: ... and of its decoder, pinned too when the checkpoint holds a decoder (``encoder.json``: ``"decoder": true``)
DECODER_VALUES = ("upsampling", "skip_merge")


def is_random(init: Any) -> bool:
    return init in (None, "", RANDOM)


def init_name(init: str) -> str:
    """A short name of where an encoder starts: ``random``, the pre-training run (for its ``encoder.pt``) or the
    checkpoint file's name."""
    if is_random(init):
        return RANDOM
    path = Path(str(init))
    return path.parent.name if path.name == ENCODER_FILE else path.name


def tree_init(nodes: Any) -> str:
    """How the encoders of a tree's nodes (``tree.root.walk()``) start, for tables: ``random`` or their names."""
    names = [init_name(n.get("init")) for n in nodes if not is_random(n.get("init"))]
    return ", ".join(names) or RANDOM


def start_from(tree: ModuleTree, init: str) -> ModuleTree:
    """``tree`` with every ``encoder_decoder`` (or, for a ResNet-50 checkpoint, ``resnet_unet``) starting from the
    encoder ``init`` (a checkpoint or pre-training run folder; ``random`` for random starts), its encoder values
    taken from the checkpoint as a search space would. Raises :class:`SpaceError` when no node can take it."""
    path = resolve_init(init)
    spec = None if path == RANDOM else encoder_spec(path)
    module = spec["module"] if spec else None
    changed = False

    def rebuild(node: ModuleNode) -> ModuleNode:
        nonlocal changed
        children = tuple(rebuild(c) for c in node.children)
        params = dict(node.params)
        if node.type in ("encoder_decoder", "resnet_unet") and (module is None or node.type == module):
            params.update({k: v for k, v in pinned_values(node.type, path).items() if k in params or
                           node.type == "encoder_decoder"})
            params.pop("init", None)
            if path != RANDOM:
                params["init"] = path
            changed = True
        return ModuleNode(node.type, tuple(sorted(params.items())), children)

    root = rebuild(tree.root)
    if not changed:
        raise SpaceError(f"init: {tree.name} has no {module or 'encoder_decoder or resnet_unet'} node to start "
                         f"from {init}")
    return ModuleTree(root, tree.window, tree.training, tree.space, tree.choices, tree.structural)


def load_tree(path: str | Path, init: str | None = None) -> ModuleTree:
    """The tree saved at ``path``, starting from the encoder ``init`` when one is given (see :func:`start_from`)."""
    tree = ModuleTree.load(path)
    return start_from(tree, init) if init else tree


def resolve_init(init: str, base_dirs: tuple[Path, ...] = ()) -> str:
    """``init`` as an absolute path to a checkpoint file (``random`` stays ``random``).

    A relative path is looked up in ``base_dirs`` (e.g. the search space's folder), then the working directory;
    a folder stands for its ``encoder.pt``. Raises :class:`SpaceError` (one line) when nothing is found.
    """
    if is_random(init):
        return RANDOM
    path = Path(str(init)).expanduser()
    candidates = [path] if path.is_absolute() else [Path(d) / path for d in base_dirs] + [Path.cwd() / path]
    for candidate in candidates:
        if candidate.is_dir():
            candidate = candidate / ENCODER_FILE
        if candidate.is_file():
            return str(candidate.resolve())
    looked = ", ".join(str(c) for c in candidates)
    raise SpaceError(f"init: {init!r} is neither 'random' nor an encoder checkpoint (looked for {looked}); run "
                     f"`arborseg pretrain` first, or give the path of the checkpoint file")


def encoder_spec(checkpoint: str | Path) -> dict[str, Any] | None:
    """What ``encoder.json`` beside an arborseg checkpoint says (``module``, ``values``, ``norms``, ...), or None
    for a checkpoint without one (e.g. CEM500K's, which is a ResNet-50)."""
    path = Path(checkpoint).with_name(ENCODER_SPEC_FILE)
    if not path.is_file():
        return None
    try:
        spec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SpaceError(f"{path}: not a readable encoder description ({e}); re-run `arborseg pretrain`") from None
    if not isinstance(spec, dict) or "module" not in spec:
        raise SpaceError(f"{path}: an encoder description needs a 'module' key; re-run `arborseg pretrain`")
    return spec


def pinned_values(node_type: str, init: str) -> dict[str, Any]:
    """The values a node of ``node_type`` must take to load the encoder ``init`` (an absolute checkpoint path)."""
    if is_random(init):
        return {}
    spec = encoder_spec(init)
    if spec is None:
        return {}
    if spec["module"] != node_type:
        raise SpaceError(f"init: {init} holds the encoder of a {spec['module']} module, not of {node_type}; use it "
                         f"on a {spec['module']} node")
    pinned = ENCODER_VALUES + (DECODER_VALUES if spec.get("decoder") else ())
    return {k: v for k, v in dict(spec.get("values") or {}).items() if k in pinned}
