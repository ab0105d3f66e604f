"""Reading a user's YAML file: a missing file or a YAML syntax error is one line of the caller's error class."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from arborseg.errors import ArborsegError


def read_yaml_file(path: str | Path, error: type[ArborsegError], missing: str) -> Any:
    """The parsed content of ``path``; raises ``error`` naming the file, with ``missing`` as the hint when it does
    not exist and the line and column of a syntax error."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {missing}")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise error(f"{path.name}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
