"""WeightFollower on a real Redis and a real tiny policy: verified switching, refusals by reason, the
pub/sub wake-up (timed), the fallback check when a notice is lost, and a Redis outage."""
from __future__ import annotations

import threading
import time

import pytest
import torch

from common import metrics as M
from common.codec import state_from_bytes, state_to_bytes
from common.config import PolicyConfig, RedisConfig
from common.policy import build_policy
from common.policy.follower import WeightFollower, WeightSyncError
from common.transport import EmbeddedRedis, WeightStore, connect, free_port
from dyref.launch import wait_for


@pytest.fixture(scope="module")
def policy():
    return build_policy(PolicyConfig()).eval()


def _moved(policy, seed: int) -> dict[str, torch.Tensor]:
    """The policy's trainable state with every LoRA B moved by seeded noise: weights we can recognise."""
    g = torch.Generator().manual_seed(seed)
    sd = state_from_bytes(policy.trainable_state())
    return {k: v + 0.5 * torch.randn(v.shape, generator=g) if "lora_B" in k else v for k, v in sd.items()}


def _served(policy) -> dict[str, torch.Tensor]:
    return state_from_bytes(policy.trainable_state())


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _counter(consumer: str, reason: str) -> float:
    return M.WEIGHT_LOAD_FAILURES.labels(consumer, reason)._value.get()


def _follower(r, keys, policy, name, **kw) -> WeightFollower:
    return WeightFollower(WeightStore(r, keys), policy.load_trainable_state, consumer=name, service="test", **kw)


def test_a_version_not_wanted_is_neither_loaded_nor_refused(r, keys, policy):
    """`wanted` (the evaluator takes every 2nd version): a declined version is not fetched, not
    refused, not counted; once the consumer wants it, the same version loads."""
    fetched = []
    store = WeightStore(r, keys)
    fetch = store.fetch
    store.fetch = lambda wv: fetched.append(wv.version) or fetch(wv)
    want = {"min": 2}
    f = WeightFollower(store, policy.load_trainable_state, consumer="f-wanted", service="test",
                       wanted=lambda v: v >= want["min"])
    store.publish(state_to_bytes(_moved(policy, 1)), version=1)
    assert f.poll() is None and fetched == [] and f.refused == set() and dict(f.failures) == {}
    want["min"] = 1
    assert f.poll() == 1 and fetched == [1] and f.served.version == 1
    f.close()


def test_a_published_version_is_loaded_and_served(r, keys, policy):
    f = _follower(r, keys, policy, "f-pick")
    assert f.subscribed
    assert f.poll() is None  # nothing published in this namespace
    sd = _moved(policy, 3)
    WeightStore(r, keys).publish(state_to_bytes(sd), version=3)
    assert f.poll() == 3 and f.version == 3
    assert _same(_served(policy), sd)
    assert M.POLICY_VERSION_SERVED.labels("f-pick")._value.get() == 3
    assert f.refused == set() and dict(f.failures) == {}
    f.close()


def test_a_corrupt_blob_is_refused_for_good_and_the_previous_version_keeps_serving(r, keys, policy):
    f = _follower(r, keys, policy, "f-checksum")
    alarms = _counter("f-checksum", "checksum")
    store = WeightStore(r, keys)
    good = _moved(policy, 1)
    store.publish(state_to_bytes(good), version=1)
    assert f.poll() == 1
    wv = store.publish(state_to_bytes(_moved(policy, 2)), version=2)
    r.set(wv.key, b"x" + r.get(wv.key)[1:])  # one byte changed in Redis: the sha256 no longer matches
    assert f.poll() == 1
    assert f.refused == {2} and f.failures["checksum"] == 1 and _counter("f-checksum", "checksum") == alarms + 1
    assert _same(_served(policy), good)
    assert f.poll() == 1 and f.failures["checksum"] == 1  # refused for good: not fetched again
    nxt = _moved(policy, 4)
    store.publish(state_to_bytes(nxt), version=3)
    assert f.poll() == 3 and _same(_served(policy), nxt)
    f.close()


def test_a_wrong_shape_is_refused_as_shape_and_garbage_as_invalid(r, keys, policy):
    f = _follower(r, keys, policy, "f-shape")
    before = _counter("f-shape", "shape"), _counter("f-shape", "invalid")
    store = WeightStore(r, keys)
    good = _moved(policy, 5)
    store.publish(state_to_bytes(good), version=1)
    assert f.poll() == 1
    wrong = dict(good)
    name = next(k for k in wrong if "lora_A" in k)
    wrong[name] = torch.zeros(wrong[name].shape[0] + 1, wrong[name].shape[1])  # one row too many
    store.publish(state_to_bytes(wrong), version=2)
    assert f.poll() == 1 and f.failures["shape"] == 1 and f.refused == {2}
    store.publish(b"not safetensors at all", version=3)  # verifies, but is not a state
    assert f.poll() == 1 and f.failures["invalid"] == 1 and f.refused == {2, 3}
    assert (_counter("f-shape", "shape"), _counter("f-shape", "invalid")) == (before[0] + 1, before[1] + 1)
    assert _same(_served(policy), good)  # nothing half-loaded
    f.close()


def test_a_missing_blob_is_counted_and_retried(r, keys, policy):
    f = _follower(r, keys, policy, "f-missing")
    store = WeightStore(r, keys)
    store.publish(state_to_bytes(_moved(policy, 6)), version=1)
    assert f.poll() == 1
    sd = _moved(policy, 7)
    wv = store.publish(state_to_bytes(sd), version=2)
    blob = r.get(wv.key)
    r.delete(wv.key)
    assert f.poll() == 1 and f.failures["missing"] == 1 and f.refused == set()
    r.set(wv.key, blob)  # back (in practice: the pointer moves on to a version that is there)
    assert f.poll() == 2 and _same(_served(policy), sd)
    f.close()


def test_due_is_cheap_news_from_a_notice_or_the_fallback_interval(r, keys, policy):
    f = _follower(r, keys, policy, "f-due", poll_interval_s=0.4)
    f.poll()
    assert not f.due()  # just checked, no notice
    WeightStore(r, keys).publish(state_to_bytes(_moved(policy, 8)), version=1)
    # well under the fallback interval: only the notice can make it due
    assert wait_for(f.due, 0.3, interval_s=0.01), "the notice did not arrive"
    assert f.notices == 1
    assert f.poll_if_due() == 1
    assert not f.due()
    time.sleep(0.45)
    assert f.due()  # the fallback check, with no notice
    f.close()


def _wait_in_thread(f: WeightFollower, version: int, timeout_s: float) -> dict:
    out: dict = {}

    def run():
        try:
            out["version"] = f.wait_for(version, timeout_s)
        except Exception as e:  # noqa: BLE001 - reported to the test
            out["error"] = e
        out["at"] = time.monotonic()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    out["thread"] = t
    return out


def test_a_waiter_is_woken_by_the_notice_well_before_the_fallback_interval(r, keys, policy):
    f = _follower(r, keys, policy, "f-wake", poll_interval_s=5.0)
    waiter = _wait_in_thread(f, 1, timeout_s=15)
    time.sleep(0.5)
    assert waiter["thread"].is_alive()  # blocked: nothing published yet
    t_pub = time.monotonic()
    WeightStore(r, keys).publish(state_to_bytes(_moved(policy, 9)), version=1)
    waiter["thread"].join(10)
    assert waiter.get("version") == 1, waiter
    latency = waiter["at"] - t_pub
    # the next fallback check is ~4.5 s away: only the notice can wake it this soon
    assert latency < 1.0, f"woke {latency:.3f}s after the publish"
    assert f.notices == 1
    f.close()


def test_a_lost_notice_is_covered_by_the_fallback_check(r, keys, policy, monkeypatch):
    f = _follower(r, keys, policy, "f-lost", poll_interval_s=0.5)
    waiter = _wait_in_thread(f, 1, timeout_s=10)
    time.sleep(0.2)
    monkeypatch.setattr(r, "publish", lambda *a, **kw: 0)  # the learner died between EXEC and PUBLISH
    t_pub = time.monotonic()
    WeightStore(r, keys).publish(state_to_bytes(_moved(policy, 10)), version=1)
    waiter["thread"].join(10)
    assert waiter.get("version") == 1, waiter
    assert f.notices == 0
    assert waiter["at"] - t_pub < 2.0
    f.close()


def test_wait_for_raises_a_typed_error_at_its_deadline(r, keys, policy):
    f = _follower(r, keys, policy, "f-timeout", poll_interval_s=0.2)
    WeightStore(r, keys).publish(state_to_bytes(_moved(policy, 11)), version=1)
    assert f.wait_for(0, timeout_s=0) == 1
    t0 = time.monotonic()
    with pytest.raises(WeightSyncError, match="policy version 2 not available after 0.5s .serving 1."):
        f.wait_for(2, timeout_s=0.5)
    assert 0.5 <= time.monotonic() - t0 < 2.0
    f.close()


def test_unreachable_redis_never_raises(policy):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    r = connect(dead, RedisConfig(url=dead, retries=0, socket_timeout_s=0.5))
    from common.transport import Keys
    f = WeightFollower(WeightStore(r, Keys("tdead")), policy.load_trainable_state, consumer="f-dead",
                       service="test", backoff_s=0.2, max_backoff_s=1.0)
    assert not f.subscribed and f.redis_errors == 1
    assert f.poll() is None and not f.due()
    with pytest.raises(WeightSyncError):
        f.wait_for(0, timeout_s=0.3)
    r.close()


def test_redis_down_keeps_serving_backs_off_and_resubscribes_after_restart(policy, tmp_path):
    server = EmbeddedRedis(data_dir=tmp_path / "redis", maxmemory_mb=64).start()
    try:
        from common.transport import Keys
        keys = Keys("toutage")
        quick = RedisConfig(url=server.url, retries=0, socket_timeout_s=1.0)
        r = connect(server.url, quick)
        f = WeightFollower(WeightStore(r, keys), policy.load_trainable_state, consumer="f-outage",
                           service="test", poll_interval_s=5.0, backoff_s=0.5, max_backoff_s=2.0)
        pub = connect(server.url, quick)
        v1 = _moved(policy, 12)
        WeightStore(pub, keys).publish(state_to_bytes(v1), version=1)
        assert f.poll() == 1
        pub.close()

        server.stop()
        assert f.poll() == 1 and f.redis_errors == 1  # no exception: it keeps serving version 1
        assert not f.subscribed
        for _ in range(20):  # backing off: no Redis call at all, so no new error
            assert f.poll() == 1 and not f.due()
        assert f.redis_errors == 1
        time.sleep(0.6)
        assert f.poll() == 1 and f.redis_errors == 2  # tried again after 0.5 s: still down
        time.sleep(0.5)
        assert f.poll() == 1 and f.redis_errors == 2  # the back-off doubled to 1 s
        time.sleep(0.7)
        assert f.poll() == 1 and f.redis_errors == 3
        assert _same(_served(policy), v1)

        server.start()  # same port, same AOF
        assert wait_for(lambda: f.poll() == 1 and f.subscribed, 15), "never re-subscribed"
        waiter = _wait_in_thread(f, 2, timeout_s=15)
        time.sleep(0.3)
        pub = connect(server.url, quick)
        v2 = _moved(policy, 13)
        t_pub = time.monotonic()
        WeightStore(pub, keys).publish(state_to_bytes(v2), version=2)
        waiter["thread"].join(10)
        assert waiter.get("version") == 2, waiter
        assert waiter["at"] - t_pub < 1.0  # woken by the new subscription, not the 5 s fallback
        assert _same(_served(policy), v2)
        pub.close()
        f.close()
        r.close()
    finally:
        server.stop()


def test_a_load_that_binds_nothing_is_refused_by_the_probe_and_a_real_one_is_served(r, keys, policy):
    """The publisher records its output on a fixed input (MRIGPolicy.probe); a consumer serves a
    version only when its own output after the load agrees. A load that silently binds nothing
    (here: a load function that installs nothing) leaves the old output: refused as `probe`."""
    publisher = build_policy(PolicyConfig()).eval()
    moved = _moved(publisher, 11)
    publisher.load_trainable_state(state_to_bytes(moved))
    expected = publisher.probe()
    assert max(abs(a - b) for a, b in zip(expected, policy.probe())) > 1e-2  # the weights moved its output
    store = WeightStore(r, keys)
    store.publish(state_to_bytes(moved), version=1, probe=expected)

    inert = WeightFollower(store, lambda data: None, consumer="f-inert", service="test", probe=policy.probe)
    before = _counter("f-inert", "probe")
    assert inert.poll() is None  # nothing served: the old weights are not version 1
    assert inert.refused == {1} and inert.failures["probe"] == 1 and _counter("f-inert", "probe") == before + 1
    inert.close()

    real = _follower(r, keys, policy, "f-probe", probe=policy.probe, probe_tolerance=1e-5)
    assert real.poll() == 1 and real.failures["probe"] == 0
    assert max(abs(a - b) for a, b in zip(policy.probe(), expected)) <= 1e-5
    real.close()
