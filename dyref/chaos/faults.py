"""Fault injection for the chaos suite: a reward scorer that misbehaves on purpose.

Kept here, not in the production configuration: the reward service knows only that its app can be
deployed with a scorer wrapper (services/reward/app.py ``reward_app(..., wrap_scorer=...)``); the
chaos scenarios pass a :class:`ScorerFault`, which Serve ships to the replica with the deployment.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Callable, Literal

__all__ = ["ScorerFault", "with_fault"]

Table = list[list[float | None]]
GroupScorer = Callable[[list], list[Table]]

_GARBAGE = (
    lambda t: [[float("nan")] * len(r) for r in t],          # NaN everywhere
    lambda t: [[float("inf")] + r[1:] for r in t],           # an infinite score per row
    lambda t: t[:-1],                                        # one image short: [G-1][J]
    lambda t: [r + r for r in t],                            # one image two widths: ragged J
    lambda t: [[None] * len(r) for r in t],                  # all missing
)


def with_fault(run: GroupScorer, fault: str, every: int, delay_s: float) -> GroupScorer:
    """Every `every`-th batch (counted per replica) sleeps `delay_s` first (slow) or answers a
    garbage table (NaN, inf, short, ragged, all None in turn)."""
    if fault == "none":
        return run
    if every < 1 or delay_s < 0:
        raise ValueError(f"fault every must be ≥ 1 and delay_s ≥ 0, got every={every}, delay_s={delay_s}")
    calls, kinds = itertools.count(1), itertools.cycle(_GARBAGE)

    def faulty(reqs: list) -> list[Table]:
        hit = next(calls) % every == 0
        if hit and fault == "slow":
            time.sleep(delay_s)
        out = run(reqs)
        if hit and fault == "garbage":
            out = [next(kinds)(t) for t in out]
        return out
    return faulty


@dataclass(frozen=True)
class ScorerFault:
    """A scorer wrapper for ``reward_app(wrap_scorer=...)``: picklable, so Serve can ship it."""
    kind: Literal["slow", "garbage"]
    every: int = 2
    delay_s: float = 0.0

    def __call__(self, run: GroupScorer) -> GroupScorer:
        return with_fault(run, self.kind, self.every, self.delay_s)
