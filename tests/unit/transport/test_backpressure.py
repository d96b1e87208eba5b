"""Back-pressure at Redis maxmemory (noeviction): refused writes wait and land, never half-apply."""
from __future__ import annotations

import threading
import time

import pytest
import redis

from common.transport import EmbeddedRedis, Keys, RedisFull, StreamQueue, is_oom, retry_on_oom


@pytest.fixture
def full_redis(tmp_path):
    """A private Redis whose maxmemory we move below what it holds."""
    with EmbeddedRedis(data_dir=tmp_path, maxmemory_mb=64, appendonly=False) as server:
        r = redis.Redis.from_url(server.url)
        yield r
        r.close()


def _fill(r):
    r.set("ballast", b"x" * 2_000_000)
    r.config_set("maxmemory", str(int(r.info("memory")["used_memory"]) // 2))


def _relieve(r, after_s: float):
    def go():
        time.sleep(after_s)
        r.config_set("maxmemory", str(64 * 2**20))
    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


def test_oom_is_recognised_and_a_refused_write_waits_then_lands(full_redis):
    r = full_redis
    _fill(r)
    with pytest.raises(redis.ResponseError) as e:
        r.set("k", b"v")
    assert is_oom(e.value) and not is_oom(redis.ResponseError("WRONGTYPE"))
    t = _relieve(r, 0.4)
    t0 = time.monotonic()
    assert retry_on_oom(lambda: r.set("k", b"v"), what="test", max_wait_s=10) is True
    assert 0.3 < time.monotonic() - t0 < 5
    t.join()


def test_redis_full_names_the_fix_after_the_wait(full_redis):
    r = full_redis
    _fill(r)
    with pytest.raises(RedisFull, match=r"maxmemory.*raise Redis maxmemory"):
        retry_on_oom(lambda: r.set("k", b"v"), what="tasks.add", max_wait_s=0.3)
    with pytest.raises(RedisFull):  # max_wait_s=0: one try, at once
        retry_on_oom(lambda: r.set("k", b"v"), what="tasks.add", max_wait_s=0)


def test_add_with_its_count_is_all_or_nothing_at_maxmemory(full_redis):
    r, keys = full_redis, Keys("tbp")
    q = StreamQueue(r, keys, "tasks", "g", oom_wait_s=0)
    q.ensure_group()
    _fill(r)
    with pytest.raises(RedisFull):
        q.add({"task_id": "t1"}, blob=b"b" * 1000, blob_key=keys.blob("task", "t1"), count_in=(keys.audit, "admitted"))
    assert r.hget(keys.audit, "admitted") is None and r.xlen(keys.tasks) == 0 and not r.exists(keys.blob("task", "t1"))
    _relieve(r, 0.0).join()
    q.add({"task_id": "t1"}, blob=b"b" * 1000, blob_key=keys.blob("task", "t1"), count_in=(keys.audit, "admitted"))
    assert int(r.hget(keys.audit, "admitted")) == 1 and r.xlen(keys.tasks) == 1


def test_ack_at_maxmemory_frees_the_blob_first_then_settles_once(full_redis):
    r, keys = full_redis, Keys("tbp2")
    q = StreamQueue(r, keys, "groups", "learner", oom_wait_s=10)
    q.add({"x": "1"}, blob=b"p" * 200_000, blob_key=keys.blob("group", "g1"))
    [e] = q.read("c", count=1, block_ms=None)
    _fill(r)
    t = _relieve(r, 0.5)
    assert q.ack(e, mark_key=keys.consumed("g1"), count_in=(keys.audit, "consumed")) is True
    t.join()
    assert not r.exists(keys.blob("group", "g1")) and int(r.hget(keys.audit, "consumed")) == 1
    assert q.pending() == 0 and q.depth() == 0


def test_a_vanished_consumer_group_is_recreated_not_fatal(full_redis):
    r, keys = full_redis, Keys("tbp3")
    q = StreamQueue(r, keys, "tasks", "generators")
    q.add({"a": "1"})
    r.delete(keys.tasks)  # what a Redis restart without persistence looks like to a consumer
    assert q.read("c", count=1, block_ms=None) == []
    q.add({"a": "2"})
    assert [e.fields["a"] for e in q.read("c", count=1, block_ms=None)] == ["2"]
    claimed, dead = q.reclaim("c", min_idle_ms=0)  # the janitor heals too
    assert dead == []
