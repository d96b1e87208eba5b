"""The direct weight path (common/transport/direct.py): bytes from the learner's weight source actor
to a consumer actor over Ray Direct Transport (gloo), metadata in Redis, the same sha256 check.

A real Ray cluster, a real source actor and a consumer actor that mixes in WeightReceiver, as the
generator and the evaluator do; the driver stands for a Serve replica (no receiver: object store).
"""
from __future__ import annotations

import hashlib
import os
import uuid

import pytest
import ray

from common.policy.follower import WeightFollower
from common.schemas import WeightVersion
from common.transport import Keys, WeightStore, connect
from common.transport.direct import (DirectLink, SourceUnavailable, WeightReceiver, source_name,
                                     start_weight_source)
from common.transport.weights import ChecksumError, WeightsMissing

pytestmark = pytest.mark.integration


@ray.remote(max_concurrency=3)
class Consumer(WeightReceiver):
    """A consumer actor like the generator: its link receives into its own receive_weights."""

    def __init__(self, redis_url: str, namespace: str):
        self.link = DirectLink(receiver=ray.get_runtime_context().current_actor, timeout_s=30)
        self.store = WeightStore(connect(redis_url), Keys(namespace))
        self.loaded: list[bytes] = []
        self.follower = WeightFollower(self.store, self.loaded.append, consumer="test-consumer", service="test",
                                       poll_interval_s=0.05, direct=self.link)

    def fetch(self, wv: dict) -> tuple[str, str]:
        """(outcome, sha256 or error class)"""
        try:
            data = self.link.fetch(WeightVersion.model_validate(wv))
        except (WeightsMissing, ChecksumError, SourceUnavailable) as e:
            kind = next(k for k in (WeightsMissing, ChecksumError, SourceUnavailable) if isinstance(e, k))
            return "error", kind.__name__
        return "ok", hashlib.sha256(data).hexdigest()

    def gloo_object_refuses_ray_get(self, version: int) -> bool:
        """Whether what get_gloo returns is an RDT object on the gloo transport (Ray refuses a
        ray.get of those), i.e. the fetch above did not go through the object store."""
        ref = self.link.relay.get_gloo.remote(version)
        try:
            ray.get(ref, timeout=30)
        except ValueError as e:
            return "two-sided transport GLOO" in str(e)
        return False

    def kill_relay(self) -> None:
        ray.kill(self.link.relay)

    def transport(self) -> str:
        return self.link.transport

    def follow(self, min_version: int) -> dict:
        v = self.follower.wait_for(min_version, timeout_s=30)
        return {"version": v, "last": hashlib.sha256(self.loaded[-1]).hexdigest(),
                "failures": dict(self.follower.failures), "pid": os.getpid()}


def _version(store: WeightStore, source, version: int, data: bytes, name: str) -> WeightVersion:
    ray.get(source.put.remote(version, data))
    return store.publish(data, version, kind="full", source=name)


def test_consumer_actor_follows_direct_versions_without_bytes_in_redis(ray_cluster, redis_server):
    ns = f"direct{uuid.uuid4().hex[:8]}"
    keys = Keys(ns)
    store = WeightStore(connect(redis_server.url), keys, keep=2)
    source = start_weight_source(ns, keep=2)
    consumer, second = Consumer.remote(redis_server.url, ns), Consumer.remote(redis_server.url, ns)
    blobs = {v: os.urandom(1000 + 7 * v) for v in (1, 2, 3)}
    published = {}
    for v, data in blobs.items():
        wv = published[v] = _version(store, source, v, data, source_name(ns))
        # only the metadata is in Redis: no chunk key holds the bytes
        assert wv.transport == "direct" and wv.chunks == 0 and not store.r.exists(keys.weights(v, 0))
        for c in (consumer, second):  # two consumers of one source, each with its own relay and group
            got = ray.get(c.follow.remote(v))
            assert got["version"] == v and got["last"] == hashlib.sha256(data).hexdigest()
            assert not got["failures"]
    assert ray.get(consumer.gloo_object_refuses_ray_get.remote(3))
    # the Redis path's fetch refuses a direct version instead of returning nothing
    with pytest.raises(WeightsMissing):
        store.fetch(wv)
    # the source keeps `keep` versions: an older one is reported missing, not served
    assert ray.get(source.held.remote()) == [2, 3]
    assert ray.get(consumer.fetch.remote(published[1].model_dump())) == ("error", "WeightsMissing")
    # a relay that died cannot be replaced (the consumer's one gloo group was with it): the link
    # reads through the object store from then on, and the consumer still gets verified bytes
    ray.get(consumer.kill_relay.remote())
    assert ray.get(consumer.fetch.remote(published[3].model_dump())) == ("error", "SourceUnavailable")
    assert ray.get(consumer.transport.remote()) == "object_store"
    assert ray.get(consumer.fetch.remote(published[3].model_dump())) == ("ok", hashlib.sha256(blobs[3]).hexdigest())
    for a in (consumer, second, source):
        ray.kill(a)


def test_wrong_checksum_is_refused_and_a_dead_source_is_unavailable_until_it_is_back(ray_cluster, redis_server):
    ns = f"direct{uuid.uuid4().hex[:8]}"
    store = WeightStore(connect(redis_server.url), Keys(ns), keep=2)
    name = source_name(ns)
    source = start_weight_source(ns, keep=2)
    consumer = Consumer.remote(redis_server.url, ns)
    data = os.urandom(4096)
    wv = _version(store, source, 1, data, name)
    assert ray.get(consumer.fetch.remote(wv.model_dump())) == ("ok", hashlib.sha256(data).hexdigest())
    # bytes that are not the published ones (the source holds other bytes under that version)
    ray.get(source.put.remote(1, os.urandom(4096)))
    assert ray.get(consumer.fetch.remote(wv.model_dump())) == ("error", "ChecksumError")
    # the learner died with its source: the consumer gets SourceUnavailable, never a hang or stale bytes
    ray.kill(source)
    assert ray.get(consumer.fetch.remote(wv.model_dump())) == ("error", "SourceUnavailable")
    # a restarted learner starts a new source under the same name: the link joins it again
    source = start_weight_source(ns, keep=2)
    data2 = os.urandom(5000)
    wv2 = _version(store, source, 2, data2, name)
    assert ray.get(consumer.fetch.remote(wv2.model_dump())) == ("ok", hashlib.sha256(data2).hexdigest())
    ray.kill(consumer)
    ray.kill(source)


def test_a_process_without_a_receiver_reads_through_the_object_store(ray_cluster, redis_server):
    # the gateway's Serve replicas: a follower given no link makes one that uses the object store
    ns = f"direct{uuid.uuid4().hex[:8]}"
    store = WeightStore(connect(redis_server.url), Keys(ns), keep=2)
    source = start_weight_source(ns, keep=2)
    data = os.urandom(3000)
    _version(store, source, 5, data, source_name(ns))
    loaded: list[bytes] = []
    follower = WeightFollower(store, loaded.append, consumer="driver", service="test", poll_interval_s=0.05)
    assert follower.wait_for(5, timeout_s=30) == 5 and loaded == [data]
    assert follower.direct is not None and follower.direct.transport == "object_store"
    follower.close()
    ray.kill(source)
