"""The accounting audit: admitted = consumed + dropped_stale + dead_lettered + in_flight.

Counts live in one Redis hash written in the same transactions that settle entries; dead letters
are the lengths of the task and group dead-letter streams. `duplicate` counts redelivered or redone
groups recognised by id (they are not tasks, so they are not part of the sum), `foreign` counts
groups of tasks admitted under another ledger (before Redis lost its data) and dropped unused.
`rolled_back` counts groups that were consumed by steps a dead learner never checkpointed: the
model that trained on them was lost, so a resumed learner takes them off `consumed` and re-admits
their tasks (in flight again; not part of the sum either). `consumed` is then always the number
of groups the current model was trained on.

The ledger lives in Redis: if Redis restarts without persistence it is gone, and the learner
must not carry on as if nothing happened (it would re-admit task ids, and in-flight work is
gone). :func:`check_ledger` turns that into :class:`RedisStateLost` with what to do.
"""
from __future__ import annotations

import redis

from common import metrics as M
from common.config import RedisConfig
from common.transport import Keys

__all__ = ["AUDIT_FIELDS", "read_audit", "check_ledger", "RedisStateLost"]

AUDIT_FIELDS = ("admitted", "consumed", "dropped_stale", "duplicate", "foreign", "dead_lettered", "rolled_back")


class RedisStateLost(RuntimeError):
    """The run's ledger in Redis went backwards: Redis lost its data (restart without persistence)."""


def check_ledger(counts: dict[str, int], admitted_floor: int, where: str = "") -> None:
    """Raise RedisStateLost if fewer tasks are recorded as admitted than this learner admitted."""
    if counts["admitted"] < admitted_floor:
        raise RedisStateLost(
            f"Redis lost this run's state{where}: the audit records {counts['admitted']} admitted tasks, this learner "
            f"admitted {admitted_floor}. Redis restarted without persistence (or the keys were deleted); the tasks "
            f"and groups in flight are gone. Restart the learner: it resumes from its last checkpoint and starts "
            f"a new ledger. Enable Redis appendonly persistence to survive restarts.")


def read_audit(r: redis.Redis, keys: Keys, rc: RedisConfig) -> dict[str, int]:
    raw = r.hgetall(keys.audit)
    counts = {f: int(raw.get(f.encode(), 0)) for f in AUDIT_FIELDS}
    counts["dead_lettered"] = int(r.xlen(keys.dead_letter("tasks"))) + int(r.xlen(keys.dead_letter("groups")))
    counts["in_flight"] = counts["admitted"] - counts["consumed"] - counts["dropped_stale"] - counts["dead_lettered"]
    for k, v in counts.items():
        M.AUDIT.labels(k).set(v)
    M.TASKS_IN_FLIGHT.set(counts["in_flight"])
    return counts
