"""One weight follower for every consumer of the weight store (the generator, the gateway and the
RL evaluator).

A consumer serves one verified version and switches only when its caller asks, between groups or
batches (docs/architecture.md, principle 4). The follower owns the version served, the versions
refused for good, the failure counts and their metrics, and how news of a version arrives: the
store's pub/sub notice wakes a waiter at once; a check of ``latest`` every ``poll_interval_s``
covers a notice that never came (Redis restarted, or the learner died between its EXEC and its
PUBLISH). A Redis outage never raises out of it: the consumer keeps serving and tries again after
a back-off.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from typing import Callable

from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from common import metrics as M
from common.codec import CodecError
from common.policy.policy import TrainableStateError
from common.schemas import WeightVersion
from common.transport.direct import DirectLink, SourceUnavailable
from common.transport.weights import ChecksumError, WeightsMissing, WeightStore

__all__ = ["WeightFollower", "WeightSyncError", "REASONS"]

log = logging.getLogger(__name__)

# Redis is unreachable (down, restarting, loading its AOF): keep serving, try again later
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError)
# dyref_weight_load_failures{reason}: checksum, shape and invalid refuse the version for good;
# missing (expired from the store before we fetched it) is only counted, the next check retries
# source: the direct path's weight source is gone or its transfer failed (counted, retried after a back-off)
REASONS = ("checksum", "shape", "invalid", "missing", "probe", "source")


class WeightSyncError(RuntimeError):
    """The policy version a caller waits for was not being served before its deadline."""


class WeightFollower:
    """Follows the weight store's ``latest`` pointer for one consumer.

    `load(bytes)` installs a verified payload; it must raise TrainableStateError (keys or shapes do
    not fit) or CodecError (not a state at all) without changing anything, as
    ``MRIGPolicy.load_trainable_state`` does. Any other exception from it is a fault of the
    consumer, not of the version, and propagates.

    `wanted(version)`, when given, says which versions to switch to at all: one it declines is
    neither fetched nor refused, and a later check asks again (the evaluator wants every K-th).

    `probe()`, when given, recomputes ``MRIGPolicy.probe`` after a load; a version whose publisher
    recorded a probe is served only when the two agree within ``probe_tolerance`` (relative to the
    probe's scale). Otherwise the load bound nothing (or not what was trained): the version is
    refused (reason ``probe``) and the one before stays the version served, so the groups sampled
    meanwhile carry the version their weights really are.

    A version published on the direct path (``transport == "direct"``) is fetched from the learner's
    weight source through `direct` (common/transport/direct.py); a follower given none makes one
    that reads through Ray's object store when this process is in the Ray cluster.

    Thread-safe (one lock), but `wait_for` holds the lock while it waits: a consumer that waits
    and serves from different threads should not share one follower.
    """

    def __init__(self, store: WeightStore, load: Callable[[bytes], None], consumer: str, service: str,
                 poll_interval_s: float = 1.0, backoff_s: float = 0.5, max_backoff_s: float = 5.0,
                 confirm_timeout_s: float = 2.0, wanted: Callable[[int], bool] | None = None,
                 probe: Callable[[], list[float]] | None = None, probe_tolerance: float = 1e-3,
                 direct: "DirectLink | None" = None):
        if poll_interval_s <= 0 or backoff_s <= 0 or max_backoff_s < backoff_s:
            raise ValueError("need poll_interval_s > 0 and 0 < backoff_s <= max_backoff_s")
        self.store, self.load, self.consumer, self.service = store, load, consumer, service
        self.poll_interval_s, self.backoff_s, self.max_backoff_s = poll_interval_s, backoff_s, max_backoff_s
        self.confirm_timeout_s, self.wanted = confirm_timeout_s, wanted
        self.probe, self.probe_tolerance = probe, probe_tolerance
        self.direct = direct
        self.served: WeightVersion | None = None   # metadata of the version served
        self.refused: set[int] = set()
        self.failures: dict[str, int] = defaultdict(int)
        self.notices = 0        # weight notices received over pub/sub
        self.redis_errors = 0   # Redis calls that failed (each one starts or lengthens a back-off)
        self._lock = threading.RLock()
        self._ps = None
        self._news = True       # nothing checked yet
        self._next_poll = 0.0   # monotonic time the fallback check is due
        self._retry_at = 0.0    # no Redis call before this (back-off after a failure)
        self._resub_at = 0.0    # no SUBSCRIBE before this
        self._backoff = 0.0
        for reason in REASONS:
            M.WEIGHT_LOAD_FAILURES.labels(consumer, reason)  # exported as 0 until the first failure
        with self._lock:
            self._subscribe()

    @property
    def version(self) -> int | None:
        """The version served (None: nothing loaded yet)."""
        return None if self.served is None else self.served.version

    @property
    def subscribed(self) -> bool:
        return self._ps is not None

    # ---- the three calls a consumer makes ------------------------------------------------------
    def due(self) -> bool:
        """Whether `poll` has anything to do: a notice came, or the fallback check is due. Cheap
        enough for every request (no Redis command: one non-blocking read of the subscription's
        socket); False while backing off from a Redis failure."""
        with self._lock:
            now = time.monotonic()
            if now < self._retry_at:
                return False
            self._subscribe()
            self._listen(0.0)
            return self._news or now >= self._next_poll

    def poll_if_due(self) -> int | None:
        """`poll` when `due`; the version served either way."""
        with self._lock:
            return self.poll() if self.due() else self.version

    def poll(self) -> int | None:
        """Switch now if ``latest`` names a version other than the one served, not refused, whose
        bytes verify and load. Returns the version served (None: nothing loaded yet).

        A different version, not only a higher one: the learner never reuses or lowers a version
        number (services/learner/rl_recipe.py, setup), so a lower ``latest`` means Redis lost the
        store and the learner started over; its pointer is then the truth."""
        with self._lock:
            if time.monotonic() < self._retry_at:
                return self.version
            self._subscribe()
            self._listen(0.0)
            if time.monotonic() < self._retry_at:  # the subscription found Redis down
                return self.version
            self._news = False  # notices read so far are answered by this check
            self._next_poll = time.monotonic() + self.poll_interval_s
            try:
                latest = self.store.latest()
            except REDIS_DOWN as e:
                self._redis_failed(e)
                return self.version
            except ValidationError as e:
                # not a version we can name, so nothing to refuse: look again at the next check
                log.error("%s: unreadable weights metadata (%s); serving version %s", self.consumer, e, self.version)
                return self.version
            if (latest is None or latest.version == self.version or latest.version in self.refused
                    or (self.wanted is not None and not self.wanted(latest.version))):
                self._backoff = 0.0
                return self.version
            t0 = time.perf_counter()
            try:
                data = self._fetch(latest)
            except REDIS_DOWN as e:
                self._redis_failed(e)
                return self.version
            except SourceUnavailable as e:
                self._count("source")
                self._source_failed(e)
                return self.version
            except ChecksumError as e:
                self._refuse(latest.version, "checksum", e)
                return self.version
            except WeightsMissing as e:
                self._backoff = 0.0
                self._count("missing")
                log.warning("%s: %s", self.consumer, e)
                return self.version
            self._backoff = 0.0
            try:
                self.load(data)  # checks every key and shape before it copies anything
            except TrainableStateError as e:
                self._refuse(latest.version, "shape", e)
            except CodecError as e:
                self._refuse(latest.version, "invalid", e)
            else:
                mismatch = self._probe_mismatch(latest)
                if mismatch:
                    self._refuse(latest.version, "probe", WeightSyncError(mismatch))
                    return self.version
                self.served = latest
                M.POLICY_VERSION_SERVED.labels(self.consumer).set(latest.version)
                M.WEIGHT_SYNC_SECONDS.labels(self.consumer).observe(max(0.0, time.time() - latest.created_at))
                M.PHASE_SECONDS.labels(self.service, "sync").observe(time.perf_counter() - t0)
                log.info("%s: serving policy version %d", self.consumer, latest.version)
            return self.version

    def wait_for(self, min_version: int, timeout_s: float) -> int:
        """Switch to the newest verifying version, waiting until it is at least `min_version`:
        woken by the version's notice, else by the fallback check. Raises WeightSyncError after
        `timeout_s` (0: check once, never wait)."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            self.poll()
            while self.version is None or self.version < min_version:
                now = time.monotonic()
                if now >= deadline:
                    raise WeightSyncError(f"{self.consumer}: policy version {min_version} not available after "
                                          f"{timeout_s}s (serving {self.version})")
                # never before the back-off ends: poll would return at once and this would spin
                wake = min(deadline, max(self._next_poll, self._retry_at))
                if self._ps is not None:
                    self._listen(max(0.0, wake - now))
                else:  # not subscribed: sleep, but wake to re-subscribe when that is allowed again
                    time.sleep(max(0.0, (min(wake, self._resub_at) if self._resub_at > now else wake) - now))
                self.poll()
            return self.version

    def close(self) -> None:
        with self._lock:
            self._drop()
            if self.direct is not None:
                self.direct.close()

    # ---- internals -----------------------------------------------------------------------------
    def _subscribe(self) -> None:
        """(Re-)subscribe to the notices unless backing off; on failure the fallback check carries on."""
        now = time.monotonic()
        if self._ps is not None or now < self._retry_at or now < self._resub_at:
            return
        ps = None
        try:
            ps = self.store.subscribe(ignore_subscribe_messages=False)
            # wait for the confirmation: SUBSCRIBE is then in effect before our next read of
            # `latest`, so a version published after that read cannot go unnoticed
            ps.get_message(timeout=self.confirm_timeout_s)
        except RedisError as e:
            self._close(ps)
            if isinstance(e, REDIS_DOWN):
                self._redis_failed(e)  # re-subscribed when its back-off ends
            else:  # e.g. an ACL without SUBSCRIBE: polling still works
                self._resub_at = time.monotonic() + self.max_backoff_s
                log.warning("%s: no weight notices (%s); checking every %.1fs instead",
                            self.consumer, e, self.poll_interval_s)
            return
        self._ps = ps
        self._news = True  # a notice may have gone out while we were not subscribed

    def _listen(self, timeout: float) -> None:
        """Read the notices that came, waiting up to `timeout` s for one unless news is already in."""
        if self._ps is None:
            return
        deadline = time.monotonic() + (0.0 if self._news else timeout)
        try:
            while True:
                msg = self._ps.get_message(timeout=max(0.0, deadline - time.monotonic()))
                if msg is None:
                    return
                if msg["type"] == "message":
                    self.notices += 1
                    self._news = True
                elif msg["type"] == "subscribe":
                    # redis-py reconnected and re-subscribed by itself: a notice may have been lost
                    self._news = True
                if self._news:
                    deadline = 0.0  # drain what else is there, without waiting
        except RedisError as e:
            self._drop()
            if isinstance(e, REDIS_DOWN):
                self._redis_failed(e)
            else:
                self._resub_at = time.monotonic() + self.backoff_s
                log.warning("%s: weight notices failed (%s); re-subscribing", self.consumer, e)

    def _fetch(self, wv: WeightVersion) -> bytes:
        if wv.transport == "redis":
            return self.store.fetch(wv)
        if self.direct is None:
            self.direct = DirectLink()  # through the object store: this process has no receiver method
        return self.direct.fetch(wv)

    def _back_off(self) -> None:
        """No call before the (doubled, capped) back-off ends; check as soon as it does."""
        self._backoff = min(self.max_backoff_s, self._backoff * 2 or self.backoff_s)
        self._retry_at = time.monotonic() + self._backoff
        self._news = True  # a notice may be lost meanwhile

    def _source_failed(self, e: Exception) -> None:
        # the source, not Redis, failed: keep the subscription, retry after the same back-off
        self._back_off()
        log.warning("%s: weight source unreachable (%s); serving version %s, next try in %.1fs",
                    self.consumer, e, self.version, self._backoff)

    def _redis_failed(self, e: Exception) -> None:
        self.redis_errors += 1
        self._drop()  # its connection broke too; re-subscribed once the back-off ends
        self._back_off()
        log.warning("%s: Redis unreachable (%s: %s); serving version %s, next try in %.1fs",
                    self.consumer, type(e).__name__, e, self.version, self._backoff)

    def _probe_mismatch(self, wv: WeightVersion) -> str | None:
        """Why the loaded weights do not compute what the publisher's did, or None."""
        if self.probe is None or wv.probe is None:
            return None
        got = self.probe()
        scale = max(1.0, max(abs(v) for v in wv.probe))
        worst = max((abs(a - b) for a, b in zip(got, wv.probe)), default=0.0)
        if len(got) != len(wv.probe) or worst > self.probe_tolerance * scale:
            return (f"after loading, the fixed probe input gives an output {worst:.3g} away from the publisher's "
                    f"(tolerance {self.probe_tolerance:g} x {scale:.3g}): the load did not bind the published weights")
        return None

    def _count(self, reason: str) -> None:
        self.failures[reason] += 1
        M.WEIGHT_LOAD_FAILURES.labels(self.consumer, reason).inc()

    def _refuse(self, version: int, reason: str, e: Exception) -> None:
        # for good: a bad version is not fetched again on every check
        self.refused.add(version)
        self._count(reason)
        log.error("%s: refused weight version %d (%s): %s; still serving %s", self.consumer, version, reason, e,
                  self.version)

    def _drop(self) -> None:
        ps, self._ps = self._ps, None
        self._close(ps)

    @staticmethod
    def _close(ps) -> None:
        if ps is not None:
            try:
                ps.close()
            except (RedisError, OSError):
                pass  # its socket is already gone
