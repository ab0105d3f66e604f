"""Hyperparameter values in a search space: constants, distributions, adjustments.

YAML forms (``name`` is any hyperparameter key):

- ``name: 3`` / ``name: instance`` / ``name: true``: a constant;
- ``name: {int: [2, 5]}`` (optional ``log: true``, ``step: 2``): an integer range, both ends included;
- ``name: {float: [1.0e-4, 1.0e-2], log: true}``: a float range;
- ``name: {choice: [instance, batch]}``: one of the listed values;
- ``name: {times: 2}`` (the factor may itself be a distribution): the value inherited from the
  parent node, multiplied (integers are rounded and kept >= 1; the product is kept inside what the
  parameter allows: clipped to its range, or the nearest of its allowed values).

Sampling goes through a :class:`Draw`, so the same space can be sampled at random
(:class:`RandomDraw`), replayed (:class:`FixedDraw`) or refined by Optuna
(``arborseg.campaign`` provides an Optuna draw).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

Scalar = int | float | str | bool | None


class Draw(Protocol):
    """Where sampled values come from. ``path`` names the value uniquely inside the space."""

    def int(self, path: str, low: int, high: int, log: bool, step: int, structural: bool) -> int: ...

    def float(self, path: str, low: float, high: float, log: bool, structural: bool) -> float: ...

    def choice(self, path: str, options: tuple[Any, ...], structural: bool) -> Any: ...


@dataclass(frozen=True)
class Constant:
    value: Any

    def sample(self, path: str, draw: Draw, structural: bool) -> Any:
        return self.value

    @property
    def is_distribution(self) -> bool:
        return False


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int
    log: bool = False
    step: int = 1

    def sample(self, path: str, draw: Draw, structural: bool) -> int:
        return int(draw.int(path, self.low, self.high, self.log, self.step, structural))

    @property
    def is_distribution(self) -> bool:
        return True


@dataclass(frozen=True)
class FloatRange:
    low: float
    high: float
    log: bool = False

    def sample(self, path: str, draw: Draw, structural: bool) -> float:
        return float(draw.float(path, self.low, self.high, self.log, structural))

    @property
    def is_distribution(self) -> bool:
        return True


@dataclass(frozen=True)
class Choice:
    options: tuple[Any, ...]

    def sample(self, path: str, draw: Draw, structural: bool) -> Any:
        return draw.choice(path, self.options, structural)

    @property
    def is_distribution(self) -> bool:
        return True


@dataclass(frozen=True)
class Times:
    """Multiply the inherited value by ``factor`` (itself a value)."""

    factor: Constant | IntRange | FloatRange | Choice

    def sample(self, path: str, draw: Draw, structural: bool) -> float:
        return self.factor.sample(f"{path}.times", draw, structural)

    @property
    def is_distribution(self) -> bool:
        return self.factor.is_distribution


Value = Constant | IntRange | FloatRange | Choice | Times


class RandomDraw:
    """Draws uniformly (or log-uniformly) from a seeded numpy Generator and records every draw."""

    def __init__(self, rng: np.random.Generator | int) -> None:
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        self.record: dict[str, Any] = {}
        self.structural: set[str] = set()

    def _keep(self, path: str, value: Any, structural: bool) -> Any:
        self.record[path] = value
        if structural:
            self.structural.add(path)
        return value

    def int(self, path: str, low: int, high: int, log: bool, step: int, structural: bool) -> int:
        if log:
            value = int(math.floor(math.exp(self.rng.uniform(math.log(low), math.log(high + 1)))))
            value = min(max(value, low), high)
        else:
            n_steps = (high - low) // step
            value = low + step * int(self.rng.integers(0, n_steps + 1))
        return self._keep(path, value, structural)

    def float(self, path: str, low: float, high: float, log: bool, structural: bool) -> float:
        if log:
            value = float(math.exp(self.rng.uniform(math.log(low), math.log(high))))
        else:
            value = float(self.rng.uniform(low, high))
        return self._keep(path, value, structural)

    def choice(self, path: str, options: tuple[Any, ...], structural: bool) -> Any:
        return self._keep(path, options[int(self.rng.integers(0, len(options)))], structural)


class FixedDraw:
    """Replays recorded values; paths not recorded fall back to ``fallback`` (or fail)."""

    def __init__(self, values: dict[str, Any], fallback: Draw | None = None) -> None:
        self.values = values
        self.fallback = fallback
        self.record: dict[str, Any] = {}
        self.structural: set[str] = set()

    def _get(self, path: str, structural: bool, ask) -> Any:
        if path in self.values:
            value = self.values[path]
        elif self.fallback is not None:
            value = ask()
        else:
            raise KeyError(f"no value recorded for {path!r}")
        self.record[path] = value
        if structural:
            self.structural.add(path)
        return value

    def int(self, path, low, high, log, step, structural):
        return self._get(path, structural, lambda: self.fallback.int(path, low, high, log, step, structural))

    def float(self, path, low, high, log, structural):
        return self._get(path, structural, lambda: self.fallback.float(path, low, high, log, structural))

    def choice(self, path, options, structural):
        return self._get(path, structural, lambda: self.fallback.choice(path, options, structural))
