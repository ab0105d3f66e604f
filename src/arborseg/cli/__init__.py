"""The ``arborseg`` command: one module per command group; :func:`main` is the entry point."""

from arborseg.cli.main import main

__all__ = ["main"]
