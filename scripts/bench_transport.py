"""Group transport throughput vs raw redis-py SET/GET of the same bytes on the same server.

A "group" is what a generator publishes for G images: per image the train-step transitions
(x_t, x_next) in the gpu profile's latent size, log-probs, the group's conditioning and the
rewards. The DyRef path is encode -> MULTI(SET blob, XADD header) -> XREADGROUP -> GET -> decode
-> MULTI(SET NX dedup mark, XACK, XDEL, UNLINK). The raw path is SET + GET + DEL of the encoded
bytes. Both run in one process, interleaved, on the same server; the ratio is what matters.

    .venv/bin/python scripts/bench_transport.py [--groups 30] [--group-size 24] [--redis URL]
"""
from __future__ import annotations

import argparse
import statistics
import time
import uuid

import numpy as np

from common.codec import decode, encode
from common.transport import EmbeddedRedis, Keys, StreamQueue, connect, ping


def make_group(g: int, tokens: int, channels: int, rng: np.random.Generator) -> dict:
    lat = lambda: rng.standard_normal((g, 1, tokens, channels), dtype=np.float32)  # noqa: E731
    return {"x_t": lat(), "x_next": lat(), "log_probs": rng.standard_normal((g, 1), dtype=np.float32),
            "step_indices": np.array([2], np.int64), "cond": {"prompt_embeds": rng.standard_normal((1, 512, 1024), dtype=np.float32).astype(np.float16)},
            "rewards": {"image_similarity": rng.random(g).tolist()}, "prompt": "x" * 300}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--groups", type=int, default=30)
    ap.add_argument("--group-size", type=int, default=24)
    ap.add_argument("--tokens", type=int, default=1024, help="latent tokens per image (512 px Qwen: 1024)")
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--redis", default=None, help="Redis URL (default: an embedded server on a free port)")
    args = ap.parse_args()

    server = None
    url = args.redis
    if not url or not ping(url):
        server = EmbeddedRedis(data_dir="/tmp/dyref-bench-redis", appendonly=False, maxmemory_mb=4096).start()
        url = server.url
    r = connect(url)
    keys = Keys(f"bench{uuid.uuid4().hex[:6]}")
    q = StreamQueue(r, keys, "groups", "learner")
    rng = np.random.default_rng(0)
    group = make_group(args.group_size, args.tokens, args.channels, rng)
    size = len(encode(group))
    print(f"group payload: {size / 2**20:.1f} MiB ({args.group_size} images), {args.groups} groups per round, server {url}")

    def dyref_round() -> float:
        t0 = time.perf_counter()
        for i in range(args.groups):
            gid = uuid.uuid4().hex
            q.add({"group_id": gid}, blob=encode(group), blob_key=keys.blob("group", gid))
            (e,) = q.read("learner-0", count=1, block_ms=1000)
            payload = decode(q.blob(e))
            assert payload["x_t"].shape == group["x_t"].shape
            q.ack(e, mark_key=keys.consumed(e.fields["group_id"]), mark_ttl_s=600)
        return time.perf_counter() - t0

    def raw_round() -> float:
        data = encode(group)  # raw gets the bytes for free: no encode/decode cost counted
        t0 = time.perf_counter()
        for i in range(args.groups):
            k = f"{keys.namespace}:raw:{i}"
            r.set(k, data)
            got = r.get(k)
            assert len(got) == len(data)
            r.delete(k)
        return time.perf_counter() - t0

    dyref_round(), raw_round()  # warm-up
    d, w = [], []
    for _ in range(5):
        d.append(dyref_round())
        w.append(raw_round())
    mb = size * args.groups / 2**20
    dm, wm = statistics.median(d), statistics.median(w)
    print(f"dyref publish+consume: {mb / dm:8.1f} MiB/s  ({args.groups / dm:6.1f} groups/s)")
    print(f"raw SET+GET+DEL:       {mb / wm:8.1f} MiB/s  ({args.groups / wm:6.1f} groups/s)")
    print(f"ratio dyref/raw: {wm / dm:.2f}  (target >= 0.70; medians of 5 interleaved rounds)")
    r.close()
    if server:
        server.stop()


if __name__ == "__main__":
    main()
