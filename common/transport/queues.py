"""The two work streams every service agrees on (docs/architecture.md, "Data flow of one RL step"):
``tasks`` (learner -> generators, consumer group "generators") and ``groups`` (generators ->
learner, consumer group "learner"). One definition here, so the generator and the learner cannot
disagree about names, groups or limits."""
from __future__ import annotations

from common.config import RedisConfig
from common.transport.keys import Keys
from common.transport.streams import StreamQueue

__all__ = ["task_queue", "group_queue"]


def task_queue(r, keys: Keys, rc: RedisConfig) -> StreamQueue:
    """Tasks admitted by the learner, read by the generators."""
    return StreamQueue(r, keys, "tasks", "generators", max_deliveries=rc.max_deliveries,
                       claim_idle_ms=rc.claim_idle_ms, maxlen=rc.stream_maxlen, blob_ttl_s=rc.blob_ttl_s)


def group_queue(r, keys: Keys, rc: RedisConfig) -> StreamQueue:
    """Scored groups published by the generators, read by the learner."""
    return StreamQueue(r, keys, "groups", "learner", max_deliveries=rc.max_deliveries,
                       claim_idle_ms=rc.claim_idle_ms, maxlen=rc.stream_maxlen, blob_ttl_s=rc.blob_ttl_s)
