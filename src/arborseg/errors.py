"""The one error hierarchy of arborseg.

Every error a user can cause (bad YAML, bad data, an invalid window, ...) is an
``ArborsegError``; the CLI prints it as one line and exits non-zero.
"""

from __future__ import annotations

from collections.abc import Iterable


class ArborsegError(Exception):
    """Base class of every error arborseg raises on purpose."""


class SpaceError(ArborsegError):
    """A search-space YAML file is invalid (names the file and the key path)."""


class TreeError(ArborsegError):
    """A module-tree file is invalid or cannot be built."""


class WindowError(ArborsegError):
    """A window (z, y, x) does not fit a network (e.g. xy not divisible by 2**depth)."""


class DataError(ArborsegError):
    """A data YAML or a volume is invalid (shapes, dtypes, regions, label values)."""


class TrainingError(ArborsegError):
    """Training failed in a way the user should know about (NaN loss, out of memory)."""


class CampaignError(ArborsegError):
    """A campaign YAML, storage or executor problem."""


class BundleError(ArborsegError):
    """An exported bundle is missing pieces or cannot be loaded."""


class PretrainError(ArborsegError):
    """A pre-training config is invalid, or a pre-trained encoder file cannot be loaded into a network."""


def did_you_mean(word: object, valid: Iterable[str], otherwise: str = "valid") -> str:
    """The tail of a one-line error about an unknown name: ``; did you mean 'x'?`` for a close match, else the
    valid names (``otherwise="valid"``: `` (valid: a, b)``; ``"keys"``: ``; valid keys: a, b``; ``""``: nothing)."""
    import difflib

    names = [str(v) for v in valid]
    close = difflib.get_close_matches(str(word), names, n=1)
    if close:
        return f"; did you mean {close[0]!r}?"
    if otherwise == "keys":
        return f"; valid keys: {', '.join(names)}"
    return f" (valid: {', '.join(names)})" if otherwise else ""
