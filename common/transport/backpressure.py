"""Back-pressure from a full Redis: retry writes refused at maxmemory instead of crashing.

Redis runs with ``maxmemory-policy noeviction`` (never silent loss), so at the limit it refuses
every write that could grow memory with ``OOM command not allowed when used memory >
'maxmemory'`` (Redis 6.2 refuses *every* command queued inside MULTI, even XACK). A refused
MULTI/EXEC applied nothing, so running it again is safe: :func:`retry_on_oom` re-runs a write
with exponential backoff + jitter until it lands or ``max_wait_s`` passes, then raises
:class:`RedisFull` naming the fix. Producers (task admission, group publish, weight publish)
wait; consumers free memory (acks unlink blobs) so the queue drains and the producers resume.
"""
from __future__ import annotations

import logging
import random
import time
from typing import Callable, TypeVar

import redis

from common import metrics as M

__all__ = ["RedisFull", "is_oom", "retry_on_oom"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class RedisFull(RuntimeError):
    """Redis stayed at maxmemory (noeviction) longer than the caller was willing to wait."""


def is_oom(exc: BaseException) -> bool:
    """True for Redis' maxmemory refusal (redis-py's OutOfMemoryError, or the raw OOM reply)."""
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        return True
    return isinstance(exc, redis.exceptions.ResponseError) and "maxmemory" in str(exc) and "OOM" in str(exc).upper()


def retry_on_oom(fn: Callable[[], T], *, what: str, max_wait_s: float, before_retry: Callable[[], None] | None = None,
                 base_s: float = 0.05, cap_s: float = 2.0, sleep: Callable[[float], None] = time.sleep) -> T:
    """Run ``fn`` (a complete, idempotent-on-refusal write); on OOM back off and run it again.

    ``before_retry`` runs once after the first refusal (e.g. free this entry's blob first).
    ``max_wait_s=0`` tries once and raises :class:`RedisFull` at once (callers that can skip work).
    Any other error propagates unchanged.
    """
    deadline = time.monotonic() + max_wait_s
    delay, tries = base_s, 0
    while True:
        try:
            return fn()
        except redis.exceptions.ResponseError as e:
            if not is_oom(e):
                raise
            tries += 1
            M.REDIS_OOM.labels(what).inc()
            if tries == 1:
                if max_wait_s > 0:  # a single try (max_wait_s=0) is the caller's to report
                    log.warning("%s: Redis is at maxmemory; backing off (%s)", what, e)
                if before_retry is not None:
                    before_retry()
            left = deadline - time.monotonic()
            if left <= 0:
                raise RedisFull(f"{what}: Redis refused the write at maxmemory (noeviction) for {max_wait_s:.0f}s "
                                f"({tries} tries); raise Redis maxmemory, add consumers, or lower admission "
                                f"(rl.max_staleness / rl.groups_per_step)") from e
            sleep(min(left, delay * (0.5 + random.random())))
            delay = min(cap_s, delay * 2)
