"""The accounting audit: admitted = consumed + dropped_stale + dead_lettered + in_flight.

Counts live in one Redis hash written in the same transactions that settle entries; dead letters
are the lengths of the task and group dead-letter streams. `duplicate` counts redelivered or redone
groups recognised by id (they are not tasks, so they are not part of the sum).
"""
from __future__ import annotations

import redis

from common import metrics as M
from common.config import RedisConfig
from common.transport import Keys

__all__ = ["AUDIT_FIELDS", "read_audit"]

AUDIT_FIELDS = ("admitted", "consumed", "dropped_stale", "duplicate", "dead_lettered")


def read_audit(r: redis.Redis, keys: Keys, rc: RedisConfig) -> dict[str, int]:
    raw = r.hgetall(keys.audit)
    counts = {f: int(raw.get(f.encode(), 0)) for f in AUDIT_FIELDS}
    counts["dead_lettered"] = int(r.xlen(keys.dead_letter("tasks"))) + int(r.xlen(keys.dead_letter("groups")))
    counts["in_flight"] = counts["admitted"] - counts["consumed"] - counts["dropped_stale"] - counts["dead_lettered"]
    for k, v in counts.items():
        M.AUDIT.labels(k).set(v)
    M.TASKS_IN_FLIGHT.set(counts["in_flight"])
    return counts
