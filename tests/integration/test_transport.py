"""The transport against a real redis-server: reclaim, dead letters, dedup, corruption, restarts."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from common.codec import CodecError, decode, encode
from common.transport import ChecksumError, EmbeddedRedis, Keys, StreamQueue, WeightStore, connect

pytestmark = pytest.mark.integration


def _queue(r, keys, **kw) -> StreamQueue:
    kw.setdefault("claim_idle_ms", 50)
    return StreamQueue(r, keys, "groups", "learner", **kw)


def _consume_all(q: StreamQueue, consumer: str, handle, rounds: int = 50) -> None:
    """A consumer loop: new entries first, then reclaimed ones; ack with a dedup mark."""
    for _ in range(rounds):
        entries = q.read(consumer, count=10, block_ms=10)
        reclaimed, _dead = q.reclaim(consumer)
        if not entries and not reclaimed:
            return
        for e in entries + reclaimed:
            handle(e)


def test_consumer_killed_mid_entry_is_reclaimed_and_processed_once(redis_server, r, keys):
    q = _queue(r, keys)
    q.add({"group_id": "g1"}, blob=encode({"x": np.ones(4)}), blob_key=keys.blob("group", "g1"))
    # a real consumer process that reads the entry and is SIGKILLed before it acks
    code = textwrap.dedent(f"""
        import sys, time
        from common.transport import Keys, StreamQueue, connect
        q = StreamQueue(connect({redis_server.url!r}), Keys({keys.namespace!r}), "groups", "learner")
        got = q.read("doomed", count=1, block_ms=2000)
        print(len(got), flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "1"
    proc.kill()
    proc.wait()
    assert q.pending() == 1
    time.sleep(0.1)
    processed = []

    def handle(e):
        payload = decode(q.blob(e))
        if q.ack(e, mark_key=keys.consumed(e.fields["group_id"])):
            processed.append((e.fields["group_id"], float(payload["x"].sum())))

    _consume_all(q, "survivor", handle)
    assert processed == [("g1", 4.0)]
    assert q.pending() == 0 and q.depth() == 0
    assert r.exists(keys.blob("group", "g1")) == 0  # blob unlinked after ack


def test_poison_entry_ends_in_dead_letter_stream_after_n_tries(r, keys):
    q = _queue(r, keys, max_deliveries=3)
    q.add({"group_id": "poison"})
    attempts = []

    def always_fails(e):
        attempts.append(e.deliveries)  # a handler that raises: no ack, the entry stays pending

    for _ in range(10):
        _consume_all(q, "c", always_fails, rounds=1)
        time.sleep(0.06)
    assert attempts == [1, 2, 3]
    assert q.dead_letters() == 1 and q.pending() == 0
    dl = q.dead_letter_entries()[0]
    assert dl["group_id"] == "poison" and "delivered 4 times" in dl["reason"]


def test_janitor_with_skip_own_leaves_the_callers_own_slow_entry_and_takes_a_silent_peers(r, keys):
    """A consumer whose work outlasts claim_idle_ms (a generator waiting on reward retries) must not
    take its own entry back (that redid the group: a duplicate); a peer's idle entry it does take."""
    q = _queue(r, keys)
    mine = q.add({"task_id": "mine"})
    assert [e.id for e in q.read("gen-a", count=1, block_ms=None)] == [mine]
    time.sleep(0.08)  # idle past claim_idle_ms (50 ms)
    assert q.reclaim("gen-a", skip_own=True) == ([], [])
    assert q.reclaim("gen-a", min_idle_ms=50)[0][0].id == mine  # the plain janitor would retake it
    theirs = q.add({"task_id": "theirs"})
    assert [e.id for e in q.read("gen-b", count=1, block_ms=None)] == [theirs]
    time.sleep(0.08)
    claimed, dead = q.reclaim("gen-a", skip_own=True)
    assert [e.id for e in claimed] == [theirs] and dead == []
    assert claimed[0].deliveries == 2  # delivered to gen-b, then to gen-a
    owners = {(c["name"].decode() if isinstance(c["name"], bytes) else c["name"]): c["pending"]
              for c in r.xinfo_consumers(q.stream, q.group)}
    assert owners == {"gen-a": 2, "gen-b": 0}


def test_own_pending_returns_leftovers_except_the_ones_in_hand_and_counts_deliveries(r, keys):
    """What a restarted consumer of the same name left unfinished comes back at once (no idle wait),
    oldest first, without the entries it is working on; a leftover that keeps failing is
    dead-lettered after max_deliveries like any other."""
    q = _queue(r, keys, max_deliveries=3)
    ids = [q.add({"task_id": f"t{i}"}) for i in range(3)]
    assert [e.id for e in q.read("gen-0", count=3, block_ms=None)] == ids
    got, dead = q.own_pending("gen-0", exclude={ids[1]})
    assert [e.id for e in got] == [ids[0], ids[2]] and dead == []
    assert [e.deliveries for e in got] == [2, 2]
    assert q.own_pending("gen-other") == ([], [])
    got, _ = q.own_pending("gen-0", exclude={ids[1], ids[2]})  # delivery 3 of t0: still allowed
    assert [(e.id, e.deliveries) for e in got] == [(ids[0], 3)]
    got, dead = q.own_pending("gen-0", exclude={ids[1], ids[2]})  # the 4th: dead-lettered
    assert got == [] and [e.id for e in dead] == [ids[0]]
    assert q.dead_letters() == 1 and q.pending() == 2


def test_duplicate_group_is_counted_once(r, keys):
    q = _queue(r, keys)
    for _ in range(3):  # the same group published three times (e.g. a generator redid its task)
        q.add({"group_id": "same"})
    q.add({"group_id": "other"})
    counted = []
    _consume_all(q, "c", lambda e: counted.append(e.fields["group_id"]) if q.ack(e, mark_key=keys.consumed(e.fields["group_id"])) else None)
    assert sorted(counted) == ["other", "same"]
    assert q.pending() == 0


def test_corrupted_blob_is_dead_lettered_and_consumer_keeps_running(r, keys):
    q = _queue(r, keys)
    q.add({"group_id": "bad"}, blob=encode({"x": np.ones(1000)})[:37], blob_key=keys.blob("group", "bad"))
    q.add({"group_id": "good"}, blob=encode({"x": np.ones(3)}), blob_key=keys.blob("group", "good"))
    ok, errors = [], []

    def handle(e):
        try:
            payload = decode(q.blob(e))
        except CodecError as err:
            errors.append(str(err))
            q.dead_letter(e, f"corrupt payload: {err}")
            return
        ok.append(float(payload["x"].sum()))
        q.ack(e)

    _consume_all(q, "c", handle)
    assert ok == [3.0]
    assert len(errors) == 1 and "truncated payload" in errors[0]
    assert q.dead_letters() == 1 and q.dead_letter_entries()[0]["reason"].startswith("corrupt payload")


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
def test_redis_restart_mid_stream_loses_no_acknowledged_work(tmp_path, kill):
    keys = Keys("restart")
    with EmbeddedRedis(data_dir=tmp_path, fsync_always=True) as server:
        r = connect(server.url)
        q = _queue(r, keys)
        for i in range(50):
            q.add({"n": i}, blob=encode({"i": i}), blob_key=keys.blob("group", str(i)))
        done = []

        def handle(e):
            done.append(decode(q.blob(e))["i"])
            q.ack(e, mark_key=keys.consumed(e.fields["n"]))

        for e in q.read("c", count=20, block_ms=10):
            handle(e)
        server.restart(kill=kill)  # the client reconnects with backoff on its next call
        _consume_all(q, "c", handle)
        for i in range(50, 60):  # the producer keeps going after the restart too
            q.add({"n": i}, blob=encode({"i": i}), blob_key=keys.blob("group", str(i)))
        _consume_all(q, "c", handle)
        assert sorted(done) == list(range(60))
        assert q.pending() == 0
        r.close()


def test_weight_store_versions_checksums_and_trim(r, keys):
    ws = WeightStore(r, keys, keep=2)
    ps = ws.subscribe()
    for v in range(1, 5):
        ws.publish(bytes([v]) * 1000, version=v, kind="lora", step=v * 10)
    latest = ws.latest()
    assert latest.version == 4 and ws.fetch(latest) == bytes([4]) * 1000
    assert r.exists(keys.weights(2)) == 0 and r.exists(keys.weights(3)) == 1  # keep last 2
    msgs, deadline = [], time.monotonic() + 3
    while len(msgs) < 4 and time.monotonic() < deadline:
        m = ps.get_message(timeout=0.2)  # None for the subscribe confirmation
        if m:
            msgs.append(m)
    assert [int(m["data"].split(b'"version":')[1].split(b",")[0]) for m in msgs] == [1, 2, 3, 4]
    r.set(latest.key, b"tampered")
    with pytest.raises(ChecksumError, match="version 4"):
        ws.fetch(latest)


def test_weight_store_splits_big_versions_into_chunks(r, keys):
    ws = WeightStore(r, keys, keep=1, chunk_bytes=1000)
    data = bytes(range(256)) * 17  # 4352 bytes -> 5 chunks
    wv = ws.publish(data, version=7)
    assert wv.chunks == 5 and ws.fetch(ws.latest()) == data
    r.set(keys.weights(7, 3), b"x" * 1000)
    with pytest.raises(ChecksumError):
        ws.fetch(wv)
    ws.publish(b"small", version=8)
    assert not any(r.exists(keys.weights(7, i)) for i in range(5))  # old chunks trimmed
