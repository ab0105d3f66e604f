"""Checks of command-line values shared by the command groups."""

from __future__ import annotations

import argparse

from arborseg.errors import ArborsegError


def require_positive(args: argparse.Namespace, *dests: str) -> None:
    """Refuse an integer option below 1 with one line, e.g. ``--steps -5: give at least 1``; options that
    were not given (None) pass."""
    for dest in dests:
        value = getattr(args, dest)
        if value is not None and value < 1:
            raise ArborsegError(f"--{dest.replace('_', '-')} {value}: give at least 1")


def key_values(items: list[str] | None, option: str, example: str) -> dict:
    """``KEY=VALUE`` options (repeatable) as a dict, each value read as YAML (``3`` an int, ``true`` a bool);
    an item without ``=`` is one line naming the option and an ``example``."""
    import yaml

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ArborsegError(f"{option} {item!r}: write KEY=VALUE, e.g. {option} {example}")
        out[key] = yaml.safe_load(value)
    return out
