"""Versioned weight store: bytes + sha256 in Redis, pub/sub notification, last K versions kept.

Weight sync is a verified transaction (docs/architecture.md, principle 4): the learner publishes version N
(bytes, then metadata, then the `latest` pointer, in one MULTI/EXEC, then a PUBLISH); consumers
fetch, verify the checksum and only then switch. A blob that fails its checksum raises
:class:`ChecksumError`; the consumer keeps the version it had.
"""
from __future__ import annotations

import hashlib
import time

import redis

from common.schemas import WeightVersion
from common.transport.backpressure import retry_on_oom
from common.transport.keys import Keys

__all__ = ["WeightStore", "ChecksumError", "WeightsMissing"]


class ChecksumError(ValueError):
    """Fetched weight bytes do not match the published sha256."""


class WeightsMissing(LookupError):
    """The requested weight version is not (or no longer) in the store."""


class WeightStore:
    """`chunk_bytes` splits a version over several keys: one Redis value is capped at 512 MB
    (proto-max-bulk-len) and a rank-64 LoRA of a 20 B model is ~1.6 GB in fp32."""

    def __init__(self, r: redis.Redis, keys: Keys, keep: int = 3, oom_wait_s: float = 600.0,
                 chunk_bytes: int = 64 * 2**20):
        if chunk_bytes < 1:
            raise ValueError("chunk_bytes must be >= 1")
        self.r, self.keys, self.keep, self.oom_wait_s, self.chunk_bytes = r, keys, keep, oom_wait_s, chunk_bytes

    def publish(self, data: bytes, version: int, kind: str = "lora", step: int = 0,
                probe: list[float] | None = None, source: str | None = None) -> WeightVersion:
        """Publish `data` as `version`. With `source` (the direct path, common/transport/direct.py)
        the bytes are already held by that weight source actor: only the metadata goes to Redis."""
        n = 0 if source else max(1, -(-len(data) // self.chunk_bytes))
        wv = WeightVersion(version=version, sha256=hashlib.sha256(data).hexdigest(), key=self.keys.weights(version),
                           nbytes=len(data), kind=kind, step=step, created_at=time.time(), chunks=n, probe=probe,
                           transport="direct" if source else "redis", source=source)
        meta = wv.model_dump_json()
        view = memoryview(data)

        def write():
            pipe = self.r.pipeline(transaction=True)
            for i in range(n):
                pipe.set(self.keys.weights(version, i), view[i * self.chunk_bytes:(i + 1) * self.chunk_bytes].tobytes())
            pipe.set(self.keys.weights_meta(version), meta)
            pipe.set(self.keys.weights_latest, meta)
            pipe.execute()
        retry_on_oom(write, what="weights.publish", max_wait_s=self.oom_wait_s)  # at maxmemory: wait, then RedisFull
        self.r.publish(self.keys.weights_channel, meta)
        self._trim(version)
        return wv

    def check_room(self, nbytes: int) -> str | None:
        """Whether Redis can hold ``keep`` versions of ``nbytes`` (the store keeps that many at once):
        an error message when they exceed its maxmemory (a publish would wait for memory forever),
        None when they fit or Redis will not say (CONFIG refused, as on some managed services)."""
        try:
            maxmemory = int(self.r.config_get("maxmemory").get("maxmemory", 0))
        except redis.RedisError:
            return None
        need = self.keep * nbytes
        if maxmemory and need > maxmemory:
            return (f"redis.weights_keep={self.keep} versions x {nbytes / 2**20:.1f} MB = {need / 2**20:.1f} MB of "
                    f"weights, but Redis's maxmemory is {maxmemory / 2**20:.1f} MB (and the streams need room too): "
                    f"raise Redis's maxmemory or lower redis.weights_keep")
        return None

    def _trim(self, newest: int) -> None:
        for v in range(max(0, newest - self.keep - 16), newest - self.keep + 1):
            raw = self.r.get(self.keys.weights_meta(v))
            n = max(1, WeightVersion.model_validate_json(raw).chunks) if raw else 1
            self.r.unlink(self.keys.weights_meta(v), *[self.keys.weights(v, i) for i in range(n)])

    def latest(self) -> WeightVersion | None:
        raw = self.r.get(self.keys.weights_latest)
        return WeightVersion.model_validate_json(raw) if raw else None

    def meta(self, version: int) -> WeightVersion:
        raw = self.r.get(self.keys.weights_meta(version))
        if not raw:
            raise WeightsMissing(f"weight version {version} is not in the store")
        return WeightVersion.model_validate_json(raw)

    def fetch(self, wv: WeightVersion) -> bytes:
        """The bytes of `wv`, verified against its sha256."""
        if wv.transport != "redis":
            raise WeightsMissing(f"weight version {wv.version} is on the {wv.transport} path: its bytes are not in Redis")
        parts = self.r.mget([self.keys.weights(wv.version, i) for i in range(wv.chunks)])
        if any(p is None for p in parts):
            raise WeightsMissing(f"weight version {wv.version} expired from the store (keep={self.keep})")
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        got = hashlib.sha256(data).hexdigest()
        if got != wv.sha256:
            raise ChecksumError(f"weight version {wv.version}: sha256 {got[:12]}… != published {wv.sha256[:12]}…")
        return data

    def subscribe(self, ignore_subscribe_messages: bool = True) -> redis.client.PubSub:
        """A PubSub on the weights channel; each message is a published version's metadata (JSON).
        With ``ignore_subscribe_messages=False`` the SUBSCRIBE confirmation is returned too, so a
        caller can know the subscription is in effect before it reads ``latest``."""
        ps = self.r.pubsub(ignore_subscribe_messages=ignore_subscribe_messages)
        ps.subscribe(self.keys.weights_channel)
        return ps
