"""Asynchronous successive halving (ASHA, Li et al. 2020) over the campaign's trials, as pure bookkeeping.

A :class:`Contender` is one trial (one tree with its values) seen by the rung scheduler: the objective it
reached at the end of each rung it trained, the rung its latest job trains to, and whether it is finished for
good. :func:`promotions` says which paused trials go on to the next rung:

- **asynchronously** (ASHA): a trial paused at rung k goes on as soon as it is among the best
  ``m * n_(k+1) // n_k`` of the ``m`` trials that finished rung k so far (``n``: the plan's trials per rung; ASHA's
  ``m // eta`` when ``n_(k+1) = n_k / eta``), so workers never wait for a rung to fill, and a rung's slots are
  handed out in proportion to how many of its trials have reported, so late arrivals (refinements) still compete;
- **when rung k is closed** (every trial that will ever reach it has): the best remaining trials fill the
  rung's planned slots, so the plan's rung sizes are met whatever the order of arrival;
- never more than the plan's ``n_(k+1)`` trials go past rung k (:func:`arborseg.campaign.budget.rung_sizes`),
  so the campaign spends its budget and no more.

Protected trials (the portfolio's known-good trees, unless ``budget.portfolio_to_top`` is false) go on at once, to the
top, in slots of their own: they neither compete nor take a slot. Higher rungs are served first (they hold the
campaign's best trials). Pure Python; the driver keeps the
contenders in step with the Optuna storage (user attributes ``rung``, ``rung_values`` and ``target_rung``), so a
restarted driver makes the same decisions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class Contender:
    key: str  # the driver's task key ("random:3", ...)
    values: dict[int, float] = field(default_factory=dict)  # rung index -> objective at the end of that rung
    target: int = 0  # the rung its latest (or next) job trains to
    done: bool = False  # COMPLETE, PRUNED or FAIL: no more training
    protected: bool = False  # trains to the top rung without competing (a portfolio tree)

    @property
    def rung(self) -> int:
        """The highest rung finished (-1: none yet)."""
        return max(self.values, default=-1)

    @property
    def paused(self) -> bool:
        return not self.done and self.target == self.rung >= 0

    @property
    def training(self) -> bool:
        """Has a job in flight or waiting to go out (toward ``target``)."""
        return not self.done and self.target > self.rung


def _ranked(contenders: list[Contender], rung: int, maximize: bool) -> list[Contender]:
    return sorted(contenders, key=lambda c: (-c.values[rung] if maximize else c.values[rung], c.key))


def promotions(contenders: Sequence[Contender], sizes: Sequence[int], maximize: bool,
               all_started: bool) -> list[tuple[Contender, int]]:
    """(contender, rung to train to) for every paused trial that goes on now, higher rungs first.

    ``sizes``: the plan's trials per rung that compete (protected trials have slots of their own);
    ``all_started``: no new trial will start at the first rung."""
    out: list[tuple[Contender, int]] = [(c, c.rung + 1) for c in contenders
                                        if c.protected and c.paused and c.rung < len(sizes) - 1]
    competing = [c for c in contenders if not c.protected]
    closed = all_started
    for k in range(len(sizes) - 1):
        # rung k is closed when no trial still trains toward it (nor toward a lower rung: checked below first)
        closed = closed and not any(c.training and c.target <= k for c in competing)
        reached = [c for c in competing if k in c.values]
        slots = sizes[k + 1] - sum(1 for c in reached if c.target > k)
        if slots <= 0:
            continue
        ranked = _ranked(reached, k, maximize)
        eligible = ranked if closed else ranked[:len(ranked) * sizes[k + 1] // max(sizes[k], 1)]
        chosen = [c for c in eligible if c.paused and c.rung == k][:slots]
        out += [(c, k + 1) for c in chosen]
        if chosen:
            closed = False  # the promoted trials still have to reach rung k + 1
    return sorted(out, key=lambda item: -item[1])


def finished(contenders: Sequence[Contender], sizes: Sequence[int], maximize: bool, all_started: bool) -> bool:
    """Whether nothing is left to train: every trial started, none training, none to promote."""
    return all_started and not any(c.training for c in contenders) and \
        not promotions(contenders, sizes, maximize, all_started)

