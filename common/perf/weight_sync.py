"""Weight sync seconds for one payload on each path, side by side (docs/architecture.md, "Weight
sync: two paths"). Used by scripts/bench_weight_sync.py (seconds vs bytes) and by the learner's
trainer check on a GPU box (services/learner/trainer_check.py: the real architecture's weights).

- ``redis``: sha256, chunked SET + metadata + `latest` in one MULTI/EXEC and a PUBLISH; the consumer
  GETs the chunks, verifies the sha256 and decodes the tensors;
- ``direct (gloo)``: the learner puts the bytes into its weight source actor and publishes the
  metadata only; a consumer actor gets them from its relay over a gloo group (Ray Direct Transport),
  verifies and decodes; timed inside the consumer;
- ``direct (object store)``: the same source read through Ray's object store by a process with no
  relay (the gateway's case), here the caller.

The learner's gather of the weights and the consumer's copy into its parameters are not included
(they do not depend on the path). Median of `repeats`, after one warm-up version per path (the
relay and its gloo group are made then).
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import ray

from common.codec import state_from_bytes
from common.policy.follower import WeightFollower
from common.transport import Keys, WeightStore, connect
from common.transport.direct import DirectLink, WeightReceiver, source_name, start_weight_source

__all__ = ["PATHS", "measure_path", "init_local_ray"]

PATHS = ("redis", "direct (gloo)", "direct (object store)")
REPO = Path(__file__).resolve().parents[2]


def init_local_ray(object_store_mb: int, num_cpus: int = 2) -> bool:
    """A local Ray whose workers import this repository (the consumer actor is defined here), unless
    this process is already in one. Returns whether it started one (the caller then shuts it down)."""
    if ray.is_initialized():
        return False
    ray.init(num_cpus=num_cpus, include_dashboard=False, object_store_memory=object_store_mb * 2**20,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    return True


@ray.remote(max_concurrency=3)
class _Consumer(WeightReceiver):
    """A consumer actor as the generator is one: it follows the store through its relay (gloo)."""

    def __init__(self, redis_url: str, namespace: str):
        self.follower = WeightFollower(WeightStore(connect(redis_url), Keys(namespace)), state_from_bytes,
                                       consumer="sync-check", service="bench",
                                       direct=DirectLink(receiver=ray.get_runtime_context().current_actor))

    def poll(self, expect: int) -> float:
        t0 = time.perf_counter()
        got = self.follower.poll()
        if got != expect or self.follower.direct.transport != "gloo":
            raise RuntimeError(f"expected version {expect} over gloo, serving {got} "
                               f"({self.follower.direct.transport}; failures {dict(self.follower.failures)})")
        return time.perf_counter() - t0


def measure_path(path: str, redis_url: str, data: bytes, repeats: int = 3, chunk_mb: int = 64,
                 tag: str = "sync") -> dict:
    """{path, mb, publish_s, follow_s, total_s, mb_per_s} for `data` on `path` (one of PATHS)."""
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    r = connect(redis_url)
    keys = Keys(f"{tag}-{PATHS.index(path)}-{len(data)}")
    store = WeightStore(r, keys, keep=2, chunk_bytes=chunk_mb * 2**20)
    source = start_weight_source(keys.namespace, keep=2) if path != "redis" else None
    actor = follower = None
    if path == "direct (gloo)":
        actor = _Consumer.remote(redis_url, keys.namespace)
    else:
        follower = WeightFollower(store, state_from_bytes, consumer=f"{tag}-{path}", service="bench")

    def follow(v: int) -> float:
        if actor is not None:
            return ray.get(actor.poll.remote(v))  # timed inside the actor
        t0 = time.perf_counter()
        if follower.poll() != v:
            raise RuntimeError(f"{path}: version {v} not served (failures {dict(follower.failures)})")
        return time.perf_counter() - t0

    pub, fol = [], []
    try:
        for v in range(repeats + 1):  # version 0 warms up
            t0 = time.perf_counter()
            if source is not None:
                ray.get(source.put.remote(v, data))
            store.publish(data, version=v, source=source_name(keys.namespace) if source is not None else None)
            t1 = time.perf_counter()
            f = follow(v)
            if v:
                pub.append(t1 - t0)
                fol.append(f)
    finally:
        if actor is not None:
            ray.kill(actor)
        if follower is not None:
            follower.close()
        if source is not None:
            ray.kill(source)
        for k in r.scan_iter(match=f"{keys.namespace}:*"):
            r.delete(k)
        r.close()
    row = {"path": path, "mb": len(data) / 2**20, "publish_s": statistics.median(pub),
           "follow_s": statistics.median(fol)}
    row["total_s"] = row["publish_s"] + row["follow_s"]
    row["mb_per_s"] = row["mb"] / row["total_s"]
    return row
