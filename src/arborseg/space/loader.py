"""Load and validate a search-space YAML file into a :class:`SearchSpace`.

Every problem is reported as a :class:`~arborseg.errors.SpaceError` naming the file, the key
path and what is allowed, e.g.
``unet2d.yaml: root.children[0].norm: 'layer' is not one of ['instance', 'batch', 'group', 'none']``.

File layout::

    name: hybrid_2d3d              # required
    description: ...
    window: {z: 5, xy: 64}         # the training window; values may be distributions
    training: {lr: {float: [1e-4, 1e-2], log: true}, ...}
    defaults: {norm: instance, width: {int: [8, 32]}}   # inherited values at the root
    definitions: {block: {type: conv_block, layers: 2}} # reusable nodes: {use: block, width: ...}
    root: {type: sequence, children: [...]}             # required: the module tree
    portfolio: [portfolio/unet2d_nnunet.yaml]           # known-good tree files (relative to this file),
                                                        # trained first by a campaign
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arborseg.errors import SpaceError, did_you_mean
from arborseg.space.catalog import INHERITED, MODULE_SPECS, TRAINING_PARAMS, WINDOW_PARAMS, ParamSpec
from arborseg.space.encoder_init import resolve_init
from arborseg.space.values import Choice, Constant, FloatRange, IntRange, Times, Value
from arborseg.yamlfile import read_yaml_file

TOP_KEYS = ("name", "description", "window", "training", "defaults", "definitions", "root", "portfolio")
FACTOR_SPEC = ParamSpec("times", float, 1.0, low=1e-3, high=1e3)


@dataclass(frozen=True)
class NodeSpec:
    """A module node of the space: its type, its values (own and inherited) and children."""

    type: str
    values: dict[str, Value]
    children: tuple[NodeSpec | OneOfSpec, ...]
    path: str


@dataclass(frozen=True)
class OneOfSpec:
    """A structural choice between alternative nodes."""

    options: tuple[NodeSpec | OneOfSpec, ...]
    path: str


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space, ready to sample module trees from."""

    name: str
    description: str
    source: str
    window: dict[str, Value]
    training: dict[str, Value]
    defaults: dict[str, Value]
    root: NodeSpec | OneOfSpec
    portfolio: tuple[Path, ...] = ()  # known-good tree files (resolved), trained first by a campaign

    def sample(self, seed_or_draw: Any = 0):
        """Sample one :class:`~arborseg.tree.ModuleTree` (seed, numpy Generator or a Draw)."""
        from arborseg.space.sampler import sample_tree

        return sample_tree(self, seed_or_draw)

    def hyperparameters(self) -> list[tuple[str, bool]]:
        """Every distribution in the space as (path, structural), in file order."""
        found: list[tuple[str, bool]] = []
        for section, values, specs in (("window", self.window, WINDOW_PARAMS),
                                       ("training", self.training, TRAINING_PARAMS),
                                       ("defaults", self.defaults, INHERITED)):
            for key, value in values.items():
                if value.is_distribution:
                    found.append((f"{section}.{key}", specs[key].structural))
        _collect(self.root, found)
        return found


def _collect(node: NodeSpec | OneOfSpec, found: list[tuple[str, bool]]) -> None:
    if isinstance(node, OneOfSpec):
        found.append((f"{node.path}.oneof", True))
        for option in node.options:
            _collect(option, found)
        return
    spec = MODULE_SPECS[node.type]
    for key, value in node.values.items():
        if value.is_distribution:
            param = spec.param_index.get(key) or INHERITED[key]
            found.append((f"{node.path}.{key}", param.structural))
    for child in node.children:
        _collect(child, found)


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a search-space YAML file."""
    path = Path(path)
    data = read_yaml_file(path, SpaceError, "no such search-space file (built-in spaces are in search_spaces/)")
    return parse_space(data, source=path.name, base_dir=path.parent)


def parse_space(data: Any, source: str = "<space>", base_dir: str | Path | None = None) -> SearchSpace:
    """Validate an already-parsed YAML mapping (see :func:`load_space`); ``base_dir``: the folder that
    ``portfolio`` paths are relative to (default: the current folder)."""
    return _Parser(source, Path(base_dir) if base_dir is not None else Path.cwd()).space(data)


def load_portfolio(entries: Any, base_dir: Path, where: str) -> tuple[Path, ...]:
    """Resolve and check a ``portfolio:`` list: each entry a module-tree file relative to ``base_dir``.
    Errors are one :class:`SpaceError` line starting with ``where`` (e.g. ``unet2d.yaml: portfolio``)."""
    from arborseg.errors import TreeError
    from arborseg.tree import ModuleTree

    if entries is None:
        return ()
    if not isinstance(entries, list) or not all(isinstance(e, str) and e for e in entries):
        raise SpaceError(f"{where}: expected a list of module-tree files (paths relative to {base_dir}), "
                         f"got {entries!r}")
    paths: list[Path] = []
    for i, entry in enumerate(entries):
        path = (base_dir / Path(entry).expanduser()).resolve()
        if not path.is_file():
            raise SpaceError(f"{where}[{i}]: {entry!r} not found (looked for {path}; paths are relative to "
                             f"{base_dir}): fix the path or remove the entry")
        try:
            ModuleTree.load(path)
        except TreeError as exc:
            raise SpaceError(f"{where}[{i}]: {entry!r} is not a module tree ({exc}); list tree files such as "
                             "those written by `arborseg space sample`") from None
        if path not in paths:
            paths.append(path)
    return tuple(paths)


class _Parser:
    def __init__(self, source: str, base_dir: Path | None = None) -> None:
        self.source = source
        self.base_dir = base_dir or Path.cwd()
        self.definitions: dict[str, Any] = {}
        self.using: list[str] = []

    def fail(self, path: str, message: str) -> SpaceError:
        return SpaceError(f"{self.source}: {path}: {message}" if path else f"{self.source}: {message}")

    # ------------------------------------------------------------------ top level
    def space(self, data: Any) -> SearchSpace:
        if not isinstance(data, dict):
            raise self.fail("", f"expected a mapping with keys {list(TOP_KEYS)}, got {type(data).__name__}")
        for key in data:
            if key not in TOP_KEYS:
                raise self.fail(str(key), f"unknown key{did_you_mean(key, TOP_KEYS, '')} (valid: {', '.join(TOP_KEYS)})")
        for key in ("name", "root"):
            if key not in data:
                raise self.fail(key, "missing required key")
        if not isinstance(data["name"], str) or not data["name"]:
            raise self.fail("name", "expected a non-empty string")
        definitions = data.get("definitions") or {}
        if not isinstance(definitions, dict):
            raise self.fail("definitions", "expected a mapping of name -> node")
        self.definitions = definitions
        window = self.section(data.get("window") or {}, "window", WINDOW_PARAMS)
        window.setdefault("z", Constant(1))
        window.setdefault("xy", Constant(64))
        training = self.section(data.get("training") or {}, "training", TRAINING_PARAMS)
        defaults = self.section(data.get("defaults") or {}, "defaults", INHERITED)
        for name, node in definitions.items():  # validate unused definitions too
            self.using = [name]
            self.node(node, f"definitions.{name}")
        self.using = []
        root = self.node(data["root"], "root")
        _check_ends_in_classes(root, self)
        portfolio = load_portfolio(data.get("portfolio"), self.base_dir, f"{self.source}: portfolio")
        return SearchSpace(data["name"], str(data.get("description", "")), self.source,
                           window, training, defaults, root, portfolio)

    def section(self, raw: Any, path: str, specs: dict[str, ParamSpec]) -> dict[str, Value]:
        if not isinstance(raw, dict):
            raise self.fail(path, f"expected a mapping with keys from {sorted(specs)}")
        out: dict[str, Value] = {}
        for key, value in raw.items():
            if key not in specs:
                raise self.fail(f"{path}.{key}", f"unknown key{did_you_mean(key, sorted(specs), '')} "
                                f"(valid: {', '.join(sorted(specs))})")
            out[key] = self.value(value, specs[key], f"{path}.{key}", inheritable=False)
        return out

    # ------------------------------------------------------------------ nodes
    def node(self, raw: Any, path: str) -> NodeSpec | OneOfSpec:
        if not isinstance(raw, dict):
            raise self.fail(path, f"expected a module mapping with a 'type' key, got {raw!r}")
        if "use" in raw:
            raw = self.resolve_use(raw, path)
        if "oneof" in raw:
            extra = set(raw) - {"oneof"}
            if extra:
                raise self.fail(path, f"'oneof' takes no other keys (found {sorted(extra)})")
            options = raw["oneof"]
            if not isinstance(options, list) or not options:
                raise self.fail(f"{path}.oneof", "expected a non-empty list of alternative modules")
            return OneOfSpec(tuple(self.node(o, f"{path}.oneof[{i}]") for i, o in enumerate(options)), path)
        if "type" not in raw:
            raise self.fail(path, "missing required key 'type' (or 'oneof' / 'use')")
        kind = raw["type"]
        if kind not in MODULE_SPECS:
            raise self.fail(f"{path}.type", f"{kind!r} is not a module type{did_you_mean(kind, list(MODULE_SPECS), '')} "
                            f"(valid: {', '.join(MODULE_SPECS)})")
        spec = MODULE_SPECS[kind]
        values: dict[str, Value] = {}
        children: list[NodeSpec | OneOfSpec] = []
        valid = sorted(set(spec.param_index) | set(INHERITED) | ({spec.children} if spec.children else set()))
        for key, value in raw.items():
            if key == "type":
                continue
            key_path = f"{path}.{key}"
            if key == spec.children:
                children = self.children(value, key_path, single=spec.children == "body")
            elif key in spec.param_index:
                values[key] = self.value(value, spec.param_index[key], key_path, key in INHERITED)
            elif key in INHERITED:  # set here for the descendants
                values[key] = self.value(value, INHERITED[key], key_path, inheritable=True)
            else:
                raise self.fail(key_path, f"unknown key for {kind}{did_you_mean(key, valid, '')} (valid: {', '.join(valid)})")
        if spec.children and not children:
            raise self.fail(f"{path}.{spec.children}", f"missing required key: {kind} needs {spec.children}")
        return NodeSpec(kind, values, tuple(children), path)

    def children(self, raw: Any, path: str, single: bool) -> list[NodeSpec | OneOfSpec]:
        if single:
            return [self.node(raw, path)]
        if not isinstance(raw, list) or not raw:
            raise self.fail(path, "expected a non-empty list of modules")
        return [self.node(child, f"{path}[{i}]") for i, child in enumerate(raw)]

    def resolve_use(self, raw: dict, path: str) -> dict:
        name = raw["use"]
        if name not in self.definitions:
            raise self.fail(f"{path}.use", f"{name!r} is not defined{did_you_mean(name, list(self.definitions), '')} "
                            f"(definitions: {', '.join(self.definitions) or 'none'})")
        if name in self.using:
            raise self.fail(f"{path}.use", f"circular reference {' -> '.join(self.using + [name])}")
        self.using.append(name)
        target = self.definitions[name]
        if not isinstance(target, dict):
            raise self.fail(f"definitions.{name}", "expected a module mapping")
        if "use" in target:
            target = self.resolve_use(target, f"definitions.{name}")
        self.using.pop()
        merged = dict(target)
        merged.update({k: v for k, v in raw.items() if k != "use"})
        return merged

    # ------------------------------------------------------------------ values
    def resolved(self, spec: ParamSpec, value: Any, path: str) -> Any:
        """An encoder's ``init``: a checkpoint path made absolute (relative to the space file, else the working
        directory), so that a sampled tree finds it from any job; other values as they are."""
        if spec.name != "init":
            return value
        try:
            return resolve_init(value, (self.base_dir,))
        except SpaceError as e:
            raise self.fail(path, str(e).removeprefix("init: ")) from None

    def value(self, raw: Any, spec: ParamSpec, path: str, inheritable: bool) -> Value:
        if not isinstance(raw, dict):
            problem = spec.check(raw)
            if problem:
                raise self.fail(path, problem)
            return Constant(self.resolved(spec, spec.coerce(raw), path))
        keys = set(raw)
        forms = ("int", "float", "choice", "times")
        kinds = [k for k in forms if k in keys]
        if len(kinds) != 1:
            raise self.fail(path, "expected a constant or exactly one of {int: [lo, hi]}, {float: [lo, hi]}, "
                            "{choice: [a, b]}, {times: f}" + (f"; found keys {sorted(keys)}" if keys else ""))
        kind = kinds[0]
        allowed = {"int": {"int", "log", "step"}, "float": {"float", "log"}, "choice": {"choice"},
                   "times": {"times"}}[kind]
        for key in keys - allowed:
            raise self.fail(f"{path}.{key}", f"unknown key for a {kind} distribution{did_you_mean(key, sorted(allowed), '')} "
                            f"(valid: {', '.join(sorted(allowed))})")
        if kind == "choice":
            options = raw["choice"]
            if not isinstance(options, list) or not options:
                raise self.fail(f"{path}.choice", "expected a non-empty list of options")
            for i, option in enumerate(options):
                problem = spec.check(option)
                if problem:
                    raise self.fail(f"{path}.choice[{i}]", problem)
            return Choice(tuple(self.resolved(spec, spec.coerce(o), f"{path}.choice[{i}]")
                                for i, o in enumerate(options)))
        if kind == "times":
            if spec.kind not in (int, float) or not inheritable:
                raise self.fail(f"{path}.times", f"'times' adjusts an inherited number; {spec.name} is not one")
            factor = self.value(raw["times"], FACTOR_SPEC, f"{path}.times", inheritable=False)
            assert not isinstance(factor, Times)  # a factor is not inheritable, so never itself a Times
            return Times(factor)
        bounds = raw[kind]
        log = raw.get("log", False)
        if not isinstance(log, bool):
            raise self.fail(f"{path}.log", f"expected true or false, got {log!r}")
        if not isinstance(bounds, list) or len(bounds) != 2:
            raise self.fail(f"{path}.{kind}", f"expected a range [low, high], got {bounds!r}")
        number = int if kind == "int" else (int, float)
        for bound in bounds:
            if isinstance(bound, bool) or not isinstance(bound, number):
                raise self.fail(f"{path}.{kind}", f"range bounds must be {'integers' if kind == 'int' else 'numbers'}, "
                                f"got {bound!r}")
        low, high = bounds
        if low > high:
            raise self.fail(f"{path}.{kind}", f"low {low} is greater than high {high}")
        if log and low <= 0:
            raise self.fail(f"{path}.{kind}", f"a log-scale range needs low > 0, got {low}")
        if spec.kind not in ((int,) if kind == "int" else (float,)) and not (kind == "int" and spec.kind is float):
            raise self.fail(path, f"{spec.name} takes {spec.kind.__name__} values, not a {kind} range")
        for bound in (low, high):
            problem = spec.check(spec.coerce(bound))
            if problem:
                raise self.fail(f"{path}.{kind}", problem)
        if kind == "int":
            step = raw.get("step", 1)
            if not isinstance(step, int) or isinstance(step, bool) or step < 1:
                raise self.fail(f"{path}.step", f"expected a positive integer, got {step!r}")
            if log and step != 1:
                raise self.fail(f"{path}.step", "step cannot be combined with log: true")
            return IntRange(low, high, log, step)
        return FloatRange(float(low), float(high), log)


def _check_ends_in_classes(root: NodeSpec | OneOfSpec, parser: _Parser) -> None:
    """The network's last module must produce one channel per class (a predictor or crf3d)."""
    for path in _last_modules(root):
        node_type, node_path = path
        if node_type not in MODULE_SPECS or not MODULE_SPECS[node_type].produces_classes:
            raise parser.fail(node_path, f"the network must end with a predictor (or crf3d), not {node_type}; "
                              "append {type: predictor}")


def _last_modules(node: NodeSpec | OneOfSpec) -> list[tuple[str, str]]:
    if isinstance(node, OneOfSpec):
        return [m for option in node.options for m in _last_modules(option)]
    if node.type == "sequence":
        return _last_modules(node.children[-1])
    if node.type == "repeat":
        return _last_modules(node.children[0])
    return [(node.type, node.path)]
