"""The library logger. Modules call ``get_logger(__name__)``; the CLI configures handlers."""

from __future__ import annotations

import logging

ROOT = "arborseg"


def get_logger(name: str = ROOT) -> logging.Logger:
    """Return a logger below the ``arborseg`` namespace."""
    if not name.startswith(ROOT):
        name = f"{ROOT}.{name}"
    return logging.getLogger(name)


def configure(verbosity: int = 0) -> None:
    """Send arborseg logs to stderr: 0 = INFO, 1+ = DEBUG, -1 = WARNING."""
    level = logging.DEBUG if verbosity > 0 else logging.WARNING if verbosity < 0 else logging.INFO
    logger = logging.getLogger(ROOT)
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname).1s %(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
    logger.setLevel(level)
