"""Redis transport: keys, connections (+ embedded server), streams with a janitor, weight store."""
from common.transport.backpressure import RedisFull, is_oom, retry_on_oom
from common.transport.client import EmbeddedRedis, connect, ensure_redis, free_port, ping
from common.transport.keys import Keys
from common.transport.queues import group_queue, task_queue
from common.transport.streams import Entry, StreamQueue
from common.transport.weights import ChecksumError, WeightsMissing, WeightStore

__all__ = ["EmbeddedRedis", "connect", "ensure_redis", "free_port", "ping", "Keys", "Entry", "StreamQueue",
           "ChecksumError", "WeightsMissing", "WeightStore",
           "RedisFull", "is_oom", "retry_on_oom", "task_queue", "group_queue"]
