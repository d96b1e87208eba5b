"""Weight sync through the Redis weight store: seconds vs bytes.

For each size, a safetensors state of that many fp32 bytes is published (the learner's part:
sha256, chunked SET + metadata + `latest` in one MULTI/EXEC, PUBLISH) and followed by a
WeightFollower (the consumer's part: GET the chunks, verify the sha256, decode the tensors), on
an embedded redis-server on a free port. The learner's gather of the weights and the consumer's
copy into its parameters are not included (they do not depend on the path). Median of --repeats.

    .venv/bin/python scripts/bench_weight_sync.py [--sizes-mb 1 16 64 256] [--repeats 3] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from common.codec import state_from_bytes, state_to_bytes  # noqa: E402
from common.policy.follower import WeightFollower  # noqa: E402
from common.transport import EmbeddedRedis, Keys, WeightStore, connect  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes-mb", type=int, nargs="+", default=[1, 16, 64, 256])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--chunk-mb", type=int, default=64, help="redis.weights_chunk_mb")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rows = []
    biggest = max(args.sizes_mb)
    with tempfile.TemporaryDirectory() as tmp, \
            EmbeddedRedis(data_dir=tmp, maxmemory_mb=4 * biggest + 256, appendonly=False) as server:
        r = connect(server.url)
        for mb in args.sizes_mb:
            n = mb * 2**20 // 4
            # 64 tensors, as a LoRA or a transformer is many tensors
            state = {f"layer.{i}.weight": torch.randn(n // 64) for i in range(64)}
            data = state_to_bytes(state)
            keys = Keys(f"bench{mb}")
            store = WeightStore(r, keys, keep=2, chunk_bytes=args.chunk_mb * 2**20)
            follower = WeightFollower(store, lambda b: state_from_bytes(b), consumer=f"bench-{mb}", service="bench")
            pub, fol = [], []
            for v in range(1, args.repeats + 1):
                t0 = time.perf_counter()
                store.publish(data, version=v)
                t1 = time.perf_counter()
                assert follower.poll() == v
                t2 = time.perf_counter()
                pub.append(t1 - t0)
                fol.append(t2 - t1)
            follower.close()
            for k in r.scan_iter(match=f"bench{mb}:*"):
                r.delete(k)
            row = {"mb": len(data) / 2**20, "publish_s": statistics.median(pub), "follow_s": statistics.median(fol)}
            row["total_s"] = row["publish_s"] + row["follow_s"]
            row["mb_per_s"] = row["mb"] / row["total_s"]
            rows.append(row)
        r.close()
    print("\nweight sync through Redis (one consumer), median of", args.repeats, "\n")
    print("| MB | publish s | fetch+verify+decode s | total s | MB/s |\n|---|---|---|---|---|")
    for w in rows:
        print(f"| {w['mb']:.1f} | {w['publish_s']:.3f} | {w['follow_s']:.3f} | {w['total_s']:.3f} | {w['mb_per_s']:.0f} |")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "results.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
