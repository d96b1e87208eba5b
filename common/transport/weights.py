"""Versioned weight store: bytes + sha256 in Redis, pub/sub notification, last K versions kept.

Weight sync is a verified transaction (DESIGN.md principle 4): the learner publishes version N
(bytes, then metadata, then the `latest` pointer, in one MULTI/EXEC, then a PUBLISH); consumers
fetch, verify the checksum and only then switch. A blob that fails its checksum raises
:class:`ChecksumError`; the consumer keeps the version it had.
"""
from __future__ import annotations

import hashlib
import time

import redis

from common.schemas import WeightVersion
from common.transport.keys import Keys

__all__ = ["WeightStore", "ChecksumError", "WeightsMissing"]


class ChecksumError(ValueError):
    """Fetched weight bytes do not match the published sha256."""


class WeightsMissing(LookupError):
    """The requested weight version is not (or no longer) in the store."""


class WeightStore:
    def __init__(self, r: redis.Redis, keys: Keys, keep: int = 3):
        self.r, self.keys, self.keep = r, keys, keep

    def publish(self, data: bytes, version: int, kind: str = "lora", step: int = 0) -> WeightVersion:
        wv = WeightVersion(version=version, sha256=hashlib.sha256(data).hexdigest(), key=self.keys.weights(version),
                           nbytes=len(data), kind=kind, step=step, created_at=time.time())
        meta = wv.model_dump_json()
        pipe = self.r.pipeline(transaction=True)
        pipe.set(wv.key, data)
        pipe.set(self.keys.weights_meta(version), meta)
        pipe.set(self.keys.weights_latest, meta)
        pipe.execute()
        self.r.publish(self.keys.weights_channel, meta)
        self._trim(version)
        return wv

    def _trim(self, newest: int) -> None:
        old = [v for v in range(max(0, newest - self.keep - 16), newest - self.keep + 1)]
        if old:
            self.r.unlink(*[k for v in old for k in (self.keys.weights(v), self.keys.weights_meta(v))])

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
        data = self.r.get(wv.key)
        if data is None:
            raise WeightsMissing(f"weight version {wv.version} expired from the store (keep={self.keep})")
        got = hashlib.sha256(data).hexdigest()
        if got != wv.sha256:
            raise ChecksumError(f"weight version {wv.version}: sha256 {got[:12]}… != published {wv.sha256[:12]}…")
        return data

    def subscribe(self) -> redis.client.PubSub:
        ps = self.r.pubsub(ignore_subscribe_messages=True)
        ps.subscribe(self.keys.weights_channel)
        return ps
