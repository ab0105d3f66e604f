"""Module trees: one sampled architecture with concrete values.

A :class:`ModuleTree` is frozen, round-trips exactly through YAML, and has a stable id (sha1 of
the canonical JSON of its window, training values and modules) and a short readable name.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
import yaml

from arborseg.errors import TreeError

FORMAT_VERSION = 1
FAMILY_CODES = {"2d": "u2d", "thin3d": "t3d", "3d": "f3d", "hybrid": "hyb"}


@dataclass(frozen=True)
class ModuleNode:
    """One module with all its hyperparameters resolved, and its children (in order)."""

    type: str
    params: tuple[tuple[str, Any], ...] = ()
    children: tuple[ModuleNode, ...] = ()

    @property
    def p(self) -> dict[str, Any]:
        return dict(self.params)

    def get(self, key: str, default: Any = None) -> Any:
        return self.p.get(key, default)

    def walk(self) -> Iterator[ModuleNode]:
        yield self
        for child in self.children:
            yield from child.walk()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        out.update(self.params)
        if self.children:
            out["children"] = [c.to_dict() for c in self.children]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModuleNode:
        data = dict(data)
        kind = data.pop("type")
        children = tuple(cls.from_dict(c) for c in data.pop("children", []))
        return cls(kind, tuple(sorted(data.items())), children)


@dataclass(frozen=True)
class ModuleTree:
    """A sampled architecture: modules, training window (z, y, x) and training values."""

    root: ModuleNode
    window: tuple[int, int, int]
    training: tuple[tuple[str, Any], ...] = ()
    space: str = ""
    choices: tuple[tuple[str, Any], ...] = ()
    structural: tuple[str, ...] = ()
    _id: str = field(default="", compare=False, repr=False)

    # ------------------------------------------------------------------ identity
    def canonical(self) -> dict[str, Any]:
        """What the id hashes: window, training values and modules (not the space or draws)."""
        return {"window": list(self.window), "training": dict(self.training), "root": self.root.to_dict()}

    @property
    def id(self) -> str:
        if not self._id:
            text = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
            object.__setattr__(self, "_id", hashlib.sha1(text.encode()).hexdigest())
        return self._id

    @property
    def family(self) -> str:
        """'2d', 'thin3d', '3d' or 'hybrid' (2D and 3D parts), with '+crf' when a crf3d refines it."""
        dims = {n.get("dims") for n in self.root.walk() if n.type not in ("sequence", "parallel", "repeat",
                                                                        "identity", "residual", "crf3d",
                                                                        "predictor")}
        dims.discard(None)
        if not dims:
            base = "2d"
        elif len(dims) == 1:
            base = dims.pop()
        else:
            base = "hybrid" if "2d" in dims else "3d"
        return base + ("+crf" if any(n.type == "crf3d" for n in self.root.walk()) else "")

    @property
    def depth(self) -> int:
        """The deepest encoder-decoder (0 when there is none)."""
        return max((n.get("depth", 0) for n in self.root.walk() if n.type == "encoder_decoder"), default=0)

    @property
    def width(self) -> int:
        """The width of the first module that has one."""
        return next((n.get("width") for n in self.root.walk() if n.get("width") is not None), 0)

    @property
    def name(self) -> str:
        """A short readable name: family code, depth, width and the start of the id."""
        fam = self.family
        code = FAMILY_CODES.get(fam.split("+")[0], "net") + ("c" if "+crf" in fam else "")
        return f"{code}-d{self.depth}w{self.width}z{self.window[0]}-{self.id[:6]}"

    def training_values(self) -> dict[str, Any]:
        return dict(self.training)

    def refinable_choices(self) -> dict[str, Any]:
        """The drawn values that do not change the tree (what Optuna refines)."""
        structural = set(self.structural)
        return {k: v for k, v in self.choices if k not in structural}

    def structural_choices(self) -> dict[str, Any]:
        structural = set(self.structural)
        return {k: v for k, v in self.choices if k in structural}

    # ------------------------------------------------------------------ YAML
    def to_dict(self) -> dict[str, Any]:
        return {
            "arborseg_tree": FORMAT_VERSION,
            "id": self.id,
            "name": self.name,
            "family": self.family,
            "space": self.space,
            "window": list(self.window),
            "training": dict(self.training),
            "root": self.root.to_dict(),
            "choices": dict(self.choices),
            "structural": list(self.structural),
        }

    def to_yaml(self) -> str:
        dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml's: ~10x faster, the same YAML
        return yaml.dump(self.to_dict(), Dumper=dumper, sort_keys=False, default_flow_style=None, width=100)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_yaml())
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<tree>") -> ModuleTree:
        if not isinstance(data, dict) or "root" not in data or "window" not in data:
            raise TreeError(f"{source}: not a module tree (needs keys 'root' and 'window'; "
                            "make one with `arborseg space sample`)")
        window = data["window"]
        if not (isinstance(window, list) and len(window) == 3 and all(isinstance(v, int) and v > 0 for v in window)):
            raise TreeError(f"{source}: window: expected [z, y, x] positive integers, got {window!r}")
        try:
            root = ModuleNode.from_dict(data["root"])
        except (KeyError, TypeError, AttributeError) as exc:
            raise TreeError(f"{source}: root: malformed module node ({exc})") from None
        tree = cls(root, tuple(window), tuple(sorted((data.get("training") or {}).items())),
                   str(data.get("space", "")), tuple((data.get("choices") or {}).items()),
                   tuple(data.get("structural") or ()))
        stored = data.get("id")
        if stored and stored != tree.id:
            raise TreeError(f"{source}: id {stored} does not match the content ({tree.id}); the file was edited "
                            "by hand: delete the 'id' line to accept the new content")
        return tree

    @classmethod
    def from_yaml(cls, text: str, source: str = "<tree>") -> ModuleTree:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise TreeError(f"{source}: not valid YAML: {exc}") from None
        return cls.from_dict(data, source)

    @classmethod
    def load(cls, path: str | Path) -> ModuleTree:
        path = Path(path)
        if not path.is_file():
            raise TreeError(f"{path}: no such tree file")
        return cls.from_yaml(path.read_text(), source=str(path))

    def with_window(self, window: tuple[int, int, int]) -> ModuleTree:
        window = (*window,)  # a tuple even when given a list
        return ModuleTree(self.root, window, self.training, self.space, self.choices, self.structural)

    # ------------------------------------------------------------------ graphs
    def graph(self) -> nx.DiGraph:
        """The computation as a DAG: 'input' -> modules -> 'output' (merges as their own nodes)."""
        g = nx.DiGraph()
        g.add_node("input", type="input")
        counter = iter(range(10**9))

        def add(node: ModuleNode, src: str) -> str:
            if node.type == "sequence":
                for child in node.children:
                    src = add(child, src)
                return src
            if node.type in ("parallel", "residual"):
                ends = [add(child, src) for child in node.children]
                merge = f"{next(counter)}:{'add' if node.type == 'residual' else node.get('merge')}"
                g.add_node(merge, type="merge", op=merge.split(":")[1])
                if node.type == "residual":
                    ends.append(src)
                for end in ends:
                    g.add_edge(end, merge)
                return merge
            name = f"{next(counter)}:{node.type}"
            g.add_node(name, type=node.type, **{k: v for k, v in node.params})
            g.add_edge(src, name)
            return name

        last = add(self.root, "input")
        g.add_node("output", type="output")
        g.add_edge(last, "output")
        return g

    def describe(self) -> str:
        """A readable multi-line text of the tree."""
        lines = [f"{self.name}  family={self.family}  window={list(self.window)}  id={self.id}"]
        if self.training:
            lines.append("training: " + ", ".join(f"{k}={_fmt(v)}" for k, v in self.training))

        def rec(node: ModuleNode, indent: int) -> None:
            params = " ".join(f"{k}={_fmt(v)}" for k, v in node.params)
            lines.append("  " * indent + f"- {node.type}" + (f"  {params}" if params else ""))
            for child in node.children:
                rec(child, indent + 1)

        rec(self.root, 0)
        return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)
