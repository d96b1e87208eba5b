"""Redis Streams with consumer groups: at-least-once delivery, a janitor, a dead-letter stream.

An entry is a small header (str fields); large payloads live in blob keys written in the same
MULTI/EXEC as the XADD, so a header never points at a blob that was not written. Consumers XACK
only after the work is durable; the janitor (any consumer calling :meth:`StreamQueue.reclaim`)
takes over entries whose consumer went silent (XAUTOCLAIM) and moves an entry to the dead-letter
stream once it has been delivered `max_deliveries` times.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import redis

from common.transport.backpressure import retry_on_oom
from common.metrics import DEAD_LETTERS, QUEUE_DEPTH, QUEUE_PENDING, RECLAIMED
from common.transport.keys import Keys

__all__ = ["Entry", "StreamQueue"]

log = logging.getLogger(__name__)


@dataclass
class Entry:
    stream: str
    id: str
    fields: dict[str, str]
    deliveries: int = 1
    blob_key: str | None = None
    extra: dict = field(default_factory=dict)


def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class StreamQueue:
    """One stream + its consumer group + its dead-letter stream."""

    def __init__(self, r: redis.Redis, keys: Keys, name: str, group: str, *, max_deliveries: int = 3,
                 claim_idle_ms: int = 30_000, maxlen: int = 100_000, blob_ttl_s: int = 6 * 3600,
                 oom_wait_s: float = 600.0):
        self.r, self.keys, self.name, self.group = r, keys, name, group
        self.stream = keys.stream(name)
        self.dlq = keys.dead_letter(name)
        self.max_deliveries = max_deliveries
        self.claim_idle_ms = claim_idle_ms
        self.maxlen = maxlen
        self.blob_ttl_s = blob_ttl_s
        self.oom_wait_s = oom_wait_s  # how long a write waits out a full Redis before RedisFull
        self._group_ready = False
        self._reclaimed = RECLAIMED.labels(name)  # exported from the first use, zero until a reclaim

    # ---- producer --------------------------------------------------------------------------
    def ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            self.r.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise
        self._group_ready = True

    def add(self, fields: dict[str, str | int | float], blob: bytes | None = None, blob_key: str | None = None,
            *, count_in: tuple[str, str] | None = None, oom_wait_s: float | None = None) -> str:
        """XADD a header; with `blob`, SET the blob (with TTL) in the same transaction.

        `count_in=(hash, field)` is HINCRBY'd in the same transaction (an admission is counted
        exactly when its task exists). At maxmemory the write backs off and retries for
        `oom_wait_s` (default: the queue's) and then raises RedisFull; nothing was written.
        """
        self.ensure_group()
        fields = {k: str(v) for k, v in fields.items()}
        if blob is not None:
            if not blob_key:
                raise ValueError("blob_key is required with blob")
            fields["blob_key"] = blob_key

        def write():
            pipe = self.r.pipeline(transaction=True)
            if blob is not None:
                pipe.set(blob_key, blob, ex=self.blob_ttl_s)
            if count_in:
                pipe.hincrby(count_in[0], count_in[1], 1)
            pipe.xadd(self.stream, fields, maxlen=self.maxlen, approximate=True)
            return _s(pipe.execute()[-1])
        return retry_on_oom(write, what=f"{self.name}.add", max_wait_s=self.oom_wait_s if oom_wait_s is None else oom_wait_s)

    # ---- consumer --------------------------------------------------------------------------
    def read(self, consumer: str, count: int = 1, block_ms: int | None = 1000) -> list[Entry]:
        """New entries for `consumer` (first delivery)."""
        self.ensure_group()
        resp = self._healing(lambda: self.r.xreadgroup(self.group, consumer, {self.stream: ">"}, count=count,
                                                        block=block_ms))
        out = []
        for _stream, items in resp or []:
            for eid, f in items:
                out.append(self._entry(eid, f, 1))
        return out

    def _healing(self, call):
        """Run a consumer-group call; if the group vanished (Redis restarted without persistence,
        or the stream was deleted) recreate it once and retry instead of crashing the consumer."""
        try:
            return call()
        except redis.ResponseError as e:
            if "NOGROUP" not in str(e):
                raise
            log.warning("%s: consumer group %r vanished (Redis lost its data?): recreating it", self.stream, self.group)
            self._group_ready = False
            self.ensure_group()
            return call()

    def _entry(self, eid, f, deliveries: int) -> Entry:
        fields = {_s(k): _s(v) for k, v in (f or {}).items()}
        return Entry(self.name, _s(eid), fields, deliveries, fields.get("blob_key"))

    def blob(self, entry: Entry) -> bytes | None:
        """The entry's payload, or None if it expired or was never written."""
        return self.r.get(entry.blob_key) if entry.blob_key else None

    def ack(self, entry: Entry, *, delete_blob: bool = True, mark_key: str | None = None, mark_ttl_s: int = 0,
            count_in: tuple[str, str] | None = None) -> bool:
        """XACK (+XDEL, UNLINK the blob) in one MULTI/EXEC, optionally with a dedup mark and a count.

        `mark_key` is SET NX (returns False when it already existed, i.e. the work was a duplicate);
        `count_in=(hash, field)` is HINCRBY'd in the same transaction, so the outcome of an entry is
        counted exactly when it is settled.

        At maxmemory (Redis 6.2 refuses every command inside MULTI then) the entry's blob is
        unlinked first, outside the transaction, to make room, and the transaction is retried.
        Safe: the caller has already read the blob; if it dies before the retry lands, the entry
        is redelivered without its blob and dead-lettered (counted), never silently lost.
        """
        def settle():
            pipe = self.r.pipeline(transaction=True)
            if mark_key:
                pipe.set(mark_key, entry.id, nx=True, ex=mark_ttl_s or None)
            pipe.xack(self.stream, self.group, entry.id)
            pipe.xdel(self.stream, entry.id)
            if delete_blob and entry.blob_key:
                pipe.unlink(entry.blob_key)
            if count_in:
                pipe.hincrby(count_in[0], count_in[1], 1)
            return pipe.execute()

        def make_room():
            if delete_blob and entry.blob_key:
                self.r.unlink(entry.blob_key)  # UNLINK alone is allowed at maxmemory
        res = retry_on_oom(settle, what=f"{self.name}.ack", max_wait_s=self.oom_wait_s, before_retry=make_room)
        return bool(res[0]) if mark_key else True

    def dead_letter(self, entry: Entry, reason: str, *, mark_key: str | None = None, mark_ttl_s: int = 0) -> str:
        """Move an entry to the dead-letter stream (keeping its blob for inspection) and ack it.

        `mark_key` is SET NX in the same transaction (as in :meth:`ack`), so a redone copy of the
        same work is recognised as a duplicate instead of being dead-lettered, and counted, again.
        """
        fields = dict(entry.fields)
        fields.update({"orig_id": entry.id, "reason": reason[:500], "deliveries": str(entry.deliveries),
                       "dead_at": f"{time.time():.3f}"})

        def move():
            pipe = self.r.pipeline(transaction=True)
            pipe.xadd(self.dlq, fields, maxlen=self.maxlen, approximate=True)
            if mark_key:
                pipe.set(mark_key, entry.id, nx=True, ex=mark_ttl_s or None)
            pipe.xack(self.stream, self.group, entry.id)
            pipe.xdel(self.stream, entry.id)
            return _s(pipe.execute()[0])
        return retry_on_oom(move, what=f"{self.name}.dead_letter", max_wait_s=self.oom_wait_s)

    def reclaim(self, consumer: str, count: int = 100, min_idle_ms: int | None = None,
                max_claimed: int | None = None, skip_own: bool = False) -> tuple[list[Entry], list[Entry]]:
        """Janitor: take over entries idle for `min_idle_ms` whose consumer went silent.

        Returns (reclaimed entries to process now, entries moved to the dead-letter stream). With
        `max_claimed`, stops once that many are claimed: a consumer that can only work on one
        takes one, and leaves the rest to the other consumers instead of hoarding them.

        With `skip_own`, entries `consumer` itself holds are left alone: a generator whose group
        waits long on its reward calls must not take its own in-flight task back and do it twice
        (it finds its own leftovers with :meth:`own_pending` instead).
        """
        self.ensure_group()
        idle = self.claim_idle_ms if min_idle_ms is None else min_idle_ms
        if skip_own:
            return self._reclaim_others(consumer, count, idle, max_claimed)
        claimed, dead = [], []
        start = "0-0"
        while True:
            resp = self._healing(lambda: self.r.xautoclaim(self.stream, self.group, consumer, idle, start_id=start,
                                                           count=count))
            nxt, items = _s(resp[0]), resp[1]
            for eid, f in items:
                if f is None:  # entry deleted while pending (Redis 6.2 returns it as nil)
                    self.r.xack(self.stream, self.group, eid)
                    continue
                deliveries = self._deliveries(_s(eid))
                entry = self._entry(eid, f, deliveries)
                if deliveries > self.max_deliveries:
                    self.dead_letter(entry, f"delivered {deliveries} times (max {self.max_deliveries})")
                    dead.append(entry)
                else:
                    claimed.append(entry)
                    self._reclaimed.inc()
            if nxt == "0-0" or not items or (max_claimed is not None and len(claimed) >= max_claimed):
                break
            start = nxt
        return claimed, dead

    def _reclaim_others(self, consumer: str, count: int, idle: int,
                        max_claimed: int | None) -> tuple[list[Entry], list[Entry]]:
        """XAUTOCLAIM cannot skip an owner, so: list the idle pending entries (XPENDING IDLE), keep
        those another consumer holds, and XCLAIM them with the same idle bound. XCLAIM re-checks the
        idle time atomically, so an entry its owner touched meanwhile is not taken."""
        claimed, dead = [], []
        pending = self._healing(lambda: self.r.xpending_range(self.stream, self.group, min="-", max="+",
                                                              count=count, idle=idle))
        for info in pending:
            if _s(info["consumer"]) == consumer:
                continue
            entry, gone = self._claim(consumer, info, idle)  # nothing: its owner touched it or another janitor took it
            if entry is not None:
                claimed.append(entry)
                self._reclaimed.inc()
            elif gone is not None:
                dead.append(gone)
            if max_claimed is not None and len(claimed) >= max_claimed:
                break
        return claimed, dead

    def own_pending(self, consumer: str, count: int = 100, exclude: frozenset[str] | set[str] = frozenset()
                    ) -> tuple[list[Entry], list[Entry]]:
        """Entries delivered to `consumer` and not acked (its pending list), oldest first, except the
        ids in `exclude` (what it is working on now): what a restarted consumer of the same name, or
        one that gave a task up, left unfinished. Each is claimed again by `consumer` (XCLAIM counts a
        delivery, so a task that kills its consumer every time ends in the dead-letter stream after
        ``max_deliveries``). Returns (entries to process, entries dead-lettered)."""
        self.ensure_group()
        pending = self._healing(lambda: self.r.xpending_range(self.stream, self.group, min="-", max="+",
                                                              count=count, consumername=consumer))
        claimed, dead = [], []
        for info in pending:
            if _s(info["message_id"]) in exclude:
                continue
            entry, gone = self._claim(consumer, info, 0)
            if entry is not None:
                claimed.append(entry)
            elif gone is not None:
                dead.append(gone)
        return claimed, dead

    def _claim(self, consumer: str, info: dict, min_idle_ms: int) -> tuple[Entry | None, Entry | None]:
        """XCLAIM one entry XPENDING listed (`info`) for `consumer`, counting the delivery. Returns
        (entry to process, None); (None, entry) when that delivery is one too many and the entry went
        to the dead-letter stream; (None, None) when nothing was claimed (XCLAIM re-checks the idle
        time) or the entry was deleted while pending."""
        for eid, f in self.r.xclaim(self.stream, self.group, consumer, min_idle_ms, [_s(info["message_id"])]):
            if f is None:  # deleted while pending
                self.r.xack(self.stream, self.group, eid)
                return None, None
            entry = self._entry(eid, f, int(info["times_delivered"]) + 1)
            if entry.deliveries > self.max_deliveries:
                self.dead_letter(entry, f"delivered {entry.deliveries} times (max {self.max_deliveries})")
                return None, entry
            return entry, None
        return None, None

    def _deliveries(self, eid: str) -> int:
        info = self.r.xpending_range(self.stream, self.group, min=eid, max=eid, count=1)
        return int(info[0]["times_delivered"]) if info else 1

    # ---- observability ---------------------------------------------------------------------
    def depth(self) -> int:
        return int(self.r.xlen(self.stream))

    def pending(self) -> int:
        self.ensure_group()
        return int(self.r.xpending(self.stream, self.group)["pending"])

    def dead_letters(self) -> int:
        return int(self.r.xlen(self.dlq))

    def export_metrics(self) -> dict[str, int]:
        """Set dyref_queue_depth / _pending / _dead_letters for this stream; returns the numbers."""
        depth, pending, dead = self.depth(), self.pending(), self.dead_letters()
        QUEUE_DEPTH.labels(self.name).set(depth)
        QUEUE_PENDING.labels(self.name).set(pending)
        DEAD_LETTERS.labels(self.name).set(dead)
        return {"depth": depth, "pending": pending, "dead_letters": dead}

    def dead_letter_entries(self, count: int = 100) -> list[dict[str, str]]:
        return [{_s(k): _s(v) for k, v in f.items()} | {"id": _s(i)} for i, f in self.r.xrange(self.dlq, count=count)]
