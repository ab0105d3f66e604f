"""The one direction of imports (docs/architecture.md): a module imports only from its own layer or lower ones.

Layers are matched by the longest module prefix; the check reads every ``import``/``from`` statement of
``src/arborseg`` (also those inside functions, which are lazy but still dependencies).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "arborseg"

#: low to high; a module may import from its own layer and every layer before it
LAYERS: list[tuple[str, ...]] = [
    ("errors", "log", "device", "metrics", "yamlfile"),
    ("tree",),
    ("space", "viz.treeplot", "viz.figures"),
    ("nn", "data"),
    ("inference",),
    ("train",),
    ("jobs", "campaign.storage", "campaign.budget", "campaign.config", "campaign.optuna_draw", "campaign.worker_trial"),
    ("runs",),
    ("campaign",),
    ("table", "ensemble.manifest"),  # the ensemble manifest format: read by the run table, written by ensembles
    ("ensemble", "viz"),
    ("bundle", "bootstrap", "pretrain"),
    ("cli",),
]


def layer_of(module: str) -> int:
    """The layer of ``module`` (``arborseg.`` stripped), by its longest listed prefix."""
    best, depth = -1, -1
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and name.count(".") > depth:
                best, depth = i, name.count(".")
    return best


def imports_of(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("arborseg.") and not node.level:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("arborseg.")]
    return found


def test_every_module_has_a_layer() -> None:
    missing = []
    for path in SRC.rglob("*.py"):
        module = ".".join(path.relative_to(SRC).with_suffix("").parts)
        if module not in ("__init__",) and layer_of(module) < 0:
            missing.append(module)
    assert not missing, f"add these modules to a layer in tests/test_architecture.py and docs/architecture.md: {missing}"


def test_imports_point_down() -> None:
    wrong = []
    for path in sorted(SRC.rglob("*.py")):
        module = ".".join(path.relative_to(SRC).with_suffix("").parts)
        if module == "__init__":
            continue
        own = layer_of(module)
        for line, target in imports_of(path):
            target = target.removeprefix("arborseg.")
            if layer_of(target) > own:
                wrong.append(f"{path.relative_to(SRC.parent.parent)}:{line} {module} (layer {own}) imports {target} "
                             f"(layer {layer_of(target)})")
    assert not wrong, "imports that point up:\n" + "\n".join(wrong)
