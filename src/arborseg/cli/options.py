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
