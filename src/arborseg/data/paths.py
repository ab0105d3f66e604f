"""Resolve relative volume paths written in a YAML file."""

from __future__ import annotations

from pathlib import Path

from arborseg.data.volumes import split_spec


def candidate_dirs(yaml_dir: str | Path | None) -> list[Path]:
    """Where relative paths are looked up: the working directory, then the YAML folder and its parents."""
    dirs = [Path.cwd()]
    if yaml_dir is not None:
        folder = Path(yaml_dir).expanduser().resolve()
        dirs += [folder, *folder.parents]
    return list(dict.fromkeys(dirs))  # first occurrence of each, in order


def resolve_spec(spec: str, yaml_dir: str | Path | None) -> tuple[str | None, list[Path]]:
    """Resolve the file part of ``path[:key]``; return (absolute spec or None, the places tried)."""
    path_text, key = split_spec(spec)
    path = Path(path_text).expanduser()
    tried = [path] if path.is_absolute() else [d / path for d in candidate_dirs(yaml_dir)]
    for candidate in tried:
        if candidate.exists():
            found = str(candidate.resolve())
            return (f"{found}:{key}" if key else found), tried
    return None, tried
